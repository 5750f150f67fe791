//! `dlq list | show | replay | purge`: the dead-letter queue for operators.
//!
//! Every command reads the queue the same way: `basic.get` one message at a time, without
//! acknowledging, up to the number of messages the queue held when the command started. A message
//! the command acts on is acknowledged once the action is done (for `replay`, once the copy on the
//! ingest queue is confirmed); every other message is held unacknowledged until the end and then
//! handed back with one `basic.nack` (requeue). Holding them is what stops a message that was handed
//! back from being read again and again, and if the command dies half-way the broker requeues what
//! it held, so reading never loses a message.
//!
//! Bodies hold customers' personal data: only `show`, asked for one message by its id, prints one.

mod letter;
mod list;
mod purge;
mod replay;
mod scan;
mod show;

use std::collections::HashSet;

use anyhow::bail;

use crate::amqp::connection::connect_once;
use crate::config::Settings;

pub use list::ListArgs;
pub use purge::PurgeArgs;
pub use replay::ReplayArgs;
pub use show::ShowArgs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One line per dead-lettered message: id, tenant, dialect, reason, attempts, age, last error.
    /// Never prints a body.
    List(ListArgs),
    /// One message's properties, headers and body (pretty-printed when it is JSON).
    Show(ShowArgs),
    /// Move messages back to the ingest queue, with their original properties and a `replay-count`.
    Replay(ReplayArgs),
    /// Delete messages from the dead-letter queue for good (needs --yes).
    Purge(PurgeArgs),
}

/// Which messages a command applies to; a message must pass every filter given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Only messages with this reason (the `error-code`, or the broker's dead-letter reason such as
    /// `delivery_limit`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only messages whose `tenant` header is this.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Act on at most this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Moving or deleting messages has to name them, or say "all" out loud.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// A message's id (message_id, or the SHA-256 of its body); repeat for several.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every message that passes the filters.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    // Refused before anything is read, so that a forgotten flag costs nothing.
    if let Command::Purge(args) = &command
        && !args.yes
        && !args.dry_run
    {
        bail!(
            "purge deletes messages for good and nothing is deleted without --yes \
             (run it with --dry-run first to see what it would delete)"
        );
    }

    // No automatic recovery: after a lost connection the unacknowledged messages are back in the
    // queue and this run's delivery tags mean nothing; the operator runs the command again.
    let connection = connect_once(&settings.amqp, "customer-ingest dlq").await?;
    let result = match command {
        Command::List(args) => list::run(&settings, &connection, &args).await,
        Command::Show(args) => show::run(&settings, &connection, &args).await,
        Command::Replay(args) => replay::run(&settings, &connection, &args).await,
        Command::Purge(args) => purge::run(&settings, &connection, &args).await,
    };
    let _ = connection.close(200, "done".into()).await;
    result
}

impl Selection {
    /// The ids asked for, or `None` for `--all`.
    fn ids(&self) -> Option<HashSet<String>> {
        (!self.all).then(|| self.ids.iter().cloned().collect())
    }
}
