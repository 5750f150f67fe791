//! The outbox: customer-state events committed with their change, waiting to be published.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
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

/// Oldest-first chunks claimed by this relay, on its own connection. Only one relay, across all
/// processes, holds a claim at a time (a session-level advisory lock on that connection, taken for
/// one claim), so events leave in `id` order, which is commit order per customer. No transaction
/// stays open while the events are published: the rows are read, and deleted in
/// [`Claim::finish`], each in a statement of its own. A claim that is dropped drops its connection
/// too, which ends the session and its lock; the next try reads the same rows, so the same events
/// and batches go out again.
pub struct Claim {
    connection: PgConnection,
    pub chunks: Vec<PendingChunk>,
}

/// What [`claim`] found.
pub enum Claimed {
    /// The lock is this relay's until the claim is finished or released: the oldest events, none
    /// if the outbox is empty.
    Claim(Claim),
    /// Another relay holds the lock and publishes in our place; the connection is handed back.
    Elsewhere(PgConnection),
}

/// Claims up to `limit` pending events on `connection`, the relay's own (a session lock is held on
/// it until the claim ends, so it must not be a pooled connection that others use meanwhile).
pub async fn claim(mut connection: PgConnection, limit: i64) -> Result<Claimed, sqlx::Error> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut connection)
        .await?;
    if !locked {
        return Ok(Claimed::Elsewhere(connection));
    }
    // A row holds one chunk's events; `limit` events are claimed in whole rows, at least one. Rows
    // are not locked: only the holder of the relay lock deletes them, and an erasure that rewrites
    // them takes that lock first.
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, String, String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, tenant, batch_id, events::text, traceparent, tracestate FROM outbox
         WHERE id <= (
             SELECT max(id) FROM (
                 SELECT id, sum(event_count) OVER (ORDER BY id) - event_count AS before
                 FROM (SELECT id, event_count FROM outbox ORDER BY id LIMIT 1000) oldest
             ) running
             WHERE before < $1)
         ORDER BY id",
    )
    .bind(limit)
    .fetch_all(&mut connection)
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
    Ok(Claimed::Claim(Claim { connection, chunks }))
}

impl Claim {
    /// The events claimed, across all chunks.
    pub fn event_count(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.events.len()).sum()
    }

    /// Marks the claimed events done (they were published and confirmed) by deleting them, then
    /// lets go of the relay lock; hands the connection back for the next claim.
    pub async fn finish(mut self) -> Result<PgConnection, sqlx::Error> {
        let rows: Vec<i64> = self.chunks.iter().map(|chunk| chunk.row).collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(rows)
            .execute(&mut self.connection)
            .await?;
        self.release().await
    }

    /// Lets go of the relay lock without marking anything done (nothing was claimed, or publishing
    /// failed: the same events go out on the next try).
    pub async fn release(mut self) -> Result<PgConnection, sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(RELAY_LOCK)
            .execute(&mut self.connection)
            .await?;
        Ok(self.connection)
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
