//! The set-based chunk upsert: one transaction per chunk writes the customers, their events and the
//! chunk's results.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::outbox;
use crate::model::Action;

/// One customer of a chunk: the producer's key and the customer document to store.
pub struct ChunkRow {
    pub key: String,
    /// The customer document, serialized once by the pipeline and parsed once by Postgres.
    pub data: String,
}

/// What the chunk did to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub key: String,
    pub id: Uuid,
    pub version: i64,
    pub action: Action,
}

/// How a chunk's rows become the stored documents of customers that exist already.
pub type Merge<'a> = &'a (dyn Fn(serde_json::Value, &ChunkRow) -> String + Sync);

/// Inserts new keys, updates changed ones (bumping `version`) and leaves unchanged ones alone, in one
/// statement; writes one outbox row holding the events of every insert and real update; records
/// the chunk's results for `(tenant, batch_id, chunk_index)`; and commits.
///
/// The caller holds the batch's [`Claim`](super::batches::Claim) and passes only rows whose results
/// are not recorded yet, under a chunk index not used before.
///
/// `rows` must hold each key once; they are applied in key order so that two chunks touching the same
/// customers lock them in the same order.
pub async fn apply_chunk(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
    chunk_index: i32,
    rows: &[ChunkRow],
    merge: Option<Merge<'_>>,
    trace: Option<&outbox::Trace>,
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut order: Vec<&ChunkRow> = rows.iter().collect();
    order.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = order.iter().map(|row| row.key.as_str()).collect();
    let mut merged: Vec<String> = Vec::new();
    if let Some(merge) = merge {
        // Locked until commit, so no other change of these customers slips between read and write.
        let stored: HashMap<String, serde_json::Value> = sqlx::query_as(
            "SELECT key, data FROM customers WHERE tenant = $1 AND key = ANY($2::text[])
             ORDER BY key FOR UPDATE",
        )
        .bind(tenant)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        merged = order
            .iter()
            .map(|row| match stored.get(&row.key) {
                Some(current) => merge(current.clone(), row),
                None => row.data.clone(),
            })
            .collect();
    }
    let data: Vec<&str> = if merge.is_some() {
        merged.iter().map(String::as_str).collect()
    } else {
        order.iter().map(|row| row.data.as_str()).collect()
    };
    let new_ids: Vec<Uuid> = order.iter().map(|_| Uuid::now_v7()).collect();

    // One round trip. `same` finds the records identical to their stored customer first: they are
    // reported as unchanged without being written at all (an ON CONFLICT update, even one whose WHERE
    // rejects it, locks the row and so dirties its page). The rest go through the upsert, which writes
    // an outbox event for every insert and real update.
    let results: Vec<(String, Uuid, i64, bool)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($2::text[], $3::text[], $4::uuid[]) AS t(key, data, new_id)
         ), same AS (
             SELECT c.key, c.id, c.version FROM input i
             JOIN customers c ON c.tenant = $1 AND c.key = i.key
             WHERE c.data = i.data::jsonb
         ), upserted AS (
             INSERT INTO customers AS c (id, tenant, key, version, data)
             SELECT new_id, $1, key, 1, data::jsonb FROM input
             WHERE key NOT IN (SELECT key FROM same)
             ON CONFLICT (tenant, key) DO UPDATE
                 SET data = EXCLUDED.data, version = c.version + 1, updated_at = now()
                 WHERE c.data IS DISTINCT FROM EXCLUDED.data
             RETURNING c.id, c.key, c.version, c.data, c.created_at, c.updated_at
         ), events AS (
             INSERT INTO outbox (tenant, batch_id, event_count, events, traceparent, tracestate)
             SELECT $1, $5, count(*),
                    jsonb_agg(jsonb_build_object(
                        'event_id', md5(id::text || ':' || version)::uuid,
                        'routing_key', CASE WHEN version = 1 THEN 'customer.created'
                                            ELSE 'customer.updated' END,
                        'customer_id', id, 'version', version, 'occurred_at', updated_at,
                        'customer', jsonb_build_object('id', id, 'tenant', $1::text, 'key', key,
                                                       'version', version, 'createdAt', created_at,
                                                       'updatedAt', updated_at) || data)),
                    $6, $7
             FROM upserted
             HAVING count(*) > 0
         )
         SELECT key, id, version, true AS written FROM upserted
         UNION ALL
         SELECT key, id, version, false FROM same",
    )
    .bind(tenant)
    .bind(&keys)
    .bind(&data)
    .bind(&new_ids)
    .bind(batch_id)
    .bind(trace.map(|t| t.traceparent.as_str()))
    .bind(trace.and_then(|t| t.tracestate.as_deref()))
    .fetch_all(&mut *tx)
    .await?;

    let mut applied: Vec<Applied> = results
        .into_iter()
        .map(|(key, id, version, written)| Applied {
            action: match (written, version) {
                (false, _) => Action::Unchanged,
                (true, 1) => Action::Created,
                (true, _) => Action::Updated,
            },
            key,
            id,
            version,
        })
        .collect();
    if applied.len() < rows.len() {
        // Rare: a customer that another transaction stored, identical, after this statement's
        // snapshot was taken. It is reported with that customer's id and version.
        let seen: HashSet<&str> = applied.iter().map(|a| a.key.as_str()).collect();
        let unchanged: Vec<&str> = keys.iter().copied().filter(|k| !seen.contains(k)).collect();
        let stored: Vec<(String, Uuid, i64)> = sqlx::query_as(
            "SELECT key, id, version FROM customers WHERE tenant = $1 AND key = ANY($2::text[])",
        )
        .bind(tenant)
        .bind(&unchanged)
        .fetch_all(&mut *tx)
        .await?;
        applied.extend(stored.into_iter().map(|(key, id, version)| Applied {
            key,
            id,
            version,
            action: Action::Unchanged,
        }));
    }

    sqlx::query(
        "INSERT INTO batch_chunks (tenant, batch_id, chunk_index, results) VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(chunk_index)
    .bind(sqlx::types::Json(&applied))
    .execute(&mut *tx)
    .await?;
    fail::fail_point!("chunk-before-commit", |_| crate::failpoints::crash());
    tx.commit().await?;
    Ok(applied)
}

/// Which of `keys` the tenant has.
pub async fn existing_keys(
    pool: &PgPool,
    tenant: &str,
    keys: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<String> =
        sqlx::query_scalar("SELECT key FROM customers WHERE tenant = $1 AND key = ANY($2::text[])")
            .bind(tenant)
            .bind(keys)
            .fetch_all(pool)
            .await?;
    Ok(found.into_iter().collect())
}

/// The stored documents of the tenant's customers among `ids`.
pub async fn by_ids(
    pool: &PgPool,
    tenant: &str,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, serde_json::Value)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as("SELECT id, data FROM customers WHERE tenant = $1 AND id = ANY($2::uuid[])")
        .bind(tenant)
        .bind(ids)
        .fetch_all(pool)
        .await
}
