//! The AsyncAPI document (`docs/asyncapi.yaml`) held to the service: real replies, dead letters and
//! events, taken from the broker, validate against the schemas in it (payload, headers and AMQP
//! properties), and the names and codes it lists are the code's. A change on either side that the
//! other does not follow fails here.

mod events;
mod replies;

use std::collections::BTreeSet;

use customer_ingest::amqp::headers;
use customer_ingest::codes::{FieldCode, RejectionCode};
use customer_ingest::config::Settings;
use customer_ingest::dialect::DIALECTS;
use jsonschema::{Draft, Registry, Validator};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

const DOCUMENT: &str = "file:///docs/asyncapi.yaml";

/// The document, with the files it refers to, ready to validate against.
struct Contract {
    document: Value,
    registry: Registry<'static>,
}

impl Contract {
    fn load() -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let text = std::fs::read_to_string(format!("{root}/docs/asyncapi.yaml")).unwrap();
        let document: Value = serde_norway::from_str(&text).expect("docs/asyncapi.yaml is YAML");
        let customers_v1: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/docs/schemas/customers.v1.json")).unwrap(),
        )
        .unwrap();
        // AsyncAPI schemas are JSON Schema draft-07; `./schemas/...` resolves beside the document.
        let registry = Registry::new()
            .draft(Draft::Draft7)
            .add(DOCUMENT, document.clone())
            .unwrap()
            .add("file:///docs/schemas/customers.v1.json", customers_v1)
            .unwrap()
            .prepare()
            .expect("the document's schemas and references resolve");
        Contract { document, registry }
    }

    /// A validator for the schema at `pointer` in the document.
    fn validator(&self, pointer: &str) -> Validator {
        assert!(
            self.document.pointer(pointer).is_some(),
            "docs/asyncapi.yaml has no {pointer}"
        );
        jsonschema::options()
            .with_draft(Draft::Draft7)
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": format!("{DOCUMENT}#{pointer}") }))
            .unwrap_or_else(|error| panic!("the schema at {pointer} compiles: {error}"))
    }

    /// The faults of `instance` against the schema at `pointer`, one line each.
    fn faults(&self, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(instance)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect()
    }

    fn check(&self, pointer: &str, instance: &Value, what: &str) {
        let faults = self.faults(pointer, instance);
        assert!(
            faults.is_empty(),
            "{what} does not conform to docs/asyncapi.yaml {pointer}:\n  {}\n{what}: {}",
            faults.join("\n  "),
            serde_json::to_string_pretty(instance).unwrap()
        );
    }

    fn message(&self, name: &str) -> &Value {
        self.document
            .pointer(&format!("/components/messages/{name}"))
            .unwrap_or_else(|| panic!("docs/asyncapi.yaml has no message {name}"))
    }

    /// Checks one message taken from the broker against the document's message `name`: its body,
    /// its headers, its AMQP properties (`x-amqp-properties`), its content type and `type`.
    fn check_message(&self, name: &str, body: &Value, properties: &BasicProperties) {
        let message = self.message(name);
        let base = format!("/components/messages/{name}");
        self.check(
            &format!("{base}/payload"),
            body,
            &format!("the body of a {name}"),
        );
        self.check(
            &format!("{base}/headers"),
            &headers_json(properties),
            &format!("the headers of a {name}"),
        );
        if message.get("x-amqp-properties").is_some() {
            self.check(
                &format!("{base}/x-amqp-properties"),
                &properties_json(properties),
                &format!("the AMQP properties of a {name}"),
            );
        }
        if let Some(content_type) = message["contentType"].as_str() {
            assert_eq!(
                properties.content_type().as_ref().map(|c| c.as_str()),
                Some(content_type),
                "the content_type of a {name}"
            );
        }
        if let Some(kind) = message.pointer("/bindings/amqp/messageType") {
            assert_eq!(
                properties.kind().as_ref().map(|k| k.as_str()),
                kind.as_str(),
                "the type property of a {name}"
            );
        }
    }

    fn enum_of(&self, schema: &str) -> BTreeSet<String> {
        self.document
            .pointer(&format!("/components/schemas/{schema}/enum"))
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("the schema {schema} is an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

/// The AMQP basic properties of a message, under their AMQP 0-9-1 names (as `x-amqp-properties`
/// lists them). Headers are apart, in [`headers_json`].
fn properties_json(properties: &BasicProperties) -> Value {
    let mut map = Map::new();
    let mut text = |name: &str, value: &Option<lapin::types::ShortString>| {
        if let Some(value) = value {
            map.insert(name.into(), json!(value.as_str()));
        }
    };
    text("content_type", properties.content_type());
    text("content_encoding", properties.content_encoding());
    text("correlation_id", properties.correlation_id());
    text("reply_to", properties.reply_to());
    text("expiration", properties.expiration());
    text("message_id", properties.message_id());
    text("type", properties.kind());
    text("user_id", properties.user_id());
    text("app_id", properties.app_id());
    text("cluster_id", properties.cluster_id());
    if let Some(mode) = properties.delivery_mode() {
        map.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = properties.priority() {
        map.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = properties.timestamp() {
        map.insert("timestamp".into(), json!(timestamp));
    }
    Value::Object(map)
}

/// A message's headers table as JSON (an empty object when it has none).
fn headers_json(properties: &BasicProperties) -> Value {
    properties
        .headers()
        .as_ref()
        .map_or_else(|| json!({}), table_json)
}

fn table_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(name, value)| (name.to_string(), value_json(value)))
            .collect(),
    )
}

fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(format!("{d:?}")),
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => {
            json!(headers::value_str(value).expect("a UTF-8 text header"))
        }
        AMQPValue::FieldArray(array) => {
            Value::Array(array.as_slice().iter().map(value_json).collect())
        }
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(table) => table_json(table),
        AMQPValue::ByteArray(bytes) => json!(bytes.as_slice()),
        AMQPValue::Void => Value::Null,
        other => json!(headers::value_i64(other).expect("an integer header")),
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    headers::header_str(properties.headers(), name)
}

