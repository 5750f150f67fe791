//! `bench`: throughput of the worker against the Postgres ceiling, in one run.

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_settings: Settings, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("bench is being written")
}
