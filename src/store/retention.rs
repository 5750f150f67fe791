//! Retention: how long what a batch leaves behind is kept.
//!
//! A completed batch leaves its stored reply (`processed_batches`: its customers' ids and keys and,
//! in some dialects, their data) and its fingerprint (`batch_fingerprints`). A batch that never
//! completed (dead-lettered, or abandoned by its producer) leaves its fingerprint, its chunks'
//! results (`batch_chunks`) and, when matched by contact, its contact resolutions (whose values are
//! personal data). [`sweep`] removes all of it once older than the retention
//! (`idempotency.retention_hours`), a bounded number of rows per statement so that no statement
//! holds its locks for long.
//!
//! What that means for a producer: a batch whose stored reply is gone is forgotten. A delivery of
//! it after that is a new batch, applied again and answered anew; the retention must be longer
//! than any redelivery a producer or operator may still cause.
//!
//! Two rules keep the sweep from changing what a delivery sees:
//!
//! - A batch is never touched while a delivery works on it. Each statement takes, for every row
//!   it would remove, the batch's claim (the advisory lock of
//!   [`try_claim`](super::batches::try_claim)) as a transaction-level lock, and skips the rows of a
//!   batch whose claim is held. Past the retention a batch's first deliveries are long over (one
//!   delivery lasts at most the broker's consumer timeout), but a dead letter replayed days later
//!   is worked on while its old bookkeeping is still there: the lock keeps the two apart. Either
//!   the sweep removes the bookkeeping first and the delivery then starts afresh, or the delivery
//!   holds the claim and the sweep leaves that batch to its next round.
//! - A fingerprint outlives its batch's stored reply: a stored reply without a fingerprint would be
//!   sent back to any body under that id (the rule for batches stored before fingerprints were).
//!   So stored replies go first, and a fingerprint stays while its batch has one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::batches::CLAIM_CLASS;

/// Rows removed per statement. Each statement also holds one advisory lock per batch among them
/// until it commits, in Postgres's shared lock table (6,400 slots by default); 500 leaves room for
/// everything else.
const ROWS_PER_STATEMENT: i64 = 500;

/// Rows removed by one sweep, by table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub processed_batches: u64,
    pub batch_fingerprints: u64,
    pub batch_chunks: u64,
    pub contact_resolutions: u64,
}

impl Removed {
    /// Each table's name and how many of its rows were removed, for logs and metrics.
    pub fn by_table(&self) -> [(&'static str, u64); 4] {
        [
            ("processed_batches", self.processed_batches),
            ("batch_fingerprints", self.batch_fingerprints),
            ("batch_chunks", self.batch_chunks),
            ("contact_resolutions", self.contact_resolutions),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_table().iter().map(|(_, rows)| rows).sum()
    }
}

/// One table of batch bookkeeping: when its rows were written, and what else names a row besides
/// its batch.
struct Table {
    name: &'static str,
    written: &'static str,
    row: Option<&'static str>,
    /// What else a row must satisfy to go.
    only_if: &'static str,
}

/// In the order they are swept: see the module's rules.
const TABLES: [Table; 4] = [
    Table {
        name: "processed_batches",
        written: "completed_at",
        row: None,
        only_if: "",
    },
    Table {
        name: "batch_fingerprints",
        written: "started_at",
        row: None,
        only_if: "AND NOT EXISTS (SELECT 1 FROM processed_batches p
                                  WHERE p.tenant = t.tenant AND p.batch_id = t.batch_id)",
    },
    Table {
        name: "batch_chunks",
        written: "recorded_at",
        row: Some("chunk_index"),
        only_if: "",
    },
    Table {
        name: "contact_resolutions",
        written: "resolved_at",
        row: Some("record_index"),
        only_if: "",
    },
];

impl Table {
    /// Removes up to `$2` rows written before `$1`, skipping those of batches whose claim (class
    /// `$3`) is held. `expired` is cut (and locked, skipping rows another sweep has taken) before
    /// any claim is tried, so a statement tries at most `$2` claims; both steps are materialized so
    /// that the planner cannot try claims on rows the limit leaves out.
    fn statement(&self) -> String {
        let Table {
            name,
            written,
            row,
            only_if,
        } = self;
        let (row_column, row_match) = match row {
            Some(column) => (
                format!(", {column}"),
                format!(" AND t.{column} = u.{column}"),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "WITH expired AS MATERIALIZED (
                 SELECT tenant, batch_id{row_column} FROM {name} t
                 WHERE {written} < $1 {only_if}
                 ORDER BY {written}
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), unclaimed AS MATERIALIZED (
                 SELECT * FROM expired
                 WHERE pg_try_advisory_xact_lock($3, hashtext(tenant || chr(31) || batch_id))
             )
             DELETE FROM {name} t USING unclaimed u
             WHERE t.tenant = u.tenant AND t.batch_id = u.batch_id{row_match}"
        )
    }
}

/// Removes the bookkeeping of every batch completed, or last written to, more than `retention`
/// ago, and returns how many rows went from each table.
pub async fn sweep(pool: &PgPool, retention: Duration) -> Result<Removed, sqlx::Error> {
    let retention = chrono::Duration::from_std(retention)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    let before: DateTime<Utc> = Utc::now() - retention;
    let mut removed = [0u64; 4];
    for (table, count) in TABLES.iter().zip(&mut removed) {
        let statement = table.statement();
        loop {
            // Each statement is its own transaction: its row locks and claims end with it.
            let rows = sqlx::query(&statement)
                .bind(before)
                .bind(ROWS_PER_STATEMENT)
                .bind(CLAIM_CLASS)
                .execute(pool)
                .await?
                .rows_affected();
            *count += rows;
            if rows == 0 {
                break;
            }
        }
    }
    let [
        processed_batches,
        batch_fingerprints,
        batch_chunks,
        contact_resolutions,
    ] = removed;
    Ok(Removed {
        processed_batches,
        batch_fingerprints,
        batch_chunks,
        contact_resolutions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_swept_by_the_column_the_migration_indexes() {
        let migration = include_str!("../../migrations/20261125000001_retention.sql");
        for table in &TABLES {
            let index = format!("ON {} ({})", table.name, table.written);
            assert!(migration.contains(&index), "no index {index}");
        }
    }

    #[test]
    fn stored_replies_are_swept_before_fingerprints() {
        let position = |name: &str| TABLES.iter().position(|t| t.name == name).unwrap();
        assert!(position("processed_batches") < position("batch_fingerprints"));
    }
}
