//! The body of `POST api/customers` and its records, read into the common model.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::extra;
use super::normalize::{
    DEFAULT_COUNTRY, Gender, NoteType, fold_case, normalize_phone, resolve_country, resolve_dob,
    resolve_state,
};
use crate::codes::{FieldCode, RejectionCode};
use crate::dialect::text::{Checker, MAX_KEY_CHARS, MAX_TEXT_CHARS, decode_record};
use crate::dialect::{Limits, Rejection, check_record_count, invalid_body};
use crate::matching::Rules;
use crate::model::{Address, Customer, FieldError, ParsedRecord};

/// Longest phone number as written (with spaces, dashes and an extension).
const MAX_PHONE_CHARS: usize = 50;
/// Longest note.
const MAX_NOTES_CHARS: usize = 4000;
/// Longest image reference (a URL).
const MAX_IMAGE_CHARS: usize = 2048;
/// Longest postal code.
const MAX_ZIP_CHARS: usize = 20;

/// The body. A key the API does not define refuses the whole body: a misspelt `RequireCountry`
/// silently ignored would add customers the producer meant to refuse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Body<'a> {
    require_country: Option<bool>,
    require_state: Option<bool>,
    require_dob: Option<bool>,
    require_note: Option<bool>,
    require_gender: Option<bool>,
    ignore_shared_customers: Option<bool>,
    #[serde(borrow)]
    customers: Option<Vec<&'a RawValue>>,
}

impl Body<'_> {
    fn rules(&self) -> Rules {
        Rules {
            require_country: self.require_country.unwrap_or(false),
            require_state: self.require_state.unwrap_or(false),
            require_dob: self.require_dob.unwrap_or(false),
            require_note: self.require_note.unwrap_or(false),
            require_gender: self.require_gender.unwrap_or(false),
            ignore_shared_customers: self.ignore_shared_customers.unwrap_or(false),
        }
    }
}

/// One `CustomerInfo`, every field of the API's sample. Unknown keys are refused rather than
/// dropped, so nothing a producer sends is silently lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Record {
    location_id: Option<i64>,
    customer_id: Option<i64>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    cell_phone: Option<String>,
    work_phone: Option<String>,
    dob: Option<String>,
    /// A number or a name; a value of any other shape does not resolve (it is not an error).
    gender: Option<Value>,
    customer_code: Option<String>,
    address: Option<String>,
    address2: Option<String>,
    city: Option<String>,
    zip: Option<String>,
    country: Option<String>,
    state: Option<String>,
    note_type: Option<String>,
    notes: Option<String>,
    balance: Option<serde_json::Number>,
    reward_points: Option<serde_json::Number>,
    image: Option<String>,
    nop_external_id: Option<String>,
    lead_source_id: Option<i64>,
}

/// The body's records, each read on its own: a record that is invalid fails alone.
pub(super) fn read(body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
    let body: Body = serde_json::from_str(body).map_err(|error| body_error(body, &error))?;
    let Some(records) = body.customers else {
        return Err(Rejection::new(
            RejectionCode::InvalidBody,
            "the body has no `Customers` list",
        ));
    };
    check_record_count(records.len(), limits)?;
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(index, raw)| parse_record(index, raw.get()))
        .collect())
}

/// The body's options; `None` for a body [`read`] rejects. The records are skipped over, not
/// decoded.
pub(super) fn rules(body: &str) -> Option<Rules> {
    serde_json::from_str::<Body>(body)
        .ok()
        .map(|body| body.rules())
}

