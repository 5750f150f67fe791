//! `dlq purge`: dead letters deleted for good.

use std::collections::HashSet;

use anyhow::Context;
use lapin::Connection;

use super::scan::{Message, Scan, Visit, Visited};
use super::{Filters, Selection};
use crate::cli::text::printable;
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
    let scan = Scan::open(connection, &settings.amqp.dead_letter_queue).await?;
    let mut purge = Purge {
        ids: args.selection.ids(),
        filters: &args.filters,
        dry_run: args.dry_run,
        deleted: 0,
    };
    let result = scan.run(args.filters.limit, &mut purge).await;
    let deleted = purge.deleted;
    if args.dry_run {
        println!("dry run: would delete {deleted}; nothing was deleted");
    } else {
        println!("deleted {deleted}");
    }
    result.map(drop)
}

/// Deletes each selected message.
struct Purge<'a> {
    /// The ids asked for, or `None` for `--all`.
    ids: Option<HashSet<String>>,
    filters: &'a Filters,
    dry_run: bool,
    /// Deleted, or that would be in a dry run.
    deleted: usize,
}

impl Visit for Purge<'_> {
    fn progress(&self) -> Option<String> {
        Some(format!("deleted {}", self.deleted))
    }

    async fn visit(&mut self, message: Message<'_>) -> anyhow::Result<Visited> {
        let letter = &message.letter;
        if !letter.passes(self.filters, self.ids.as_ref()) {
            return Ok(Visited::Passed);
        }
        let id = printable(&letter.id);
        let label = letter.label();
        if self.dry_run {
            self.deleted += 1;
            println!("would delete {id} ({label})");
            return Ok(Visited::Acted);
        }
        message
            .remove()
            .await
            .with_context(|| format!("deleting {id}"))?;
        self.deleted += 1;
        println!("deleted {id} ({label})");
        Ok(Visited::Acted)
    }
}
