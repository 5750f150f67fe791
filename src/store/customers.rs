//! The set-based chunk upsert: one transaction per chunk writes the customers, their events and the
//! chunk's results.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use super::batches::Fingerprint;
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

/// A stored reply longer than this leaves the connection that sent it with its buffers shrunk.
const LARGE_STATEMENT: usize = 1 << 20;

/// How a chunk's rows become the stored documents of customers that exist already.
pub type Merge<'a> = &'a (dyn Fn(serde_json::Value, &ChunkRow) -> String + Sync);

/// A chunk of a batch, and what its transaction records about the batch besides its customers.
#[derive(Clone, Copy)]
pub struct Chunk<'a> {
    pub tenant: &'a str,
    pub batch_id: &'a str,
    /// Not used before for this batch.
    pub index: i32,
    /// The trace context the chunk's events continue.
    pub trace: Option<&'a outbox::Trace>,
    /// What the batch id stands for, recorded with the chunk (a no-op if recorded already).
    pub fingerprint: Option<&'a Fingerprint>,
    /// For the batch's last chunk: given what the chunk is about to do to its keys, the batch's
    /// completion, stored with the chunk instead of in a transaction of its own; `None` if the
    /// batch is to be completed apart.
    pub complete: Option<Complete<'a>>,
}

/// Builds a batch's completion from what its last chunk does to each key, or `None` when the
/// batch is to be completed apart.
pub type Complete<'a> = &'a (dyn Fn(&[Applied]) -> Option<Completion> + Sync);

/// A completed batch as stored: its dialect, status and reply, serialized.
pub struct Completion {
    pub dialect: &'static str,
    pub status: &'static str,
    pub reply: String,
}

/// Whether a chunk completed its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// It was not asked to, or its completion could not be built.
    No,
    /// Its reply is stored.
    Stored,
    /// Another delivery had completed the batch already: the reply stored then stands.
    Earlier,
}

/// What one attempt at a chunk came to.
pub enum Outcome {
    /// Written and committed: what the chunk did to each key, in key order, and whether the batch
    /// was completed with it.
    Applied(Vec<Applied>, Completed),
    /// Another transaction created or changed one of the chunk's customers between the chunk's read
    /// and its write: nothing was written, and the chunk is to be read and written again.
    Conflict,
}

