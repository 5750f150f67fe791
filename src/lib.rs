//! `customer-ingest` consumes bulk customer payloads from RabbitMQ and upserts them into Postgres.
//!
//! How a message flows:
//!
//! 1. [`amqp::consumer`] takes a delivery from the ingest queue (prefetch and a semaphore cap the
//!    messages in hand) and hands it to [`pipeline`].
//! 2. [`pipeline`] reads the envelope (batch id, tenant, dialect), sends the stored reply again if the
//!    batch already completed, and otherwise lets the [`dialect`] parse the body into the common
//!    [`model::Customer`], one result per record. Records that carry no key of their own are given
//!    one by [`matching`], the contact-matching engine, which [`store::contacts`] runs against the
//!    stored customers.
//! 3. Valid records are split into chunks; [`store::customers`] applies each chunk in one
//!    transaction: a set-based upsert, an outbox row per real change, and the chunk's results.
//!    Transient database errors are retried with backoff while the message stays unacknowledged.
//! 4. [`store::batches`] records the batch and its [`reply::Reply`]; the reply is published with a
//!    publisher confirm, and only then is the delivery acknowledged.
//! 5. [`relay`] publishes the outbox to the events exchange, in order, after each commit.
//!
//! Around it: [`config`] (settings), [`metrics`] and [`http`] (`/metrics`, `/healthz`, `/readyz`),
//! [`health`] (readiness, and the gate that stops consuming while Postgres is away), [`shutdown`]
//! (signals), [`startup`] (wiring) and [`cli`] (the subcommands).

pub mod amqp;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod failpoints;
pub mod health;
pub mod http;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod relay;
pub mod reply;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
