//! Erasure: a customer deleted on request (the right to erasure), with everything this service keeps
//! of it, in one transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::outbox::{self, PendingEvent, RELAY_LOCK};
use crate::events::{Data, Encoder, EventType, NewEvent};

/// The `batch_id` of the outbox row, and of the event, that announces an erasure: it belongs to no
/// producer's batch.
pub const ERASURE_BATCH_ID: &str = "erasure";

/// What an erasure removed. Identifiers and counts only, never the customer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub customer_id: Uuid,
    /// The version of the `customer.deleted` event: one above the customer's last.
    pub version: i64,
    /// The outbox row holding the `customer.deleted` event; gone once it is published.
    pub outbox_row: i64,
    pub contact_resolutions: u64,
    /// Stored replies that named the customer, and the records removed from them.
    pub replies: u64,
    pub reply_records: u64,
    /// Events of the customer that were still waiting in the outbox, dropped unpublished.
    pub pending_events: u64,
}

/// Rewrites one stored reply without the customer (`key`, `id`): the new reply and how many of its
/// records were removed. An error (a reply this version cannot read) fails the whole erasure.
pub type Scrub<'a> = &'a (
        dyn Fn(
    serde_json::Value,
    &str,
    Uuid,
) -> Result<(serde_json::Value, u64), sqlx::error::BoxDynError>
            + Sync
    );