/// Inserts new keys, updates changed ones (bumping `version`) and leaves unchanged ones alone; writes
/// one outbox row holding the events of every insert and real update; records the chunk's results
/// for `(tenant, batch_id, chunk_index)`; and commits.
///
/// The stored customers are read first, outside any transaction; the worker then decides what each
/// row does and encodes the events, and one statement writes it all, each update only if the
/// customer is still at the version read (optimistic concurrency). No transaction is open while the
/// worker works: the statement is its own transaction. If another transaction created or changed one
/// of these customers since the read, the statement fails its own check, which undoes all of it, and
/// [`Outcome::Conflict`] is returned.
///
/// The caller holds the batch's [`Claim`](super::batches::Claim) and passes only rows whose results
/// are not recorded yet, under a chunk index not used before.
///
/// `rows` must hold each key once; they are written in key order so that two chunks touching the
/// same customers lock them in the same order.
pub async fn apply_chunk(
    pool: &PgPool,
    chunk: &Chunk<'_>,
    rows: &[ChunkRow],
    merge: Option<Merge<'_>>,
) -> Result<Outcome, sqlx::Error> {
    let Chunk {
        tenant,
        batch_id,
        index: chunk_index,
        trace,
        fingerprint,
        complete,
    } = *chunk;
    let mut order: Vec<&ChunkRow> = rows.iter().collect();
    order.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = order.iter().map(|row| row.key.as_str()).collect();
    let stored = read(pool, tenant, &keys, merge.is_some()).await?;
    fail::fail_point!("chunk-after-read");

    let merged: Vec<String> = match merge {
        Some(merge) => order
            .iter()
            .map(
                |row| match stored.get(&row.key).and_then(|s| s.data.as_ref()) {
                    Some(current) => merge(current.clone(), row),
                    None => row.data.clone(),
                },
            )
            .collect(),
        None => Vec::new(),
    };
    let data: Vec<&str> = if merge.is_some() {
        merged.iter().map(String::as_str).collect()
    } else {
        order.iter().map(|row| row.data.as_str()).collect()
    };
    let hashes: Vec<[u8; 16]> = data.iter().map(|document| hash(document)).collect();
    let same_document = same_documents(pool, tenant, &keys, &data, &stored).await?;

    // Postgres keeps microseconds: the events carry the very time stored.
    let now = Utc::now().trunc_subsecs(6);
    let mut applied = Vec::with_capacity(order.len());
    let mut written = Written::default();
    for (at, key) in keys.iter().enumerate() {
        let (id, version, created_at) = match stored.get(*key) {
            Some(s)
                if s.hash.as_deref() == Some(&hashes[at][..]) || same_document.contains(key) =>
            {
                applied.push(Applied {
                    key: key.to_string(),
                    id: s.id,
                    version: s.version,
                    action: Action::Unchanged,
                });
                continue;
            }
            Some(s) => (s.id, s.version + 1, s.created_at),
            None => (Uuid::now_v7(), 1, now),
        };
        written.push(key, data[at], hashes[at], id, version, created_at);
        applied.push(Applied {
            key: key.to_string(),
            id,
            version,
            action: if version == 1 {
                Action::Created
            } else {
                Action::Updated
            },
        });
    }
    let events = written.encode(tenant, batch_id, trace, now);
    let completion = complete.and_then(|complete| complete(&applied));
    let completing = completion.is_some();
    let (reply, completion) = match completion {
        Some(Completion {
            dialect,
            status,
            reply,
        }) => (Some(reply), Some((dialect, status))),
        None => (None, None),
    };
    let large_reply = reply.as_ref().is_some_and(|r| r.len() > LARGE_STATEMENT);

    fail::fail_point!("chunk-before-commit", |_| crate::failpoints::crash());
    let written_count = written.keys.len() as i64;
    // One statement, committed on its own: no transaction is open between statements.
    let result = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($2::text[], $3::text[], $4::uuid[], $5::bytea[], $6::bigint[])
                 AS t(key, data, id, hash, version)
         ), written AS (
             INSERT INTO customers AS c
                 (id, tenant, key, version, data, data_hash, created_at, updated_at)
             SELECT id, $1, key, version, data::jsonb, hash, $7, $7 FROM input ORDER BY key
             ON CONFLICT (tenant, key) DO UPDATE
                 SET data = EXCLUDED.data, data_hash = EXCLUDED.data_hash,
                     version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
                 WHERE c.id = EXCLUDED.id AND c.version = EXCLUDED.version - 1
             RETURNING 1
         ), events AS (
             INSERT INTO outbox (tenant, batch_id, event_count, body, event_ends, event_ids,
                                 event_kinds, customer_ids, occurred_at, traceparent, tracestate)
             SELECT $1, $8, cardinality($16::uuid[]), $14, $15, $16, $17, $18, $7, $19, $20
             WHERE $14::bytea IS NOT NULL
         ), fingerprint AS (
             INSERT INTO batch_fingerprints (tenant, batch_id, dialect, body_sha256)
             SELECT $1, $8, $22, $23 WHERE $23::bytea IS NOT NULL
             ON CONFLICT (tenant, batch_id) DO NOTHING
         ), results AS (
             INSERT INTO batch_chunks (tenant, batch_id, chunk_index, keys, ids, versions, actions)
             SELECT $1, $8, $9, $2 || $10::text[], $4 || $11::uuid[], $6 || $12::bigint[],
                    $13::smallint[] || $21::smallint[]
             WHERE $24::text IS NULL
         ), completed AS (
             INSERT INTO processed_batches (tenant, batch_id, dialect, status, reply)
             SELECT $1, $8, $25, $26, $24::jsonb WHERE $24::text IS NOT NULL
             ON CONFLICT (tenant, batch_id) DO NOTHING
             RETURNING 1
         ), cleared AS (
             DELETE FROM batch_chunks WHERE tenant = $1 AND batch_id = $8 AND $24::text IS NOT NULL
         )
         SELECT customer_ingest_chunk_written((SELECT count(*) FROM written), $27),
                (SELECT count(*) FROM completed)",
    )
    .bind(tenant)
    .bind(&written.keys)
    .bind(&written.data)
    .bind(&written.ids)
    .bind(&written.hashes)
    .bind(&written.versions)
    .bind(now)
    .bind(batch_id)
    .bind(chunk_index)
    .bind(unchanged_column(&applied, |a| a.key.as_str()))
    .bind(unchanged_column(&applied, |a| a.id))
    .bind(unchanged_column(&applied, |a| a.version))
    .bind(written.actions())
    .bind(events.as_ref().map(|e| &e.body))
    .bind(events.as_ref().map_or(&[][..], |e| &e.ends[..]))
    .bind(events.as_ref().map_or(&[][..], |e| &e.ids[..]))
    .bind(events.as_ref().map_or(&[][..], |e| &e.kinds[..]))
    .bind(events.as_ref().map_or(&[][..], |e| &e.customer_ids[..]))
    .bind(trace.map(|t| t.traceparent.as_str()))
    .bind(trace.and_then(|t| t.tracestate.as_deref()))
    .bind(vec![
        action_code(Action::Unchanged);
        applied.len() - written.keys.len()
    ])
    .bind(fingerprint.map(|f| f.dialect.as_str()))
    .bind(fingerprint.map(|f| &f.body_sha256))
    // Moved, not borrowed: the reply's text is let go once copied into the statement's arguments,
    // rather than held beside them and the connection's buffer while the statement is sent.
    .bind(reply)
    .bind(completion.map(|(dialect, _)| dialect))
    .bind(completion.map(|(_, status)| status))
    .bind(written_count);
    let mut connection = pool.acquire().await?;
    let result: Result<(i64, i64), sqlx::Error> = result.fetch_one(&mut *connection).await;
    if large_reply {
        // The connection's write buffer grew to hold the whole reply; it would otherwise keep that
        // capacity for as long as the connection lives in the pool.
        connection.shrink_buffers();
    }
    drop(connection);
    let stored = match result {
        Ok((_, stored)) => stored,
        // Raised by the statement's own check, which undid it (see the migration that defines
        // `customer_ingest_chunk_written`); a real serialization failure is handled the same way.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("40001") => {
            return Ok(Outcome::Conflict);
        }
        Err(error) => return Err(error),
    };
    let completed = match (completing, stored) {
        (false, _) => Completed::No,
        (true, 0) => Completed::Earlier,
        (true, _) => Completed::Stored,
    };
    Ok(Outcome::Applied(applied, completed))
}

