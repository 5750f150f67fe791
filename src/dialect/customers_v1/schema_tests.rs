//! The JSON Schema producers read, `docs/schemas/customers.v1.json`, and the parser agree: the
//! parser accepts every field the schema documents, and refuses one the schema does not, at every
//! level of a record.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::CustomersV1;
use super::shape::{CUSTOMER, Kind, Object};
use crate::codes::FieldCode;
use crate::dialect::attribute::AttributeType;
use crate::dialect::{Dialect, Limits, MAX_KEY_CHARS, MAX_TEXT_CHARS};
use crate::model::ParsedRecord;

const SCHEMA: &str = include_str!("../../../docs/schemas/customers.v1.json");

/// A name no object of the schema has.
const UNKNOWN: &str = "undocumentedField";

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema is JSON")
}

/// The node `node` stands for, following its `$ref`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/$defs/")
                .expect("references are local");
            resolve(root, &root["$defs"][name])
        }
        None => node,
    }
}

fn customer_node(root: &Value) -> &Value {
    resolve(root, &root["properties"]["customers"]["items"])
}

fn parse_one(record: Value) -> ParsedRecord {
    let body = json!({ "customers": [record] }).to_string();
    CustomersV1
        .parse(&body, Limits { max_records: 10 })
        .expect("the body parses")
        .pop()
        .unwrap()
}

/// Holds one node of the schema to the parser's description of the same field.
fn agree(root: &Value, node: &Value, kind: &Kind, path: &str, seen: &mut BTreeSet<usize>) {
    let node = resolve(root, node);
    let string = || assert_eq!(node["type"], "string", "{path}: {node}");
    match kind {
        Kind::OwnKey => {
            assert_eq!(node["type"], json!(["string", "integer"]), "{path}");
            assert_eq!(node["maxLength"], MAX_KEY_CHARS, "{path}");
        }
        Kind::Text { max } => {
            string();
            assert_eq!(node["maxLength"], *max, "{path}");
            assert!(node["pattern"].is_string(), "{path}: no control characters");
        }
        Kind::Email => {
            string();
            assert_eq!(node["format"], "email", "{path}");
            assert_eq!(node["maxLength"], MAX_TEXT_CHARS, "{path}");
        }
        Kind::Date => {
            string();
            assert_eq!(node["format"], "date", "{path}");
        }
        Kind::Gender => assert_eq!(
            node["enum"],
            json!(["M", "F", "U", "m", "f", "u"]),
            "{path}"
        ),
        Kind::Country => {
            string();
            assert_eq!(node["pattern"], "^[A-Za-z]{2}$", "{path}");
        }
        Kind::OneOf(values) => assert_eq!(node["enum"], json!(values), "{path}"),
        Kind::AttributeType => {
            let names: Vec<_> = AttributeType::ALL.map(AttributeType::name).into();
            assert_eq!(node["enum"], json!(names), "{path}");
        }
        Kind::CustomerId => {
            string();
            assert_eq!(node["format"], "uuid", "{path}");
        }
        Kind::Integer => assert_eq!(node["type"], "integer", "{path}"),
        Kind::Bool => assert_eq!(node["type"], "boolean", "{path}"),
        Kind::Array(item) => {
            assert_eq!(node["type"], "array", "{path}");
            agree(root, &node["items"], item, &format!("{path}[]"), seen);
        }
        Kind::Object(object) => agree_object(root, node, object, path, seen),
    }
}

