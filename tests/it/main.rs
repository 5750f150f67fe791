//! Integration tests: one binary, against the real RabbitMQ and Postgres (see scripts/test.sh).

mod cli;
mod disruptive;
mod dlq;
mod faults;
mod helpers;
mod pipeline;
