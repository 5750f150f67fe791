//! `customers.v1`: this service's own body for new producers.
//!
//! `{"customers": [...]}`, each customer upserted by `externalId` and carrying the common customer
//! model's fields under their own names (documented by `docs/schemas/customers.v1.json`). A record is
//! the customer's full state: an update replaces what is stored. The reply carries no API-specific
//! response (`response` is null): the common reply says everything.
//!
//! The schema is closed: only the fields `shape` lists, which leave out what other dialects and the
//! contact matching keep in a customer. A record with any other field fails, naming it.

#[cfg(test)]
mod schema_tests;
mod shape;

use serde_json::Value;

use super::text::{Checker, MAX_KEY_CHARS, decode_error};
use super::{Dialect, Keying, Limits, Rejection, customers_member};
use crate::codes::FieldCode;
use crate::model::{Customer, FieldError, ParsedRecord, RecordResult, Reference, ReferenceTarget};

pub struct CustomersV1;

impl Dialect for CustomersV1 {
    fn keying(&self) -> Keying {
        Keying::Producer
    }

    fn name(&self) -> &'static str {
        "customers.v1"
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        Ok(customers_member(body, limits)?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| parse_record(index, raw.get()))
            .collect())
    }

    fn render_response(&self, _: &[RecordResult], _: &[Option<&Customer>]) -> Value {
        Value::Null
    }
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let mut object = match serde_json::from_str::<serde_json::Map<String, Value>>(raw) {
        Ok(object) => object,
        Err(_) => {
            let error = FieldError::new(
                "",
                FieldCode::InvalidType,
                "a customer must be a JSON object",
            );
            return ParsedRecord::new(index, None, Err(vec![error]));
        }
    };
    let mut check = Checker::default();
    let key = match object.remove("externalId") {
        Some(Value::String(key)) => check.required_text("externalId", Some(key), MAX_KEY_CHARS),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        None | Some(Value::Null) => check.required_text("externalId", None, MAX_KEY_CHARS),
        Some(_) => {
            check.errors.push(FieldError::new(
                "externalId",
                FieldCode::InvalidType,
                "externalId must be a string",
            ));
            None
        }
    };
    shape::check_record(&mut check, &mut object);
    if !check.errors.is_empty() {
        return ParsedRecord::new(index, key, Err(check.errors));
    }
    // Every field was checked against the schema above, so this only fails on a fault of ours.
    let customer: Customer =
        match serde_path_to_error::deserialize(Value::Object(object)).map_err(decode_error) {
            Ok(customer) => customer,
            Err(error) => return ParsedRecord::new(index, key, Err(vec![error])),
        };
    let mut references = Vec::new();
    if let Some(parent) = &customer.parent_key {
        references.push(Reference {
            field: "parentKey".into(),
            target: ReferenceTarget::Key(parent.clone()),
        });
    }
    if let Some(payer) = customer.bill_to_customer_id {
        references.push(Reference {
            field: "billToCustomerId".into(),
            target: ReferenceTarget::Id(payer),
        });
    }
    // A record without a usable key has an error above.
    let mut parsed = ParsedRecord::new(index, key, Ok(customer));
    parsed.references = references;
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Vec<ParsedRecord> {
        CustomersV1
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    #[test]
    fn the_common_model_is_read_under_its_own_names() {
        let records = parse(
            r#"{"customers": [{"externalId": "X-1", "firstName": "Ann", "email": "a@example.com",
                "gender": "f", "address": {"street1": "1 Main", "country": "nl"},
                "attributes": [{"name": "tier", "type": "integer", "value": "2"}],
                "parentKey": "X-0"}]}"#,
        );
        assert_eq!(records[0].key.as_deref(), Some("X-1"));
        let customer = records[0].customer.as_ref().unwrap();
        assert_eq!(customer.gender.as_deref(), Some("F"));
        assert_eq!(
            customer.address.as_ref().unwrap().country.as_deref(),
            Some("NL")
        );
        assert_eq!(records[0].references.len(), 1);
    }

    #[test]
    fn unknown_fields_and_bad_values_fail_the_record_naming_the_field() {
        let records = parse(
            r#"{"customers": [
                {"externalId": "A", "nickname": "x"},
                {"externalId": "B", "dateOfBirth": "1980-02-30"},
                {"externalId": "C", "address": {"country": "XX"}},
                {"firstName": "no key"},
                {"externalId": "E", "firstName": "a\u0000b"}
            ]}"#,
        );
        let first = |i: usize| records[i].customer.as_ref().unwrap_err()[0].clone();
        assert_eq!(first(0).code, FieldCode::UnknownField);
        assert!(first(0).message.contains("nickname"));
        assert_eq!(first(1).field, "dateOfBirth");
        assert_eq!(first(2).field, "address.country");
        assert_eq!(first(3).field, "externalId");
        assert_eq!(first(4).code, FieldCode::InvalidCharacter);
    }

    fn errors(record: &ParsedRecord) -> Vec<(String, FieldCode)> {
        let mut errors: Vec<_> = record
            .customer
            .as_ref()
            .unwrap_err()
            .iter()
            .map(|e| (e.field.clone(), e.code))
            .collect();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        errors
    }

    #[test]
    fn what_other_dialects_and_the_matching_keep_is_refused_naming_the_field() {
        let records = parse(
            r#"{"customers": [
                {"externalId": "A", "extra": {"matchEmail": "a@example.com", "extra1": "kept"}},
                {"externalId": "B", "account": {"status": "ACTIVE"}, "shipTo": {}},
                {"externalId": "C", "addresses": [{"type": "delivery", "isDefault": true,
                    "locationId": "7"}]},
                {"externalId": "D", "attributes": [{"name": "n", "type": "text", "franchiseId": "x"}],
                    "address": {"matchEmail": "a@example.com"}}
            ]}"#,
        );
        use FieldCode::UnknownField as U;
        assert_eq!(errors(&records[0]), [("extra.matchEmail".into(), U)]);
        assert_eq!(
            errors(&records[1]),
            [("account".into(), U), ("shipTo".into(), U)]
        );
        assert_eq!(errors(&records[2]), [("addresses[0].locationId".into(), U)]);
        assert_eq!(
            errors(&records[3]),
            [
                ("address.matchEmail".into(), U),
                ("attributes[0].franchiseId".into(), U)
            ]
        );
    }

    #[test]
    fn every_fault_of_a_record_is_named_at_once() {
        let records = parse(
            r#"{"customers": [{"externalId": "A", "email": "nope", "gender": "x", "test": "yes",
                "addresses": [{"type": "home", "isDefault": true, "country": "XX"},
                              {"type": "delivery"}],
                "attributes": [{"name": "tier", "type": "integer", "value": "two"}, {"type": "text"}],
                "orderingGroups": [{"name": "no id"}], "billToCustomerId": "not-an-id",
                "debtorId": 18446744073709551615, "salesReps": ["R1", 2]}]}"#,
        );
        use FieldCode::*;
        let expected: Vec<(String, FieldCode)> = [
            ("addresses[0].country", InvalidCountry),
            ("addresses[0].type", InvalidValue),
            ("addresses[1].isDefault", Required),
            ("attributes[0].value", InvalidValue),
            ("attributes[1].name", Required),
            ("billToCustomerId", InvalidValue),
            ("debtorId", OutOfRange),
            ("email", InvalidEmail),
            ("gender", InvalidValue),
            ("orderingGroups[0].id", Required),
            ("salesReps[1]", InvalidType),
            ("test", InvalidType),
        ]
        .into_iter()
        .map(|(f, c)| (f.to_owned(), c))
        .collect();
        assert_eq!(errors(&records[0]), expected);
    }

    #[test]
    fn a_customer_has_at_most_one_default_address_of_each_type() {
        let records = parse(
            r#"{"customers": [{"externalId": "A", "addresses": [
                {"type": "delivery", "isDefault": true}, {"type": "invoice", "isDefault": true},
                {"type": "delivery", "isDefault": false}, {"type": "delivery", "isDefault": true}]}]}"#,
        );
        assert_eq!(
            errors(&records[0]),
            [("addresses[3].isDefault".into(), FieldCode::InvalidValue)]
        );
    }

    #[test]
    fn documented_values_are_stored_in_one_form() {
        let records = parse(
            r#"{"customers": [{"externalId": "A", "email": "  a@example.com ", "gender": "u",
                "addresses": [{"type": "invoice", "isDefault": true, "country": "de", "icp": "Y"}],
                "extra": {"extra1": "x", "extra5": null}, "lastName": null}]}"#,
        );
        let customer = records[0].customer.as_ref().unwrap();
        assert_eq!(customer.email.as_deref(), Some("a@example.com"));
        assert_eq!(customer.gender.as_deref(), Some("U"));
        assert_eq!(customer.addresses[0].fields["country"], "DE");
        assert_eq!(customer.extra.len(), 1);
        assert_eq!(customer.last_name, None);
    }
}
