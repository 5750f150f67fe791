use clap::Parser;

use customer_ingest::cli::{Cli, Command, dlq, erase, migrate, publish, serve, status};
use customer_ingest::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // With the `failpoints` feature, FAILPOINTS=name=action;... switches failure points on.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::run(settings).await,
        Command::Migrate => migrate::run(settings).await,
        Command::Publish(args) => publish::run(settings, args).await,
        Command::Dlq(command) => dlq::run(settings, command).await,
        Command::Erase(args) => erase::run(settings, args).await,
        Command::Status(args) => status::run(settings, args).await,
    }
}
