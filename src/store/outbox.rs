//! The outbox: customer-state events committed with their change, waiting to be published.

use std::ops::Range;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{Encoded, EventType};

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
    /// When the chunk's changes committed (its latest event's time).
    pub occurred_at: DateTime<Utc>,
    /// The chunk's events as one `application/cloudevents-batch+json` body, as the worker that
    /// committed them encoded them.
    pub body: Vec<u8>,
    pub events: Vec<PendingEvent>,
}

/// A W3C trace context, as the `traceparent` and `tracestate` headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// One event of a claimed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub event_id: Uuid,
    pub kind: EventType,
    pub customer_id: Uuid,
    /// Where the event's JSON lies in the row's body.
    pub span: Range<usize>,
}

impl PendingEvent {
    /// The events of a row from its per-event columns, checked against its body.
    pub fn from_columns(
        body: &[u8],
        ends: &[i32],
        ids: &[Uuid],
        kinds: &[i16],
        customer_ids: &[Uuid],
    ) -> Result<Vec<PendingEvent>, String> {
        if ids.len() != ends.len() || kinds.len() != ends.len() || customer_ids.len() != ends.len()
        {
            return Err("an outbox row's event columns differ in length".into());
        }
        let mut start = 1;
        let mut events = Vec::with_capacity(ends.len());
        for (((&end, &event_id), &kind), &customer_id) in
            ends.iter().zip(ids).zip(kinds).zip(customer_ids)
        {
            let end = usize::try_from(end).unwrap_or(0);
            if end < start || end >= body.len() {
                return Err(format!(
                    "an outbox event ends at {end}, outside its row's body"
                ));
            }
            let kind = EventType::from_code(kind)
                .ok_or_else(|| format!("an outbox event has the unknown kind {kind}"))?;
            events.push(PendingEvent {
                event_id,
                kind,
                customer_id,
                span: start..end,
            });
            start = end + 1;
        }
        Ok(events)
    }
}

/// Writes one outbox row holding `events` (at least one): the relay publishes it after every row
/// committed before it.
pub async fn insert(
    conn: &mut PgConnection,
    tenant: &str,
    batch_id: &str,
    trace: Option<&Trace>,
    events: &Encoded,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO outbox (tenant, batch_id, event_count, body, event_ends, event_ids,
                             event_kinds, customer_ids, occurred_at, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now()), $10, $11)
         RETURNING id",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(events.ids.len() as i32)
    .bind(&events.body)
    .bind(&events.ends)
    .bind(&events.ids)
    .bind(&events.kinds)
    .bind(&events.customer_ids)
    .bind(events.time)
    .bind(trace.map(|t| t.traceparent.as_str()))
    .bind(trace.and_then(|t| t.tracestate.as_deref()))
    .fetch_one(conn)
    .await
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
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, tenant, batch_id, occurred_at, body, event_ends, event_ids, event_kinds,
                customer_ids, traceparent, tracestate
         FROM outbox
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
    let chunks = rows
        .into_iter()
        .map(Row::into_chunk)
        .collect::<Result<_, _>>()
        .map_err(|error| sqlx::Error::Decode(error.into()))?;
    Ok(Claimed::Claim(Claim { connection, chunks }))
}

/// An outbox row as claimed.
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant: String,
    batch_id: String,
    occurred_at: DateTime<Utc>,
    body: Vec<u8>,
    event_ends: Vec<i32>,
    event_ids: Vec<Uuid>,
    event_kinds: Vec<i16>,
    customer_ids: Vec<Uuid>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Row {
    fn into_chunk(self) -> Result<PendingChunk, String> {
        let events = PendingEvent::from_columns(
            &self.body,
            &self.event_ends,
            &self.event_ids,
            &self.event_kinds,
            &self.customer_ids,
        )?;
        Ok(PendingChunk {
            row: self.id,
            tenant: self.tenant,
            batch_id: self.batch_id,
            trace: self.traceparent.map(|traceparent| Trace {
                traceparent,
                tracestate: self.tracestate,
            }),
            occurred_at: self.occurred_at,
            body: self.body,
            events,
        })
    }
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
