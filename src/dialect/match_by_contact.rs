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
//! are applied, driven by the [`Resolver`] here; this module never touches SQL.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::text::{Checker, MAX_KEY_CHARS, MAX_TEXT_CHARS, decode_error};
use super::{Dialect, Keying, Limits, Merge, Rejection, check_record_count, invalid_body};
use crate::codes::{FieldCode, RejectionCode};
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

/// Names of the fields this dialect keeps in [`Customer::extra`]. The `match*` ones hold the
/// normalized contact values that customers are found by; migration
/// `20261123000002_contact_matching.sql` indexes them, and [`crate::store::contacts`] reads them by
/// these names.
pub mod extra {
    pub const LOCATION_ID: &str = "locationId";
    pub const CUSTOMER_ID: &str = "customerId";
    pub const CUSTOMER_CODE: &str = "customerCode";
    pub const WORK_PHONE: &str = "workPhone";
    pub const NOTE_TYPE: &str = "noteType";
    pub const NOTES: &str = "notes";
    pub const BALANCE: &str = "balance";
    pub const REWARD_POINTS: &str = "rewardPoints";
    pub const IMAGE: &str = "image";
    pub const NOP_EXTERNAL_ID: &str = "nopExternalId";
    pub const LEAD_SOURCE_ID: &str = "leadSourceId";
    pub const MATCH_EMAIL: &str = "matchEmail";
    pub const MATCH_CUSTOMER_CODE: &str = "matchCustomerCode";
    pub const MATCH_CELL_PHONE: &str = "matchCellPhone";
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

/// The body's options, which hold for every record of the batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub require_country: bool,
    pub require_state: bool,
    pub require_dob: bool,
    pub require_note: bool,
    pub require_gender: bool,
    pub ignore_shared_customers: bool,
}

impl Rules {
    /// The options of a body that [`MatchByContact::parse`] has already read (so it does parse);
    /// the records are skipped over, not decoded.
    pub fn read(body: &str) -> Rules {
        serde_json::from_str::<Body>(body)
            .map(|body| body.rules())
            .unwrap_or_default()
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

    fn keying(&self) -> Keying {
        Keying::ByContact
    }

    fn merge(&self) -> Option<Merge> {
        Some(merge)
    }
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

/// `incoming`'s fields over `stored`'s: what a record leaves out keeps its stored value. The
/// location is the stored one, whatever the record says: an update never moves a customer.
pub fn merge(stored: Customer, incoming: Customer) -> Customer {
    let mut merged = stored;
    let location = merged.extra.get(extra::LOCATION_ID).cloned();
    merged.first_name = incoming.first_name.or(merged.first_name);
    merged.last_name = incoming.last_name.or(merged.last_name);
    merged.email = incoming.email.or(merged.email);
    merged.phone = incoming.phone.or(merged.phone);
    merged.date_of_birth = incoming.date_of_birth.or(merged.date_of_birth);
    merged.gender = incoming.gender.or(merged.gender);
    merged.address = match (merged.address.take(), incoming.address) {
        (Some(stored), Some(incoming)) => Some(Address {
            street1: incoming.street1.or(stored.street1),
            street2: incoming.street2.or(stored.street2),
            city: incoming.city.or(stored.city),
            state: incoming.state.or(stored.state),
            postal_code: incoming.postal_code.or(stored.postal_code),
            country: incoming.country.or(stored.country),
        }),
        (stored, incoming) => incoming.or(stored),
    };
    merged.extra.extend(incoming.extra);
    set_location(&mut merged, location.as_deref());
    merged
}

fn set_location(customer: &mut Customer, location: Option<&str>) {
    match location {
        Some(location) => customer
            .extra
            .insert(extra::LOCATION_ID.to_owned(), location.to_owned()),
        None => customer.extra.remove(extra::LOCATION_ID),
    };
}

/// A contact a record is matched by, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contact {
    Email = 0,
    CustomerCode = 1,
    CellPhone = 2,
}

impl Contact {
    pub const ALL: [Contact; 3] = [Contact::Email, Contact::CustomerCode, Contact::CellPhone];

