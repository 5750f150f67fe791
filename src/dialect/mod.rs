//! Request bodies of the bulk-customer APIs producers already use, one module per API.
//!
//! A dialect turns a body into [`ParsedRecord`]s of the common [`Customer`](crate::model::Customer)
//! and renders the batch's [`RecordResult`]s back as the response body that API would have answered.
//! It never touches AMQP or SQL. Adding a dialect is one new module and one line in [`DIALECTS`].

pub mod add_with_accounts;
mod attribute;
pub mod customers_v1;
pub mod match_by_contact;
mod text;
pub mod upsert_by_customer_id;
pub mod upsert_by_id;

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use crate::model::{Customer, ParsedRecord, RecordResult};

/// Limits a dialect enforces while reading a body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
}

/// Why a whole body could not be read. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub trait Dialect: Send + Sync + 'static {
    /// The value of the message's `type` property that selects this dialect.
    fn name(&self) -> &'static str;

    /// Reads a body. A record that is invalid fails alone; a body that cannot be read at all is a
    /// [`Rejection`].
    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection>;

    /// The API's own response body for these results (one per input record, in input order).
    /// `customers` holds, aligned with `records`, the customer each valid record carried (empty when
    /// only the results are at hand).
    fn render_response(
        &self,
        records: &[RecordResult],
        customers: &[Option<&Customer>],
    ) -> serde_json::Value;

    /// Whether [`Dialect::render_response`] reads the records' customers. If not, the pipeline lets
    /// a batch's parsed customers go as soon as they are serialized for storing.
    fn renders_customers(&self) -> bool {
        false
    }

    /// The response for the records in `range` only, cut from the batch's whole `response`: a reply
    /// too large for one message is sent in parts. By default rendered again from the results.
    fn slice_response(
        &self,
        _response: &serde_json::Value,
        records: &[RecordResult],
        range: std::ops::Range<usize>,
    ) -> serde_json::Value {
        self.render_response(&records[range], &[])
    }

    /// Whether this dialect's records carry no key of their own (every record adds a customer). The
    /// pipeline then keys each valid record by its batch id and position, so a redelivered batch
    /// finds the customers it added instead of adding them again.
    fn generates_keys(&self) -> bool {
        false
    }

    /// Whether a record updates a stored customer by merging into it ([`Dialect::merge`]) rather
    /// than replacing it. Merging reads the stored customers of each chunk under a row lock first.
    fn merges(&self) -> bool {
        false
    }

    /// The stored customer updated by `incoming`.
    fn merge(&self, _stored: Customer, incoming: Customer) -> Customer {
        incoming
    }

    /// Whether this dialect's records carry no key and are matched to stored customers by their
    /// contact details instead (`match-by-contact`). The pipeline then has
    /// [`crate::store::contacts`] give every valid record the key of the customer it updates or
    /// adds, before references are checked and the records applied.
    fn matches_by_contact(&self) -> bool {
        false
    }

    /// The options that hold for every record of a batch matched by contact, read from its body
    /// (which [`Dialect::parse`] has accepted). `None` for a dialect without such options.
    fn matching_rules(&self, _body: &str) -> Option<crate::matching::Rules> {
        None
    }

    /// Completes a valid record before it is stored, with its tenant and the customers it references
    /// by id (all found in the tenant).
    fn resolve(
        &self,
        _tenant: &str,
        _customer: &mut Customer,
        _referenced: &HashMap<Uuid, Customer>,
    ) {
    }
}

/// Every dialect this service reads, by `type` property.
pub static DIALECTS: &[&dyn Dialect] = &[
    &upsert_by_customer_id::UpsertByCustomerId,
    &upsert_by_id::UpsertById,
    &add_with_accounts::AddWithAccounts,
    &match_by_contact::MatchByContact,
    &customers_v1::CustomersV1,
];

pub fn find(name: &str) -> Option<&'static dyn Dialect> {
    DIALECTS
        .iter()
        .copied()
        .find(|dialect| dialect.name() == name)
}

/// Tells a body that is not JSON at all from JSON of the wrong shape. Only runs on the error path.
pub(crate) fn invalid_body(body: &str, error: &serde_json::Error) -> Rejection {
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok();
    if error.is_data() && is_json {
        // serde's own message would quote the offending value, which may be personal data.
        Rejection::new(
            "invalid_body",
            "the body is JSON but not of the dialect's shape (see the dialect's documented body)",
        )
    } else {
        Rejection::new("invalid_json", format!("the body is not JSON: {error}"))
    }
}

/// Deepest nesting of arrays and objects a body may have. The bodies of every dialect need fewer than
/// ten levels; the limit keeps a hostile body from costing deep recursion anywhere downstream.
pub const MAX_NESTING: usize = 32;

/// Refuses a body nested deeper than [`MAX_NESTING`], in one pass over its bytes, before it is parsed.
pub fn check_nesting(body: &str) -> Result<(), Rejection> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in body.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Rejection::new(
                        "too_deep",
                        format!("the body is nested more than {MAX_NESTING} levels deep"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a JSON body into its top-level array of raw records, borrowing from the body so that
/// each record is decoded once, on its own, and one bad record cannot spoil the others.
pub(crate) fn raw_records(
    body: &str,
    limits: Limits,
) -> Result<Vec<&serde_json::value::RawValue>, Rejection> {
    let records: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(body).map_err(|error| invalid_body(body, &error))?;
    check_record_count(records.len(), limits)?;
    Ok(records)
}

/// The raw records of a `{"customers": [...]}` body (no other key allowed), each decoded later on its
/// own.
pub(crate) fn customers_member(
    body: &str,
    limits: Limits,
) -> Result<Vec<&serde_json::value::RawValue>, Rejection> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body<'a> {
        #[serde(borrow)]
        customers: Vec<&'a serde_json::value::RawValue>,
    }
    let parsed: Body = serde_json::from_str(body).map_err(|error| invalid_body(body, &error))?;
    check_record_count(parsed.customers.len(), limits)?;
    Ok(parsed.customers)
}

/// Refuses a body with more records than a message may carry.
pub(crate) fn check_record_count(count: usize, limits: Limits) -> Result<(), Rejection> {
    if count > limits.max_records {
        return Err(Rejection::new(
            "too_many_records",
            format!(
                "the body holds {count} records; at most {} are accepted per message",
                limits.max_records
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_is_found_by_its_name() {
        for dialect in DIALECTS {
            assert_eq!(find(dialect.name()).map(|d| d.name()), Some(dialect.name()));
        }
        assert!(find("no-such-dialect").is_none());
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let body = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        let error = check_nesting(&body).unwrap_err();
        assert_eq!(error.code, "too_deep");
        // Brackets inside strings are text, not nesting.
        let quoted = format!(r#"[{{"a": "{}\"{}"}}]"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(check_nesting(&quoted), Ok(()));
    }

    #[test]
    fn more_records_than_the_limit_are_rejected() {
        let error = raw_records("[{},{},{}]", Limits { max_records: 2 }).unwrap_err();
        assert_eq!(error.code, "too_many_records");
    }

    #[test]
    fn a_body_that_is_not_an_array_is_rejected() {
        let error = raw_records(r#"{"a":1}"#, Limits { max_records: 2 }).unwrap_err();
        assert_eq!(error.code, "invalid_body");
    }
}
