//! `status`: what an operator looks at first. The queues (messages waiting, consumers), the outbox
//! (events waiting, the oldest's age), the idempotency tables (size, retention) and each tenant's
//! last completed batch: as a table, or as JSON with `--json`. Prints no customer data.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;

use crate::amqp::connection::connect_once;
use crate::cli::text::{age, printable, shorten};
use crate::config::Settings;
use crate::store::{self, outbox, status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    queues: Vec<QueueStatus>,
    outbox: OutboxStatus,
    idempotency: IdempotencyStatus,
    tenants: Vec<status::LastBatch>,
}

#[derive(Debug, Serialize)]
struct QueueStatus {
    role: &'static str,
    name: String,
    /// `false` when the queue does not exist (then no counts).
    exists: bool,
    messages: Option<u32>,
    consumers: Option<u32>,
}

#[derive(Debug, Serialize)]
struct OutboxStatus {
    pending_events: i64,
    oldest_pending_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct IdempotencyStatus {
    retention_hours: u64,
    tables: Vec<status::TableSize>,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    let (pending_events, oldest_pending_at) =
        outbox::backlog(&pool).await.context("reading the outbox")?;
    let tables = status::bookkeeping(&pool)
        .await
        .context("reading the idempotency tables' sizes")?;
    let tenants = status::last_batches(&pool)
        .await
        .context("reading the last batches")?;
    pool.close().await;
    let queues = queues(&settings).await?;
    let status = Status {
        queues,
        outbox: OutboxStatus {
            pending_events,
            oldest_pending_at,
        },
        idempotency: IdempotencyStatus {
            retention_hours: settings.idempotency.retention_hours,
            tables,
        },
        tenants,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, Utc::now()));
    }
    Ok(())
}

/// Each of the service's queues, by a passive declare: it creates nothing, and a missing queue is
/// reported as such.
async fn queues(settings: &Settings) -> anyhow::Result<Vec<QueueStatus>> {
    let connection = connect_once(&settings.amqp, "customer-ingest status").await?;
    let amqp = &settings.amqp;
    let mut queues = Vec::new();
    for (role, name) in [
        ("ingest", &amqp.ingest_queue),
        ("dead letters", &amqp.dead_letter_queue),
        ("results", &amqp.results_queue),
    ] {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let status = match declared {
            Ok(queue) => QueueStatus {
                role,
                name: name.clone(),
                exists: true,
                messages: Some(queue.message_count()),
                consumers: Some(queue.consumer_count()),
            },
            Err(_) => QueueStatus {
                role,
                name: name.clone(),
                exists: false,
                messages: None,
                consumers: None,
            },
        };
        let _ = channel.close(200, "done".into()).await;
        queues.push(status);
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(queues)
}

/// Longest batch id shown in the tenants table.
const BATCH_ID_CHARS: usize = 40;

fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let queues: Vec<Vec<String>> = status
        .queues
        .iter()
        .map(|q| {
            let count = |n: Option<u32>| n.map_or("missing".to_owned(), |n| n.to_string());
            vec![
                q.role.to_owned(),
                q.name.clone(),
                count(q.messages),
                count(q.consumers),
            ]
        })
        .collect();
    table(
        &mut out,
        &["QUEUE", "NAME", "MESSAGES", "CONSUMERS"],
        &queues,
    );
    let oldest = status
        .outbox
        .oldest_pending_at
        .map_or("-".to_owned(), |at| age(at, now));
    let _ = writeln!(
        out,
        "\noutbox: {} events pending, oldest {oldest}",
        status.outbox.pending_events
    );
    let _ = writeln!(
        out,
        "\nidempotency: kept {} hours",
        status.idempotency.retention_hours
    );
    let tables: Vec<Vec<String>> = status
        .idempotency
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.rows_estimate.map_or("-".to_owned(), |n| format!("~{n}")),
                human_bytes(t.bytes),
            ]
        })
        .collect();
    table(&mut out, &["TABLE", "ROWS", "SIZE"], &tables);
    out.push('\n');
    let tenants: Vec<Vec<String>> = status
        .tenants
        .iter()
        .map(|b| {
            let count = |name: &str| b.counts[name].as_i64().unwrap_or(0).to_string();
            vec![
                b.tenant.clone(),
                shorten(&printable(&b.batch_id), BATCH_ID_CHARS),
                b.dialect.clone(),
                b.status.clone(),
                age(b.completed_at, now),
                count("created"),
                count("updated"),
                count("unchanged"),
                count("failed"),
            ]
        })
        .collect();
    if tenants.is_empty() {
        out.push_str("no completed batch\n");
    } else {
        table(
            &mut out,
            &[
                "TENANT",
                "LAST BATCH",
                "DIALECT",
                "STATUS",
                "AGE",
                "CREATED",
                "UPDATED",
                "UNCHANGED",
                "FAILED",
            ],
            &tenants,
        );
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, heading: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = heading.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let heading: Vec<String> = heading.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&heading).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8_192), "8.2 kB");
        assert_eq!(human_bytes(3_500_000_000), "3.5 GB");
    }
}
