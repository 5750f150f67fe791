//! The outbox: customer-state events committed with their change, waiting to be published.

use std::ops::Range;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
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
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let chunks = rows
        .into_iter()
        .map(Row::into_chunk)
        .collect::<Result<_, _>>()
        .map_err(|error| sqlx::Error::Decode(error.into()))?;
    Ok(Some(Claim { tx, chunks }))
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
