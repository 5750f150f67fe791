//! The native `customers.v1` dialect end to end.

use serde_json::{Value, json};

use crate::helpers::{Message, TestApp};

fn message<'a>(body: &'a [u8], id: &'a str) -> Message<'a> {
    Message {
        dialect: Some("customers.v1"),
        ..Message::upsert(body, "acme", id)
    }
}

fn customer(i: usize) -> Value {
    json!({
        "externalId": format!("EXT-{i}"), "firstName": "Ann", "lastName": format!("Lee {i}"),
        "email": format!("ann{i}@example.com"), "mobile": "+31612345678", "gender": "F",
        "dateOfBirth": "1980-02-29",
        "address": {"street1": "Oudegracht 12", "city": "Utrecht", "postalCode": "3511AB", "country": "NL"},
        "attributes": [{"name": "tier", "type": "integer", "value": "3"}],
        "salesReps": ["R1"]
    })
}

#[tokio::test]
async fn a_thousand_native_customers_are_upserted_by_external_id() {
    let mut app = TestApp::spawn().await;
    let customers: Vec<Value> = (0..1000).map(customer).collect();
    let body = serde_json::to_vec(&json!({ "customers": customers })).unwrap();
    app.publish(message(&body, "v1")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{}", reply["records"][0]);
    assert_eq!(reply["counts"]["created"], 1000);
    assert_eq!(reply["dialect"], "customers.v1");
    assert_eq!(reply["response"], Value::Null, "the common reply only");
    let (_, _, data) = app.customer("acme", "EXT-5").await.unwrap();
    assert_eq!(data["lastName"], "Lee 5");
    assert_eq!(data["address"]["country"], "NL");
    assert_eq!(app.distinct_events().await.len(), 1000);

    // A changed record replaces the stored state; the others are unchanged.
    let mut changed: Vec<Value> = (0..1000).map(customer).collect();
    changed[5] = json!({"externalId": "EXT-5", "firstName": "Anna"});
    let body = serde_json::to_vec(&json!({ "customers": changed })).unwrap();
    app.publish(message(&body, "v1-again")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["updated"], 1);
    assert_eq!(reply["counts"]["unchanged"], 999);
    let (_, version, data) = app.customer("acme", "EXT-5").await.unwrap();
    assert_eq!(version, 2);
    assert_eq!(
        data,
        json!({"firstName": "Anna"}),
        "the record is the full state"
    );
    app.stop().await;
}

#[tokio::test]
async fn native_records_with_bad_fields_fail_alone() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"customers": [
        customer(1),
        {"externalId": "EXT-2", "shoeSize": 44},
        {"externalId": "EXT-3", "parentKey": "EXT-404"},
        {"externalId": "EXT-4", "parentKey": "EXT-1"}
    ]}))
    .unwrap();
    app.publish(message(&body, "mixed")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    assert_eq!(reply["records"][1]["errors"][0]["code"], "unknown_field");
    assert_eq!(
        reply["records"][2]["errors"][0]["code"],
        "unknown_reference"
    );
    assert_eq!(reply["records"][3]["action"], "created");
    assert_eq!(app.customer_count("acme").await, 2);
    app.stop().await;
}