    /// The API's field name.
    pub fn field(self) -> &'static str {
        match self {
            Contact::Email => "Email",
            Contact::CustomerCode => "CustomerCode",
            Contact::CellPhone => "CellPhone",
        }
    }

    fn extra_key(self) -> &'static str {
        match self {
            Contact::Email => extra::MATCH_EMAIL,
            Contact::CustomerCode => extra::MATCH_CUSTOMER_CODE,
            Contact::CellPhone => extra::MATCH_CELL_PHONE,
        }
    }
}

/// Where a customer lives and the normalized contact values it is found by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    /// `None`: shared by all the tenant's locations.
    pub location: Option<String>,
    /// By [`Contact`].
    pub values: [Option<String>; 3],
}

impl Contacts {
    pub fn of(customer: &Customer) -> Contacts {
        Contacts {
            location: customer.extra.get(extra::LOCATION_ID).cloned(),
            values: Contact::ALL.map(|contact| customer.extra.get(contact.extra_key()).cloned()),
        }
    }

    pub fn get(&self, contact: Contact) -> Option<&str> {
        self.values[contact as usize].as_deref()
    }
}

/// A customer that shares a contact value with records being resolved: stored, or about to be
/// written by another batch that resolved it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `None` while the customer is not stored yet.
    pub id: Option<Uuid>,
    pub key: String,
    pub contacts: Contacts,
}

/// What becomes of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new customer under a new key, in `location`.
    Add {
        key: String,
        location: Option<String>,
    },
    /// The customer with this key, which lives in `location`.
    Update {
        key: String,
        location: Option<String>,
    },
    /// The record fails.
    Refused(Vec<FieldError>),
}

/// The key of the customer that record `index` of a batch adds. Derived from the batch, so that a
/// batch resolved again after a crash adds under the same keys.
pub fn new_key(tenant: &str, batch_id: &str, index: usize) -> String {
    let digest = Sha256::new()
        .chain_update(tenant)
        .chain_update([0x1f])
        .chain_update(batch_id)
        .chain_update([0x1f])
        .chain_update(index.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "contact:{}",
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    )
}

/// A customer this batch has added or updated so far.
#[derive(Debug)]
struct Touched {
    id: Option<Uuid>,
    location: Option<String>,
    /// The contact values this batch gave it; where `None`, the stored value still holds.
    values: [Option<String>; 3],
    /// Everything this batch wrote to it, merged in record order.
    doc: Customer,
}

/// Decides, record by record and in order, which customer each record of a batch adds or updates.
///
/// It sees the candidates the store found for the records at hand ([`Resolver::set_candidates`])
/// and what the batch's earlier records did: a customer added earlier in the batch is found by the
/// later records, and a contact value changed earlier in the batch no longer finds the customer that
/// had it. The store calls it under locks on the contact values, so what it decides holds until the
/// decisions are recorded.
#[derive(Debug)]
pub struct Resolver {
    rules: Rules,
    candidates: Vec<Candidate>,
    /// Per [`Contact`]: value → positions in `candidates`.
    candidates_by_value: [HashMap<String, Vec<usize>>; 3],
    touched: HashMap<String, Touched>,
    /// Per [`Contact`]: value → keys this batch gave that value.
    touched_by_value: [HashMap<String, BTreeSet<String>>; 3],
}

impl Resolver {
    pub fn new(rules: Rules) -> Self {
        Resolver {
            rules,
            candidates: Vec::new(),
            candidates_by_value: Default::default(),
            touched: HashMap::new(),
            touched_by_value: Default::default(),
        }
    }

    /// The candidates for the next records (replacing the previous ones, read under locks that
    /// have since been released).
    pub fn set_candidates(&mut self, candidates: Vec<Candidate>) {
        let mut by_value: [HashMap<String, Vec<usize>>; 3] = Default::default();
        for (i, candidate) in candidates.iter().enumerate() {
            for contact in Contact::ALL {
                if let Some(value) = candidate.contacts.get(contact) {
                    by_value[contact as usize]
                        .entry(value.to_owned())
                        .or_default()
                        .push(i);
                }
            }
        }
        self.candidates = candidates;
        self.candidates_by_value = by_value;
    }

