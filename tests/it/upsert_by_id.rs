//! The `upsert-by-id` dialect (Bulk Customers by Id) end to end.

use serde_json::{Value, json};

use crate::helpers::{Message, TestApp};

fn message<'a>(body: &'a [u8], id: &'a str) -> Message<'a> {
    Message {
        dialect: Some("upsert-by-id"),
        ..Message::upsert(body, "acme", id)
    }
}

/// The seed page's request, its placeholder strings replaced by valid values.
fn seed_example() -> Value {
    json!({"customers": [{
        "abbreviation": "AL", "company": "Lee Trading", "dateOfBirth": "1980-02-29",
        "debtorId": 1001, "email": "ann@example.com", "firstName": "Ann", "gender": "F", "id": 501,
        "language": "en", "lastName": "Lee", "middleName": "Q", "mobile": "+31612345678",
        "phone": "+31301234567", "primaryLanguage": "en", "title": "Dr", "ssn": "123-45-6789",
        "sourceId": 77, "source": "crm",
        "attributes": [{"class": "loyalty", "name": "tier", "type": "integer", "value": "3"},
                       {"class": "prefs", "name": "colour", "type": "color", "value": "#00ff00"}],
        "addresses": [{"city": "Utrecht", "code": "HQ", "company": "Lee Trading", "country": "NL",
            "email": "billing@example.com", "firstName": "Ann", "icp": "N", "isDefault": "Y",
            "lastName": "Lee", "middleName": "Q", "mobile": "+31612345678", "notes": "back door",
            "number": "12", "numberExtension": "a", "phone": "+31301234567", "postalCode": "3511AB",
            "region": "UT", "street": "Oudegracht", "type": "invoice", "url": "https://example.com"}]
    }]})
}

