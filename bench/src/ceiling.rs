//! The ceiling: how fast Postgres on this machine takes the very documents the worker would store,
//! by a plain `COPY` into a table made by the service's own migrations.

use anyhow::{Context, anyhow, bail};
use customer_ingest::config::{DatabaseSettings, Settings};
use customer_ingest::dialect::{self, Limits};
use customer_ingest::store;
use sqlx::{ConnectOptions, Connection as _};
use tokio::time::Instant;

use crate::cleanup::{Ledger, Leftovers, clean};
use crate::connect::{CALL_PATIENCE, pg_options, with_database, within};
use crate::cpu::{Attribution, CpuWatch};
use crate::pg_sampler::Sampler;
use crate::report::{Ceiling, MIB, per_unit, round};
use crate::rig::START_PATIENCE;
use crate::workload::{DIALECT, TENANT};

/// The ceiling's `COPY` session is named apart from the bench's other sessions (which the session
/// sampler leaves out) because it is what is measured.
const CEILING_APP: &str = "customer-ingest bench ceiling";

/// What the worker stores for a body: each record read by the dialect, exactly as the pipeline
/// reads it, and serialized the way the pipeline serializes it.
fn stored_documents(body: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let dialect = dialect::find(DIALECT).context("the dialect is registered")?;
    let body = std::str::from_utf8(body).context("a generated body is UTF-8")?;
    let records = dialect.parse(
        body,
        Limits {
            max_records: usize::MAX,
        },
    )?;
    records
        .into_iter()
        .map(|record| {
            let key = record.key.context("a generated record has a key")?;
            let customer = record
                .customer
                .map_err(|errors| anyhow!("generated record {key} is invalid: {errors:?}"))?;
            Ok((key, serde_json::to_string(&customer)?))
        })
        .collect()
}

/// Appends `value` as one field of `COPY`'s text format, where backslash starts an escape and tab and
/// newline separate fields and rows.
fn push_copy_text(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(byte),
        }
    }
}

/// `COPY` of the same customers into a fresh `customers` table (the service's own migrations, so the
/// same columns, primary key and unique index), committed. Nothing else touches Postgres meanwhile.
pub async fn ceiling(
    settings: &Settings,
    run_id: &str,
    ledger: &Ledger,
    bodies: &[Vec<u8>],
    deadline: Instant,
) -> anyhow::Result<Ceiling> {
    let name = format!("ingest_bench_{run_id}_ceiling");
    let own = Leftovers {
        databases: vec![name.clone()],
        ..Leftovers::default()
    };
    ledger.record(&own);
    let database = DatabaseSettings {
        url: with_database(settings.database.url(), &name)?.into(),
        ..settings.database.clone()
    };
    within(
        START_PATIENCE,
        "creating the ceiling database",
        store::migrate(&database),
    )
    .await?;

    // The rows are built before the clock starts: the ceiling is what Postgres can take, not how fast
    // the bench can format.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut piece = Vec::with_capacity(1 << 20);
    let mut rows = 0u64;
    for body in bodies {
        for (key, document) in stored_documents(body)? {
            piece.extend_from_slice(uuid::Uuid::now_v7().to_string().as_bytes());
            piece.push(b'\t');
            push_copy_text(&mut piece, TENANT);
            piece.push(b'\t');
            push_copy_text(&mut piece, &key);
            piece.extend_from_slice(b"\t1\t");
            push_copy_text(&mut piece, &document);
            piece.push(b'\n');
            rows += 1;
            if piece.len() >= 1 << 20 {
                pieces.push(std::mem::replace(&mut piece, Vec::with_capacity(1 << 20)));
            }
        }
    }
    pieces.push(piece);
    let copy_bytes: usize = pieces.iter().map(Vec::len).sum();

    let options = pg_options(database.url(), CEILING_APP)?;
    let mut connection = within(CALL_PATIENCE, "connecting to the ceiling database", async {
        Ok(options.connect().await?)
    })
    .await?;
    let sampler = Sampler::start(settings, &name)?;
    let cpu = CpuWatch::start(Attribution {
        workers: Vec::new(),
        database: name.clone(),
    });
    let started = Instant::now();
    let copied = tokio::time::timeout_at(deadline, async {
        let mut tx = connection.begin().await?;
        let mut copy = tx
            .copy_in_raw("COPY customers (id, tenant, key, version, data) FROM STDIN")
            .await?;
        for piece in &pieces {
            copy.send(piece.as_slice()).await?;
        }
        let copied = copy.finish().await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(copied)
    })
    .await
    .map_err(|_| anyhow!("the ceiling COPY did not finish before the phase timeout"))?
    .context("the ceiling COPY")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.finish(seconds).await;
    let postgres_sessions = sampler.finish().await;
    if copied != rows {
        bail!("the ceiling COPY stored {copied} rows of {rows}");
    }
    let _ = connection.close().await;
    clean(settings, &own).await?;
    ledger.forget(&own);
    Ok(Ceiling {
        customers_per_sec: round(rows as f64 / seconds, 0),
        seconds: round(seconds, 3),
        copy_mib: round(copy_bytes as f64 / MIB, 1),
        postgres_us_per_row: cpu.micros_per("postgres", rows).map(|us| round(us, 2)),
        cpu_us_per_row: per_unit(&cpu, rows),
        cpu,
        postgres_sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{SMALL_CUSTOMERS, bulk_body, large_body, small_body};

    #[test]
    fn copy_text_escapes_what_would_split_a_row() {
        let mut out = Vec::new();
        push_copy_text(&mut out, "a\\b\tc\nd\re\"f");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\"f");
    }

    #[test]
    fn generated_bodies_are_read_by_the_dialect_without_errors() {
        let documents = stored_documents(&bulk_body(3, 20, 1)).unwrap();
        assert_eq!(documents.len(), 20);
        assert!(documents[0].1.contains("rev 1"));
        assert_eq!(
            stored_documents(&small_body(1)).unwrap().len(),
            SMALL_CUSTOMERS
        );
        assert_eq!(stored_documents(&large_body(10)).unwrap().len(), 10);
    }
}
