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
pub use crate::model::{FieldCode, RejectionCode};
pub use text::{MAX_KEY_CHARS, MAX_TEXT_CHARS};

/// Limits a dialect enforces while reading a body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
}

/// Why a whole body could not be read. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: RejectionCode, message: impl Into<String>) -> Self {
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

    /// The response without the entries of the records at positions `erased` (ascending) of
    /// `records`, the batch's whole results: what a stored reply keeps once a customer is erased.
    /// By default rendered again from the other results.
    fn response_without(
        &self,
        _response: &serde_json::Value,
        records: &[RecordResult],
        erased: &[usize],
    ) -> serde_json::Value {
        let kept: Vec<RecordResult> = without_positions(records, erased);
        self.render_response(&kept, &[])
    }

    /// The body's records as their JSON texts, when every record reads alone: none depends on
    /// another or on the rest of the body, none names another customer, and each carries its own
    /// key ([`Keying::Producer`]). The pipeline then reads them a window at a time, so that a large
    /// batch never holds all its records parsed at once; reading every record with
    /// [`Split::parse`] gives what [`Dialect::parse`] gives. `None` (the default): the body is read
    /// whole with [`Dialect::parse`].
    fn split<'b>(&self, _body: &'b str, _limits: Limits) -> Option<Result<Split<'b>, Rejection>> {
        None
    }

    /// How this dialect's records find the key of the customer they write. Every dialect decides;
    /// [`crate::ingest`] matches the decision in one place.
    fn keying(&self) -> Keying;

    /// How a record updates a stored customer: `None` replaces the stored document with the
    /// record's; `Some(merge)` merges the record into it, which costs a read of the chunk's stored
    /// customers under a row lock first.
    fn merge(&self) -> Option<Merge> {
        None
    }

    /// The options that hold for every record of a batch matched by contact, read from its body
    /// (which [`Dialect::parse`] has accepted). `None` for a dialect without such options.
    fn matching_rules(&self, _body: &str) -> Option<crate::matching::Rules> {
        None
    }

    /// Completes a valid record before it is stored, with its tenant and the customers it references
    /// by id (all found in the tenant).
    fn complete(
        &self,
        _tenant: &str,
        _customer: &mut Customer,
        _referenced: &HashMap<Uuid, Customer>,
    ) {
    }
}

/// A body cut into its records (see [`Dialect::split`]).
pub struct Split<'b> {
    /// Each record's JSON text, borrowed from the body, in order.
    pub records: Vec<&'b serde_json::value::RawValue>,
    /// Reads the record at a position of the body from its JSON text.
    pub parse: fn(usize, &str) -> ParsedRecord,
}

/// How the records of a dialect are given the key of the customer they write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    /// Each record names its customer's key itself (a customer id or code).
    Producer,
    /// Records carry no key and every record adds a customer: each valid record is keyed by its
    /// batch id and position, so a redelivered batch finds the customers it added instead of adding
    /// them again.
    BatchPosition,
    /// Records carry no key and are matched to stored customers by their contact details; each
    /// valid record is given the key of the customer it updates, or a new one.
    ByContact,
}

/// Merges an incoming record into the stored customer it updates.
pub type Merge = fn(stored: Customer, incoming: Customer) -> Customer;

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

/// `items` without those at positions `erased` (ascending).
pub(crate) fn without_positions<T: Clone>(items: &[T], erased: &[usize]) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(position, _)| erased.binary_search(position).is_err())
        .map(|(_, item)| item.clone())
        .collect()
}

/// Tells a body that is not JSON at all from JSON of the wrong shape. Only runs on the error path.
pub(crate) fn invalid_body(body: &str, error: &serde_json::Error) -> Rejection {
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok();
    if error.is_data() && is_json {
        // serde's own message would quote the offending value, which may be personal data.
        Rejection::new(
            RejectionCode::InvalidBody,
            "the body is JSON but not of the dialect's shape (see the dialect's documented body)",
        )
    } else {
        Rejection::new(
            RejectionCode::InvalidJson,
            format!("the body is not JSON: {error}"),
        )
    }
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
            RejectionCode::TooManyRecords,
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
    fn more_records_than_the_limit_are_rejected() {
        let error = raw_records("[{},{},{}]", Limits { max_records: 2 }).unwrap_err();
        assert_eq!(error.code, RejectionCode::TooManyRecords);
    }

    #[test]
    fn a_body_that_is_not_an_array_is_rejected() {
        let error = raw_records(r#"{"a":1}"#, Limits { max_records: 2 }).unwrap_err();
        assert_eq!(error.code, RejectionCode::InvalidBody);
    }
}