/// A stored customer, as a chunk reads it before writing.
#[derive(sqlx::FromRow)]
struct Stored {
    key: String,
    id: Uuid,
    version: i64,
    hash: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    /// Its document, read for a merge only.
    data: Option<serde_json::Value>,
}

/// The tenant's stored customers among `keys`, by key.
async fn read(
    pool: &PgPool,
    tenant: &str,
    keys: &[&str],
    with_data: bool,
) -> Result<HashMap<String, Stored>, sqlx::Error> {
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT key, id, version, data_hash AS hash, created_at,
                CASE WHEN $3 THEN data END AS data
         FROM customers WHERE tenant = $1 AND key = ANY($2::text[])",
    )
    .bind(tenant)
    .bind(keys)
    .bind(with_data)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.key.clone(), row)).collect())
}

/// The keys of customers stored before hashes were (no `data_hash`) whose document equals the
/// chunk's: compared by Postgres as documents, so that a customer stored by an earlier version is not
/// given a new version for a document serialized differently but equal. (A hashed customer is
/// unchanged when its hash is: the worker serializes a customer always the same way.) Usually none
/// are asked for, and nothing is read.
async fn same_documents<'k>(
    pool: &PgPool,
    tenant: &str,
    keys: &[&'k str],
    data: &[&str],
    stored: &HashMap<String, Stored>,
) -> Result<HashSet<&'k str>, sqlx::Error> {
    let (unhashed, documents): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .zip(data)
        .filter(|(key, _)| stored.get(**key).is_some_and(|s| s.hash.is_none()))
        .map(|(key, document)| (*key, *document))
        .unzip();
    if unhashed.is_empty() {
        return Ok(HashSet::new());
    }
    let same: Vec<String> = sqlx::query_scalar(
        "SELECT c.key FROM UNNEST($2::text[], $3::text[]) AS i(key, data)
         JOIN customers c ON c.tenant = $1 AND c.key = i.key
         WHERE c.data = i.data::jsonb",
    )
    .bind(tenant)
    .bind(&unhashed)
    .bind(&documents)
    .fetch_all(pool)
    .await?;
    Ok(keys
        .iter()
        .copied()
        .filter(|key| same.iter().any(|s| s == key))
        .collect())
}