#[test]
fn the_document_names_the_codes_dialects_and_queues_of_the_service() {
    let contract = Contract::load();
    let codes = |all: Vec<&str>| all.into_iter().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        contract.enum_of("rejectionCode"),
        codes(RejectionCode::ALL.iter().map(|c| c.as_str()).collect()),
        "the rejection codes of docs/asyncapi.yaml and src/codes.rs"
    );
    assert_eq!(
        contract.enum_of("fieldCode"),
        codes(FieldCode::ALL.iter().map(|c| c.as_str()).collect()),
        "the field codes of docs/asyncapi.yaml and src/codes.rs"
    );

    // One message per dialect on the ingest channel, named by its `type`.
    let channel = &contract.document["channels"]["ingest"];
    let dialects: BTreeSet<String> = channel["messages"]
        .as_object()
        .unwrap()
        .values()
        .map(|reference| {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            let message = contract.document.pointer(pointer).unwrap();
            message
                .pointer("/bindings/amqp/messageType")
                .and_then(Value::as_str)
                .expect("an ingest message names its dialect")
                .to_owned()
        })
        .collect();
    assert_eq!(
        dialects,
        codes(DIALECTS.iter().map(|d| d.name()).collect()),
        "the dialects of docs/asyncapi.yaml and src/dialect"
    );
    assert_eq!(
        contract.message("reply")["bindings"]["amqp"]["messageType"],
        headers::REPLY_TYPE
    );

    // Queue and exchange names are the defaults of config/default.toml.
    let defaults = Settings::load(None).unwrap().amqp;
    let channels = &contract.document["channels"];
    let queue = |channel: &str| channels[channel]["bindings"]["amqp"]["queue"]["name"].clone();
    let exchange =
        |channel: &str| channels[channel]["bindings"]["amqp"]["exchange"]["name"].clone();
    assert_eq!(queue("ingest"), defaults.ingest_queue.as_str());
    assert_eq!(
        channels["ingest"]["address"],
        defaults.ingest_queue.as_str()
    );
    assert_eq!(queue("results"), defaults.results_queue.as_str());
    assert_eq!(
        queue("deadLetterQueue"),
        defaults.dead_letter_queue.as_str()
    );
    assert_eq!(
        exchange("deadLetterExchange"),
        defaults.dead_letter_exchange.as_str()
    );
    assert_eq!(
        exchange("customerEvents"),
        defaults.events_exchange.as_str()
    );
    assert_eq!(
        exchange("customerEventBatches"),
        defaults.events_exchange.as_str()
    );
}

/// Bodies of every dialect that are valid whole, each answered `completed`.
fn valid_bodies() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "upsertByCustomerId",
            "upsert-by-customer-id",
            json!([{"customerID": "CT-1", "customerName": "Corner Store", "email": "shop@example.com",
                    "priceZone": 2, "salesReps": ["R1"], "extra1": "x",
                    "orderingGroups": [{"orderingGroupID": "G1", "orderingSubGroups": [
                        {"orderingGroupID": "G1a", "customers": ["CT-1"]}]}]}]),
        ),
        (
            "upsertById",
            "upsert-by-id",
            json!({"customers": [
                {"id": 500, "firstName": "Bo", "lastName": "Lee"},
                {"id": 501, "firstName": "Ann", "lastName": "Lee", "dateOfBirth": "1980-02-29",
                 "parent": {"id": 500}, "sourceId": 77, "source": "crm",
                 "attributes": [{"class": "loyalty", "name": "tier", "type": "integer", "value": "3"}],
                 "addresses": [{"type": "invoice", "isDefault": "Y", "street": "Oudegracht",
                                "number": "12", "city": "Utrecht", "country": "NL"}]}]}),
        ),
        (
            "addWithAccounts",
            "add-with-accounts",
            json!([{"name": "Corner Store", "address": {"street1": "1 Main St", "city": "Springfield",
                    "state": "IL", "countryCode": "US", "zipCode": "62701"}, "email": "shop@example.com",
                    "creditLimit": 500, "defaultPayType": "CASH", "payTypes": ["CASH"],
                    "shipTo": {"name": "Dock 4", "phone": "555-0100"}, "billToCustomerId": 0}]),
        ),
        (
            "matchByContact",
            "match-by-contact",
            json!({"RequireCountry": true, "RequireState": false, "RequireDob": false,
                   "RequireNote": false, "RequireGender": false, "IgnoreSharedCustomers": false,
                   "Customers": [{"LocationId": 1, "FirstName": "Ann", "LastName": "Lee",
                                  "Email": "Ann@Example.com ", "CellPhone": "+1 (217) 555-0100",
                                  "Dob": "1980-02-29", "Gender": 2, "CustomerCode": "C-17",
                                  "City": "Springfield", "Country": "United States",
                                  "State": "Illinois"}]}),
        ),
        (
            "customersV1",
            "customers.v1",
            json!({"customers": [{"externalId": "V1-1", "name": "Corner Store",
                                  "email": "shop@example.com",
                                  "address": {"street1": "1 Main St", "country": "us"}}]}),
        ),
    ]
}
