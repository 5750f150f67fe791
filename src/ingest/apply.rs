//! Applying a batch's valid records chunk by chunk, and the result of every input record.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::anyhow;
use uuid::Uuid;

use crate::codes::FieldCode;
use crate::dialect::Merge;
use crate::model::{Action, Counts, Customer, FieldError, ParsedRecord, RecordResult};
use crate::store::{self, batches, customers, outbox};

use super::retry::Budget;
use super::{BatchError, Ingest};

/// What the result of a record needs once its customer is stored: where it was, its key, and why it
/// failed if it did.
pub(super) struct Outline {
    index: usize,
    key: Option<String>,
    errors: Option<Vec<FieldError>>,
}

/// The batch a set of rows belongs to, and how its rows are written.
pub(super) struct Batch<'a> {
    pub tenant: &'a str,
    pub batch_id: &'a str,
    pub merge: Option<Merge>,
    /// The index of the first chunk this delivery writes: after every chunk an earlier delivery
    /// recorded.
    pub first_chunk: i32,
    /// The trace context the batch's events continue.
    pub trace: Option<outbox::Trace>,
    /// What the batch id stands for, when it is to be recorded with the first chunk that commits;
    /// `None` when it is recorded already.
    pub fingerprint: Option<&'a batches::Fingerprint>,
}

/// Builds the batch's completion from every record's result, or `None` when the batch is to be
/// completed apart.
pub(super) type Finish<'a> = &'a (dyn Fn(&Results<'_>) -> Option<customers::Completion> + Sync);

/// What a chunk did to a key, kept by key for the records' results (the key is the map's).
#[derive(Clone, Copy)]
struct Done {
    id: Uuid,
    version: i64,
    action: Action,
}

impl Done {
    fn of(applied: &customers::Applied) -> Self {
        Done {
            id: applied.id,
            version: applied.version,
            action: applied.action,
        }
    }

    fn result(self, index: usize, key: String) -> RecordResult {
        RecordResult {
            index,
            id: Some(self.id),
            action: self.action,
            version: Some(self.version),
            errors: vec![],
            key: Some(key),
        }
    }
}

/// The rows to store (duplicate keys collapse to their last valid occurrence; the earlier ones report
/// its result; keys whose result an earlier delivery recorded are not stored again) and every
/// record's outline.
pub(super) fn prepare(
    parsed: &[ParsedRecord],
    recorded: &HashMap<String, customers::Applied>,
) -> (Vec<customers::ChunkRow>, Vec<Outline>) {
    let mut last_of_key: HashMap<&str, usize> = HashMap::new();
    for record in parsed {
        if let (Some(key), Ok(_)) = (&record.key, &record.customer) {
            last_of_key.insert(key.as_str(), record.index);
        }
    }
    let mut rows = Vec::with_capacity(last_of_key.len());
    let mut outline = Vec::with_capacity(parsed.len());
    for record in parsed {
        let mut errors = record.customer.as_ref().err().cloned();
        if let (Some(key), Ok(customer)) = (&record.key, &record.customer)
            && last_of_key[key.as_str()] == record.index
            && !recorded.contains_key(key)
        {
            match serde_json::to_string(customer) {
                // Every dialect refuses control characters in what it reads; a field name or
                // text it passed through unchecked fails its record here, not the batch in Postgres.
                Ok(data) if holds_control_character(&data) => {
                    errors = Some(vec![FieldError::new(
                        "",
                        FieldCode::InvalidCharacter,
                        "a field name or text of this record contains a control character",
                    )]);
                }
                Ok(data) => rows.push(customers::ChunkRow {
                    key: key.clone(),
                    data,
                }),
                Err(error) => {
                    tracing::error!(record = record.index, error = %error, "a customer could not be serialized");
                    errors = Some(vec![FieldError::new(
                        "",
                        FieldCode::InternalError,
                        "this record could not be stored",
                    )]);
                }
            }
        }
        outline.push(Outline {
            index: record.index,
            key: record.key.clone(),
            errors,
        });
    }
    (rows, outline)
}

/// Whether serialized JSON holds a control character in a string or a field name: JSON writes them
/// as escapes (`\n`, `\u0000`, ...), never raw.
fn holds_control_character(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'\\') {
        let escape = at + offset + 1;
        match bytes.get(escape) {
            Some(b'b' | b'f' | b'n' | b'r' | b't') => return true,
            Some(b'u') => {
                let hex = bytes.get(escape + 1..escape + 5).unwrap_or_default();
                if let Ok(code) = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or(""), 16)
                    && char::from_u32(code).is_some_and(char::is_control)
                {
                    return true;
                }
            }
            _ => {}
        }
        // Skips the escaped character too, so `\\n` (a backslash, then `n`) is text.
        at = escape + 1;
    }
    false
}

