//! Completed batches and their replies: what makes a redelivered batch a no-op.

use sqlx::PgPool;

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

/// Records the batch as completed with `reply`, and drops its per-chunk results. Returns `None` when
/// `reply` was stored; if the batch was completed already (by a concurrent delivery of the same
/// message), the reply stored then wins and is returned, so every reply of one batch carries the
/// same body.
pub async fn complete(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
    dialect: &str,
    status: &str,
    reply: &(impl serde::Serialize + Sync),
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO processed_batches (tenant, batch_id, dialect, status, reply)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, batch_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(dialect)
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