/// The customers a chunk writes, one element per customer in key order, as the statement binds them.
#[derive(Default)]
struct Written<'a> {
    keys: Vec<&'a str>,
    data: Vec<&'a str>,
    hashes: Vec<[u8; 16]>,
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
}

impl<'a> Written<'a> {
    fn push(
        &mut self,
        key: &'a str,
        document: &'a str,
        hash: [u8; 16],
        id: Uuid,
        version: i64,
        created_at: DateTime<Utc>,
    ) {
        self.keys.push(key);
        self.data.push(document);
        self.hashes.push(hash);
        self.ids.push(id);
        self.versions.push(version);
        self.created_at.push(created_at);
    }

    /// What the chunk records it did to each customer written.
    fn actions(&self) -> Vec<i16> {
        self.versions
            .iter()
            .map(|&version| {
                action_code(if version == 1 {
                    Action::Created
                } else {
                    Action::Updated
                })
            })
            .collect()
    }

    /// The events of the customers written, in key order, all at `now`; `None` when none is.
    fn encode(
        &self,
        tenant: &str,
        batch_id: &str,
        trace: Option<&outbox::Trace>,
        now: DateTime<Utc>,
    ) -> Option<Encoded> {
        if self.keys.is_empty() {
            return None;
        }
        let bytes = self.data.iter().map(|document| document.len()).sum();
        let mut encoder = Encoder::new(tenant, batch_id, trace, self.keys.len(), bytes);
        for at in 0..self.keys.len() {
            let (id, version) = (self.ids[at], self.versions[at]);
            encoder.push(&NewEvent {
                id: event_id(id, version),
                kind: if version == 1 {
                    EventType::Created
                } else {
                    EventType::Updated
                },
                customer_id: id,
                version,
                time: now,
                key: self.keys[at],
                data: Data::Stored {
                    created_at: self.created_at[at],
                    updated_at: now,
                    document: self.data[at],
                },
            });
        }
        Some(encoder.finish())
    }
}

/// One column of the chunk's results for the customers it left unchanged.
fn unchanged_column<'a, T>(applied: &'a [Applied], field: impl Fn(&'a Applied) -> T) -> Vec<T> {
    applied
        .iter()
        .filter(|a| a.action == Action::Unchanged)
        .map(field)
        .collect()
}

/// The id of the event that brings customer `id` to `version`: `md5(id || ':' || version)` as a
/// UUID, stable across redeliveries, so consumers drop duplicates by it.
fn event_id(id: Uuid, version: i64) -> Uuid {
    Uuid::from_bytes(Md5::digest(format!("{id}:{version}")).into())
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

/// The results a chunk recorded, from the arrays [`apply_chunk`] wrote.
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
