//! The `add-with-accounts` dialect (Customer API, Add Customers) end to end.

use serde_json::{Value, json};

use crate::helpers::{Message, TestApp};

fn message<'a>(body: &'a [u8], id: &'a str) -> Message<'a> {
    Message {
        dialect: Some("add-with-accounts"),
        ..Message::upsert(body, "franchise-9", id)
    }
}

fn address() -> Value {
    json!({"street1": "1 Main St", "street2": "Unit 2", "city": "Springfield", "state": "IL",
           "countryCode": "US", "zipCode": "62701"})
}

/// The seed page's request, its placeholder strings replaced by valid values.
fn seed_record(bill_to: Value) -> Value {
    json!({
        "name": "Corner Store", "address": address(), "billToAddress": address(),
        "billToCustomerId": bill_to, "phone": "217-555-0100", "email": "shop@example.com",
        "shipTo": {"name": "Dock 4", "address": address(), "phone": "217-555-0101",
                   "email": "dock@example.com"},
        "signatureRequired": true, "balanceDue": 0, "creditLimit": 500, "cashOverDays": true,
        "cashOverLimit": true, "maxDays": 30, "defaultPayType": "CASH", "payTypes": ["CASH"],
        "priceCode": 3, "taxCode": 8, "status": "ACTIVE"
    })
}

#[tokio::test]
async fn the_seed_example_adds_a_customer_with_its_account_in_the_apis_response_shape() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!([seed_record(json!(0))])).unwrap();
    app.publish(message(&body, "seed")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let id = reply["records"][0]["id"].clone();
    let data = &reply["response"]["data"][0];
    let customer = &data["customer"];
    assert_eq!(customer["id"], id);
    assert_eq!(customer["franchiseId"], "franchise-9");
    assert_eq!(customer["name"], "Corner Store");
    assert_eq!(customer["address"], address());
    assert_eq!(customer["phone"], "217-555-0100");
    assert_eq!(customer["email"], "shop@example.com");
    assert_eq!(customer["shipTo"]["name"], "Dock 4");
    assert_eq!(customer["shipTo"]["address"], address());
    assert_eq!(customer["version"], 1);
    let account = &data["account"];
    assert_eq!(account["id"], id, "the account carries its customer's id");
    for (field, value) in [
        ("status", json!("ACTIVE")),
        ("billToAddress", address()),
        ("balance", json!(0.0)),
        ("creditLimit", json!(500.0)),
        ("cashOverLimit", json!(true)),
        ("cashOverDays", json!(true)),
        ("ageInDays", json!(0)),
        ("defaultPayType", json!("CASH")),
        ("payTypes", json!(["CASH"])),
        ("priceCode", json!(3)),
        ("taxCode", json!("8")),
        ("maxDays", json!(30)),
        ("signatureRequired", json!(true)),
        ("version", json!(1)),
    ] {
        assert_eq!(account[field], value, "account.{field}");
    }
    assert_eq!(
        customer["billToAccount"], *account,
        "billed to its own account"
    );

    let events = app.events(1).await;
    assert_eq!(events[0].0["type"], "customer.created");
    assert_eq!(events[0].0["data"]["account"]["creditLimit"], 500.0);
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_added_customers_each_get_an_account_and_an_event() {
    let mut app = TestApp::spawn().await;
    let records: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"name": format!("Store {i}"), "email": format!("s{i}@example.com"),
                   "address": address(), "payTypes": ["CASH", "CHECK"], "defaultPayType": "CHECK",
                   "creditLimit": i})
        })
        .collect();
    let body = serde_json::to_vec(&records).unwrap();
    app.publish(message(&body, "thousand")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["created"], 1000);
    let data = reply["response"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 1000);
    assert_eq!(data[999]["account"]["creditLimit"], 999.0);
    assert_eq!(app.customer_count("franchise-9").await, 1000);
    assert_eq!(app.distinct_events().await.len(), 1000);
    app.stop().await;
}

#[tokio::test]
async fn a_customer_billed_to_an_existing_customer_carries_that_account() {
    let mut app = TestApp::spawn().await;
    let payer = serde_json::to_vec(&json!([seed_record(json!(0))])).unwrap();
    app.publish(message(&payer, "payer")).await;
    let (reply, _) = app.next_reply().await;
    let payer_id = reply["records"][0]["id"].as_str().unwrap().to_owned();

    let mut billed = seed_record(json!(payer_id));
    billed["name"] = json!("Branch");
    billed["creditLimit"] = json!(0);
    let body =
        serde_json::to_vec(&json!([billed, seed_record(json!(uuid::Uuid::now_v7()))])).unwrap();
    app.publish(message(&body, "billed")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    let bill_to = &reply["response"]["data"][0]["customer"]["billToAccount"];
    assert_eq!(bill_to["id"], payer_id);
    assert_eq!(
        bill_to["creditLimit"], 500.0,
        "the payer's account, not its own"
    );
    let unknown = &reply["records"][1];
    assert_eq!(unknown["action"], "failed");
    assert_eq!(unknown["errors"][0]["field"], "billToCustomerId");
    assert_eq!(unknown["errors"][0]["code"], "unknown_reference");
    assert!(
        reply["response"]["data"][1]["error"]["messages"][0]
            .as_str()
            .unwrap()
            .contains("billToCustomerId")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_pay_type_fails_only_its_record() {
    let mut app = TestApp::spawn().await;
    let mut bad = seed_record(json!(0));
    bad["payTypes"] = json!(["CASH", "BITCOIN"]);
    let body = serde_json::to_vec(&json!([bad, seed_record(json!(0))])).unwrap();
    app.publish(message(&body, "pay")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    assert_eq!(reply["records"][0]["errors"][0]["field"], "payTypes[1]");
    assert_eq!(reply["records"][1]["action"], "created");
    assert_eq!(app.customer_count("franchise-9").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_batch_adds_nothing_twice() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!([seed_record(json!(0)), seed_record(json!(0))])).unwrap();
    app.publish(message(&body, "once")).await;
    let (first, _) = app.next_reply().await;
    app.publish(message(&body, "once")).await;
    let (second, _) = app.next_reply().await;
    assert_eq!(first["response"], second["response"]);
    assert_eq!(
        app.customer_count("franchise-9").await,
        2,
        "two records, two customers, once"
    );
    // The same body under another message id is another batch: it adds again.
    app.publish(message(&body, "another")).await;
    let (third, _) = app.next_reply().await;
    assert_eq!(third["counts"]["created"], 2);
    assert_eq!(app.customer_count("franchise-9").await, 4);
    app.stop().await;
}
