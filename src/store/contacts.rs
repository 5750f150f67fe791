//! Contact resolution: before a batch whose records carry no key is applied, every valid record is
//! given the key of the customer its contact details find, or a new key, by the
//! [`Resolver`] of [`crate::matching`].
//!
//! Records are resolved in order, a few hundred per transaction. Each transaction first takes a
//! transaction-level advisory lock on every contact value of its records (sorted, so two batches
//! never wait on each other in a cycle), then reads the customers that share those values, decides,
//! and records its decisions in `contact_resolutions` before it commits. A batch that resolves the
//! same value later waits for that commit and then finds what the first one decided, even before the
//! first one's chunk is applied: so two batches adding the same new email at once end with one
//! customer. The recorded decisions are also what a redelivered batch replays, so its records keep
//! the keys (and its chunks the layout) of the first delivery.
//!
//! Customers are found by the values the engine keeps in the stored document, under `extra` by the
//! names in [`crate::matching::extra`]; this module reads no other key of a customer document.

use std::collections::HashMap;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::codes::FieldCode;
use crate::matching::{self, Candidate, Contact, Contacts, Decision, Resolver, Rules, new_key};
use crate::model::{Customer, FieldError, ParsedRecord};

/// Records resolved per transaction. Each holds an advisory lock per distinct contact value (up to
/// three per record) until it commits, and Postgres keeps those in its shared lock table
/// (`max_locks_per_transaction` × connections: 6,400 slots by default): 200 records take at most
/// 600, which leaves room for every connection of several workers at once.
const RECORDS_PER_TRANSACTION: usize = 200;

/// The first key of this module's advisory locks. Locks taken with two keys live apart from those
/// taken with one (the chunk locks of [`super::customers`]), so the two never collide.
const LOCK_CLASS: i32 = 0x4d42_4331;

/// The records of a batch with the key of the customer each one adds or updates (and the document
/// to write), or refused (ambiguous, or refused by a Require* rule). Records that failed to parse
/// are returned as they came.
pub async fn resolve(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
    rules: &Rules,
    parsed: &[ParsedRecord],
) -> Result<Vec<ParsedRecord>, sqlx::Error> {
    let mut resolver = Resolver::new(*rules);
    forget_completed(pool, tenant).await?;
    let mut recorded = recorded_decisions(pool, tenant, batch_id, None).await?;
    let mut resolved = Vec::with_capacity(parsed.len());
    let mut tally = Tally::default();

    for chunk in chunks(parsed, RECORDS_PER_TRANSACTION) {
        let valid = || chunk.iter().filter(|record| record.customer.is_ok());
        let fresh: Vec<Contacts> = valid()
            .filter(|record| !recorded.contains_key(&record.index))
            .filter_map(|record| record.customer.as_ref().ok().map(Contacts::of))
            .collect();
        // A chunk whose records all have recorded decisions replays them without a transaction.
        let mut tx = None;
        if !fresh.is_empty() {
            let mut open = pool.begin().await?;
            lock(&mut open, tenant, &fresh).await?;
            // Another delivery of this batch may have resolved these records while this one waited.
            let indexes = valid()
                .map(|record| to_i32(record.index))
                .collect::<Result<Vec<i32>, _>>()?;
            recorded
                .extend(recorded_decisions(&mut *open, tenant, batch_id, Some(&indexes)).await?);
            resolver.set_candidates(candidates(&mut open, tenant, batch_id, &fresh).await?);
            tx = Some(open);
        }
        let mut rows = Rows::default();
        for record in chunk {
            let customer = match &record.customer {
                Ok(customer) => customer,
                Err(errors) => {
                    resolved.push(ParsedRecord {
                        index: record.index,
                        key: record.key.clone(),
                        customer: Err(errors.clone()),
                        references: record.references.clone(),
                    });
                    continue;
                }
            };
            let decision = match recorded.get(&record.index) {
                Some(decision) => decision.clone(),
                None => {
                    let decision =
                        resolver.decide(customer, || new_key(tenant, batch_id, record.index));
                    rows.push(record.index, &decision, customer)?;
                    decision
                }
            };
            tally.count(&decision);
            let (key, customer) = match resolver.settle(customer, &decision) {
                Ok((key, customer)) => (Some(key), Ok(customer)),
                Err(errors) => (None, Err(errors)),
            };
            resolved.push(ParsedRecord {
                index: record.index,
                key,
                customer,
                references: record.references.clone(),
            });
        }
        if let Some(mut tx) = tx {
            rows.insert(&mut tx, tenant, batch_id).await?;
            tx.commit().await?;
        }
    }
    tracing::info!(
        added = tally.added,
        updated = tally.updated,
        refused = tally.refused,
        "records matched by contact"
    );
    Ok(resolved)
}

