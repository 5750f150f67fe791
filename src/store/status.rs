//! What `customer-ingest status` reads from Postgres: the bookkeeping tables' sizes and each tenant's
//! last completed batch.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The tables that hold per-batch bookkeeping, which the retention sweep keeps in bounds.
pub const BOOKKEEPING_TABLES: [&str; 4] = [
    "processed_batches",
    "batch_chunks",
    "batch_fingerprints",
    "contact_resolutions",
];

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TableSize {
    pub table: String,
    /// Postgres's estimate (from the last analyze), so that a large table is not counted row by row;
    /// `None` before the table was ever analyzed.
    pub rows_estimate: Option<i64>,
    pub bytes: i64,
}

/// The size of every bookkeeping table.
pub async fn bookkeeping(pool: &PgPool) -> Result<Vec<TableSize>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.relname::text AS table,
                CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS rows_estimate,
                pg_total_relation_size(c.oid) AS bytes
         FROM pg_class c
         WHERE c.relname = ANY($1) AND c.relkind = 'r' AND pg_table_is_visible(c.oid)
         ORDER BY array_position($1, c.relname::text)",
    )
    .bind(BOOKKEEPING_TABLES)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct LastBatch {
    pub tenant: String,
    pub batch_id: String,
    pub dialect: String,
    pub status: String,
    pub completed_at: DateTime<Utc>,
    /// The reply's `counts`: total, created, updated, unchanged, failed.
    pub counts: serde_json::Value,
}

/// Each tenant's most recently completed batch, by tenant.
pub async fn last_batches(pool: &PgPool) -> Result<Vec<LastBatch>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (tenant)
                tenant, batch_id, dialect, status, completed_at,
                coalesce(reply -> 'counts', 'null'::jsonb) AS counts
         FROM processed_batches
         ORDER BY tenant, completed_at DESC",
    )
    .fetch_all(pool)
    .await
}
