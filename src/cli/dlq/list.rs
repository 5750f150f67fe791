//! `dlq list`: one line per dead letter, never a body.

use std::fmt::Write as _;
use std::io::Write as _;

use chrono::{DateTime, Utc};
use lapin::Connection;

use super::Filters;
use super::scan::{Message, Scan, Visit, Visited};
use crate::cli::text::{age, printable, shorten};
use crate::config::Settings;

/// `list` cuts the last error here so that one message stays on one line.
const LIST_ERROR_LIMIT: usize = 100;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
}

pub(super) async fn run(
    settings: &Settings,
    connection: &Connection,
    args: &ListArgs,
) -> anyhow::Result<()> {
    let scan = Scan::open(connection, &settings.amqp.dead_letter_queue).await?;
    let mut listing = Listing {
        filters: &args.filters,
        now: Utc::now(),
        rows: vec![[
            "ID".to_owned(),
            "TENANT".to_owned(),
            "DIALECT".to_owned(),
            "REASON".to_owned(),
            "ATTEMPTS".to_owned(),
            "AGE".to_owned(),
            "LAST ERROR".to_owned(),
        ]],
    };
    let read = scan.run(args.filters.limit, &mut listing).await?;
    let rows = listing.rows;

    // The free-text column goes last, so a long error does not push the others out of line.
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            write!(line, "{cell:<width$}  ")?;
        }
        line.push_str(&row[6]);
        writeln!(out, "{}", line.trim_end())?;
    }
    eprintln!(
        "{} listed of {read} read from {}",
        rows.len() - 1,
        settings.amqp.dead_letter_queue
    );
    Ok(())
}

/// The table `list` prints, one row per message that passes the filters after the heading.
struct Listing<'a> {
    filters: &'a Filters,
    now: DateTime<Utc>,
    rows: Vec<[String; 7]>,
}

impl Visit for Listing<'_> {
    fn progress(&self) -> Option<String> {
        Some(format!("listed {}", self.rows.len() - 1))
    }

    async fn visit(&mut self, message: Message<'_>) -> anyhow::Result<Visited> {
        let letter = &message.letter;
        if !letter.passes(self.filters, None) {
            return Ok(Visited::Passed);
        }
        self.rows.push([
            printable(&letter.id),
            printable(letter.tenant.as_deref().unwrap_or("-")),
            printable(letter.dialect.as_deref().unwrap_or("-")),
            printable(&letter.reason),
            letter
                .attempts
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            letter
                .dead_lettered_at
                .map_or_else(|| "-".to_owned(), |at| age(at, self.now)),
            shorten(
                &printable(letter.last_error.as_deref().unwrap_or("-")),
                LIST_ERROR_LIMIT,
            ),
        ]);
        Ok(Visited::Acted)
    }
}
