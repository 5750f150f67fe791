//! Integration tests: one binary, against the real RabbitMQ and Postgres (see scripts/test.sh).

// The seed pages' example bodies are written out with `json!`, which nests deeply.
#![recursion_limit = "256"]

mod add_with_accounts;
mod auth;
mod broker;
mod cli;
mod compression;
mod contention;
mod contract;
mod customers_v1;
mod dashboard;
mod disruptive;
mod dlq;
mod events;
mod faults;
mod helpers;
mod ingest;
mod match_by_contact;
mod outbox_upgrade;
mod pipeline;
mod prometheus;
mod retention;
mod run_script;
mod tls;
mod tracing;
mod trust;
mod upsert_by_id;
