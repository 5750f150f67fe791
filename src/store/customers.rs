//! The set-based chunk upsert: one transaction per chunk writes the customers, their events and the
//! chunk's results.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::outbox;
use crate::events::{Data, Encoded, Encoder, EventType, NewEvent};
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
/// statement; writes one outbox row holding the events of every insert and real update, encoded
/// here from what the statement returned; records the chunk's results for
/// `(tenant, batch_id, chunk_index)`; and commits.
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
    let hashes: Vec<[u8; 16]> = data.iter().map(|document| hash(document)).collect();

    // One round trip. `same` finds the records identical to their stored customer first, by the
    // hash of the serialized document (by the document itself for customers stored before hashes
    // were): they are reported as unchanged without being written at all (an ON CONFLICT update,
    // even one whose WHERE rejects it, locks the row and so dirties its page). The rest go through
    // the upsert, whose WHERE still compares documents, so that a document serialized differently
    // but equal is never a new version.
    let results: Vec<Upserted> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($2::text[], $3::text[], $4::uuid[], $5::bytea[])
                 AS t(key, data, new_id, hash)
         ), same AS (
             SELECT c.key, c.id, c.version, c.created_at, c.updated_at FROM input i
             JOIN customers c ON c.tenant = $1 AND c.key = i.key
             WHERE c.data_hash = i.hash OR (c.data_hash IS NULL AND c.data = i.data::jsonb)
         ), upserted AS (
             INSERT INTO customers AS c (id, tenant, key, version, data, data_hash)
             SELECT new_id, $1, key, 1, data::jsonb, hash FROM input
             WHERE key NOT IN (SELECT key FROM same)
             ON CONFLICT (tenant, key) DO UPDATE
                 SET data = EXCLUDED.data, data_hash = EXCLUDED.data_hash,
                     version = c.version + 1, updated_at = now()
                 WHERE c.data IS DISTINCT FROM EXCLUDED.data
             RETURNING c.key, c.id, c.version, c.created_at, c.updated_at
         )
         SELECT key, id, version, true AS written, created_at, updated_at,
                md5(id::text || ':' || version)::uuid AS event_id
         FROM upserted
         UNION ALL
         SELECT key, id, version, false, created_at, updated_at, NULL FROM same",
    )
    .bind(tenant)
    .bind(&keys)
    .bind(&data)
    .bind(&new_ids)
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;

    let events = encode_events(tenant, batch_id, trace, &keys, &data, &results)?;
    if let Some(events) = events {
        outbox::insert(&mut tx, tenant, batch_id, trace, &events).await?;
    }
    let mut applied: Vec<Applied> = results
        .into_iter()
        .map(|row| Applied {
            action: match (row.written, row.version) {
                (false, _) => Action::Unchanged,
                (true, 1) => Action::Created,
                (true, _) => Action::Updated,
            },
            key: row.key,
            id: row.id,
            version: row.version,
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

    record_results(&mut tx, tenant, batch_id, chunk_index, &applied).await?;
    fail::fail_point!("chunk-before-commit", |_| crate::failpoints::crash());
    tx.commit().await?;
    Ok(applied)
}

/// Records what the chunk did to each key, as one array per field.
async fn record_results(
    conn: &mut PgConnection,
    tenant: &str,
    batch_id: &str,
    chunk_index: i32,
    applied: &[Applied],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batch_chunks (tenant, batch_id, chunk_index, keys, ids, versions, actions)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(chunk_index)
    .bind(applied.iter().map(|a| a.key.as_str()).collect::<Vec<_>>())
    .bind(applied.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(applied.iter().map(|a| a.version).collect::<Vec<_>>())
    .bind(
        applied
            .iter()
            .map(|a| action_code(a.action))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How `batch_chunks.actions` stores what a chunk did to a key.
fn action_code(action: Action) -> i16 {
    match action {
        Action::Created => 0,
        Action::Updated => 1,
        // A chunk records only what it applied; nothing else is stored.
        Action::Unchanged | Action::Failed => 2,
    }
}

/// The results a chunk recorded, from the arrays [`record_results`] wrote.
pub(super) fn recorded(
    keys: Vec<String>,
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    actions: Vec<i16>,
) -> Result<Vec<Applied>, sqlx::Error> {
    if ids.len() != keys.len() || versions.len() != keys.len() || actions.len() != keys.len() {
        return Err(sqlx::Error::Decode(
            "a chunk's recorded results differ in length".into(),
        ));
    }
    keys.into_iter()
        .zip(ids)
        .zip(versions)
        .zip(actions)
        .map(|(((key, id), version), action)| {
            let action = match action {
                0 => Action::Created,
                1 => Action::Updated,
                2 => Action::Unchanged,
                other => {
                    return Err(sqlx::Error::Decode(
                        format!("a chunk recorded the unknown action {other}").into(),
                    ));
                }
            };
            Ok(Applied {
                key,
                id,
                version,
                action,
            })
        })
        .collect()
}

/// One row of the chunk statement: a customer written (inserted or changed) or found unchanged.
#[derive(sqlx::FromRow)]
struct Upserted {
    key: String,
    id: Uuid,
    version: i64,
    written: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Of a written customer: its event's id, `md5(id || ':' || version)`, as every event's id.
    event_id: Option<Uuid>,
}

/// The events of the customers the chunk wrote, in key order (`keys` and `data` are), or `None`
/// when it wrote none. `keys` is sorted.
fn encode_events(
    tenant: &str,
    batch_id: &str,
    trace: Option<&outbox::Trace>,
    keys: &[&str],
    data: &[&str],
    results: &[Upserted],
) -> Result<Option<Encoded>, sqlx::Error> {
    let mut written: Vec<(&Upserted, Uuid, &str)> = results
        .iter()
        .filter(|row| row.written)
        .map(|row| {
            let at = keys.binary_search(&row.key.as_str()).ok();
            match (row.event_id, at) {
                (Some(event_id), Some(at)) => Ok((row, event_id, data[at])),
                _ => Err(sqlx::Error::Protocol(
                    "the upsert returned a customer without its event id or its chunk's key".into(),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    if written.is_empty() {
        return Ok(None);
    }
    written.sort_unstable_by(|a, b| a.0.key.cmp(&b.0.key));
    let bytes = written.iter().map(|(_, _, document)| document.len()).sum();
    let mut encoder = Encoder::new(tenant, batch_id, trace, written.len(), bytes);
    for (row, event_id, document) in written {
        encoder.push(&NewEvent {
            id: event_id,
            kind: if row.version == 1 {
                EventType::Created
            } else {
                EventType::Updated
            },
            customer_id: row.id,
            version: row.version,
            time: row.updated_at,
            key: &row.key,
            data: Data::Stored {
                created_at: row.created_at,
                updated_at: row.updated_at,
                document,
            },
        });
    }
    Ok(Some(encoder.finish()))
}

/// The first 16 bytes of the SHA-256 of a serialized customer document: what `customers.data_hash`
/// holds.
fn hash(document: &str) -> [u8; 16] {
    Sha256::digest(document.as_bytes())[..16]
        .try_into()
        .expect("SHA-256 is longer than 16 bytes")
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