/// Why the body could not be read. A key the API does not define is named (a key is not personal
/// data); serde's other messages may quote a value, so they are not passed on.
fn body_error(body: &str, error: &serde_json::Error) -> Rejection {
    let rejection = invalid_body(body, error);
    let message = error.to_string();
    match message.strip_prefix("unknown field `") {
        Some(rest) if rejection.code == RejectionCode::InvalidBody => {
            let key: String = rest
                .split('`')
                .next()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect();
            Rejection::new(
                RejectionCode::InvalidBody,
                format!(
                    "the body has a key the API does not define: `{key}` (it takes RequireCountry, \
                     RequireState, RequireDob, RequireNote, RequireGender, IgnoreSharedCustomers and \
                     Customers)"
                ),
            )
        }
        _ => rejection,
    }
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let record: Record = match decode_record(raw) {
        Ok(record) => record,
        Err(error) => return ParsedRecord::new(index, None, Err(vec![error])),
    };
    let mut check = Checker::default();
    let mut kept = BTreeMap::new();
    let mut keep = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            kept.insert(name.to_owned(), value);
        }
    };

    let email = check.email("Email", record.email);
    let code = check.text("CustomerCode", record.customer_code, MAX_KEY_CHARS);
    let country_text = check.text("Country", record.country, MAX_TEXT_CHARS);
    let mut country = country_text.as_deref().and_then(resolve_country);
    let state = check
        .text("State", record.state, MAX_TEXT_CHARS)
        .and_then(|state| resolve_state(&state, country, country_text.is_some()));
    if let Some((_, Some(named))) = state {
        country = country.or(Some(named));
    }
    let cell_phone = check
        .text("CellPhone", record.cell_phone, MAX_PHONE_CHARS)
        .and_then(|phone| match normalize_phone(&phone, country) {
            Some(e164) => Some(e164),
            None => {
                check.errors.push(FieldError::new(
                    "CellPhone",
                    FieldCode::InvalidPhone,
                    format!(
                        "CellPhone is not a complete phone number of {}",
                        country.unwrap_or(DEFAULT_COUNTRY)
                    ),
                ));
                None
            }
        });
    let date_of_birth = check
        .text("Dob", record.dob, MAX_TEXT_CHARS)
        .and_then(|dob| resolve_dob(&dob))
        .map(|date| date.format("%Y-%m-%d").to_string());
    let gender = record
        .gender
        .as_ref()
        .and_then(Gender::resolve)
        .map(|g| g.code().to_owned());
    let note_type = check
        .text("NoteType", record.note_type, MAX_KEY_CHARS)
        .and_then(|t| NoteType::resolve(&t))
        .map(|t| t.name().to_owned());

    keep(
        extra::LOCATION_ID,
        record.location_id.map(|id| id.to_string()),
    );
    keep(
        extra::CUSTOMER_ID,
        record.customer_id.map(|id| id.to_string()),
    );
    keep(extra::MATCH_EMAIL, email.as_deref().map(fold_case));
    keep(extra::MATCH_CUSTOMER_CODE, code.as_deref().map(fold_case));
    keep(extra::MATCH_CELL_PHONE, cell_phone.clone());
    keep(extra::CUSTOMER_CODE, code);
    keep(
        extra::WORK_PHONE,
        check.text("WorkPhone", record.work_phone, MAX_PHONE_CHARS),
    );
    keep(extra::NOTE_TYPE, note_type);
    keep(
        extra::NOTES,
        check.text("Notes", record.notes, MAX_NOTES_CHARS),
    );
    keep(extra::BALANCE, record.balance.map(|n| n.to_string()));
    keep(
        extra::REWARD_POINTS,
        record.reward_points.map(|n| n.to_string()),
    );
    keep(
        extra::IMAGE,
        check.text("Image", record.image, MAX_IMAGE_CHARS),
    );
    keep(
        extra::NOP_EXTERNAL_ID,
        check.text("NopExternalId", record.nop_external_id, MAX_KEY_CHARS),
    );
    keep(
        extra::LEAD_SOURCE_ID,
        record.lead_source_id.map(|id| id.to_string()),
    );

    let customer = Customer {
        first_name: check.text("FirstName", record.first_name, MAX_TEXT_CHARS),
        last_name: check.text("LastName", record.last_name, MAX_TEXT_CHARS),
        email,
        phone: cell_phone,
        date_of_birth,
        gender,
        address: Some(Address {
            street1: check.text("Address", record.address, MAX_TEXT_CHARS),
            street2: check.text("Address2", record.address2, MAX_TEXT_CHARS),
            city: check.text("City", record.city, MAX_TEXT_CHARS),
            state: state.map(|(code, _)| code.to_owned()),
            postal_code: check.text("Zip", record.zip, MAX_ZIP_CHARS),
            country: country.map(str::to_owned),
        })
        .filter(|address| !address.is_empty()),
        extra: kept,
        ..Customer::default()
    };
    let customer = if check.errors.is_empty() {
        Ok(customer)
    } else {
        Err(check.errors)
    };
    ParsedRecord::new(index, None, customer)
}
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{one, parse};
    use super::super::{Dialect, MatchByContact};
    use super::*;
    use crate::matching::{Contact, Contacts};

    #[test]
    fn every_field_of_the_api_sample_is_kept() {
        let customer = one(json!({
            "LocationId": 1, "CustomerId": 2, "FirstName": "Ada", "LastName": "Lovelace",
            "Email": " Ada@Example.com ", "CellPhone": "+1 (555) 010-0000", "WorkPhone": "555-010-0001",
            "Dob": "2024-10-18T01:16:57.8984692-04:00", "Gender": 1, "CustomerCode": "C-8",
            "Address": "1 Main St", "Address2": "Unit 2", "City": "Springfield", "Zip": "62701",
            "Country": "United States", "State": "Illinois", "NoteType": "general", "Notes": "VIP",
            "Balance": 1.0, "RewardPoints": 12.5, "Image": "https://example.com/a.png",
            "NopExternalId": "nop-18", "LeadSourceId": 1
        }));
        assert_eq!(customer.first_name.as_deref(), Some("Ada"));
        assert_eq!(customer.email.as_deref(), Some("Ada@Example.com"));
        assert_eq!(customer.phone.as_deref(), Some("+15550100000"));
        assert_eq!(customer.date_of_birth.as_deref(), Some("2024-10-18"));
        assert_eq!(customer.gender.as_deref(), Some("M"));
        let address = customer.address.as_ref().unwrap();
        assert_eq!(address.country.as_deref(), Some("US"));
        assert_eq!(address.state.as_deref(), Some("IL"));
        assert_eq!(address.postal_code.as_deref(), Some("62701"));
        assert_eq!(address.street2.as_deref(), Some("Unit 2"));
        let extra = |k: &str| customer.extra.get(k).map(String::as_str);
        assert_eq!(extra(extra::LOCATION_ID), Some("1"));
        assert_eq!(extra(extra::CUSTOMER_ID), Some("2"));
        assert_eq!(extra(extra::CUSTOMER_CODE), Some("C-8"));
        assert_eq!(extra(extra::WORK_PHONE), Some("555-010-0001"));
        assert_eq!(extra(extra::NOTE_TYPE), Some("General"));
        assert_eq!(extra(extra::NOTES), Some("VIP"));
        assert_eq!(extra(extra::BALANCE), Some("1.0"));
        assert_eq!(extra(extra::REWARD_POINTS), Some("12.5"));
        assert_eq!(extra(extra::IMAGE), Some("https://example.com/a.png"));
        assert_eq!(extra(extra::NOP_EXTERNAL_ID), Some("nop-18"));
        assert_eq!(extra(extra::LEAD_SOURCE_ID), Some("1"));
        assert_eq!(extra(extra::MATCH_EMAIL), Some("ada@example.com"));
        assert_eq!(extra(extra::MATCH_CUSTOMER_CODE), Some("c-8"));
        assert_eq!(extra(extra::MATCH_CELL_PHONE), Some("+15550100000"));
        // Where the matching engine reads them.
        let contacts = Contacts::of(&customer);
        assert_eq!(contacts.location.as_deref(), Some("1"));
        assert_eq!(contacts.get(Contact::Email), Some("ada@example.com"));
        assert_eq!(contacts.get(Contact::CustomerCode), Some("c-8"));
        assert_eq!(contacts.get(Contact::CellPhone), Some("+15550100000"));
    }

    #[test]
    fn the_body_options_are_read_and_default_to_false() {
        let body = r#"{"RequireCountry": true, "IgnoreSharedCustomers": true, "Customers": []}"#;
        let rules = MatchByContact.matching_rules(body).expect("the body reads");
        assert!(rules.require_country && rules.ignore_shared_customers);
        assert!(!rules.require_state && !rules.require_dob && !rules.require_gender);
        assert_eq!(
            MatchByContact.matching_rules(r#"{"Customers": []}"#),
            Some(Rules::default())
        );
        assert_eq!(MatchByContact.matching_rules("not json"), None);
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_rejected() {
        let limits = Limits { max_records: 2 };
        let reject = |body: &str| MatchByContact.parse(body, limits).unwrap_err();
        assert_eq!(
            reject(r#"[{"Email": "a@example.com"}]"#).code,
            RejectionCode::InvalidBody
        );
        let unknown = reject(r#"{"RequireCounty": true, "Customers": []}"#);
        assert_eq!(unknown.code, RejectionCode::InvalidBody);
        assert!(
            unknown.message.contains("RequireCounty"),
            "{}",
            unknown.message
        );
        assert_eq!(
            reject(r#"{"RequireDob": "yes", "Customers": []}"#).code,
            RejectionCode::InvalidBody
        );
        assert_eq!(
            reject(r#"{"RequireDob": true}"#).code,
            RejectionCode::InvalidBody
        );
        assert_eq!(
            reject(r#"{"Customers": [{}, {}, {}]}"#).code,
            RejectionCode::TooManyRecords
        );
        assert_eq!(reject("not json").code, RejectionCode::InvalidJson);
    }

    #[test]
    fn a_bad_record_fails_alone_naming_the_field() {
        let records = parse(
            r#"{"Customers": [{"Email": "a@example.com"}, {"Email": "nope"},
                {"LocationId": "north"}, {"Email": "b@example.com", "Surprise": 1},
                {"CellPhone": "555-0100"}, {"FirstName": "x\u0000y"}, {"Balance": 1e400}, 7]}"#,
        );
        assert!(records[0].customer.is_ok());
        let error = |i: usize| records[i].customer.as_ref().unwrap_err()[0].clone();
        assert_eq!(
            (error(1).field.as_str(), error(1).code.as_str()),
            ("Email", "invalid_email")
        );
        assert_eq!(
            (error(2).field.as_str(), error(2).code.as_str()),
            ("LocationId", "invalid_type")
        );
        assert_eq!(error(3).code, FieldCode::UnknownField);
        assert!(error(3).message.contains("Surprise"));
        assert_eq!(
            (error(4).field.as_str(), error(4).code.as_str()),
            ("CellPhone", "invalid_phone")
        );
        assert_eq!(error(5).field, "FirstName");
        assert_eq!(error(6).field, "Balance");
        assert_eq!(error(7).code, FieldCode::InvalidType);
        assert!(records.iter().all(|r| r.key.is_none()));
    }
}