    /// What `customer` (a record as parsed) does: update the one customer found by its first
    /// contact that finds any, or else add one under `new_key` if the Require* rules allow it.
    pub fn decide(&self, customer: &Customer, new_key: impl FnOnce() -> String) -> Decision {
        let contacts = Contacts::of(customer);
        for contact in Contact::ALL {
            let Some(value) = contacts.get(contact) else {
                continue;
            };
            let found = self.find(contact, value, contacts.location.as_deref());
            let mut found = found.into_iter();
            match (found.next(), found.next()) {
                (None, _) => continue,
                (Some((key, (_, location))), None) => {
                    return Decision::Update {
                        key: key.to_owned(),
                        location: location.map(str::to_owned),
                    };
                }
                (Some(first), Some(second)) => {
                    let all: Vec<_> = [first, second].into_iter().chain(found).collect();
                    let names: Vec<String> = all
                        .iter()
                        .map(|(key, (id, _))| {
                            id.map_or_else(|| key.to_string(), |id| id.to_string())
                        })
                        .collect();
                    return Decision::Refused(vec![FieldError::new(
                        contact.field(),
                        FieldCode::AmbiguousMatch,
                        format!(
                            "{} matches {} customers ({}); the record is not applied to one of them by guess",
                            contact.field(),
                            names.len(),
                            names.join(", ")
                        ),
                    )]);
                }
            }
        }
        let missing = self.missing_for_add(customer);
        if missing.is_empty() {
            Decision::Add {
                key: new_key(),
                location: contacts.location,
            }
        } else {
            Decision::Refused(missing)
        }
    }

    /// Applies a decision (just made, or recorded by an earlier delivery of the batch): returns the
    /// record's key and the customer document to write, and remembers what the batch did.
    pub fn settle(
        &mut self,
        customer: &Customer,
        decision: &Decision,
    ) -> Result<(String, Customer), Vec<FieldError>> {
        let (key, location, adds) = match decision {
            Decision::Refused(errors) => return Err(errors.clone()),
            Decision::Add { key, location } => (key, location, true),
            Decision::Update { key, location } => (key, location, false),
        };
        let mut doc = customer.clone();
        set_location(&mut doc, location.as_deref());
        if adds && doc.gender.is_none() {
            doc.gender = Some(Gender::Unknown.code().to_owned());
        }
        let contacts = Contacts::of(&doc);
        let stored_id = self
            .candidates
            .iter()
            .find(|c| &c.key == key)
            .and_then(|c| c.id);
        let (doc, mut values, id) = match self.touched.remove(key) {
            // The pipeline writes only a key's last record; it carries what the earlier ones wrote.
            Some(earlier) => (merge(earlier.doc, doc), earlier.values, earlier.id),
            None => (doc, Default::default(), stored_id),
        };
        for contact in Contact::ALL {
            let Some(value) = contacts.get(contact) else {
                continue;
            };
            let slot = &mut values[contact as usize];
            if slot.as_deref() == Some(value) {
                continue;
            }
            let index = &mut self.touched_by_value[contact as usize];
            if let Some(old) = slot.take()
                && let Some(keys) = index.get_mut(&old)
            {
                keys.remove(key);
            }
            index
                .entry(value.to_owned())
                .or_default()
                .insert(key.clone());
            *slot = Some(value.to_owned());
        }
        self.touched.insert(
            key.clone(),
            Touched {
                id,
                location: location.clone(),
                values,
                doc: doc.clone(),
            },
        );
        Ok((key.clone(), doc))
    }

