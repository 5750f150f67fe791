//! `match-by-contact`: the body of `POST api/customers`, "add or update customer(s)".
//!
//! `{"RequireCountry", "RequireState", "RequireDob", "RequireNote", "RequireGender",
//! "IgnoreSharedCustomers", "Customers": [...]}`. A record carries no key of its own: it is matched to
//! a stored customer by its contact details and updates it, or else adds a new customer. The response
//! is one row per record, `{"LocationId", "FirstName", "LastName", "Email", "CustomerCode",
//! "CellPhone", "Dob", "Status", "Message"}`, with `Status` `Added`, `Updated` or `Error`.
//!
//! How the API's page is read where it leaves room:
//!
//! - **Matching.** By `Email`, else by `CustomerCode`, else by `CellPhone`: the first of them that the
//!   record has and that finds anyone decides. Emails and customer codes are compared trimmed and
//!   case-folded (the API's own database compares them without regard to case); phone numbers are
//!   compared in E.164, so `+1 (555) 010-0000` and `15550100000` are one number. Two or more customers
//!   found by that contact fail the record (`ambiguous_match`, naming them): it is never applied to one
//!   of them by guess. Only customers this API wrote are found (they carry the normalized values in
//!   `extra`); customers of the other dialects are keyed by their producers and are left alone.
//! - **Phone numbers** without a country calling code are read in the record's `Country`, or in the
//!   United States when it has none. A number that cannot be read as a complete number of that
//!   country (a 7-digit local number, letters) fails the record: it is a contact to match by, and
//!   dropping it would change what the record matches.
//! - **Locations.** A record's `LocationId` places a customer it adds in that location. A customer
//!   stored without one (added by a record without `LocationId`) is shared by all the tenant's
//!   locations. A record with a location matches the customers of that location and the shared ones,
//!   or only those of its location when `IgnoreSharedCustomers` is true; a record without a location
//!   matches shared customers only. An update never moves a customer: it stays where it was added.
//! - **Updates merge.** A record updates the fields it carries; the ones it leaves out keep their
//!   stored value. A value that cannot be resolved (an unknown country, note type or gender, a `Dob`
//!   that is not a date) is treated as not given, so it never overwrites a stored value. Two records
//!   of one batch that match the same customer are applied in order: the second updates the first.
//! - **Gender** is the API's integer enum, [`Gender`]: 0 Unknown, 1 Male, 2 Female, or those names.
//!   A customer added without a gender that resolves is Unknown, unless `RequireGender` refuses it.
//! - **Country and State** by ISO 3166 code or by name (`US`, `USA`, `840`, `United States`; `IL`,
//!   `Illinois`, `US-IL`), stored as the ISO 3166-1 alpha-2 and the ISO 3166-2 subdivision codes. A
//!   state is read within the record's country, or the United States when it gives none.
//! - **Dob** is `yyyy-mm-dd`; a full timestamp (the page's own sample) is accepted and its date, as
//!   written, kept. .NET's `0001-01-01` and dates in the future are not dates of birth.
//! - **Note types** are [`NoteType`]: General, Medical, Billing and Marketing, by name.
//! - **The Require\* flags** apply to adding only: a record that would add a customer and lacks the
//!   field, or whose value cannot be resolved, is refused (`required_for_add`, naming the field). A
//!   record that updates a customer is never refused by them.
//!
//! Matching needs the stored customers, so it runs in [`crate::store::contacts`], before the records
//! are applied, by the engine in [`crate::matching`]. This module reads the records (writing their
//! normalized contact values where the engine reads them, [`crate::matching::extra`]) and the body's
//! Require\* rules ([`Dialect::matching_rules`]); it never touches SQL.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

use super::text::{Checker, MAX_KEY_CHARS, MAX_TEXT_CHARS, decode_error};
use super::{Dialect, Limits, Rejection, check_record_count, invalid_body};
use crate::matching::{self, Rules};
use crate::model::{Action, Address, Customer, FieldError, ParsedRecord, RecordResult};

pub struct MatchByContact;

