//! The one place where records are given the key of the customer they write.

use crate::dialect::{Dialect, Keying};
use crate::model::ParsedRecord;
use crate::store;

use super::retry::Budget;
use super::{BatchError, Ingest};

/// Gives every valid record its key, as the dialect's [`Keying`] says.
pub(super) async fn assign(
    ingest: &Ingest,
    budget: &Budget<'_>,
    tenant: &str,
    batch_id: &str,
    dialect: &dyn Dialect,
    body: &str,
    mut parsed: Vec<ParsedRecord>,
) -> Result<Vec<ParsedRecord>, BatchError> {
    match dialect.keying() {
        // The dialect read each record's key from the body.
        Keying::Producer => Ok(parsed),
        Keying::BatchPosition => {
            for record in parsed.iter_mut().filter(|r| r.customer.is_ok()) {
                record.key = Some(format!("{batch_id}#{}", record.index));
            }
            Ok(parsed)
        }
        // Each record is given the key of the customer its contact details find, or a new one.
        Keying::ByContact => {
            let rules = dialect.matching_rules(body).unwrap_or_default();
            Ok(budget
                .run(|| store::contacts::resolve(&ingest.pool, tenant, batch_id, &rules, &parsed))
                .await?)
        }
    }
}
