//! `customer-ingest-bench`: how close the worker comes to what Postgres can take on this machine, in
//! one run. One JSON object goes to stdout; progress and the workers' logs go to stderr.
//!
//! - [`ceiling`]: a plain `COPY` of the very customer documents the worker would store, into a table
//!   shaped like `customers`. Every worker figure is divided by it: the ratios say how much of the
//!   database's capacity the pipeline turns into applied customers, and they travel between machines
//!   far better than raw rates do.
//! - [`rig`]: fresh workers, each a real `customer-ingest serve` process ([`worker`]) with its own
//!   queues, its own database and `log.level = warn`, so that what is measured is what production
//!   runs: AMQP in, parse, chunked upsert with its outbox, relay, confirmed replies.
//! - [`phases`]: what is sent to a rig (bodies from [`workload`]) and how it is timed. A phase counts
//!   as done only when every reply has arrived, every event has been delivered and the outbox is
//!   empty.
//! - [`cpu`] and [`pg_sampler`]: where the time went, per process group and per Postgres wait event.
//! - [`report`]: the JSON printed, and the targets it is held to; [`run`] puts the phases together.
//! - [`cleanup`]: everything the bench creates is named after the run (`bench.<run>.*` queues and
//!   exchanges, `ingest_bench_<run>_*` databases) and removed at the end, after an error or on
//!   SIGINT/SIGTERM too. [`connect`] holds the bench's own connections.
//!
//! Settings come from where the service takes them (defaults, `--config`, `INGEST__...` variables)
//! and are handed to the workers whole.

mod bare;
mod ceiling;
mod cleanup;
mod connect;
mod cpu;
mod observer;
mod pg_sampler;
mod phases;
mod report;
mod rig;
mod run;
mod targets;
mod worker;
mod workload;

use std::path::PathBuf;

use clap::Parser;
use customer_ingest::config::Settings;
use customer_ingest::events::EventsMode;

#[derive(Debug, Parser)]
#[command(
    name = "customer-ingest-bench",
    version,
    about = "Measure customer-ingest's throughput against the Postgres ceiling on this machine (prints one JSON object)"
)]
struct Cli {
    /// A settings file (TOML) layered over the defaults; INGEST__SECTION__KEY variables override both.
    #[arg(long, env = "INGEST_CONFIG")]
    config: Option<PathBuf>,

    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages per throughput phase (M).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Customers per message (K).
    #[arg(long, default_value_t = 1000)]
    customers: usize,
    /// Unacknowledged messages the broker sends ahead to each worker (INGEST__AMQP__PREFETCH); at
    /// most the workers' pipeline.concurrency.
    #[arg(long, default_value_t = 4)]
    prefetch: u16,
    /// Skip the insert with two worker processes on one queue.
    #[arg(long)]
    skip_scale: bool,
    /// Skip the latency of small messages sent one at a time.
    #[arg(long)]
    skip_small: bool,
    /// Skip the single 100,000-customer message.
    #[arg(long)]
    skip_large: bool,
    /// The longest one phase may take, in seconds, before the bench gives up on it.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// How the workers publish events (events.mode): a message per event, or a message per
    /// committed chunk. Without it, the settings' mode (per-customer by default). The report's
    /// `settings.events_mode` says which ran.
    #[arg(long, value_enum)]
    events_mode: Option<EventsModeArg>,
}

/// `--events-mode`, spelled as `events.mode` is.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EventsModeArg {
    PerCustomer,
    Batch,
}

impl From<EventsModeArg> for EventsMode {
    fn from(mode: EventsModeArg) -> Self {
        match mode {
            EventsModeArg::PerCustomer => EventsMode::PerCustomer,
            EventsModeArg::Batch => EventsMode::Batch,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    run::run(settings, cli.args).await
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