/// Applies the rows chunk by chunk and returns one result per input record: what this delivery
/// applied, or what an earlier delivery recorded for the record's key. The last chunk's transaction
/// also completes the batch, with what `finish` builds from every record's result (known before
/// that chunk is written), so a batch commits once per chunk and no more; whether it did is
/// returned.
pub(super) async fn apply(
    ingest: &Ingest,
    budget: &Budget<'_>,
    batch: Batch<'_>,
    rows: Vec<customers::ChunkRow>,
    outline: Vec<Outline>,
    recorded: HashMap<String, customers::Applied>,
    finish: Finish<'_>,
) -> Result<(Vec<RecordResult>, customers::Completed), BatchError> {
    let Batch {
        tenant,
        batch_id,
        merge,
        first_chunk,
        trace,
        mut fingerprint,
    } = batch;
    let merged = |stored: serde_json::Value, row: &customers::ChunkRow| -> String {
        let (Some(merge), Ok(incoming), Ok(stored)) = (
            merge,
            serde_json::from_str::<Customer>(&row.data),
            serde_json::from_value::<Customer>(stored),
        ) else {
            // A stored document this version cannot read is replaced rather than lost in a merge.
            return row.data.clone();
        };
        serde_json::to_string(&merge(stored, incoming)).unwrap_or_else(|_| row.data.clone())
    };
    let merged: Option<customers::Merge> = merge.is_some().then_some(&merged);

    let chunk_size = ingest.settings.chunk_size.max(1);
    let chunk_count = rows.len().div_ceil(chunk_size);
    // Each chunk's rows in an allocation of their own, let go once the chunk is committed: the
    // documents of a large batch are not all held until its last chunk.
    let chunks: Vec<Vec<customers::ChunkRow>> = {
        let mut rows = rows.into_iter();
        (0..chunk_count)
            .map(|_| rows.by_ref().take(chunk_size).collect())
            .collect()
    };
    let earlier: HashSet<String> = recorded.keys().cloned().collect();
    let rows_count: usize = chunks.iter().map(Vec::len).sum();
    let mut applied: HashMap<String, Done> = HashMap::with_capacity(recorded.len() + rows_count);
    applied.extend(recorded.into_iter().map(|(key, a)| {
        let done = Done::of(&a);
        (key, done)
    }));
    let mut refused: HashMap<String, FieldError> = HashMap::new();
    let mut completed = customers::Completed::No;
    for (chunk_index, chunk) in chunks.into_iter().enumerate() {
        let started = Instant::now();
        let index = i32::try_from(chunk_index)
            .ok()
            .and_then(|i| i.checked_add(first_chunk))
            .ok_or_else(|| BatchError::Failed(anyhow!("chunk {chunk_index} is out of range")))?;
        let complete = |last: &[customers::Applied]| {
            finish(&Results {
                outline: &outline,
                earlier: &earlier,
                applied: &applied,
                last,
                refused: &refused,
            })
        };
        let chunk_of = customers::Chunk {
            tenant,
            batch_id,
            index,
            trace: trace.as_ref(),
            fingerprint,
            complete: (chunk_index + 1 == chunk_count)
                .then_some(&complete as customers::Complete<'_>),
        };
        let result = loop {
            let attempt = Instant::now();
            let outcome = budget
                .run(|| customers::apply_chunk(&ingest.pool, &chunk_of, &chunk, merged))
                .await;
            match outcome {
                Ok(customers::Outcome::Applied(results, done)) => {
                    completed = done;
                    break Ok(results);
                }
                Err(error) => break Err(error),
                // Another transaction changed one of the chunk's customers since it was read: the
                // chunk is read and written again, for as long as the message's retry budget lasts.
                Ok(customers::Outcome::Conflict) => {
                    budget.spend(attempt.elapsed());
                    // Counted as what it is: a serialization failure, found by the worker.
                    ingest
                        .metrics
                        .db_retries
                        .with_label_values(&["40001"])
                        .inc();
                    if budget.remaining().is_zero() {
                        return Err(BatchError::Contended(anyhow!(
                            "other transactions kept changing this batch's customers for the \
                             whole retry budget"
                        )));
                    }
                    tracing::info!(
                        chunk = chunk_index,
                        "customers changed since the chunk was read; reading them again"
                    );
                }
            }
        };
        ingest
            .metrics
            .chunk_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(results) => {
                fail::fail_point!("chunk-after-commit", |_| crate::failpoints::crash());
                ingest.relay.notify_one();
                fingerprint = None;
                applied.extend(results.into_iter().map(|a| {
                    let done = Done::of(&a);
                    (a.key, done)
                }));
            }
            // Still failing when the message's retry budget ran out: an outage or contention.
            Err(error) if store::is_transient(&error) => return Err(error.into()),
            // Postgres refused the chunk itself (a constraint, a value it cannot store): retrying
            // cannot help, and the other chunks are unaffected, so this chunk's records fail.
            Err(error) => {
                let code = store::sqlstate(&error).unwrap_or_default();
                let error_id = Uuid::now_v7();
                tracing::error!(%error_id, chunk = chunk_index, sqlstate = %code, error = %error, "the database refused a chunk");
                let failure = FieldError::new(
                    "",
                    FieldCode::StorageError,
                    format!(
                        "the database refused this record's chunk; error id {error_id} is in the service's log"
                    ),
                );
                for row in chunk {
                    refused.insert(row.key, failure.clone());
                }
            }
        }
        if chunk_count > 1 && (chunk_index + 1) % 20 == 0 {
            tracing::info!(chunk = chunk_index + 1, of = chunk_count, "batch progress");
        }
    }

    // The results the stored reply was made of (the last chunk's are in `applied` now), each
    // taking its outline's key rather than a copy of it.
    let results = Results {
        outline: &[],
        earlier: &earlier,
        applied: &applied,
        last: &[],
        refused: &refused,
    };
    let records = outline
        .into_iter()
        .map(|record| results.of(record))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, completed))
}

