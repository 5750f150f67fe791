//! A record's `addresses`: each of type delivery or invoice, at most one default per type,
//! replaced per type on update.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::codes::FieldCode;
use crate::dialect::text::{Checker, MAX_TEXT_CHARS};
use crate::model::{FieldError, TypedAddress};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAddress {
    #[serde(rename = "type")]
    kind: Option<String>,
    is_default: Option<String>,
    street: Option<String>,
    number: Option<String>,
    number_extension: Option<String>,
    postal_code: Option<String>,
    city: Option<String>,
    region: Option<String>,
    country: Option<String>,
    company: Option<String>,
    first_name: Option<String>,
    middle_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    mobile: Option<String>,
    icp: Option<String>,
    url: Option<String>,
    notes: Option<String>,
    code: Option<String>,
}

fn yes_no(check: &mut Checker, field: &str, value: Option<String>) -> bool {
    match check.text(field, value, 1).as_deref() {
        None | Some("N") | Some("n") => false,
        Some("Y") | Some("y") => true,
        Some(_) => {
            check.errors.push(FieldError::new(
                field,
                FieldCode::InvalidValue,
                format!("{field} must be Y or N"),
            ));
            false
        }
    }
}

/// The record's addresses, in the order given, with `isDefault` and `icp` read as Y or N.
pub(super) fn addresses(check: &mut Checker, raw: Vec<RawAddress>) -> Vec<TypedAddress> {
    let mut defaults: HashMap<String, usize> = HashMap::new();
    let mut result = Vec::new();
    for (i, address) in raw.into_iter().enumerate() {
        let path = format!("addresses[{i}]");
        let kind = check
            .required_text(&format!("{path}.type"), address.kind, 20)
            .map(|k| k.to_ascii_lowercase());
        if let Some(kind) = &kind
            && kind != "delivery"
            && kind != "invoice"
        {
            check.errors.push(FieldError::new(
                format!("{path}.type"),
                FieldCode::InvalidValue,
                "address type must be delivery or invoice",
            ));
        }
        let is_default = yes_no(check, &format!("{path}.isDefault"), address.is_default);
        let icp = yes_no(check, &format!("{path}.icp"), address.icp);
        let country = check
            .required_text(&format!("{path}.country"), address.country, 2)
            .map(|c| c.to_ascii_uppercase());
        if let Some(country) = &country
            && celes::Country::from_alpha2(country).is_err()
        {
            check.errors.push(FieldError::new(
                format!("{path}.country"),
                FieldCode::InvalidCountry,
                "country must be an ISO 3166-1 alpha-2 code",
            ));
        }
        let mut fields = BTreeMap::new();
        let required = [("street", address.street), ("city", address.city)];
        for (name, value) in required {
            if let Some(value) =
                check.required_text(&format!("{path}.{name}"), value, MAX_TEXT_CHARS)
            {
                fields.insert(name.to_owned(), value);
            }
        }
        let optional = [
            ("number", address.number),
            ("numberExtension", address.number_extension),
            ("postalCode", address.postal_code),
            ("region", address.region),
            ("company", address.company),
            ("firstName", address.first_name),
            ("middleName", address.middle_name),
            ("lastName", address.last_name),
            ("phone", address.phone),
            ("mobile", address.mobile),
            ("url", address.url),
            ("notes", address.notes),
            ("code", address.code),
        ];
        for (name, value) in optional {
            if let Some(value) = check.text(&format!("{path}.{name}"), value, MAX_TEXT_CHARS) {
                fields.insert(name.to_owned(), value);
            }
        }
        if let Some(email) = check.email(&format!("{path}.email"), address.email) {
            fields.insert("email".to_owned(), email);
        }
        if let Some(country) = country {
            fields.insert("country".to_owned(), country);
        }
        fields.insert("icp".to_owned(), if icp { "Y" } else { "N" }.to_owned());
        let Some(kind) = kind else { continue };
        if is_default {
            let count = defaults.entry(kind.clone()).or_default();
            *count += 1;
            if *count > 1 {
                check.errors.push(FieldError::new(
                    format!("{path}.isDefault"),
                    FieldCode::InvalidValue,
                    format!("at most one {kind} address may be the default"),
                ));
            }
        }
        result.push(TypedAddress {
            kind,
            is_default,
            fields,
        });
    }
    result
}

/// Incoming addresses replace every stored address of their type; other types stay.
pub(super) fn merge_addresses(
    stored: &[TypedAddress],
    incoming: Vec<TypedAddress>,
) -> Vec<TypedAddress> {
    let replaced: Vec<&str> = incoming.iter().map(|a| a.kind.as_str()).collect();
    let mut merged: Vec<TypedAddress> = stored
        .iter()
        .filter(|a| !replaced.contains(&a.kind.as_str()))
        .cloned()
        .collect();
    merged.extend(incoming);
    merged.sort_by(|a, b| a.kind.cmp(&b.kind));
    merged
}
