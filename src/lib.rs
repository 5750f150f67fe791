//! `customer-ingest` consumes bulk customer payloads from RabbitMQ and upserts them into Postgres.
//!
//! One message's path:
//!
//! 1. [`amqp::consumer`] takes a delivery from the ingest queue (prefetch and a semaphore cap the
//!    messages in hand) and spawns [`amqp::inbound`] for it.
//! 2. [`amqp::inbound`] reads its [`ingest::Envelope`] (batch id, tenant, dialect, reply address:
//!    [`amqp::envelope`], names in [`amqp::headers`]) and calls [`ingest::Ingest::process`], which
//!    knows nothing of the broker.
//! 3. [`ingest`] checks the message (size, tenant, type, UTF-8, nesting), answers a batch that
//!    completed before from its stored reply, and otherwise lets the [`dialect`] parse the body into
//!    the common [`model::Customer`], one result per record. Keys are given in one place
//!    (`ingest::keys`, from the dialect's [`dialect::Keying`]; contact matching by [`matching`] and
//!    [`store::contacts`]); references to other customers are checked against the store.
//! 4. Valid records are split into chunks; [`store::customers`] applies each chunk in one
//!    transaction: a set-based upsert, one outbox row holding the chunk's events, and the chunk's
//!    results. Transient database errors are retried with backoff while the message stays
//!    unacknowledged.
//! 5. [`store::batches`] records the batch and its [`reply::Reply`]. Back in [`amqp::inbound`], the
//!    reply goes out in parts ([`amqp::replies`]) with a publisher confirm, and only then is the
//!    delivery acknowledged; a message that can never be processed is dead-lettered and answered
//!    `rejected`, one that met a database outage is handed back as a fresh copy, and any other failure
//!    is requeued until its last allowed delivery dead-letters it.
//! 6. [`relay`] publishes the outbox to the events exchange, in order, after each commit: the
//!    changes as CloudEvents ([`events`]: one message per event, or per chunk in batch mode, routed
//!    by kind and tenant), put on the broker by [`amqp::events`].
//!
//! Around it: [`config`] (settings), [`telemetry`] (logs, and spans exported over OTLP; each
//! message's span continues its producer's W3C trace: [`amqp::trace`]), [`metrics`] and [`http`]
//! (`/metrics`, `/healthz`, `/readyz`),
//! [`health`] (readiness, and the gate that stops consuming while Postgres is away), [`shutdown`]
//! (signals), [`startup`] (wiring, and the sweep that removes batch bookkeeping past the retention:
//! [`store::retention`]) and [`cli`] (the subcommands; `erase` is [`store::erasure`]).
//!
//! Layering, checked by `scripts/check-layers.sh`: only [`amqp`] (and the operator commands in
//! [`cli`]) know lapin; a dialect never touches AMQP or SQL; the store never imports a dialect.

pub mod amqp;
pub mod cli;
pub mod codes;
pub mod config;
pub mod dialect;
pub mod events;
pub mod failpoints;
pub mod health;
pub mod http;
pub mod ingest;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod relay;
pub mod reply;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
