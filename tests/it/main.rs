//! Integration tests: one binary, against the real RabbitMQ and Postgres (see scripts/test.sh).

mod cli;
mod helpers;
mod pipeline;