    /// The customers a contact value finds for a record in `location`: key → (id, location).
    fn find(
        &self,
        contact: Contact,
        value: &str,
        location: Option<&str>,
    ) -> BTreeMap<&str, (Option<Uuid>, Option<&str>)> {
        let mut found: BTreeMap<&str, (Option<Uuid>, Option<&str>)> = BTreeMap::new();
        let positions = self.candidates_by_value[contact as usize].get(value);
        for candidate in positions
            .into_iter()
            .flatten()
            .map(|&i| &self.candidates[i])
        {
            let (id, home) = match self.touched.get(&candidate.key) {
                // This batch gave it another value for this contact: the stored one is gone.
                Some(touched) if touched.values[contact as usize].is_some() => continue,
                Some(touched) => (touched.id.or(candidate.id), touched.location.as_deref()),
                None => (candidate.id, candidate.contacts.location.as_deref()),
            };
            if self.in_scope(home, location) {
                let entry = found.entry(candidate.key.as_str()).or_insert((id, home));
                entry.0 = entry.0.or(id);
            }
        }
        let keys = self.touched_by_value[contact as usize].get(value);
        for key in keys.into_iter().flatten() {
            let touched = &self.touched[key];
            let home = touched.location.as_deref();
            if self.in_scope(home, location) {
                found.insert(key.as_str(), (touched.id, home));
            }
        }
        found
    }

    /// Whether a customer living in `home` can be matched by a record in `location`.
    fn in_scope(&self, home: Option<&str>, location: Option<&str>) -> bool {
        match (location, home) {
            (Some(location), Some(home)) => location == home,
            (Some(_), None) => !self.rules.ignore_shared_customers,
            (None, home) => home.is_none(),
        }
    }

