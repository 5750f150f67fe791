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

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::matching::{Candidate, Contact, Contacts, Decision, Resolver, Rules, new_key};
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
    let valid: Vec<(usize, &Customer)> = parsed
        .iter()
        .filter_map(|record| record.customer.as_ref().ok().map(|c| (record.index, c)))
        .collect();
    let mut settled: HashMap<usize, Result<(String, Customer), Vec<FieldError>>> =
        HashMap::with_capacity(valid.len());
    let mut tally = Tally::default();

    for chunk in valid.chunks(RECORDS_PER_TRANSACTION) {
        if chunk.iter().all(|(index, _)| recorded.contains_key(index)) {
            for (index, customer) in chunk {
                let decision = &recorded[index];
                tally.count(decision);
                settled.insert(*index, resolver.settle(customer, decision));
            }
            continue;
        }
        let fresh: Vec<&Customer> = chunk
            .iter()
            .filter(|(index, _)| !recorded.contains_key(index))
            .map(|(_, customer)| *customer)
            .collect();
        let contacts: Vec<Contacts> = fresh.iter().map(|c| Contacts::of(c)).collect();

        let mut tx = pool.begin().await?;
        lock(&mut tx, tenant, &contacts).await?;
        // Another delivery of this batch may have resolved these records while this one waited.
        let indexes: Vec<i32> = chunk.iter().map(|(index, _)| to_i32(*index)).collect();
        recorded.extend(recorded_decisions(&mut *tx, tenant, batch_id, Some(&indexes)).await?);
        resolver.set_candidates(candidates(&mut tx, tenant, batch_id, &contacts).await?);
        let mut rows = Rows::default();
        for (index, customer) in chunk {
            let decision = match recorded.get(index) {
                Some(decision) => decision.clone(),
                None => {
                    let decision = resolver.decide(customer, || new_key(tenant, batch_id, *index));
                    rows.push(*index, &decision, customer);
                    decision
                }
            };
            tally.count(&decision);
            settled.insert(*index, resolver.settle(customer, &decision));
        }
        rows.insert(&mut tx, tenant, batch_id).await?;
        tx.commit().await?;
    }
    tracing::info!(
        added = tally.added,
        updated = tally.updated,
        refused = tally.refused,
        "records matched by contact"
    );

    Ok(parsed
        .iter()
        .map(|record| {
            let (key, customer) = match (&record.customer, settled.remove(&record.index)) {
                (Err(errors), _) => (record.key.clone(), Err(errors.clone())),
                (Ok(_), Some(Ok((key, customer)))) => (Some(key), Ok(customer)),
                (Ok(_), Some(Err(errors))) => (None, Err(errors)),
                (Ok(_), None) => unreachable!("every valid record is settled"),
            };
            ParsedRecord {
                index: record.index,
                key,
                customer,
                references: record.references.clone(),
            }
        })
        .collect())
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

fn to_i32(index: usize) -> i32 {
    i32::try_from(index).expect("record positions are bounded by max_records")
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
                                "refused",
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
    // The `#>>` paths are the names in `matching::extra`, as indexed by the migration.
    let rows: Vec<Row> = sqlx::query_as(
        "WITH found AS (
             SELECT id FROM customers
             WHERE tenant = $1 AND data #>> '{extra,matchEmail}' = ANY($2::text[])
             UNION
             SELECT id FROM customers
             WHERE tenant = $1 AND data #>> '{extra,matchCustomerCode}' = ANY($3::text[])
             UNION
             SELECT id FROM customers
             WHERE tenant = $1 AND data #>> '{extra,matchCellPhone}' = ANY($4::text[])
         )
         SELECT c.id, c.key, c.data #>> '{extra,locationId}', c.data #>> '{extra,matchEmail}',
                c.data #>> '{extra,matchCustomerCode}', c.data #>> '{extra,matchCellPhone}'
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
                    ELSE r.resolved_at > now() - interval '1 hour' END",
    )
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
    fn push(&mut self, index: usize, decision: &Decision, customer: &Customer) {
        let contacts = Contacts::of(customer);
        let (key, adds, location, errors) = match decision {
            Decision::Add { key, location } => (Some(key), true, location.clone(), None),
            Decision::Update { key, location } => (Some(key), false, location.clone(), None),
            Decision::Refused(errors) => (
                None,
                false,
                None,
                Some(serde_json::to_string(errors).expect("errors always serialize")),
            ),
        };
        self.indexes.push(to_i32(index));
        self.keys.push(key.cloned());
        self.adds.push(adds);
        self.locations.push(location);
        for contact in Contact::ALL {
            // A refused record claims nothing.
            let value = key.and_then(|_| contacts.get(contact)).map(str::to_owned);
            self.values[contact as usize].push(value);
        }
        self.errors.push(errors);
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