/// `parsed` cut, in order, into runs holding at most `per_chunk` valid records each (and the
/// failed records among them, which are passed through).
fn chunks(parsed: &[ParsedRecord], per_chunk: usize) -> impl Iterator<Item = &[ParsedRecord]> {
    let per_chunk = per_chunk.max(1);
    let mut rest = parsed;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut valid = 0;
        let end = rest
            .iter()
            .position(|record| {
                valid += usize::from(record.customer.is_ok());
                valid > per_chunk
            })
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[derive(Default)]
struct Tally {
    added: usize,
    updated: usize,
    refused: usize,
}

impl Tally {
    fn count(&mut self, decision: &Decision) {
        match decision {
            Decision::Add { .. } => self.added += 1,
            Decision::Update { .. } => self.updated += 1,
            Decision::Refused(_) => self.refused += 1,
        }
    }
}

/// A record's position as stored. Positions are bounded by `max_records`; one beyond `i32` fails
/// the batch rather than being stored as another record's.
fn to_i32(index: usize) -> Result<i32, sqlx::Error> {
    i32::try_from(index).map_err(|_| {
        sqlx::Error::Encode(
            format!("record position {index} does not fit a Postgres integer").into(),
        )
    })
}

/// Drops the decisions of the tenant's batches that have completed: their customers are stored and
/// their replies are answered from `processed_batches`.
async fn forget_completed(pool: &PgPool, tenant: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM contact_resolutions r USING processed_batches p
         WHERE r.tenant = $1 AND p.tenant = r.tenant AND p.batch_id = r.batch_id",
    )
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(())
}

/// The decisions recorded for this batch (for the records at `indexes`, or all of them).
async fn recorded_decisions<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    tenant: &str,
    batch_id: &str,
    indexes: Option<&[i32]>,
) -> Result<HashMap<usize, Decision>, sqlx::Error> {
    type Row = (
        i32,
        Option<String>,
        bool,
        Option<String>,
        Option<serde_json::Value>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT record_index, key, adds, location_id, errors FROM contact_resolutions
         WHERE tenant = $1 AND batch_id = $2
           AND ($3::integer[] IS NULL OR record_index = ANY($3::integer[]))",
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(indexes)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(index, key, adds, location, errors)| {
            let decision = match (key, errors) {
                (Some(key), None) if adds => Decision::Add { key, location },
                (Some(key), None) => Decision::Update { key, location },
                (_, errors) => Decision::Refused(
                    errors
                        .and_then(|errors| serde_json::from_value(errors).ok())
                        .unwrap_or_else(|| {
                            vec![FieldError::new(
                                "",
                                FieldCode::Refused,
                                "the record was refused when this batch was first delivered",
                            )]
                        }),
                ),
            };
            (index as usize, decision)
        })
        .collect())
}

/// Waits for, and holds until commit, a lock on every contact value of `contacts` in the tenant.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    contacts: &[Contacts],
) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i32> = contacts
        .iter()
        .flat_map(|c| {
            Contact::ALL
                .into_iter()
                .filter_map(|contact| Some(lock_key(tenant, contact, c.get(contact)?)))
        })
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    // Always in ascending order, so that two transactions wanting some of the same values queue
    // behind each other rather than deadlock.
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::integer[]) AS k")
        .bind(LOCK_CLASS)
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A value's lock. Two values that share one only wait for each other needlessly.
fn lock_key(tenant: &str, contact: Contact, value: &str) -> i32 {
    let digest = Sha256::new()
        .chain_update(tenant)
        .chain_update([0x1f, contact as u8, 0x1f])
        .chain_update(value)
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Where a customer document (`customers.data`, a [`Customer`]) keeps one of the engine's values:
/// under `extra`, by its name in [`matching::extra`].
fn extra_path(name: &str) -> String {
    format!("data #>> '{{extra,{name}}}'")
}

/// The query of [`candidates`]. Its paths are spelled exactly as migration
/// `20261123000002_contact_matching.sql` indexes them, so that the indexes serve it.
static CANDIDATES: LazyLock<String> = LazyLock::new(|| {
    let [email, code, cell] = Contact::ALL.map(|contact| extra_path(contact.extra_key()));
    let location = extra_path(matching::extra::LOCATION_ID);
    format!(
        "WITH found AS (
             SELECT id FROM customers WHERE tenant = $1 AND {email} = ANY($2::text[])
             UNION
             SELECT id FROM customers WHERE tenant = $1 AND {code} = ANY($3::text[])
             UNION
             SELECT id FROM customers WHERE tenant = $1 AND {cell} = ANY($4::text[])
         )
         SELECT c.id, c.key, c.{location}, c.{email}, c.{code}, c.{cell}
         FROM customers c JOIN found USING (id)
         UNION ALL
         SELECT c.id, r.key, r.location_id, r.email, r.customer_code, r.cell_phone
         FROM contact_resolutions r
         LEFT JOIN customers c ON c.tenant = r.tenant AND c.key = r.key
         WHERE r.tenant = $1 AND r.batch_id <> $5 AND r.key IS NOT NULL
           AND (r.email = ANY($2::text[]) OR r.customer_code = ANY($3::text[])
                OR r.cell_phone = ANY($4::text[]))
           AND NOT EXISTS (SELECT 1 FROM processed_batches p
                           WHERE p.tenant = r.tenant AND p.batch_id = r.batch_id)
           -- An add is a claim until its customer is stored (then the customer speaks for itself);
           -- an update, for an hour at most: a batch that never completes cannot hold a value.
           AND CASE WHEN r.adds THEN c.id IS NULL
                    ELSE r.resolved_at > now() - interval '1 hour' END"
    )
});

