//! The outbox: customer-state events committed with their change, waiting to be published.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::events::EventType;

/// Any constant works; it names "the relay" among this database's advisory locks.
pub(super) const RELAY_LOCK: i64 = 0x6375_7374_6f75_7462; // "custoutb"

/// One claimed outbox row: the events of one committed chunk, in the order they are published.
#[derive(Debug)]
pub struct PendingChunk {
    /// The outbox row: rows are published in this order, which is commit order per customer.
    pub row: i64,
    pub tenant: String,
    pub batch_id: String,
    /// The W3C trace context of the batch that wrote the row, if it had one.
    pub trace: Option<Trace>,
    pub events: Vec<PendingEvent>,
}

/// A W3C trace context, as the `traceparent` and `tracestate` headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// One event of a claimed outbox row.
#[derive(Debug, serde::Deserialize)]
pub struct PendingEvent {
    pub event_id: Uuid,
    #[serde(rename = "routing_key")]
    pub kind: EventType,
    pub customer_id: Uuid,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    /// The customer document as it is stored: it is copied into the event body as it is.
    pub customer: Box<serde_json::value::RawValue>,
}

/// Oldest-first chunks claimed by this relay. Only one relay, across all processes, holds a claim
/// at a time (a transaction-level advisory lock), so events leave in `id` order, which is version
/// order per customer. Dropping the claim without [`Claim::finish`] releases the events for the
/// next try, which reads the same rows, so the same events and batches go out again.
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    pub chunks: Vec<PendingChunk>,
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
    // A row holds one chunk's events; `limit` events are claimed in whole rows, at least one.
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, String, String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, tenant, batch_id, events::text, traceparent, tracestate FROM outbox
         WHERE id <= (
             SELECT max(id) FROM (
                 SELECT id, sum(event_count) OVER (ORDER BY id) - event_count AS before
                 FROM (SELECT id, event_count FROM outbox ORDER BY id LIMIT 1000) oldest
             ) running
             WHERE before < $1)
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut chunks = Vec::with_capacity(rows.len());
    for (row, tenant, batch_id, text, traceparent, tracestate) in rows {
        let events: Vec<PendingEvent> =
            serde_json::from_str(&text).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        chunks.push(PendingChunk {
            row,
            tenant,
            batch_id,
            trace: traceparent.map(|traceparent| Trace {
                traceparent,
                tracestate,
            }),
            events,
        });
    }
    Ok(Some(Claim { tx, chunks }))
}

impl Claim {
    /// The events claimed, across all chunks.
    pub fn event_count(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.events.len()).sum()
    }

    /// Marks the claimed events done (they were published and confirmed) by deleting them.
    pub async fn finish(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(
                self.chunks
                    .iter()
                    .map(|chunk| chunk.row)
                    .collect::<Vec<i64>>(),
            )
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await
    }
}

/// How many events wait, and how old the oldest is.
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT coalesce(sum(event_count), 0)::bigint, min(created_at) FROM outbox")
        .fetch_one(pool)
        .await
}

/// Whether the outbox row `id` is still waiting to be published.
pub async fn is_pending(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}