/// Longest phone number as written (with spaces, dashes and an extension).
const MAX_PHONE_CHARS: usize = 50;
/// Longest note.
const MAX_NOTES_CHARS: usize = 4000;
/// Longest image reference (a URL).
const MAX_IMAGE_CHARS: usize = 2048;
/// Longest postal code.
const MAX_ZIP_CHARS: usize = 20;

/// Names of the fields this dialect keeps in [`Customer::extra`]: the ones the matching engine
/// reads (the location, the note type and the normalized `match*` contact values, named by
/// [`crate::matching::extra`]) and the API's fields the common model has no place for.
pub mod extra {
    pub use crate::matching::extra::{
        LOCATION_ID, MATCH_CELL_PHONE, MATCH_CUSTOMER_CODE, MATCH_EMAIL, NOTE_TYPE,
    };

    pub const CUSTOMER_ID: &str = "customerId";
    pub const CUSTOMER_CODE: &str = "customerCode";
    pub const WORK_PHONE: &str = "workPhone";
    pub const NOTES: &str = "notes";
    pub const BALANCE: &str = "balance";
    pub const REWARD_POINTS: &str = "rewardPoints";
    pub const IMAGE: &str = "image";
    pub const NOP_EXTERNAL_ID: &str = "nopExternalId";
    pub const LEAD_SOURCE_ID: &str = "leadSourceId";
}

/// The API's `Gender` enum. Its integer values are what producers send; the names are accepted too,
/// in any case. Stored as the common model's `U`, `M`, `F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    /// 0: the default, for a customer added without a gender that resolves.
    Unknown = 0,
    /// 1.
    Male = 1,
    /// 2.
    Female = 2,
}

impl Gender {
    /// A number or a name; anything else does not resolve.
    fn resolve(value: &Value) -> Option<Gender> {
        match value {
            Value::Number(number) => Gender::from_number(number.as_i64()?),
            Value::String(text) => {
                let text = text.trim();
                match text.parse::<i64>() {
                    Ok(number) => Gender::from_number(number),
                    Err(_) => [Gender::Unknown, Gender::Male, Gender::Female]
                        .into_iter()
                        .find(|g| g.name().eq_ignore_ascii_case(text)),
                }
            }
            _ => None,
        }
    }

    fn from_number(number: i64) -> Option<Gender> {
        match number {
            0 => Some(Gender::Unknown),
            1 => Some(Gender::Male),
            2 => Some(Gender::Female),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Gender::Unknown => "Unknown",
            Gender::Male => "Male",
            Gender::Female => "Female",
        }
    }

    /// The common model's code.
    fn code(self) -> &'static str {
        match self {
            Gender::Unknown => "U",
            Gender::Male => "M",
            Gender::Female => "F",
        }
    }
}

/// The note types the API knows, by name (any case). A note of another type is kept without a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteType {
    General,
    Medical,
    Billing,
    Marketing,
}

impl NoteType {
    const ALL: [NoteType; 4] = [
        NoteType::General,
        NoteType::Medical,
        NoteType::Billing,
        NoteType::Marketing,
    ];

    fn name(self) -> &'static str {
        match self {
            NoteType::General => "General",
            NoteType::Medical => "Medical",
            NoteType::Billing => "Billing",
            NoteType::Marketing => "Marketing",
        }
    }

    fn resolve(text: &str) -> Option<NoteType> {
        NoteType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(text.trim()))
    }
}

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

