//! `customers.v1`: this service's own body for new producers.
//!
//! `{"customers": [...]}`, each customer upserted by `externalId` and carrying the common customer
//! model's fields under their own names (documented by `docs/schemas/customers.v1.json`). A record is
//! the customer's full state: an update replaces what is stored. The reply carries no API-specific
//! response (`response` is null): the common reply says everything.

use chrono::NaiveDate;
use serde_json::Value;

use super::attribute::AttributeType;
use super::text::{Checker, MAX_KEY_CHARS, decode_error};
use super::{Dialect, Keying, Limits, Rejection, customers_member};
use crate::codes::FieldCode;
use crate::model::{Customer, FieldError, ParsedRecord, RecordResult, Reference, ReferenceTarget};

pub struct CustomersV1;

/// Longest text of any field.
const MAX_FIELD_CHARS: usize = 4000;

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
    check_strings(&mut check, "", &Value::Object(object.clone()));
    let customer: Customer =
        match serde_path_to_error::deserialize(Value::Object(object)).map_err(decode_value_error) {
            Ok(customer) => customer,
            Err(error) => {
                check.errors.push(error);
                return ParsedRecord::new(index, key, Err(check.errors));
            }
        };
    let customer = normalize(&mut check, customer);
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
    let customer = if check.errors.is_empty() && key.is_some() {
        Ok(customer)
    } else {
        Err(check.errors)
    };
    let mut parsed = ParsedRecord::new(index, key, customer);
    parsed.references = references;
    parsed
}

fn decode_value_error(error: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    decode_error(error)
}

/// Every string anywhere in the record: no control characters (Postgres cannot store NUL in a JSON
/// document) and no more than [`MAX_FIELD_CHARS`].
fn check_strings(check: &mut Checker, path: &str, value: &Value) {
    match value {
        Value::String(text) => {
            if text.chars().any(char::is_control) {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidCharacter,
                    format!("{path} contains a control character"),
                ));
            } else if text.chars().count() > MAX_FIELD_CHARS {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::TooLong,
                    format!("{path} is longer than {MAX_FIELD_CHARS} characters"),
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_strings(check, &format!("{path}[{i}]"), item);
            }
        }
        Value::Object(fields) => {
            for (name, item) in fields {
                if name.chars().any(char::is_control) {
                    check.errors.push(FieldError::new(
                        path,
                        FieldCode::InvalidCharacter,
                        "a field name contains a control character",
                    ));
                    continue;
                }
                let path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                check_strings(check, &path, item);
            }
        }
        _ => {}
    }
}

/// The rules of the common model's fields.
fn normalize(check: &mut Checker, mut customer: Customer) -> Customer {
    customer.email = customer
        .email
        .take()
        .and_then(|email| check.email("email", Some(email)));
    if let Some(dob) = &customer.date_of_birth
        && NaiveDate::parse_from_str(dob, "%Y-%m-%d").is_err()
    {
        check.errors.push(FieldError::new(
            "dateOfBirth",
            FieldCode::InvalidDate,
            "dateOfBirth must be a date as YYYY-MM-DD",
        ));
    }
    if let Some(gender) = &mut customer.gender {
        *gender = gender.to_ascii_uppercase();
        if !matches!(gender.as_str(), "M" | "F" | "U") {
            check.errors.push(FieldError::new(
                "gender",
                FieldCode::InvalidValue,
                "gender must be M, F or U",
            ));
        }
    }
    let countries = customer
        .address
        .iter_mut()
        .filter_map(|a| {
            a.country
                .as_mut()
                .map(|c| ("address.country".to_owned(), c))
        })
        .chain(
            customer
                .addresses
                .iter_mut()
                .enumerate()
                .filter_map(|(i, a)| {
                    a.fields
                        .get_mut("country")
                        .map(|c| (format!("addresses[{i}].country"), c))
                }),
        );
    for (field, country) in countries {
        *country = country.to_ascii_uppercase();
        if celes::Country::from_alpha2(country).is_err() {
            check.errors.push(FieldError::new(
                field,
                FieldCode::InvalidCountry,
                "country must be an ISO 3166-1 alpha-2 code",
            ));
        }
    }
    for (i, attribute) in customer.attributes.iter().enumerate() {
        let Some(kind) = AttributeType::from_name(&attribute.kind) else {
            check.errors.push(FieldError::new(
                format!("attributes[{i}].type"),
                FieldCode::InvalidValue,
                format!("type must be one of {}", AttributeType::names()),
            ));
            continue;
        };
        if let Some(value) = &attribute.value
            && !kind.fits(value)
        {
            check.errors.push(FieldError::new(
                format!("attributes[{i}].value"),
                FieldCode::InvalidValue,
                format!("the value is not a valid {}", attribute.kind),
            ));
        }
    }
    customer
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
                {"externalId": "E", "notes": "a\u0000b"}
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
}