#[tokio::test]
async fn the_seed_example_is_created_and_answered_in_the_apis_response_shape() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&seed_example()).unwrap();
    app.publish(message(&body, "seed")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let id = reply["records"][0]["id"].clone();
    assert_eq!(
        reply["response"],
        json!({"data": [{"action": "create", "id": id, "key": 501, "lookupKey": "id", "success": true}],
               "messages": ["Completed"], "total": 1})
    );
    let (_, version, data) = app.customer("acme", "501").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(data["firstName"], "Ann");
    assert_eq!(data["dateOfBirth"], "1980-02-29");
    assert_eq!(data["ssn"], "123-45-6789");
    assert_eq!(data["sourceId"], "77");
    assert_eq!(data["attributes"][1]["name"], "tier");
    assert_eq!(data["addresses"][0]["type"], "invoice");
    assert_eq!(data["addresses"][0]["isDefault"], true);
    assert_eq!(data["addresses"][0]["postalCode"], "3511AB");
    let events = app.events(1).await;
    assert_eq!(
        events[0].0["data"]["ssn"], "123-45-6789",
        "events carry the full state"
    );

    // The same body again under a new id updates nothing.
    app.publish(message(&body, "seed-again")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["response"]["data"][0]["action"], "update");
    assert_eq!(reply["records"][0]["action"], "unchanged");
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_customers_with_parents_earlier_in_the_batch_are_applied() {
    let mut app = TestApp::spawn().await;
    let customers: Vec<Value> = (0..1000)
        .map(|i| {
            let mut customer = json!({
                "id": 10_000 + i, "firstName": format!("F{i}"), "lastName": "L",
                "email": format!("c{i}@example.com"),
                "attributes": [{"name": "segment", "type": "enum", "value": "retail"}],
                "addresses": [{"type": "delivery", "isDefault": "Y", "street": "S", "city": "C",
                               "country": "US"}]
            });
            if i > 0 {
                customer["parent"] = json!({"id": 10_000});
            }
            customer
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "customers": customers })).unwrap();
    app.publish(message(&body, "thousand")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{}", reply["records"][1]);
    assert_eq!(reply["counts"]["created"], 1000);
    assert_eq!(reply["response"]["total"], 1000);
    assert_eq!(app.customer_count("acme").await, 1000);
    let (_, _, child) = app.customer("acme", "10999").await.unwrap();
    assert_eq!(child["parentKey"], "10000");
    assert_eq!(app.distinct_events().await.len(), 1000);
    app.stop().await;
}

#[tokio::test]
async fn an_unresolved_parent_or_a_source_id_without_source_fails_that_record_only() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"customers": [
        {"id": 1, "firstName": "ok"},
        {"id": 2, "parent": {"id": 999}},
        {"id": 3, "sourceId": "S-1"},
        {"id": 4, "parent": {"id": 1}},
        {"id": 5, "parent": {"id": 6}},
        {"id": 6}
    ]}))
    .unwrap();
    app.publish(message(&body, "refs")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    let actions: Vec<&str> = reply["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "created", "failed", "failed", "created", "failed", "created"
        ],
        "a parent must be stored already or come earlier in the batch"
    );
    let parent_error = &reply["records"][1]["errors"][0];
    assert_eq!(parent_error["field"], "parent.id");
    assert_eq!(parent_error["code"], "unknown_reference");
    assert!(parent_error["message"].as_str().unwrap().contains("999"));
    assert_eq!(reply["records"][2]["errors"][0]["field"], "source");
    let failed = &reply["response"]["data"][1];
    assert_eq!(failed["success"], false);
    assert_eq!(failed["key"], 2);
    assert!(failed["error"].as_str().unwrap().contains("999"));
    assert!(app.customer("acme", "2").await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn attributes_merge_by_name_and_addresses_are_replaced_per_type() {
    let mut app = TestApp::spawn().await;
    let first = serde_json::to_vec(&json!({"customers": [{
        "id": 7, "firstName": "Ann", "email": "ann@example.com",
        "attributes": [{"name": "tier", "type": "integer", "value": "1"},
                       {"name": "vip", "type": "enum", "value": "yes"},
                       {"name": "note", "type": "text", "value": "hello"}],
        "addresses": [
            {"type": "delivery", "isDefault": "Y", "street": "Old", "city": "C", "country": "NL"},
            {"type": "invoice", "isDefault": "Y", "street": "Bill", "city": "C", "country": "NL"}]
    }]}))
    .unwrap();
    app.publish(message(&first, "m1")).await;
    app.next_reply().await;

    let second = serde_json::to_vec(&json!({"customers": [{
        "id": 7,
        "attributes": [{"name": "tier", "type": "integer", "value": "2"},
                       {"name": "note", "type": "text"}],
        "addresses": [{"type": "delivery", "street": "New", "city": "C", "country": "NL"}]
    }]}))
    .unwrap();
    app.publish(message(&second, "m2")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["records"][0]["action"], "updated");
    assert_eq!(reply["records"][0]["version"], 2);
    let (_, _, data) = app.customer("acme", "7").await.unwrap();
    assert_eq!(data["firstName"], "Ann", "fields left out keep their value");
    assert_eq!(data["email"], "ann@example.com");
    let attributes: Vec<(&str, Option<&str>)> = data["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["value"].as_str()))
        .collect();
    assert_eq!(
        attributes,
        [("note", None), ("tier", Some("2")), ("vip", Some("yes"))],
        "one attribute changed, one value removed, the other kept"
    );
    let streets: Vec<(&str, &str)> = data["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["type"].as_str().unwrap(), a["street"].as_str().unwrap()))
        .collect();
    assert_eq!(streets, [("delivery", "New"), ("invoice", "Bill")]);
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_body_under_one_message_id_is_applied_once() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&seed_example()).unwrap();
    app.publish(message(&body, "once")).await;
    let (first, _) = app.next_reply().await;
    app.publish(message(&body, "once")).await;
    let (second, _) = app.next_reply().await;
    assert_eq!(first["records"], second["records"]);
    assert_eq!(first["response"], second["response"]);
    app.events(1).await;
    app.stop().await;
}
