//! `upsert-by-id`: the body of `POST /customers/bulk/id` (Bulk Customers by Id).
//!
//! `{"customers": [...]}`, each customer identified by `id`: created if the tenant has no customer with
//! that id, updated otherwise. An update merges: fields the record leaves out keep their stored value,
//! attributes merge by name into the stored ones, and addresses are replaced per `type`. The response
//! is `{"data": [{"action", "id", "key", "lookupKey", "success"}], "messages", "total"}`.

mod addresses;
mod attributes;

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use self::addresses::{RawAddress, addresses, merge_addresses};
use self::attributes::{RawAttribute, attributes, merge_attributes};
use super::text::{Checker, MAX_KEY_CHARS, MAX_TEXT_CHARS, decode_record};
use super::{Dialect, Keying, Limits, Merge, Rejection, customers_member};
use crate::codes::FieldCode;
use crate::model::{
    Action, Customer, FieldError, ParsedRecord, RecordResult, Reference, ReferenceTarget,
};

pub struct UpsertById;

/// One customer. Unknown keys are refused, naming the key, as that API's schema validation does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Record {
    id: Option<Value>,
    debtor_id: Option<i64>,
    first_name: Option<String>,
    middle_name: Option<String>,
    last_name: Option<String>,
    abbreviation: Option<String>,
    title: Option<String>,
    date_of_birth: Option<String>,
    gender: Option<String>,
    ssn: Option<String>,
    phone: Option<String>,
    mobile: Option<String>,
    email: Option<String>,
    company: Option<String>,
    language: Option<String>,
    primary_language: Option<String>,
    parent: Option<Parent>,
    source_id: Option<Value>,
    source: Option<String>,
    attributes: Option<Vec<RawAttribute>>,
    addresses: Option<Vec<RawAddress>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parent {
    id: Option<Value>,
}

/// Reads only the id, so that a record that fails to decode is still reported under its key.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<Value>,
}

impl Dialect for UpsertById {
    fn keying(&self) -> Keying {
        Keying::Producer
    }

    fn name(&self) -> &'static str {
        "upsert-by-id"
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        Ok(customers_member(body, limits)?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| parse_record(index, raw.get()))
            .collect())
    }

    fn render_response(&self, records: &[RecordResult], _: &[Option<&Customer>]) -> Value {
        let data: Vec<Value> = records
            .iter()
            .map(|record| {
                let key = key_value(record.key.as_deref());
                match record.action {
                    Action::Failed => json!({
                        "action": "create",
                        "key": key,
                        "lookupKey": "id",
                        "success": false,
                        "error": record.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; "),
                    }),
                    action => json!({
                        "action": if action == Action::Created { "create" } else { "update" },
                        "id": record.id,
                        "key": key,
                        "lookupKey": "id",
                        "success": true,
                    }),
                }
            })
            .collect();
        json!({"data": data, "messages": ["Completed"], "total": records.len()})
    }

    fn merge(&self) -> Option<Merge> {
        Some(merge)
    }
}

/// The stored customer with the fields the record sets replaced, its attributes merged by name and
/// its addresses by type.
fn merge(stored: Customer, incoming: Customer) -> Customer {
    let attributes = merge_attributes(&stored.attributes, incoming.attributes.clone());
    let addresses = merge_addresses(&stored.addresses, incoming.addresses.clone());
    // Field by field through JSON: a field the record leaves out is absent from its object.
    let both = (
        serde_json::to_value(&stored),
        serde_json::to_value(&incoming),
    );
    let mut customer: Customer = match both {
        (Ok(Value::Object(mut merged)), Ok(Value::Object(changes))) => {
            merged.extend(changes);
            serde_json::from_value(Value::Object(merged)).unwrap_or(incoming)
        }
        // A customer always serializes to an object; were it ever not to, the record replaces
        // the stored customer, as when the merged object does not read back.
        _ => incoming,
    };
    customer.attributes = attributes;
    customer.addresses = addresses;
    customer
}

/// The key as the producer sent it: a number when it is one.
fn key_value(key: Option<&str>) -> Value {
    match key {
        Some(key) => key.parse::<i64>().map_or_else(|_| json!(key), |n| json!(n)),
        None => Value::Null,
    }
}

