//! The fields of a `customers.v1` record, exactly as `docs/schemas/customers.v1.json` documents
//! them, and the check of a record against them.
//!
//! The common [`Customer`](crate::model::Customer) also holds what other dialects and the service
//! keep for themselves, and a producer of this dialect must not be able to write it:
//!
//! - `extra` members other than `extra1`..`extra5`: the location and the normalized `match*`
//!   contact values the contact matching finds customers by ([`crate::matching::extra`]), the other
//!   fields `match-by-contact` keeps there, and `franchiseId` (the tenant, written by
//!   `add-with-accounts`);
//! - `account` and `shipTo`: the billing account `add-with-accounts` creates (copied into the
//!   account of every customer billed to it) and its ship-to;
//! - any field of an address, attribute or ordering group that is not documented (an address of
//!   `addresses` keeps the fields `upsert-by-id` gives it, no others).
//!
//! So every object of a record is closed: a field not listed here fails the record
//! (`unknown_field`, naming it). The whole record is walked, so its producer learns every fault at
//! once rather than the first one serde meets. A unit test holds this table and the JSON Schema to
//! each other.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde_json::{Map, Value};

use crate::codes::FieldCode;
use crate::dialect::attribute::AttributeType;
use crate::dialect::text::{Checker, MAX_KEY_CHARS};
use crate::model::FieldError;

/// Longest text of a field that is not a key.
pub(super) const MAX_FIELD_CHARS: usize = 4000;

