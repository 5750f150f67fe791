//! Batches: the claim that lets one delivery of a batch work on it at a time, the results its chunks
//! recorded, and the stored reply of a completed batch, which makes a redelivered batch a no-op.

use std::collections::HashMap;

use sqlx::pool::PoolConnection;
use sqlx::{PgExecutor, PgPool, Postgres};

use super::customers::{self, Applied};
use uuid::Uuid;

/// The first key of the advisory locks that claim a batch (two-key locks live apart from the
/// one-key ones of the relay).
pub(super) const CLAIM_CLASS: i32 = 0x4241_5443;

/// A batch claimed by this delivery: a session-level advisory lock on `(tenant, batch_id)`, held on a
/// connection of its own for as long as the batch is worked on. Another delivery of the same batch
/// (a producer's retry, a redelivery, a copy prefetched by another process) waits for it, then finds
/// the batch completed. If this process dies, its connection closes and the claim with it.
pub struct Claim {
    connection: Option<PoolConnection<Postgres>>,
}

/// Claims the batch if no other delivery holds it.
pub async fn try_claim(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
) -> Result<Option<Claim>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let claimed: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2 || chr(31) || $3))")
            .bind(CLAIM_CLASS)
            .bind(tenant)
            .bind(batch_id)
            .fetch_one(&mut *connection)
            .await?;
    Ok(claimed.then_some(Claim {
        connection: Some(connection),
    }))
}

impl Claim {
    /// Lets the next delivery of the batch in. The connection goes back to the pool once its lock is
    /// released; if releasing fails, the connection is closed, which releases it too.
    pub async fn release(mut self, tenant: &str, batch_id: &str) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let released: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT pg_advisory_unlock($1, hashtext($2 || chr(31) || $3))")
                .bind(CLAIM_CLASS)
                .bind(tenant)
                .bind(batch_id)
                .fetch_one(&mut *connection)
                .await;
        if !matches!(released, Ok(true)) {
            tracing::warn!("releasing a batch claim failed; closing its connection instead");
            drop(connection.detach());
        }
    }
}

impl Drop for Claim {
    /// A claim dropped without [`Claim::release`] (a panic, a cancelled task) closes its connection:
    /// the session ends and its lock with it, instead of going back to the pool still held.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            drop(connection.detach());
        }
    }
}

/// What a batch id stood for when it was first applied: its dialect and the SHA-256 of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub dialect: String,
    pub body_sha256: Vec<u8>,
}

/// What a delivery finds of its batch id before it applies anything, read in one query.
pub struct Earlier {
    /// What the batch id stood for when it was first applied, if it was.
    pub fingerprint: Option<Fingerprint>,
    /// The stored reply, if the batch completed.
    pub reply: Option<serde_json::Value>,
    /// What the chunks of an unfinished batch recorded, by key. Results are found by key, never by
    /// position: a redelivery whose records fall into other chunks (a reference now valid, a changed
    /// `pipeline.chunk_size`) still finds what was applied.
    pub recorded: HashMap<String, Applied>,
    /// The next free chunk index.
    pub next_chunk: i32,
}

/// Reads what an earlier delivery left of the batch: its fingerprint, its stored reply and its
/// chunks' results.
pub async fn earlier(pool: &PgPool, tenant: &str, batch_id: &str) -> Result<Earlier, sqlx::Error> {
    #[allow(clippy::type_complexity)]
    let (dialect, body_sha256, reply, next_chunk, keys, ids, versions, actions): (
        Option<String>,
        Option<Vec<u8>>,
        Option<serde_json::Value>,
        i32,
        Option<Vec<String>>,
        Option<Vec<Uuid>>,
        Option<Vec<i64>>,
        Option<Vec<i16>>,
    ) = sqlx::query_as(
        "SELECT f.dialect, f.body_sha256, p.reply,
                (SELECT coalesce(max(chunk_index) + 1, 0) FROM batch_chunks
                 WHERE tenant = $1 AND batch_id = $2) AS next_chunk,
                r.keys, r.ids, r.versions, r.actions
         FROM (SELECT array_agg(u.key) AS keys, array_agg(u.id) AS ids,
                      array_agg(u.version) AS versions, array_agg(u.action) AS actions
               FROM batch_chunks c,
                    unnest(c.keys, c.ids, c.versions, c.actions) AS u(key, id, version, action)
               WHERE c.tenant = $1 AND c.batch_id = $2) AS r
         LEFT JOIN batch_fingerprints f ON f.tenant = $1 AND f.batch_id = $2
         LEFT JOIN processed_batches p ON p.tenant = $1 AND p.batch_id = $2",
    )
    .bind(tenant)
    .bind(batch_id)
    .fetch_one(pool)
    .await?;
    let recorded = customers::recorded(
        keys.unwrap_or_default(),
        ids.unwrap_or_default(),
        versions.unwrap_or_default(),
        actions.unwrap_or_default(),
    )?;
    Ok(Earlier {
        fingerprint: dialect
            .zip(body_sha256)
            .map(|(dialect, body_sha256)| Fingerprint {
                dialect,
                body_sha256,
            }),
        reply,
        recorded: recorded
            .into_iter()
            .map(|applied| (applied.key.clone(), applied))
            .collect(),
        next_chunk,
    })
}

/// Records what the batch id stands for, before anything of it is applied (a no-op if recorded),
/// on its own or within the transaction of `executor`.
pub async fn record_fingerprint<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &str,
    batch_id: &str,
    fingerprint: &Fingerprint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batch_fingerprints (tenant, batch_id, dialect, body_sha256)
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, batch_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(&fingerprint.dialect)
    .bind(&fingerprint.body_sha256)
    .execute(executor)
    .await?;
    Ok(())
}

/// The reply stored for a batch that already completed, if any.
pub async fn completed_reply(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT reply FROM processed_batches WHERE tenant = $1 AND batch_id = $2")
        .bind(tenant)
        .bind(batch_id)
        .fetch_optional(pool)
        .await
}

/// Records the batch as completed with `reply` (and its fingerprint, when no chunk of it did), and
/// drops its per-chunk results. Returns `None` when `reply` was stored; if the batch was completed
/// already, the reply stored then wins and is returned, so every reply of one batch carries the
/// same body. (Under a [`Claim`] that cannot happen; it stays true without one.)
pub async fn complete(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
    fingerprint: &Fingerprint,
    status: &str,
    reply: &(impl serde::Serialize + Sync),
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    record_fingerprint(&mut *tx, tenant, batch_id, fingerprint).await?;
    let inserted = sqlx::query(
        "INSERT INTO processed_batches (tenant, batch_id, dialect, status, reply)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, batch_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(&fingerprint.dialect)
    .bind(status)
    // Serialized straight into the statement, without an intermediate JSON tree.
    .bind(sqlx::types::Json(reply))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query("DELETE FROM batch_chunks WHERE tenant = $1 AND batch_id = $2")
        .bind(tenant)
        .bind(batch_id)
        .execute(&mut *tx)
        .await?;
    let earlier = if inserted {
        None
    } else {
        sqlx::query_scalar(
            "SELECT reply FROM processed_batches WHERE tenant = $1 AND batch_id = $2",
        )
        .bind(tenant)
        .bind(batch_id)
        .fetch_optional(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(earlier)
}