impl Dialect for MatchByContact {
    fn name(&self) -> &'static str {
        "match-by-contact"
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        let body: Body = serde_json::from_str(body).map_err(|error| body_error(body, &error))?;
        let Some(records) = body.customers else {
            return Err(Rejection::new(
                "invalid_body",
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

    fn renders_customers(&self) -> bool {
        true
    }

    fn render_response(&self, records: &[RecordResult], customers: &[Option<&Customer>]) -> Value {
        // Records of one batch that matched the same customer share its result; the first of them
        // added it and the later ones updated it.
        let mut seen: HashSet<Uuid> = HashSet::new();
        let rows = records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let status = match (record.action, record.id) {
                    (Action::Failed, _) => "Error",
                    (Action::Created, Some(id)) if seen.insert(id) => "Added",
                    (Action::Created, None) => "Added",
                    (_, id) => {
                        seen.extend(id);
                        "Updated"
                    }
                };
                let message = (!record.errors.is_empty()).then(|| {
                    record
                        .errors
                        .iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                row(customers.get(i).copied().flatten(), status, message)
            })
            .collect();
        Value::Array(rows)
    }

    /// Rows are cut from the whole response: re-rendered from the results alone they would lose the
    /// customers' fields.
    fn slice_response(
        &self,
        response: &Value,
        records: &[RecordResult],
        range: std::ops::Range<usize>,
    ) -> Value {
        match response.as_array() {
            Some(rows) if rows.len() == records.len() => Value::Array(rows[range].to_vec()),
            _ => self.render_response(&records[range], &[]),
        }
    }

    fn merges(&self) -> bool {
        true
    }

    fn merge(&self, stored: Customer, incoming: Customer) -> Customer {
        matching::merge(stored, incoming)
    }

    fn matches_by_contact(&self) -> bool {
        true
    }

    /// The body's options. `None` for a body [`MatchByContact::parse`] rejects; the records are
    /// skipped over, not decoded.
    fn matching_rules(&self, body: &str) -> Option<Rules> {
        serde_json::from_str::<Body>(body)
            .ok()
            .map(|body| body.rules())
    }
}

/// Why the body could not be read. A key the API does not define is named (a key is not personal
/// data); serde's other messages may quote a value, so they are not passed on.
fn body_error(body: &str, error: &serde_json::Error) -> Rejection {
    let rejection = invalid_body(body, error);
    let message = error.to_string();
    match message.strip_prefix("unknown field `") {
        Some(rest) if rejection.code == "invalid_body" => {
            let key: String = rest
                .split('`')
                .next()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect();
            Rejection::new(
                "invalid_body",
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

/// One response row: the customer as this batch wrote it (for a failed record, only its status and
/// why).
fn row(customer: Option<&Customer>, status: &str, message: Option<String>) -> Value {
    let kept = |name: &str| customer.and_then(|c| c.extra.get(name));
    let location = kept(extra::LOCATION_ID).map(|id| match id.parse::<i64>() {
        Ok(number) => json!(number),
        Err(_) => json!(id),
    });
    json!({
        "LocationId": location,
        "FirstName": customer.and_then(|c| c.first_name.as_deref()),
        "LastName": customer.and_then(|c| c.last_name.as_deref()),
        "Email": customer.and_then(|c| c.email.as_deref()),
        "CustomerCode": kept(extra::CUSTOMER_CODE),
        "CellPhone": customer.and_then(|c| c.phone.as_deref()),
        "Dob": customer.and_then(|c| c.date_of_birth.as_deref()),
        "Status": status,
        "Message": message,
    })
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let record: Record = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(record) => record,
        Err(error) => return ParsedRecord::new(index, None, Err(vec![decode_error(error)])),
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
                    "invalid_phone",
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

/// Emails and customer codes are compared without regard to case or surrounding spaces.
fn fold_case(text: &str) -> String {
    text.trim().to_lowercase()
}

/// Where numbers without a calling code, and states without a country, are read.
const DEFAULT_COUNTRY: &str = "US";

/// The ISO 3166-1 alpha-2 code of a country given by alpha-2, alpha-3 or numeric code, by name or by
/// a common alias, in any case and spacing.
fn resolve_country(text: &str) -> Option<&'static str> {
    // celes knows names without spaces or punctuation ("UnitedStates", "GuineaBissau").
    let squeezed: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '.' | '-' | '_' | '\'' | ','))
        .collect();
    celes::Country::from_str(&squeezed)
        .ok()
        .map(|country| country.alpha2)
}

/// The subdivision code (`IL`) of a state given by name or code within `country` (the United
/// States when the record names no country), or by its full ISO 3166-2 code (`US-IL`), which also
/// names the country. A record whose country did not resolve has no country to read a short code in.
/// Only a full code supplies a missing country: reading a state in the default country is a guess
/// that must not satisfy `RequireCountry`.
fn resolve_state(
    text: &str,
    country: Option<&'static str>,
    country_given: bool,
) -> Option<(&'static str, Option<&'static str>)> {
    if let Some(subdivision) = rust_iso3166::iso3166_2::from_code(&text.to_uppercase()) {
        let agrees = match country {
            Some(country) => country == subdivision.country_code,
            None => !country_given,
        };
        return agrees.then_some((subdivision.region_code, Some(subdivision.country_code)));
    }
    let country = match country {
        Some(country) => country,
        None if !country_given => DEFAULT_COUNTRY,
        None => return None,
    };
    let wanted = text.to_lowercase();
    rust_iso3166::from_alpha2(country)?
        .subdivisions()?
        .iter()
        .find(|s| s.region_code.eq_ignore_ascii_case(text) || s.name.to_lowercase() == wanted)
        .map(|s| (s.region_code, None))
}

/// The E.164 form of a phone number, read in `country` (or [`DEFAULT_COUNTRY`]) when it has no
/// calling code. Only a number as long as that country's numbers is accepted: a local number without
/// its area code would match different people in different places.
fn normalize_phone(text: &str, country: Option<&str>) -> Option<String> {
    let region = phonenumber::country::Id::from_str(country.unwrap_or(DEFAULT_COUNTRY)).ok();
    let number = phonenumber::parse(region, text).ok()?;
    // The metadata of the calling code's main country: a number need not be assigned (555 numbers
    // are not) to be a complete one.
    let metas = phonenumber::metadata::DATABASE.by_code(&number.code().value())?;
    let meta = metas
        .iter()
        .find(|meta| meta.is_main_country_for_code())
        .or(metas.first())?;
    let kinds = meta.descriptors();
    let digits = number.national().to_string().len();
    let complete = [
        kinds.fixed_line(),
        kinds.mobile(),
        kinds.toll_free(),
        kinds.premium_rate(),
        kinds.shared_cost(),
        kinds.personal_number(),
        kinds.voip(),
        kinds.pager(),
        kinds.uan(),
        kinds.voicemail(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|kind| kind.possible_length())
    .any(|&length| usize::from(length) == digits);
    complete.then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// A date of birth: `yyyy-mm-dd`, or the date of a timestamp as written (not moved to UTC, which
/// could change the day).
fn resolve_dob(text: &str) -> Option<NaiveDate> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.date_naive())
        })
        .or_else(|| text.parse::<NaiveDateTime>().ok().map(|t| t.date()))?;
    // .NET's DateTime.MinValue is how many producers say "no date".
    let unset = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date");
    (date != unset && date <= Utc::now().date_naive()).then_some(date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{Candidate, Contacts, Decision, Resolver};

    fn parse(body: &str) -> Vec<ParsedRecord> {
        MatchByContact
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    fn one(record: Value) -> Customer {
        let body = json!({"Customers": [record]}).to_string();
        let mut records = parse(&body);
        records.remove(0).customer.expect("a valid record")
    }

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
            "invalid_body"
        );
        let unknown = reject(r#"{"RequireCounty": true, "Customers": []}"#);
        assert_eq!(unknown.code, "invalid_body");
        assert!(
            unknown.message.contains("RequireCounty"),
            "{}",
            unknown.message
        );
        assert_eq!(
            reject(r#"{"RequireDob": "yes", "Customers": []}"#).code,
            "invalid_body"
        );
        assert_eq!(reject(r#"{"RequireDob": true}"#).code, "invalid_body");
        assert_eq!(
            reject(r#"{"Customers": [{}, {}, {}]}"#).code,
            "too_many_records"
        );
        assert_eq!(reject("not json").code, "invalid_json");
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
        assert_eq!(error(3).code, "unknown_field");
        assert!(error(3).message.contains("Surprise"));
        assert_eq!(
            (error(4).field.as_str(), error(4).code.as_str()),
            ("CellPhone", "invalid_phone")
        );
        assert_eq!(error(5).field, "FirstName");
        assert_eq!(error(6).field, "Balance");
        assert_eq!(error(7).code, "invalid_type");
        assert!(records.iter().all(|r| r.key.is_none()));
    }

    #[test]
    fn gender_is_read_by_number_or_name_and_otherwise_left_unresolved() {
        for (gender, expected) in [
            (json!(0), Some("U")),
            (json!(1), Some("M")),
            (json!(2), Some("F")),
            (json!("female"), Some("F")),
            (json!("Male"), Some("M")),
            (json!("UNKNOWN"), Some("U")),
            (json!("2"), Some("F")),
            (json!(7), None),
            (json!("robot"), None),
            (json!(true), None),
            (Value::Null, None),
        ] {
            let customer = one(json!({"Gender": gender}));
            assert_eq!(customer.gender.as_deref(), expected, "{gender}");
        }
    }

    #[test]
    fn countries_and_states_are_read_by_code_or_name() {
        let place = |country: Value, state: Value| {
            let customer = one(json!({"Country": country, "State": state}));
            let address = customer.address.unwrap_or_default();
            (address.country, address.state)
        };
        let us_il = (Some("US".to_owned()), Some("IL".to_owned()));
        for country in [
            "US",
            "usa",
            "United States",
            "United States of America",
            "840",
        ] {
            assert_eq!(place(json!(country), json!("Illinois")), us_il, "{country}");
            assert_eq!(place(json!(country), json!("il")), us_il, "{country}");
        }
        // Without a country a state is read in the United States (which it does not make the
        // customer's country), or by its full code anywhere.
        assert_eq!(
            place(Value::Null, json!("IL")),
            (None, Some("IL".to_owned()))
        );
        assert_eq!(
            place(Value::Null, json!("CA-ON")),
            (Some("CA".to_owned()), Some("ON".to_owned()))
        );
        assert_eq!(
            place(json!("Canada"), json!("Ontario")),
            (Some("CA".to_owned()), Some("ON".to_owned()))
        );
        // Not a state of that country, or no country to read it in: unresolved, not an error.
        assert_eq!(place(json!("Canada"), json!("Illinois")).1, None);
        assert_eq!(place(json!("Narnia"), json!("IL")), (None, None));
        assert_eq!(place(json!("DE"), json!("US-IL")).1, None);
    }

    #[test]
    fn a_dob_is_a_date_or_the_date_of_a_timestamp() {
        let dob = |text: &str| one(json!({"Dob": text})).date_of_birth;
        assert_eq!(dob("1990-02-28").as_deref(), Some("1990-02-28"));
        assert_eq!(
            dob("2024-10-18T01:16:57.8984692-04:00").as_deref(),
            Some("2024-10-18")
        );
        // The date as written, not the UTC date (which is the 19th here).
        assert_eq!(
            dob("2024-10-18T23:30:00-04:00").as_deref(),
            Some("2024-10-18")
        );
        assert_eq!(dob("1990-02-28T00:00:00").as_deref(), Some("1990-02-28"));
        for unresolved in [
            "1990-02-30",
            "28/02/1990",
            "yesterday",
            "0001-01-01T00:00:00",
            "2999-01-01",
        ] {
            assert_eq!(dob(unresolved), None, "{unresolved}");
        }
    }

    #[test]
    fn phone_numbers_are_compared_in_e164() {
        let cell = |phone: &str, country: Value| {
            one(json!({"CellPhone": phone, "Country": country}))
                .extra
                .get(extra::MATCH_CELL_PHONE)
                .cloned()
        };
        let us = Some("+15550100000".to_owned());
        assert_eq!(cell("+1 (555) 010-0000", Value::Null), us);
        assert_eq!(cell("15550100000", Value::Null), us);
        assert_eq!(cell("555.010.0000", json!("US")), us);
        // Without a calling code, a number is read in the record's country.
        assert_eq!(
            cell("07911 123456", json!("United Kingdom")),
            Some("+447911123456".to_owned())
        );
        assert_eq!(
            cell("+44 7911 123456", json!("US")),
            Some("+447911123456".to_owned())
        );
    }

    #[test]
    fn note_types_are_known_by_name() {
        let note = |t: &str| {
            one(json!({"NoteType": t}))
                .extra
                .get(extra::NOTE_TYPE)
                .cloned()
        };
        assert_eq!(note("medical").as_deref(), Some("Medical"));
        assert_eq!(note("Billing").as_deref(), Some("Billing"));
        assert_eq!(note("MARKETING").as_deref(), Some("Marketing"));
        assert_eq!(note("Gossip"), None);
    }

    #[test]
    fn records_are_matched_by_their_normalized_contacts() {
        let stored = |key: &str, values: [Option<&str>; 3]| Candidate {
            id: None,
            key: key.to_owned(),
            contacts: Contacts {
                location: None,
                values: values.map(|v| v.map(str::to_owned)),
            },
        };
        let mut resolver = Resolver::new(Rules::default());
        resolver.set_candidates(vec![
            stored("by-email", [Some("a@example.com"), None, None]),
            stored("by-code", [None, Some("c-1"), None]),
            stored("by-phone", [None, None, Some("+15550100000")]),
        ]);
        let decide = |record: Value| match resolver.decide(&one(record), || "new".into()) {
            Decision::Add { key, .. } | Decision::Update { key, .. } => key,
            Decision::Refused(errors) => panic!("refused: {errors:?}"),
        };
        let both = json!({"Email": " A@Example.com ", "CustomerCode": "C-1"});
        assert_eq!(decide(both), "by-email");
        let code = json!({"Email": "z@example.com", "CustomerCode": " c-1 "});
        assert_eq!(decide(code), "by-code");
        assert_eq!(
            decide(json!({"CellPhone": "+1 (555) 010-0000"})),
            "by-phone"
        );
        let local = json!({"CellPhone": "555.010.0000", "Country": "USA"});
        assert_eq!(decide(local), "by-phone");
        let located = json!({"LocationId": 4, "Email": "a@example.com"});
        assert_eq!(decide(located), "by-email", "a shared customer is found");
        assert_eq!(decide(json!({"Email": "b@example.com"})), "new");
    }

    fn result(
        index: usize,
        id: Option<u128>,
        action: Action,
        errors: Vec<FieldError>,
    ) -> RecordResult {
        RecordResult {
            index,
            key: None,
            id: id.map(Uuid::from_u128),
            action,
            version: id.map(|_| 1),
            errors,
        }
    }

    #[test]
    fn the_response_is_one_row_per_record_with_the_api_shape() {
        let ada = one(json!({"LocationId": 3, "FirstName": "Ada", "LastName": "L",
            "Email": "a@example.com", "CustomerCode": "C1", "CellPhone": "15550100000",
            "Dob": "1990-01-01"}));
        let records = [
            result(0, Some(1), Action::Created, vec![]),
            result(1, Some(1), Action::Created, vec![]),
            result(2, Some(2), Action::Unchanged, vec![]),
            result(
                3,
                None,
                Action::Failed,
                vec![
                    FieldError::new("Email", "invalid_email", "bad email"),
                    FieldError::new("Zip", "too_long", "long zip"),
                ],
            ),
        ];
        let customers = [Some(&ada), Some(&ada), Some(&ada), None];
        let response = MatchByContact.render_response(&records, &customers);
        assert_eq!(
            response[0],
            json!({"LocationId": 3, "FirstName": "Ada", "LastName": "L", "Email": "a@example.com",
                   "CustomerCode": "C1", "CellPhone": "+15550100000", "Dob": "1990-01-01",
                   "Status": "Added", "Message": null})
        );
        assert_eq!(
            response[1]["Status"], "Updated",
            "the second record updated the first"
        );
        assert_eq!(response[2]["Status"], "Updated", "unchanged is Updated");
        assert_eq!(response[3]["Status"], "Error");
        assert_eq!(response[3]["Message"], "bad email; long zip");
        assert_eq!(response[3]["Email"], Value::Null);
        let part = MatchByContact.slice_response(&response, &records, 1..3);
        assert_eq!(part, json!([response[1], response[2]]));
    }
}