/// Every record's result: what this delivery applied (in `applied`, or in `last`, a chunk's
/// results in key order), what an earlier delivery recorded, or why the record failed. Each result
/// is made when it is asked for, so that a large batch's results need not all be held at once.
pub(super) struct Results<'a> {
    outline: &'a [Outline],
    earlier: &'a HashSet<String>,
    applied: &'a HashMap<String, Done>,
    last: &'a [customers::Applied],
    refused: &'a HashMap<String, FieldError>,
}

impl Results<'_> {
    /// Every record's result, in the batch's order.
    pub fn iter(&self) -> impl Iterator<Item = Result<RecordResult, BatchError>> + '_ {
        self.outline.iter().map(|record| {
            self.of(Outline {
                index: record.index,
                key: record.key.clone(),
                errors: record.errors.clone(),
            })
        })
    }

    /// How many records came to each action.
    pub fn counts(&self) -> Result<Counts, BatchError> {
        self.iter()
            .try_fold(Counts::default(), |mut counts, record| {
                counts.add(record?.action);
                Ok(counts)
            })
    }

    fn find(&self, key: &str) -> Option<Done> {
        match self.last.binary_search_by(|a| a.key.as_str().cmp(key)) {
            Ok(at) => Some(Done::of(&self.last[at])),
            Err(_) => self.applied.get(key).copied(),
        }
    }

    /// The result of one record, made of its outline.
    fn of(&self, record: Outline) -> Result<RecordResult, BatchError> {
        match (record.key, record.errors) {
            // A record refused now whose key an earlier delivery applied (a reference since deleted)
            // reports what was done.
            (Some(key), Some(_)) if self.earlier.contains(&key) => {
                let done = self.applied[&key];
                Ok(done.result(record.index, key))
            }
            (key, Some(errors)) => Ok(RecordResult::failed(record.index, key, errors)),
            (Some(key), None) => match (self.find(&key), self.refused.get(&key)) {
                (Some(done), _) => Ok(done.result(record.index, key)),
                (None, Some(failure)) => Ok(RecordResult::failed(
                    record.index,
                    Some(key),
                    vec![failure.clone()],
                )),
                // The recorded results of an earlier delivery name other keys than this one's
                // records: the message is retried, and dead-lettered with this reason at its
                // delivery limit, rather than answered with a result that is not true.
                (None, None) => Err(BatchError::Failed(anyhow!(
                    "record {} was neither applied nor refused",
                    record.index
                ))),
            },
            (None, None) => Err(BatchError::Failed(anyhow!(
                "record {} is valid but has no key",
                record.index
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::holds_control_character;

    #[test]
    fn control_characters_are_found_in_serialized_text_and_field_names() {
        let with = |value: serde_json::Value| holds_control_character(&value.to_string());
        assert!(with(serde_json::json!({"a\u{0}": 1})));
        assert!(with(serde_json::json!({"a": "line\nbreak"})));
        assert!(!with(
            serde_json::json!({"a": "back\\nslash", "b": "é \"quoted\""})
        ));
        assert!(!with(serde_json::json!({"a": "\u{2028}"})));
    }
}
