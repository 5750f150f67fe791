//! The common customer every dialect parses into, and the batch result every dialect renders from.

pub use crate::codes::{FieldCode, RejectionCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A customer as stored (`customers.data`) and as carried by events. Dialects map their own fields onto
/// it; a field a dialect does not know stays `None` and is left out of the stored document, so two
/// deliveries of the same record compare equal and the second one is `unchanged`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Customer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fax: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_zone: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warehouse_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_class_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_permission_key: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_sales_rep: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sales_reps: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ordering_groups: Vec<OrderingGroup>,
    /// Free-form fields a producer carries through (`extra1`..`extra5`), by name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub extra: std::collections::BTreeMap<String, String>,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub middle_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abbreviation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// `YYYY-MM-DD`. Personal data: stored and carried by events, never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    /// `M`, `F` or `U`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// Personal data: stored and carried by events, never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debtor_id: Option<i64>,
    /// The key of the parent customer (same tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Typed attributes, at most one per name.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attributes: Vec<Attribute>,
    /// Addresses, each with a `type` (delivery, invoice); at most one default per type.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub addresses: Vec<TypedAddress>,
    /// The billing account created with the customer (`add-with-accounts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<serde_json::Value>,
    /// The customer whose account this one is billed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bill_to_customer_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_to: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `None` once the value was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An address with its role, as the `upsert-by-id` API keeps them. Fields stay as the API names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypedAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub is_default: bool,
    #[serde(flatten)]
    pub fields: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl Address {
    pub fn is_empty(&self) -> bool {
        *self == Address::default()
    }
}

/// A group of ordering rights; sub-groups list the customers (by key) they cover.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderingGroup {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sub_groups: Vec<OrderingGroup>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub customers: Vec<String>,
}

/// One record of an inbound batch after parsing: its position, the key the producer gave (if it could
/// be read) and either the customer or why it was refused.
#[derive(Debug)]
pub struct ParsedRecord {
    pub index: usize,
    pub key: Option<String>,
    pub customer: Result<Customer, Vec<FieldError>>,
    /// Other customers this record names; each must exist in the tenant (stored, or earlier in the
    /// same batch for keys), or the record fails.
    pub references: Vec<Reference>,
}

/// A customer named by a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The field that names it, for the error message.
    pub field: String,
    pub target: ReferenceTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReferenceTarget {
    /// By the producer's key.
    Key(String),
    /// By our customer id.
    Id(Uuid),
}

impl ParsedRecord {
    pub fn new(
        index: usize,
        key: Option<String>,
        customer: Result<Customer, Vec<FieldError>>,
    ) -> Self {
        Self {
            index,
            key,
            customer,
            references: Vec::new(),
        }
    }
}

/// Why one field of one record was refused. It goes to the producer in the reply, never to a log: a
/// message may quote the refused value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub code: FieldCode,
    pub message: String,
}

impl FieldError {
    /// A field's error. Control characters in the field's name or the message (which may quote what
    /// the producer sent) are written out as escapes: the error is stored as JSON in Postgres, which
    /// refuses a NUL, and goes back to the producer as text.
    ///
    /// Both are cut short at [`MAX_ERROR_FIELD_CHARS`] and [`MAX_ERROR_MESSAGE_CHARS`]: a field name
    /// or a quoted value may be as long as the body, and it is echoed in the reply.
    pub fn new(field: impl Into<String>, code: FieldCode, message: impl Into<String>) -> Self {
        Self {
            field: cut_short(escape_controls(field.into()), MAX_ERROR_FIELD_CHARS),
            code,
            message: cut_short(escape_controls(message.into()), MAX_ERROR_MESSAGE_CHARS),
        }
    }
}

/// Longest field name a [`FieldError`] echoes.
pub const MAX_ERROR_FIELD_CHARS: usize = 200;
/// Longest message a [`FieldError`] carries.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1_000;

/// `text` cut to at most `max` characters, the last of them `…` when it was longer.
pub fn cut_short(text: String, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text[end..].chars().nth(1).is_some() => {
            let mut cut = text[..end].to_owned();
            cut.push('…');
            cut
        }
        _ => text,
    }
}

/// `text` with every control character written as a `\u{..}` escape.
fn escape_controls(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Failed => "failed",
        }
    }
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordResult {
    pub index: usize,
    pub key: Option<String>,
    pub id: Option<Uuid>,
    pub action: Action,
    pub version: Option<i64>,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

impl RecordResult {
    pub fn failed(index: usize, key: Option<String>, errors: Vec<FieldError>) -> Self {
        Self {
            index,
            key,
            id: None,
            action: Action::Failed,
            version: None,
            errors,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// Every record applied.
    Completed,
    /// Some records failed; the others are applied.
    Partial,
    /// Every record failed.
    Failed,
    /// The message could not be read at all; nothing was applied.
    Rejected,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Completed => "completed",
            BatchStatus::Partial => "partial",
            BatchStatus::Failed => "failed",
            BatchStatus::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub failed: usize,
}

impl Counts {
    pub fn of(records: &[RecordResult]) -> Self {
        let mut counts = Counts::default();
        for record in records {
            counts.add(record.action);
        }
        counts
    }

    /// Counts one more record, which came to `action`.
    pub fn add(&mut self, action: Action) {
        self.total += 1;
        match action {
            Action::Created => self.created += 1,
            Action::Updated => self.updated += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Failed => self.failed += 1,
        }
    }

    pub fn status(&self) -> BatchStatus {
        if self.failed == 0 {
            BatchStatus::Completed
        } else if self.failed == self.total {
            BatchStatus::Failed
        } else {
            BatchStatus::Partial
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_longer_than_the_limit_ends_in_an_ellipsis_within_it() {
        assert_eq!(cut_short("abc".into(), 3), "abc");
        assert_eq!(cut_short("abcd".into(), 3), "ab…");
        assert_eq!(cut_short("ééééé".into(), 4), "ééé…");
        assert_eq!(cut_short(String::new(), 3), "");
    }

    use super::*;

    fn result(action: Action) -> RecordResult {
        RecordResult {
            index: 0,
            key: None,
            id: None,
            action,
            version: None,
            errors: vec![],
        }
    }

    #[test]
    fn status_follows_the_failed_count() {
        let all_ok = [result(Action::Created), result(Action::Unchanged)];
        assert_eq!(Counts::of(&all_ok).status(), BatchStatus::Completed);
        let some = [result(Action::Created), result(Action::Failed)];
        assert_eq!(Counts::of(&some).status(), BatchStatus::Partial);
        let none = [result(Action::Failed)];
        assert_eq!(Counts::of(&none).status(), BatchStatus::Failed);
    }

    #[test]
    fn an_empty_customer_serializes_to_an_empty_object() {
        let json = serde_json::to_value(Customer::default()).unwrap();
        assert_eq!(json, serde_json::json!({}));
    }
}
