//! The outbox: customer-state events committed with their change, waiting to be published.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Any constant works; it names "the relay" among this database's advisory locks.
const RELAY_LOCK: i64 = 0x6375_7374_6f75_7462; // "custoutb"

#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub tenant: String,
    pub customer_id: Uuid,
    pub version: i64,
    pub batch_id: String,
    pub occurred_at: DateTime<Utc>,
    /// The customer document as JSON text: it is copied into the event body as it is.
    pub customer: String,
}

/// Oldest-first events claimed by this relay. Only one relay, across all processes, holds a claim at
/// a time (a transaction-level advisory lock), so events leave in `id` order, which is version order
/// per customer. Dropping the claim without [`Claim::finish`] releases the events for the next try.
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    pub events: Vec<PendingEvent>,
}

/// Claims up to `limit` pending events, or returns `None` when another relay holds the claim.
pub async fn claim(pool: &PgPool, limit: i64) -> Result<Option<Claim>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let events = sqlx::query_as(
        "SELECT id, event_id, routing_key, tenant, customer_id, version, batch_id, occurred_at,
                customer::text AS customer
         FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Some(Claim { tx, events }))
}

impl Claim {
    /// Marks the claimed events done (they were published and confirmed) by deleting them.
    pub async fn finish(mut self) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = self.events.iter().map(|event| event.id).collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await
    }
}

/// How many events wait, and how old the oldest is.
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*), min(occurred_at) FROM outbox")
        .fetch_one(pool)
        .await
}