/// What one field holds. Values are checked, and some normalized in place, by [`check_record`].
#[derive(Debug)]
pub(super) enum Kind {
    /// The record's own key, `externalId`: read by the dialect before the walk.
    OwnKey,
    /// A string of at most `max` characters, without control characters.
    Text {
        max: usize,
    },
    /// An email address, stored trimmed; an empty one counts as absent.
    Email,
    /// A date as `YYYY-MM-DD`.
    Date,
    /// `M`, `F` or `U`, in any case; stored upper-case.
    Gender,
    /// An ISO 3166-1 alpha-2 code, in any case; stored upper-case.
    Country,
    /// One of these strings, exactly.
    OneOf(&'static [&'static str]),
    /// An [`AttributeType`] by its name.
    AttributeType,
    /// Our id of a customer, a UUID.
    CustomerId,
    /// A whole number that fits in 64 bits.
    Integer,
    Bool,
    Array(&'static Kind),
    Object(&'static Object),
}

/// An object with a closed set of fields.
#[derive(Debug)]
pub(super) struct Object {
    pub fields: &'static [Field],
    /// A rule over several of the object's fields, run after each field was checked on its own.
    pub rule: Option<Rule>,
}

/// A rule over an object's fields: the checker, the object's path and its fields.
pub(super) type Rule = fn(&mut Checker, &str, &Map<String, Value>);

#[derive(Debug)]
pub(super) struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const TEXT: Kind = Kind::Text {
    max: MAX_FIELD_CHARS,
};
/// Another customer's key: no key is longer.
const KEY: Kind = Kind::Text { max: MAX_KEY_CHARS };

pub(super) static CUSTOMER: Object = Object {
    fields: &[
        required("externalId", Kind::OwnKey),
        field("name", TEXT),
        field("firstName", TEXT),
        field("middleName", TEXT),
        field("lastName", TEXT),
        field("title", TEXT),
        field("abbreviation", TEXT),
        field("company", TEXT),
        field("email", Kind::Email),
        field("phone", TEXT),
        field("mobile", TEXT),
        field("fax", TEXT),
        field("dateOfBirth", Kind::Date),
        field("gender", Kind::Gender),
        field("ssn", TEXT),
        field("language", TEXT),
        field("primaryLanguage", TEXT),
        field("debtorId", Kind::Integer),
        field("parentKey", KEY),
        field("sourceId", TEXT),
        field("source", TEXT),
        field("address", Kind::Object(&ADDRESS)),
        field("addresses", Kind::Array(&Kind::Object(&TYPED_ADDRESS))),
        field("attributes", Kind::Array(&Kind::Object(&ATTRIBUTE))),
        field("priceZone", Kind::Integer),
        field("test", Kind::Bool),
        field("placeholder", Kind::Bool),
        field("allowanceGroup", TEXT),
        field("deliveryGroup", TEXT),
        field("warehouseId", TEXT),
        field("customerClassId", TEXT),
        field("orderPermissionKey", Kind::Integer),
        field("primarySalesRep", TEXT),
        field("salesReps", Kind::Array(&TEXT)),
        field("orderingGroups", Kind::Array(&ORDERING_GROUP_KIND)),
        field("billToCustomerId", Kind::CustomerId),
        field("extra", Kind::Object(&EXTRA)),
    ],
    rule: Some(one_default_address_per_type),
};

static ADDRESS: Object = Object {
    fields: &[
        field("street1", TEXT),
        field("street2", TEXT),
        field("city", TEXT),
        field("state", TEXT),
        field("postalCode", TEXT),
        field("country", Kind::Country),
    ],
    rule: None,
};

/// An address with a role, with the fields `upsert-by-id` keeps.
static TYPED_ADDRESS: Object = Object {
    fields: &[
        required("type", Kind::OneOf(&["delivery", "invoice"])),
        required("isDefault", Kind::Bool),
        field("street", TEXT),
        field("number", TEXT),
        field("numberExtension", TEXT),
        field("postalCode", TEXT),
        field("city", TEXT),
        field("region", TEXT),
        field("country", Kind::Country),
        field("company", TEXT),
        field("firstName", TEXT),
        field("middleName", TEXT),
        field("lastName", TEXT),
        field("email", Kind::Email),
        field("phone", TEXT),
        field("mobile", TEXT),
        field("icp", Kind::OneOf(&["Y", "N"])),
        field("url", TEXT),
        field("notes", TEXT),
        field("code", TEXT),
    ],
    rule: None,
};

static ATTRIBUTE: Object = Object {
    fields: &[
        field("class", TEXT),
        required("name", TEXT),
        required("type", Kind::AttributeType),
        field("value", TEXT),
    ],
    rule: Some(attribute_value_fits_its_type),
};

static ORDERING_GROUP_KIND: Kind = Kind::Object(&ORDERING_GROUP);

static ORDERING_GROUP: Object = Object {
    fields: &[
        required("id", TEXT),
        field("name", TEXT),
        field("subGroups", Kind::Array(&ORDERING_GROUP_KIND)),
        field("customers", Kind::Array(&KEY)),
    ],
    rule: None,
};

/// The producer's own carried-through fields. Every other member of `extra` belongs to another
/// dialect or to the contact matching.
static EXTRA: Object = Object {
    fields: &[
        field("extra1", TEXT),
        field("extra2", TEXT),
        field("extra3", TEXT),
        field("extra4", TEXT),
        field("extra5", TEXT),
    ],
    rule: None,
};

/// Checks a record against [`CUSTOMER`], every field of it, and normalizes the values that are
/// stored in one form (emails trimmed, genders and countries upper-case). The record is good if
/// `check` gained no error.
pub(super) fn check_record(check: &mut Checker, record: &mut Map<String, Value>) {
    check_object(check, "", &CUSTOMER, record);
}

fn check_object(check: &mut Checker, path: &str, object: &Object, map: &mut Map<String, Value>) {
    for (name, value) in map.iter_mut() {
        if name.chars().any(char::is_control) {
            // The name is not echoed: it is stored with the reply, and Postgres refuses a NUL.
            check.errors.push(FieldError::new(
                path,
                FieldCode::InvalidCharacter,
                "a field name contains a control character",
            ));
            continue;
        }
        let at = join(path, name);
        match object.fields.iter().find(|f| f.name == name) {
            None => check.errors.push(FieldError::new(
                &at,
                FieldCode::UnknownField,
                format!("{at} is not a field of customers.v1"),
            )),
            Some(field) if value.is_null() => {
                if field.required {
                    required_error(check, &at);
                }
            }
            Some(field) => check_value(check, &at, &field.kind, value),
        }
    }
    for field in object.fields {
        if field.required && !matches!(field.kind, Kind::OwnKey) && !map.contains_key(field.name) {
            required_error(check, &join(path, field.name));
        }
    }
    if let Some(rule) = object.rule {
        rule(check, path, map);
    }
    // A null field is an absent one: the model's lists and maps do not take null.
    map.retain(|_, value| !value.is_null());
}

fn check_value(check: &mut Checker, path: &str, kind: &Kind, value: &mut Value) {
    match (kind, value) {
        (Kind::OwnKey, _) => {}
        (Kind::Text { max }, Value::String(text)) => {
            if text.chars().any(char::is_control) {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidCharacter,
                    format!("{path} contains a control character"),
                ));
            } else if text.chars().count() > *max {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::TooLong,
                    format!("{path} is longer than {max} characters"),
                ));
            }
        }
        (Kind::Email, value @ Value::String(_)) => {
            let Value::String(text) = value.take() else {
                unreachable!("matched as a string")
            };
            *value = check
                .email(path, Some(text))
                .map_or(Value::Null, Value::String);
        }
        (Kind::Date, Value::String(text)) => {
            if NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidDate,
                    format!("{path} must be a date as YYYY-MM-DD"),
                ));
            }
        }
        (Kind::Gender, Value::String(text)) => {
            text.make_ascii_uppercase();
            if !matches!(text.as_str(), "M" | "F" | "U") {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidValue,
                    format!("{path} must be M, F or U"),
                ));
            }
        }
        (Kind::Country, Value::String(text)) => {
            text.make_ascii_uppercase();
            if celes::Country::from_alpha2(text.as_str()).is_err() {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidCountry,
                    "country must be an ISO 3166-1 alpha-2 code",
                ));
            }
        }
        (Kind::OneOf(allowed), Value::String(text)) => {
            if !allowed.contains(&text.as_str()) {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidValue,
                    format!("{path} must be one of {}", allowed.join(", ")),
                ));
            }
        }
        (Kind::AttributeType, Value::String(text)) => {
            if AttributeType::from_name(text).is_none() {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidValue,
                    format!("type must be one of {}", AttributeType::names()),
                ));
            }
        }
        (Kind::CustomerId, Value::String(text)) => {
            if uuid::Uuid::parse_str(text).is_err() {
                check.errors.push(FieldError::new(
                    path,
                    FieldCode::InvalidValue,
                    format!("{path} must be a customer id (a UUID)"),
                ));
            }
        }
        (Kind::Integer, Value::Number(n)) if n.is_i64() => {}
        (Kind::Integer, Value::Number(n)) if n.is_u64() => {
            check.errors.push(FieldError::new(
                path,
                FieldCode::OutOfRange,
                format!("{path} is out of range"),
            ));
        }
        (Kind::Bool, Value::Bool(_)) => {}
        (Kind::Array(item), Value::Array(items)) => {
            for (i, value) in items.iter_mut().enumerate() {
                check_value(check, &format!("{path}[{i}]"), item, value);
            }
        }
        (Kind::Object(object), Value::Object(map)) => check_object(check, path, object, map),
        (kind, _) => check.errors.push(FieldError::new(
            path,
            FieldCode::InvalidType,
            format!("{path} must be {}", kind.expected()),
        )),
    }
}

