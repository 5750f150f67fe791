//! A record's `attributes`: checked by type, at most one per name, merged by name into the stored
//! ones on update.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::codes::FieldCode;
use crate::dialect::attribute::AttributeType;
use crate::dialect::text::{Checker, MAX_KEY_CHARS};
use crate::model::{Attribute, FieldError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttribute {
    class: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

/// The record's attributes by name (of two with one name, the later is kept); an attribute
/// without a type is text.
pub(super) fn attributes(check: &mut Checker, raw: Vec<RawAttribute>) -> Vec<Attribute> {
    let mut by_name: BTreeMap<String, Attribute> = BTreeMap::new();
    for (i, attribute) in raw.into_iter().enumerate() {
        let path = format!("attributes[{i}]");
        let Some(name) =
            check.required_text(&format!("{path}.name"), attribute.name, MAX_KEY_CHARS)
        else {
            continue;
        };
        let written = check.text(&format!("{path}.type"), attribute.kind, 20);
        let kind = match written.as_deref().map(AttributeType::from_name) {
            None => AttributeType::Text,
            Some(Some(kind)) => kind,
            Some(None) => {
                check.errors.push(FieldError::new(
                    format!("{path}.type"),
                    FieldCode::InvalidValue,
                    format!(
                        "attribute {name}: type must be one of {}",
                        AttributeType::names()
                    ),
                ));
                continue;
            }
        };
        let value = check.text(&format!("{path}.value"), attribute.value, 4000);
        if let Some(value) = &value
            && !kind.fits(value)
        {
            check.errors.push(FieldError::new(
                format!("{path}.value"),
                FieldCode::InvalidValue,
                format!("attribute {name}: the value is not a valid {}", kind.name()),
            ));
            continue;
        }
        by_name.insert(
            name.clone(),
            Attribute {
                class: check.text(&format!("{path}.class"), attribute.class, MAX_KEY_CHARS),
                name,
                kind: kind.name().to_owned(),
                value,
            },
        );
    }
    by_name.into_values().collect()
}

/// Incoming attributes replace the stored ones of the same name; the others stay.
pub(super) fn merge_attributes(stored: &[Attribute], incoming: Vec<Attribute>) -> Vec<Attribute> {
    let mut by_name: BTreeMap<String, Attribute> =
        stored.iter().map(|a| (a.name.clone(), a.clone())).collect();
    for attribute in incoming {
        by_name.insert(attribute.name.clone(), attribute);
    }
    by_name.into_values().collect()
}
