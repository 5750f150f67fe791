//! References from one record to other customers of the tenant, checked before anything is applied.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::codes::FieldCode;
use crate::dialect::Dialect;
use crate::model::{Customer, FieldError, ParsedRecord, ReferenceTarget};
use crate::store::customers;

use super::retry::Budget;
use super::{BatchError, Ingest};

/// Fails the records that name a customer the tenant does not have, and lets the dialect complete
/// the others with the customers they name by id.
pub(super) async fn check(
    ingest: &Ingest,
    budget: &Budget<'_>,
    tenant: &str,
    dialect: &dyn Dialect,
    mut parsed: Vec<ParsedRecord>,
) -> Result<Vec<ParsedRecord>, BatchError> {
    let mut keys: Vec<String> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    for record in parsed.iter().filter(|r| r.customer.is_ok()) {
        for reference in &record.references {
            match &reference.target {
                ReferenceTarget::Key(key) => keys.push(key.clone()),
                ReferenceTarget::Id(id) => ids.push(*id),
            }
        }
    }
    let stored_keys: HashSet<String> = budget
        .run(|| customers::existing_keys(&ingest.pool, tenant, &keys))
        .await?;
    let by_id: HashMap<Uuid, Customer> = budget
        .run(|| customers::by_ids(&ingest.pool, tenant, &ids))
        .await?
        .into_iter()
        .filter_map(|(id, data)| Some((id, serde_json::from_value(data).ok()?)))
        .collect();
    // A key named by a record may also be created earlier in the same batch.
    let mut earlier: HashSet<String> = HashSet::new();
    for record in &mut parsed {
        let Ok(customer) = &mut record.customer else {
            continue;
        };
        let missing: Vec<FieldError> = record
            .references
            .iter()
            .filter(|reference| match &reference.target {
                ReferenceTarget::Key(key) => !stored_keys.contains(key) && !earlier.contains(key),
                ReferenceTarget::Id(id) => !by_id.contains_key(id),
            })
            .map(|reference| {
                let named = match &reference.target {
                    ReferenceTarget::Key(key) => key.clone(),
                    ReferenceTarget::Id(id) => id.to_string(),
                };
                FieldError::new(
                    &reference.field,
                    FieldCode::UnknownReference,
                    format!(
                        "{} names customer {named}, which this tenant does not have (stored or earlier in this batch)",
                        reference.field
                    ),
                )
            })
            .collect();
        if missing.is_empty() {
            dialect.complete(tenant, customer, &by_id);
            if let Some(key) = &record.key {
                earlier.insert(key.clone());
            }
        } else {
            record.customer = Err(missing);
        }
    }
    Ok(parsed)
}