fn agree_object(
    root: &Value,
    node: &Value,
    object: &Object,
    path: &str,
    seen: &mut BTreeSet<usize>,
) {
    if !seen.insert(std::ptr::from_ref(object) as usize) {
        return;
    }
    assert_eq!(node["type"], "object", "{path}");
    assert_eq!(node["additionalProperties"], false, "{path} is closed");
    let documented: BTreeSet<&str> = node["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let parsed: BTreeSet<&str> = object.fields.iter().map(|f| f.name).collect();
    assert_eq!(documented, parsed, "the fields of {path:?}");
    let required: BTreeSet<&str> = node["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let parser_required: BTreeSet<&str> = object
        .fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    assert_eq!(required, parser_required, "the required fields of {path:?}");
    for field in object.fields {
        let at = if path.is_empty() {
            field.name.to_owned()
        } else {
            format!("{path}.{}", field.name)
        };
        agree(
            root,
            &node["properties"][field.name],
            &field.kind,
            &at,
            seen,
        );
    }
}

#[test]
fn the_parser_reads_exactly_the_fields_the_schema_documents_with_their_types_and_limits() {
    let root = schema();
    assert_eq!(root["additionalProperties"], false);
    let mut seen = BTreeSet::new();
    agree_object(&root, customer_node(&root), &CUSTOMER, "", &mut seen);
}

#[test]
fn every_object_of_the_schema_is_closed() {
    fn walk(node: &Value, at: &str) {
        match node {
            Value::Object(map) => {
                if map.get("type") == Some(&json!("object")) {
                    assert_eq!(map.get("additionalProperties"), Some(&json!(false)), "{at}");
                }
                for (name, value) in map {
                    walk(value, &format!("{at}/{name}"));
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, at)),
            _ => {}
        }
    }
    walk(&schema(), "#");
}

/// A valid value of a schema node, with only the required fields of an object.
fn sample(root: &Value, node: &Value) -> Value {
    let node = resolve(root, node);
    if let Some(values) = node["enum"].as_array() {
        return values[0].clone();
    }
    match &node["type"] {
        Value::Array(types) => sample(root, &json!({ "type": types[0] })),
        kind => match kind.as_str() {
            Some("string") => match node["format"].as_str() {
                Some("email") => json!("ann@example.com"),
                Some("date") => json!("1980-02-29"),
                Some("uuid") => json!("0193a5c4-5a1e-7c3b-9d2e-000000000001"),
                _ if node["pattern"] == "^[A-Za-z]{2}$" => json!("nl"),
                _ => json!("x"),
            },
            Some("integer") => json!(7),
            Some("boolean") => json!(true),
            Some("array") => json!([sample(root, &node["items"])]),
            Some("object") => Value::Object(required_fields(root, node)),
            _ => panic!("no sample for {node}"),
        },
    }
}

fn required_fields(root: &Value, node: &Value) -> Map<String, Value> {
    node["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|name| (name.to_owned(), sample(root, &node["properties"][name])))
        .collect()
}

/// For an object node: one instance per field (at any depth below it), holding that field and the
/// required ones, by the field's path; and one instance holding an undocumented field at each
/// object (`UNKNOWN` at the end of its path).
fn instances(root: &Value, node: &Value, depth: usize) -> Vec<(String, Map<String, Value>)> {
    let node = resolve(root, node);
    let base = required_fields(root, node);
    let mut unknown = base.clone();
    unknown.insert(UNKNOWN.into(), json!("x"));
    let mut out = vec![(UNKNOWN.to_owned(), unknown)];
    let properties = node["properties"].as_object().expect("an object node");
    for (name, property) in properties {
        let mut with = base.clone();
        with.insert(name.clone(), sample(root, property));
        out.push((name.clone(), with));
        if depth == 0 {
            continue;
        }
        let property = resolve(root, property);
        let (inner, wrap): (&Value, fn(Value) -> Value) = match property["type"].as_str() {
            Some("object") => (property, |v| v),
            Some("array") if resolve(root, &property["items"])["type"] == "object" => {
                (&property["items"], |v| json!([v]))
            }
            _ => continue,
        };
        let index = if wrap(Value::Null).is_array() {
            "[0]"
        } else {
            ""
        };
        for (path, instance) in instances(root, inner, depth - 1) {
            let mut with = base.clone();
            with.insert(name.clone(), wrap(Value::Object(instance)));
            out.push((format!("{name}{index}.{path}"), with));
        }
    }
    out
}

#[test]
fn a_record_with_any_documented_field_is_accepted_and_one_with_an_undocumented_field_is_refused() {
    let root = schema();
    let cases = instances(&root, customer_node(&root), 3);
    assert!(cases.len() > 80, "{} cases", cases.len());
    for (path, mut record) in cases {
        record.insert("externalId".into(), json!("K-1"));
        let parsed = parse_one(Value::Object(record.clone()));
        if path.ends_with(UNKNOWN) {
            let errors = parsed.customer.expect_err(&path);
            assert!(
                errors
                    .iter()
                    .any(|e| e.code == FieldCode::UnknownField && e.field == path),
                "{path}: {errors:?}"
            );
        } else {
            assert!(
                parsed.customer.is_ok(),
                "{path}: {record:?} {:?}",
                parsed.customer
            );
        }
    }
}

#[test]
fn the_readme_example_is_accepted() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### `customers.v1`").expect("the section")..];
    let start = section.find("```json\n").expect("an example") + "```json\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let records = CustomersV1
        .parse(example, Limits { max_records: 10 })
        .expect("the example parses");
    assert!(!records.is_empty());
    for record in records {
        assert!(record.customer.is_ok(), "{:?}", record.customer);
    }
}
