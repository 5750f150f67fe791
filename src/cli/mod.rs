//! The command line: one subcommand per file, each with its options and an `async fn run`.

pub mod dlq;
pub mod erase;
pub mod migrate;
mod progress;
pub mod publish;
pub mod serve;
pub mod status;
mod text;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "customer-ingest",
    version,
    about = "Bulk customer ingestion from RabbitMQ into Postgres"
)]
pub struct Cli {
    /// A settings file (TOML) layered over the defaults; INGEST__SECTION__KEY variables override both.
    #[arg(long, global = true, env = "INGEST_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume, apply and reply until SIGTERM (the default).
    Serve,
    /// Create the database if it is missing and apply pending migrations.
    Migrate,
    /// Publish a payload file to the ingest queue (and, with --wait, print the reply).
    Publish(publish::Args),
    /// Inspect, replay or purge the dead-letter queue.
    #[command(subcommand)]
    Dlq(dlq::Command),
    /// Delete a customer on request (right to erasure), with its records in stored replies, and
    /// publish a `customer.deleted` event.
    Erase(erase::Args),
    /// What an operator looks at first: queues, outbox, idempotency tables, each tenant's last batch.
    Status(status::Args),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
