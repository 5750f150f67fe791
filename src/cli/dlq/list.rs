//! `dlq list`: one line per dead letter, never a body.

use std::fmt::Write as _;
use std::io::Write as _;

use chrono::Utc;
use lapin::Connection;

use super::Filters;
use super::letter::DeadLetter;
use super::scan::DeadLetterQueue;
use super::text::{age, printable, shorten};
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
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let now = Utc::now();
    let mut rows = vec![[
        "ID".to_owned(),
        "TENANT".to_owned(),
        "DIALECT".to_owned(),
        "REASON".to_owned(),
        "ATTEMPTS".to_owned(),
        "AGE".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    let limit = args.filters.limit.unwrap_or(usize::MAX);
    let result: anyhow::Result<()> = async {
        while rows.len() - 1 < limit {
            let Some(delivery) = queue.next().await? else {
                break;
            };
            queue.progress(&format!("listed {}", rows.len() - 1));
            let letter = DeadLetter::read(&delivery);
            if letter.passes(&args.filters, None) {
                rows.push([
                    printable(&letter.id),
                    printable(letter.tenant.as_deref().unwrap_or("-")),
                    printable(letter.dialect.as_deref().unwrap_or("-")),
                    printable(&letter.reason),
                    letter
                        .attempts
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    letter
                        .dead_lettered_at
                        .map_or_else(|| "-".to_owned(), |at| age(at, now)),
                    shorten(
                        &printable(letter.last_error.as_deref().unwrap_or("-")),
                        LIST_ERROR_LIMIT,
                    ),
                ]);
            }
        }
        Ok(())
    }
    .await;
    let read = queue.read;
    let returned = queue.hand_back().await;
    result.and(returned)?;

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