impl Kind {
    /// What a value of this kind is, for a message.
    fn expected(&self) -> &'static str {
        match self {
            Kind::OwnKey
            | Kind::Text { .. }
            | Kind::Email
            | Kind::Date
            | Kind::Gender
            | Kind::Country
            | Kind::OneOf(_)
            | Kind::AttributeType
            | Kind::CustomerId => "a string",
            Kind::Integer => "an integer",
            Kind::Bool => "true or false",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

fn required_error(check: &mut Checker, path: &str) {
    check.errors.push(FieldError::new(
        path,
        FieldCode::Required,
        format!("{path} is required"),
    ));
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn attribute_value_fits_its_type(check: &mut Checker, path: &str, map: &Map<String, Value>) {
    let (Some(Value::String(name)), Some(Value::String(value))) =
        (map.get("type"), map.get("value"))
    else {
        return;
    };
    if let Some(kind) = AttributeType::from_name(name)
        && !kind.fits(value)
    {
        check.errors.push(FieldError::new(
            join(path, "value"),
            FieldCode::InvalidValue,
            format!("the value is not a valid {name}"),
        ));
    }
}

/// A customer has at most one default address of each type.
fn one_default_address_per_type(check: &mut Checker, _: &str, map: &Map<String, Value>) {
    let Some(Value::Array(addresses)) = map.get("addresses") else {
        return;
    };
    let mut defaults: HashMap<&str, usize> = HashMap::new();
    for (i, address) in addresses.iter().enumerate() {
        if let (Some(Value::String(kind)), Some(Value::Bool(true))) =
            (address.get("type"), address.get("isDefault"))
        {
            let count = defaults.entry(kind.as_str()).or_default();
            *count += 1;
            if *count > 1 {
                check.errors.push(FieldError::new(
                    format!("addresses[{i}].isDefault"),
                    FieldCode::InvalidValue,
                    format!("at most one {kind} address may be the default"),
                ));
            }
        }
    }
}
