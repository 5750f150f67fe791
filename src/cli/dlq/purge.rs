//! `dlq purge`: dead letters deleted for good.

use anyhow::Context;
use lapin::Connection;

use super::letter::DeadLetter;
use super::scan::DeadLetterQueue;
use super::text::printable;
use super::{Filters, Selection};
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: Filters,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Confirm the deletion: without it nothing is deleted.
    #[arg(long)]
    pub yes: bool,
}

pub(super) async fn run(
    settings: &Settings,
    connection: &Connection,
    args: &PurgeArgs,
) -> anyhow::Result<()> {
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let ids = args.selection.ids();
    let limit = args.filters.limit.unwrap_or(usize::MAX);
    let mut deleted = 0usize;

    let result: anyhow::Result<()> = async {
        while deleted < limit {
            let Some(delivery) = queue.next().await? else {
                break;
            };
            queue.progress(&format!("deleted {deleted}"));
            let letter = DeadLetter::read(&delivery);
            if !letter.passes(&args.filters, ids.as_ref()) {
                continue;
            }
            let id = printable(&letter.id);
            if args.dry_run {
                deleted += 1;
                println!("would delete {id} ({})", letter.label());
                continue;
            }
            queue
                .remove(&delivery)
                .await
                .with_context(|| format!("deleting {id}"))?;
            deleted += 1;
            println!("deleted {id} ({})", letter.label());
        }
        Ok(())
    }
    .await;
    let returned = queue.hand_back().await;
    if args.dry_run {
        println!("dry run: would delete {deleted}; nothing was deleted");
    } else {
        println!("deleted {deleted}");
    }
    result.and(returned)
}