    /// Why the Require* rules refuse to add this record, one error per missing field.
    fn missing_for_add(&self, customer: &Customer) -> Vec<FieldError> {
        let address = customer.address.as_ref();
        let checks = [
            (
                self.rules.require_country,
                address.and_then(|a| a.country.as_ref()).is_some(),
                "Country",
                "is missing or is not a known country",
            ),
            (
                self.rules.require_state,
                address.and_then(|a| a.state.as_ref()).is_some(),
                "State",
                "is missing or is not a known state of the customer's country",
            ),
            (
                self.rules.require_dob,
                customer.date_of_birth.is_some(),
                "Dob",
                "is missing or is not a date of birth (yyyy-mm-dd)",
            ),
            (
                self.rules.require_note,
                customer.extra.contains_key(extra::NOTE_TYPE),
                "NoteType",
                "is missing or is not a known note type (General, Medical, Billing, Marketing)",
            ),
            (
                self.rules.require_gender,
                customer.gender.is_some(),
                "Gender",
                "is missing or is not a known gender (0 Unknown, 1 Male, 2 Female)",
            ),
        ];
        checks
            .into_iter()
            .filter(|(required, present, _, _)| *required && !*present)
            .map(|(_, _, field, why)| {
                FieldError::new(
                    field,
                    FieldCode::RequiredForAdd,
                    format!(
                        "{field} {why}, and Require{} refuses to add a customer without it",
                        if field == "NoteType" { "Note" } else { field }
                    ),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rules = Rules::read(body);
        assert!(rules.require_country && rules.ignore_shared_customers);
        assert!(!rules.require_state && !rules.require_dob && !rules.require_gender);
        assert_eq!(Rules::read(r#"{"Customers": []}"#), Rules::default());
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

    fn stored(id: u128, key: &str, location: Option<&str>, values: [Option<&str>; 3]) -> Candidate {
        Candidate {
            id: Some(Uuid::from_u128(id)),
            key: key.to_owned(),
            contacts: Contacts {
                location: location.map(str::to_owned),
                values: values.map(|v| v.map(str::to_owned)),
            },
        }
    }

    fn resolver(rules: Rules, candidates: Vec<Candidate>) -> Resolver {
        let mut resolver = Resolver::new(rules);
        resolver.set_candidates(candidates);
        resolver
    }

    fn key_of(decision: &Decision) -> &str {
        match decision {
            Decision::Add { key, .. } | Decision::Update { key, .. } => key,
            Decision::Refused(errors) => panic!("refused: {errors:?}"),
        }
    }

    #[test]
    fn email_is_tried_before_customer_code_and_cell_phone() {
        let resolver = resolver(
            Rules::default(),
            vec![
                stored(1, "by-email", None, [Some("a@example.com"), None, None]),
                stored(2, "by-code", None, [None, Some("c-1"), None]),
                stored(3, "by-phone", None, [None, None, Some("+15550100000")]),
            ],
        );
        let decide = |record: Value| resolver.decide(&one(record), || "new".into());
        let all =
            json!({"Email": "A@example.com", "CustomerCode": "C-1", "CellPhone": "15550100000"});
        assert_eq!(key_of(&decide(all)), "by-email");
        let code =
            json!({"Email": "z@example.com", "CustomerCode": "c-1", "CellPhone": "15550100000"});
        assert_eq!(key_of(&decide(code)), "by-code");
        assert_eq!(
            key_of(&decide(json!({"CellPhone": "+1 555 010 0000"}))),
            "by-phone"
        );
        assert_eq!(
            decide(json!({"Email": "new@example.com"})),
            Decision::Add {
                key: "new".into(),
                location: None
            }
        );
    }

    #[test]
    fn two_customers_with_the_contact_are_ambiguous_and_named() {
        let resolver = resolver(
            Rules::default(),
            vec![
                stored(1, "a", None, [Some("a@example.com"), None, None]),
                stored(2, "b", None, [Some("a@example.com"), None, None]),
            ],
        );
        let Decision::Refused(errors) =
            resolver.decide(&one(json!({"Email": "a@example.com"})), || "new".into())
        else {
            panic!("not refused");
        };
        assert_eq!(errors[0].code, FieldCode::AmbiguousMatch);
        assert_eq!(errors[0].field, "Email");
        assert!(errors[0].message.contains(&Uuid::from_u128(1).to_string()));
        assert!(errors[0].message.contains(&Uuid::from_u128(2).to_string()));
    }

    #[test]
    fn require_flags_refuse_an_add_but_not_an_update() {
        let rules = Rules {
            require_country: true,
            require_state: true,
            require_dob: true,
            require_note: true,
            require_gender: true,
            ignore_shared_customers: false,
        };
        let resolver = resolver(
            rules,
            vec![stored(
                1,
                "known",
                None,
                [Some("known@example.com"), None, None],
            )],
        );
        let bare =
            |email: &str| one(json!({"Email": email, "Gender": "robot", "Country": "Narnia"}));
        let Decision::Refused(errors) = resolver.decide(&bare("new@example.com"), || "new".into())
        else {
            panic!("an add without the required fields is refused");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["Country", "State", "Dob", "NoteType", "Gender"]);
        assert!(errors.iter().all(|e| e.code == FieldCode::RequiredForAdd));
        assert!(errors[0].message.contains("RequireCountry"));
        assert!(errors[3].message.contains("RequireNote"));
        assert_eq!(
            key_of(&resolver.decide(&bare("known@example.com"), || "new".into())),
            "known"
        );
        let complete = one(
            json!({"Email": "new@example.com", "Country": "USA", "State": "Illinois",
            "Dob": "1990-01-01", "NoteType": "General", "Gender": 0}),
        );
        assert_eq!(key_of(&resolver.decide(&complete, || "new".into())), "new");
    }

    #[test]
    fn an_added_customer_without_a_gender_is_unknown_and_an_update_keeps_the_stored_one() {
        let mut resolver = resolver(Rules::default(), vec![]);
        let customer = one(json!({"Email": "a@example.com", "Gender": "robot"}));
        let add = resolver.decide(&customer, || "k".into());
        let (_, doc) = resolver.settle(&customer, &add).unwrap();
        assert_eq!(doc.gender.as_deref(), Some("U"));
        let update = Decision::Update {
            key: "stored".into(),
            location: None,
        };
        let (_, doc) = resolver.settle(&customer, &update).unwrap();
        assert_eq!(doc.gender, None, "left to the stored value by the merge");
    }

    #[test]
    fn a_later_record_of_the_batch_updates_the_customer_an_earlier_one_added() {
        let mut resolver = resolver(Rules::default(), vec![]);
        let first = one(json!({"Email": "A@example.com", "FirstName": "Ada", "City": "Paris"}));
        let second =
            one(json!({"Email": "a@example.com ", "LastName": "Lovelace", "City": "Rome"}));
        let decision = resolver.decide(&first, || "k1".into());
        resolver.settle(&first, &decision).unwrap();
        let decision = resolver.decide(&second, || "k2".into());
        assert_eq!(
            decision,
            Decision::Update {
                key: "k1".into(),
                location: None
            }
        );
        let (key, doc) = resolver.settle(&second, &decision).unwrap();
        assert_eq!(key, "k1");
        assert_eq!(doc.first_name.as_deref(), Some("Ada"));
        assert_eq!(doc.last_name.as_deref(), Some("Lovelace"));
        assert_eq!(doc.address.unwrap().city.as_deref(), Some("Rome"));
    }

    #[test]
    fn a_contact_changed_earlier_in_the_batch_no_longer_finds_the_customer() {
        let mut resolver = resolver(
            Rules::default(),
            vec![stored(
                1,
                "k0",
                None,
                [Some("old@example.com"), Some("c-1"), None],
            )],
        );
        let change = one(json!({"CustomerCode": "C-1", "Email": "new@example.com"}));
        let decision = resolver.decide(&change, || "unused".into());
        assert_eq!(key_of(&decision), "k0");
        resolver.settle(&change, &decision).unwrap();
        let by_old = one(json!({"Email": "old@example.com"}));
        assert_eq!(key_of(&resolver.decide(&by_old, || "k9".into())), "k9");
        let by_new = one(json!({"Email": "NEW@example.com"}));
        assert_eq!(key_of(&resolver.decide(&by_new, || "k9".into())), "k0");
    }

    #[test]
    fn matching_stays_in_the_location_and_shared_customers_can_be_ignored() {
        let candidates = vec![
            stored(1, "north", Some("1"), [Some("n@example.com"), None, None]),
            stored(2, "shared", None, [Some("s@example.com"), None, None]),
        ];
        let decide = |rules: Rules, record: Value| {
            resolver(rules, candidates.clone()).decide(&one(record), || "new".into())
        };
        let rules = Rules::default();
        let ignoring = Rules {
            ignore_shared_customers: true,
            ..rules
        };
        assert_eq!(
            key_of(&decide(
                rules,
                json!({"LocationId": 1, "Email": "n@example.com"})
            )),
            "north"
        );
        assert_eq!(
            key_of(&decide(
                rules,
                json!({"LocationId": 2, "Email": "n@example.com"})
            )),
            "new"
        );
        assert_eq!(
            key_of(&decide(rules, json!({"Email": "n@example.com"}))),
            "new"
        );
        let shared = decide(rules, json!({"LocationId": 2, "Email": "s@example.com"}));
        assert_eq!(
            shared,
            Decision::Update {
                key: "shared".into(),
                location: None
            },
            "an update leaves a shared customer shared"
        );
        assert_eq!(
            key_of(&decide(
                ignoring,
                json!({"LocationId": 2, "Email": "s@example.com"})
            )),
            "new"
        );
        assert_eq!(
            key_of(&decide(ignoring, json!({"Email": "s@example.com"}))),
            "shared"
        );
    }

    #[test]
    fn an_update_keeps_stored_fields_and_never_moves_the_customer() {
        let stored = one(
            json!({"LocationId": 1, "FirstName": "Ada", "Email": "a@example.com",
            "City": "Paris", "Zip": "75001", "Notes": "old"}),
        );
        let incoming = one(
            json!({"LocationId": 2, "Email": "a@example.com", "City": "Rome",
            "Notes": "new"}),
        );
        let merged = merge(stored, incoming);
        assert_eq!(merged.first_name.as_deref(), Some("Ada"));
        let address = merged.address.as_ref().unwrap();
        assert_eq!(address.city.as_deref(), Some("Rome"));
        assert_eq!(address.postal_code.as_deref(), Some("75001"));
        assert_eq!(
            merged.extra.get(extra::NOTES).map(String::as_str),
            Some("new")
        );
        assert_eq!(
            merged.extra.get(extra::LOCATION_ID).map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn new_keys_are_the_same_for_the_same_record_of_the_same_batch() {
        assert_eq!(new_key("t", "b", 3), new_key("t", "b", 3));
        assert_ne!(new_key("t", "b", 3), new_key("t", "b", 4));
        assert_ne!(new_key("t", "b", 3), new_key("u", "b", 3));
        assert!(new_key("t", "b", 3).starts_with("contact:"));
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
                    FieldError::new("Email", FieldCode::InvalidEmail, "bad email"),
                    FieldError::new("Zip", FieldCode::TooLong, "long zip"),
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