/// An id or sourceId: a number, or a non-empty string.
fn identifier(check: &mut Checker, field: &str, value: Option<Value>) -> Option<String> {
    match value? {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::String(s) => check.text(field, Some(s), MAX_KEY_CHARS),
        Value::Null => None,
        _ => {
            check.errors.push(FieldError::new(
                field,
                FieldCode::InvalidType,
                format!("{field} must be a whole number or a string"),
            ));
            None
        }
    }
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let record: Record = match decode_record(raw) {
        Ok(record) => record,
        Err(error) => {
            let key = serde_json::from_str::<IdOnly>(raw)
                .ok()
                .and_then(|r| identifier(&mut Checker::default(), "id", r.id));
            return ParsedRecord::new(index, key, Err(vec![error]));
        }
    };
    let mut check = Checker::default();
    let key = identifier(&mut check, "id", record.id);
    if key.is_none() && check.errors.is_empty() {
        check
            .errors
            .push(FieldError::new("id", FieldCode::Required, "id is required"));
    }
    let source_id = identifier(&mut check, "sourceId", record.source_id);
    let source = check.text("source", record.source, MAX_TEXT_CHARS);
    if source_id.is_some() && source.is_none() {
        check.errors.push(FieldError::new(
            "source",
            FieldCode::Required,
            "source is required when sourceId is given",
        ));
    }
    let parent_key = match record.parent {
        Some(parent) => {
            let parent_key = identifier(&mut check, "parent.id", parent.id);
            if parent_key.is_none() {
                check.errors.push(FieldError::new(
                    "parent.id",
                    FieldCode::Required,
                    "parent needs an id",
                ));
            }
            parent_key
        }
        None => None,
    };
    let date_of_birth = check
        .text("dateOfBirth", record.date_of_birth, 10)
        .filter(|dob| {
            let valid = NaiveDate::parse_from_str(dob, "%Y-%m-%d").is_ok();
            if !valid {
                check.errors.push(FieldError::new(
                    "dateOfBirth",
                    FieldCode::InvalidDate,
                    "dateOfBirth must be a date as YYYY-MM-DD",
                ));
            }
            valid
        });
    let gender = check
        .text("gender", record.gender, 1)
        .map(|g| g.to_ascii_uppercase())
        .filter(|g| {
            let valid = matches!(g.as_str(), "M" | "F" | "U");
            if !valid {
                check.errors.push(FieldError::new(
                    "gender",
                    FieldCode::InvalidValue,
                    "gender must be M, F or U",
                ));
            }
            valid
        });
    let customer = Customer {
        first_name: check.text("firstName", record.first_name, MAX_TEXT_CHARS),
        middle_name: check.text("middleName", record.middle_name, MAX_TEXT_CHARS),
        last_name: check.text("lastName", record.last_name, MAX_TEXT_CHARS),
        abbreviation: check.text("abbreviation", record.abbreviation, MAX_TEXT_CHARS),
        title: check.text("title", record.title, MAX_TEXT_CHARS),
        date_of_birth,
        gender,
        ssn: check.text("ssn", record.ssn, 50),
        phone: check.text("phone", record.phone, 50),
        mobile: check.text("mobile", record.mobile, 50),
        email: check.email("email", record.email),
        company: check.text("company", record.company, MAX_TEXT_CHARS),
        language: check.text("language", record.language, 20),
        primary_language: check.text("primaryLanguage", record.primary_language, 20),
        debtor_id: record.debtor_id,
        parent_key: parent_key.clone(),
        source_id,
        source,
        attributes: attributes(&mut check, record.attributes.unwrap_or_default()),
        addresses: addresses(&mut check, record.addresses.unwrap_or_default()),
        ..Customer::default()
    };
    if parent_key.is_some() && parent_key == key {
        check.errors.push(FieldError::new(
            "parent.id",
            FieldCode::InvalidValue,
            "a customer cannot be its own parent",
        ));
    }
    let customer = if check.errors.is_empty() {
        Ok(customer)
    } else {
        Err(check.errors)
    };
    let mut parsed = ParsedRecord::new(index, key, customer);
    if let Some(parent_key) = parent_key {
        parsed.references.push(Reference {
            field: "parent.id".into(),
            target: ReferenceTarget::Key(parent_key),
        });
    }
    parsed
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Attribute, TypedAddress};

    fn parse(body: &str) -> Vec<ParsedRecord> {
        UpsertById
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    fn errors(record: &ParsedRecord) -> Vec<(String, String)> {
        record
            .customer
            .as_ref()
            .unwrap_err()
            .iter()
            .map(|e| (e.field.clone(), e.code.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn a_full_record_is_read() {
        let records = parse(
            r#"{"customers": [{"id": 42, "debtorId": 7, "firstName": "Ann", "lastName": "Lee",
                "dateOfBirth": "1980-02-29", "gender": "f", "ssn": "123-45-6789",
                "email": "ann@example.com", "parent": {"id": 41}, "sourceId": 9, "source": "crm",
                "attributes": [{"class": "c", "name": "tier", "type": "integer", "value": "3"}],
                "addresses": [{"type": "delivery", "isDefault": "Y", "street": "Main", "number": "1",
                    "city": "Utrecht", "country": "nl", "icp": "N"}]}]}"#,
        );
        let record = &records[0];
        assert_eq!(record.key.as_deref(), Some("42"));
        assert_eq!(
            record.references,
            [Reference {
                field: "parent.id".into(),
                target: ReferenceTarget::Key("41".into())
            }]
        );
        let customer = record.customer.as_ref().unwrap();
        assert_eq!(customer.gender.as_deref(), Some("F"));
        assert_eq!(customer.addresses[0].fields["country"], "NL");
        assert_eq!(customer.attributes[0].value.as_deref(), Some("3"));
    }

    #[test]
    fn the_rules_of_the_api_fail_the_record_naming_the_field() {
        let records = parse(
            r#"{"customers": [
                {"firstName": "no id"},
                {"id": 1, "sourceId": 5},
                {"id": 2, "gender": "X"},
                {"id": 3, "dateOfBirth": "1980-13-01"},
                {"id": 4, "attributes": [{"name": "n", "type": "integer", "value": "x"}]},
                {"id": 5, "attributes": [{"name": "n", "type": "shape", "value": "x"}]},
                {"id": 6, "addresses": [{"type": "home", "street": "s", "city": "c", "country": "NL"}]},
                {"id": 7, "addresses": [{"type": "delivery", "street": "s", "city": "c", "country": "XX"}]},
                {"id": 8, "addresses": [{"type": "invoice", "city": "c", "country": "NL"}]},
                {"id": 9, "nickname": "x"},
                {"id": 10, "addresses": [
                    {"type": "delivery", "isDefault": "Y", "street": "s", "city": "c", "country": "NL"},
                    {"type": "delivery", "isDefault": "Y", "street": "t", "city": "c", "country": "NL"}]}
            ]}"#,
        );
        let expected = [
            ("id", "required"),
            ("source", "required"),
            ("gender", "invalid_value"),
            ("dateOfBirth", "invalid_date"),
            ("attributes[0].value", "invalid_value"),
            ("attributes[0].type", "invalid_value"),
            ("addresses[0].type", "invalid_value"),
            ("addresses[0].country", "invalid_country"),
            ("addresses[0].street", "required"),
            ("nickname", "unknown_field"),
            ("addresses[1].isDefault", "invalid_value"),
        ];
        for (record, (field, code)) in records.iter().zip(expected) {
            assert!(
                errors(record).contains(&(field.to_owned(), code.to_owned())),
                "record {}: {:?}",
                record.index,
                errors(record)
            );
        }
        assert!(
            records[9].customer.as_ref().unwrap_err()[0]
                .message
                .contains("nickname")
        );
    }

    #[test]
    fn an_update_merges_attributes_by_name_and_replaces_addresses_per_type() {
        let stored = Customer {
            first_name: Some("Ann".into()),
            email: Some("ann@example.com".into()),
            attributes: vec![
                Attribute {
                    class: None,
                    name: "a".into(),
                    kind: "text".into(),
                    value: Some("1".into()),
                },
                Attribute {
                    class: None,
                    name: "b".into(),
                    kind: "text".into(),
                    value: Some("2".into()),
                },
            ],
            addresses: vec![
                TypedAddress {
                    kind: "delivery".into(),
                    is_default: true,
                    fields: BTreeMap::new(),
                },
                TypedAddress {
                    kind: "invoice".into(),
                    is_default: true,
                    fields: BTreeMap::new(),
                },
            ],
            ..Customer::default()
        };
        let incoming = Customer {
            first_name: Some("Anna".into()),
            attributes: vec![Attribute {
                class: None,
                name: "b".into(),
                kind: "text".into(),
                value: None,
            }],
            addresses: vec![TypedAddress {
                kind: "delivery".into(),
                is_default: false,
                fields: BTreeMap::from([("street".into(), "New".into())]),
            }],
            ..Customer::default()
        };
        let merged = merge(stored, incoming);
        assert_eq!(merged.first_name.as_deref(), Some("Anna"));
        assert_eq!(
            merged.email.as_deref(),
            Some("ann@example.com"),
            "left out, kept"
        );
        assert_eq!(merged.attributes.len(), 2);
        assert_eq!(
            merged.attributes[0].value.as_deref(),
            Some("1"),
            "other attributes kept"
        );
        assert_eq!(
            merged.attributes[1].value, None,
            "sent without a value: value removed"
        );
        assert_eq!(merged.addresses.len(), 2);
        assert_eq!(merged.addresses[0].fields["street"], "New");
        assert_eq!(merged.addresses[1].kind, "invoice");
    }
}