/// The customers of the tenant that have any of the contact values of `contacts`, and those other
/// batches in flight have decided to add or give such a value (their claims).
async fn candidates(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    batch_id: &str,
    contacts: &[Contacts],
) -> Result<Vec<Candidate>, sqlx::Error> {
    let values = |contact: Contact| -> Vec<&str> {
        contacts.iter().filter_map(|c| c.get(contact)).collect()
    };
    type Row = (
        Option<Uuid>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(&CANDIDATES)
        .bind(tenant)
        .bind(values(Contact::Email))
        .bind(values(Contact::CustomerCode))
        .bind(values(Contact::CellPhone))
        .bind(batch_id)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, key, location, email, code, cell)| Candidate {
            id,
            key,
            contacts: Contacts {
                location,
                values: [email, code, cell],
            },
        })
        .collect())
}

/// New decisions, column by column, for one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
struct Rows {
    indexes: Vec<i32>,
    keys: Vec<Option<String>>,
    adds: Vec<bool>,
    locations: Vec<Option<String>>,
    values: [Vec<Option<String>>; 3],
    errors: Vec<Option<String>>,
}

impl Rows {
    fn push(
        &mut self,
        index: usize,
        decision: &Decision,
        customer: &Customer,
    ) -> Result<(), sqlx::Error> {
        let contacts = Contacts::of(customer);
        let (key, adds, location, errors) = match decision {
            Decision::Add { key, location } => (Some(key), true, location.clone(), None),
            Decision::Update { key, location } => (Some(key), false, location.clone(), None),
            Decision::Refused(errors) => (
                None,
                false,
                None,
                // A refusal whose errors cannot be written is replayed as a refusal without them.
                serde_json::to_string(errors).ok(),
            ),
        };
        self.indexes.push(to_i32(index)?);
        self.keys.push(key.cloned());
        self.adds.push(adds);
        self.locations.push(location);
        for contact in Contact::ALL {
            // A refused record claims nothing.
            let value = key.and_then(|_| contacts.get(contact)).map(str::to_owned);
            self.values[contact as usize].push(value);
        }
        self.errors.push(errors);
        Ok(())
    }

    async fn insert(
        self,
        tx: &mut Transaction<'_, Postgres>,
        tenant: &str,
        batch_id: &str,
    ) -> Result<(), sqlx::Error> {
        if self.indexes.is_empty() {
            return Ok(());
        }
        let [emails, codes, cells] = self.values;
        sqlx::query(
            "INSERT INTO contact_resolutions
                 (tenant, batch_id, record_index, key, adds, location_id, email, customer_code,
                  cell_phone, errors)
             SELECT $1, $2, i, k, a, l, e, c, p, x::jsonb
             FROM UNNEST($3::integer[], $4::text[], $5::boolean[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[]) AS t(i, k, a, l, e, c, p, x)
             ON CONFLICT (tenant, batch_id, record_index) DO NOTHING",
        )
        .bind(tenant)
        .bind(batch_id)
        .bind(&self.indexes)
        .bind(&self.keys)
        .bind(&self.adds)
        .bind(&self.locations)
        .bind(&emails)
        .bind(&codes)
        .bind(&cells)
        .bind(&self.errors)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldError;

    fn record(index: usize, valid: bool) -> ParsedRecord {
        let customer = if valid {
            Ok(Customer::default())
        } else {
            Err(vec![FieldError::new(
                "Email",
                FieldCode::InvalidEmail,
                "bad",
            )])
        };
        ParsedRecord::new(index, None, customer)
    }

    #[test]
    fn chunks_hold_at_most_so_many_valid_records_and_keep_every_record_in_order() {
        let validity = [false, true, true, false, true, false, false, true, false];
        let parsed: Vec<ParsedRecord> = validity
            .iter()
            .enumerate()
            .map(|(index, valid)| record(index, *valid))
            .collect();
        let runs: Vec<Vec<usize>> = chunks(&parsed, 2)
            .map(|chunk| chunk.iter().map(|record| record.index).collect())
            .collect();
        assert_eq!(runs, [vec![0, 1, 2, 3], vec![4, 5, 6, 7, 8]]);
        assert_eq!(chunks(&[], 2).count(), 0);
        let failed = [record(0, false), record(1, false)];
        assert_eq!(chunks(&failed, 2).count(), 1);
    }

    #[test]
    fn the_candidate_query_reads_the_paths_the_migration_indexes() {
        let migration = include_str!("../../migrations/20261123000002_contact_matching.sql");
        for contact in Contact::ALL {
            let path = extra_path(contact.extra_key());
            assert!(
                migration.contains(&format!("(tenant, ({path}))")),
                "no index on {path}"
            );
            assert!(CANDIDATES.contains(&format!("AND {path} = ANY(")), "{path}");
        }
        assert!(CANDIDATES.contains(&extra_path(matching::extra::LOCATION_ID)));
    }
}
