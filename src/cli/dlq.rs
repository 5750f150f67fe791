//! `dlq list | show | replay | purge`: the dead-letter queue for operators.

use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One line per dead-lettered message.
    List,
}

pub async fn run(_settings: Settings, _command: Command) -> anyhow::Result<()> {
    anyhow::bail!("dlq is being written")
}