/// Deletes the tenant's customer with `key`, its contact resolutions, its records in the tenant's
/// stored replies (through `scrub`) and its events still waiting in the outbox, and writes a
/// `customer.deleted` event to the outbox, all in one transaction. `None`, with nothing changed,
/// when the tenant has no customer with that key.
///
/// The customer's row is deleted first, so a chunk writing the same customer at the same time
/// either committed before (its events are dropped here) or waits for this transaction (and then
/// adds the customer anew, as a new customer).
pub async fn erase(
    pool: &PgPool,
    tenant: &str,
    key: &str,
    scrub: Scrub<'_>,
) -> Result<Option<Erased>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(Uuid, i64)> = sqlx::query_as(
        "DELETE FROM customers WHERE tenant = $1 AND key = $2 RETURNING id, version",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((customer_id, last_version)) = deleted else {
        return Ok(None);
    };
    let contact_resolutions =
        sqlx::query("DELETE FROM contact_resolutions WHERE tenant = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let (replies, reply_records) = scrub_replies(&mut tx, tenant, key, customer_id, scrub).await?;
    let pending_events = drop_pending_events(&mut tx, tenant, customer_id).await?;
    let version = last_version + 1;
    // The same event id scheme as every change's event (src/store/customers.rs): unique per
    // customer and version.
    let (event_id, now): (Uuid, DateTime<Utc>) =
        sqlx::query_as("SELECT md5($1::text || ':' || $2)::uuid, now()")
            .bind(customer_id)
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
    let mut encoder = Encoder::new(tenant, ERASURE_BATCH_ID, None, 1, 0);
    encoder.push(&NewEvent {
        id: event_id,
        kind: EventType::Deleted,
        customer_id,
        version,
        time: now,
        key,
        data: Data::Deleted,
    });
    let outbox_row =
        outbox::insert(&mut tx, tenant, ERASURE_BATCH_ID, None, &encoder.finish()).await?;
    tx.commit().await?;
    Ok(Some(Erased {
        customer_id,
        version,
        outbox_row,
        contact_resolutions,
        replies,
        reply_records,
        pending_events,
    }))
}

/// An outbox row holding an event of the customer being erased.
#[derive(sqlx::FromRow)]
struct Pending {
    id: i64,
    body: Vec<u8>,
    event_ends: Vec<i32>,
    event_ids: Vec<Uuid>,
    event_kinds: Vec<i16>,
    customer_ids: Vec<Uuid>,
}

/// Rewrites every stored reply of the tenant that has a record of the customer (by id, or by key
/// for a record that failed), one reply in memory at a time.
async fn scrub_replies(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    key: &str,
    customer_id: Uuid,
    scrub: Scrub<'_>,
) -> Result<(u64, u64), sqlx::Error> {
    let batch_ids: Vec<String> = sqlx::query_scalar(
        "SELECT batch_id FROM processed_batches
         WHERE tenant = $1
           AND (reply->'records' @> jsonb_build_array(jsonb_build_object('id', $2::text))
                OR reply->'records' @> jsonb_build_array(jsonb_build_object('key', $3::text)))
         ORDER BY batch_id
         FOR UPDATE",
    )
    .bind(tenant)
    .bind(customer_id.to_string())
    .bind(key)
    .fetch_all(&mut **tx)
    .await?;
    let mut records = 0;
    for batch_id in &batch_ids {
        let stored: serde_json::Value = sqlx::query_scalar(
            "SELECT reply FROM processed_batches WHERE tenant = $1 AND batch_id = $2",
        )
        .bind(tenant)
        .bind(batch_id)
        .fetch_one(&mut **tx)
        .await?;
        let (scrubbed, removed) = scrub(stored, key, customer_id).map_err(sqlx::Error::Decode)?;
        records += removed;
        sqlx::query("UPDATE processed_batches SET reply = $3 WHERE tenant = $1 AND batch_id = $2")
            .bind(tenant)
            .bind(batch_id)
            .bind(scrubbed)
            .execute(&mut **tx)
            .await?;
    }
    Ok((batch_ids.len() as u64, records))
}

/// Drops the customer's events from the outbox rows still waiting to be published (a row emptied so
/// is deleted).
///
/// Holds the relay's lock until commit first: the relay reads its claim's rows without locking
/// them, so it must not claim rows while they are rewritten here. A claim the relay holds right now
/// is waited for; its rows are then published and gone, and the `customer.deleted` event follows
/// them.
async fn drop_pending_events(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    customer_id: Uuid,
) -> Result<u64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .execute(&mut **tx)
        .await?;
    let rows: Vec<Pending> = sqlx::query_as(
        "SELECT id, body, event_ends, event_ids, event_kinds, customer_ids
         FROM outbox WHERE tenant = $1 AND $2 = ANY(customer_ids)
         ORDER BY id
         FOR UPDATE",
    )
    .bind(tenant)
    .bind(customer_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut dropped = 0;
    for row in rows {
        let events = PendingEvent::from_columns(
            &row.body,
            &row.event_ends,
            &row.event_ids,
            &row.event_kinds,
            &row.customer_ids,
        )
        .map_err(|error| sqlx::Error::Decode(error.into()))?;
        let (gone, kept): (Vec<PendingEvent>, Vec<PendingEvent>) = events
            .into_iter()
            .partition(|event| event.customer_id == customer_id);
        dropped += gone.len() as u64;
        if kept.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = $1")
                .bind(row.id)
                .execute(&mut **tx)
                .await?;
            continue;
        }
        // The kept events' bytes as they were, in a new array.
        let mut body = Vec::with_capacity(row.body.len());
        let mut ends = Vec::with_capacity(kept.len());
        for event in &kept {
            body.push(if ends.is_empty() { b'[' } else { b',' });
            body.extend_from_slice(&row.body[event.span.clone()]);
            ends.push(i32::try_from(body.len()).expect("a row's body is under 2 GiB"));
        }
        body.push(b']');
        sqlx::query(
            "UPDATE outbox SET body = $2, event_ends = $3, event_ids = $4, event_kinds = $5,
                               customer_ids = $6, event_count = $7
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(body)
        .bind(ends)
        .bind(kept.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(kept.iter().map(|e| e.kind.code()).collect::<Vec<_>>())
        .bind(kept.iter().map(|e| e.customer_id).collect::<Vec<_>>())
        .bind(kept.len() as i32)
        .execute(&mut **tx)
        .await?;
    }
    Ok(dropped)
}
