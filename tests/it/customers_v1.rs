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

/// Bookkeeping other dialects and the contact matching keep in a customer (the `match*` values and
/// location under `extra`, add-with-accounts' `franchiseId`, `account` and `shipTo`) and fields
/// nobody documented (inside `address`, `addresses`, `attributes`, `orderingGroups`) are not part
/// of `customers.v1`: each fails its record naming the field, and the rest of the batch is applied.
#[tokio::test]
async fn a_native_record_carrying_an_internal_or_undocumented_field_fails_naming_it() {
    let mut app = TestApp::spawn().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"extra": {"matchEmail": "ann@example.com"}}),
            "extra.matchEmail",
        ),
        (json!({"extra": {"locationId": "7"}}), "extra.locationId"),
        (
            json!({"extra": {"franchiseId": "globex"}}),
            "extra.franchiseId",
        ),
        (json!({"locationId": 7}), "locationId"),
        (json!({"franchiseId": "globex"}), "franchiseId"),
        (
            json!({"account": {"status": "ACTIVE", "billToAccount": {"id": "x"}}}),
            "account",
        ),
        (json!({"shipTo": {"name": "Dock 4"}}), "shipTo"),
        (
            json!({"addresses": [{"type": "delivery", "isDefault": true, "street": "Main",
                "matchEmail": "ann@example.com"}]}),
            "addresses[0].matchEmail",
        ),
        (
            json!({"address": {"street1": "Main", "locationId": "7"}}),
            "address.locationId",
        ),
        (
            json!({"attributes": [{"name": "tier", "type": "integer", "value": "3",
                "franchiseId": "globex"}]}),
            "attributes[0].franchiseId",
        ),
        (
            json!({"orderingGroups": [{"id": "G", "subGroups": [{"id": "S", "locationId": "7"}]}]}),
            "orderingGroups[0].subGroups[0].locationId",
        ),
    ];
    let mut records = vec![customer(0)];
    for (i, (fields, _)) in cases.iter().enumerate() {
        let mut record = fields.clone();
        record["externalId"] = json!(format!("INT-{i}"));
        record["firstName"] = json!("Ann");
        records.push(record);
    }
    // Documented fields of the same objects still pass.
    records.push(
        json!({"externalId": "EXT-99", "extra": {"extra1": "carried"},
        "addresses": [{"type": "invoice", "isDefault": true, "street": "Main", "city": "Utrecht",
            "country": "nl", "icp": "N"}],
        "orderingGroups": [{"id": "G", "subGroups": [{"id": "S", "customers": ["EXT-0"]}]}]}),
    );
    let body = serde_json::to_vec(&json!({ "customers": records })).unwrap();
    app.publish(message(&body, "internal")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial", "{reply}");
    for (i, (_, field)) in cases.iter().enumerate() {
        let record = &reply["records"][i + 1];
        assert_eq!(record["action"], "failed", "{field}: {record}");
        let errors = record["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["code"] == "unknown_field" && e["field"] == *field),
            "{field}: {record}"
        );
    }
    assert_eq!(reply["records"][0]["action"], "created", "{reply}");
    let last = &reply["records"][cases.len() + 1];
    assert_eq!(last["action"], "created", "{last}");
    assert_eq!(app.customer_count("acme").await, 2);
    let (_, _, data) = app.customer("acme", "EXT-99").await.unwrap();
    assert_eq!(data["extra"], json!({"extra1": "carried"}));
    assert_eq!(data["addresses"][0]["country"], "NL");
    app.stop().await;
}

/// A record with several faults names every one of them, not only the first serde meets.
#[tokio::test]
async fn a_native_record_gets_every_error_at_once() {
    let mut app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"customers": [
        customer(1),
        {"externalId": "EXT-2", "extra": {"matchEmail": "a@example.com"}, "email": "not-an-email",
         "address": {"country": "XX", "locationId": "7"}, "priceZone": "two", "account": {}},
    ]}))
    .unwrap();
    app.publish(message(&body, "every-error")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial", "{reply}");
    let mut fields: Vec<(String, String)> = reply["records"][1]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    fields.sort();
    let expected = [
        ("account", "unknown_field"),
        ("address.country", "invalid_country"),
        ("address.locationId", "unknown_field"),
        ("email", "invalid_email"),
        ("extra.matchEmail", "unknown_field"),
        ("priceZone", "invalid_type"),
    ]
    .map(|(f, c)| (f.to_owned(), c.to_owned()));
    assert_eq!(fields, expected, "{reply}");
    assert_eq!(app.customer_count("acme").await, 1);
    app.stop().await;
}
