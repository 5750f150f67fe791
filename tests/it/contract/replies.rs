//! Replies of every status, dialect and size, and a dead letter, against the document.

use std::collections::BTreeMap;

use customer_ingest::amqp::headers;
use lapin::BasicProperties;
use serde_json::{Value, json};

use super::{Contract, header, headers_json, valid_bodies};
use crate::helpers::{Message, PATIENCE, TestApp, customers_body};

#[tokio::test]
async fn replies_of_every_status_and_dialect_conform_to_the_asyncapi_document() {
    let contract = Contract::load();
    // Two records per reply message, so that a five-record batch is answered in three parts.
    let mut app = TestApp::spawn_with(|s| s.pipeline.reply_records_per_message = 2).await;

    let mut batches: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for (message, dialect, body) in valid_bodies() {
        // What a producer sends is what the document says it may send.
        contract.check(
            &format!("/components/messages/{message}/payload"),
            &body,
            &format!("the example {dialect} body"),
        );
        batches.push((
            format!("valid-{dialect}"),
            dialect,
            serde_json::to_vec(&body).unwrap(),
        ));
    }
    // Some records failing, in each dialect whose response says so in its own way; one of them
    // in three parts.
    let mut partial: Vec<Value> = serde_json::from_slice(&customers_body("CP", 5, "Part")).unwrap();
    partial[3]["email"] = json!("not an email");
    let others = [
        ("partial-parts", "upsert-by-customer-id", json!(partial)),
        (
            "partial-upsert-by-id",
            "upsert-by-id",
            json!({"customers": [{"id": 600, "firstName": "Cy"}, {"id": 601, "parent": {"id": 999}}]}),
        ),
        (
            "partial-add-with-accounts",
            "add-with-accounts",
            json!([{"name": "Good"}, {"name": "Bad", "payTypes": ["BARTER"]}]),
        ),
        (
            "partial-match-by-contact",
            "match-by-contact",
            json!({"Customers": [{"FirstName": "Di", "Email": "di@example.com"},
                                 {"FirstName": "Ed", "Email": "not an email"}]}),
        ),
        (
            "failed",
            "upsert-by-customer-id",
            json!([{"customerName": "no key"}, {"customerID": "CF-1", "unknown": 1}]),
        ),
    ];
    for (id, dialect, body) in others {
        batches.push((id.into(), dialect, serde_json::to_vec(&body).unwrap()));
    }
    batches.push((
        "rejected".into(),
        "upsert-by-customer-id",
        b"{not json".to_vec(),
    ));

    for (id, dialect, body) in &batches {
        app.publish(Message {
            dialect: Some(dialect),
            ..Message::upsert(body, "acme", id)
        })
        .await;
    }

    // Every part of every batch, by batch.
    let mut replies: BTreeMap<String, Vec<(Value, BasicProperties)>> = BTreeMap::new();
    let expected_messages = batches.len() + 2;
    for _ in 0..expected_messages {
        let (reply, properties) = app.next_reply().await;
        contract.check_message("reply", &reply, &properties);
        let batch_id = reply["batch_id"].as_str().unwrap().to_owned();
        let part = &reply["part"];
        assert_eq!(
            properties.message_id().as_ref().map(|m| m.to_string()),
            Some(format!("{batch_id}:{}", part["index"]))
        );
        assert_eq!(
            properties.correlation_id().as_ref().map(|c| c.as_str()),
            reply["correlation_id"].as_str()
        );
        assert_eq!(
            header(&properties, headers::STATUS),
            reply["status"].as_str()
        );
        assert_eq!(
            header(&properties, headers::TENANT),
            reply["tenant"].as_str()
        );
        assert_eq!(
            headers::header_i64(properties.headers(), headers::PART),
            part["index"].as_i64()
        );
        assert_eq!(
            headers::header_i64(properties.headers(), headers::PARTS),
            part["count"].as_i64()
        );
        replies
            .entry(batch_id)
            .or_default()
            .push((reply, properties));
    }

    let status = |id: &str| replies[id][0].0["status"].as_str().unwrap().to_owned();
    for (id, _, _) in &batches {
        assert!(replies.contains_key(id), "no reply to {id}");
    }
    assert_eq!(
        replies["partial-parts"].len(),
        3,
        "a five-record batch in three parts"
    );
    assert_eq!(status("partial-parts"), "partial");
    for dialect in ["upsert-by-id", "add-with-accounts", "match-by-contact"] {
        assert_eq!(status(&format!("partial-{dialect}")), "partial");
    }
    assert_eq!(status("failed"), "failed");
    assert_eq!(status("rejected"), "rejected");
    for (_, dialect, _) in valid_bodies() {
        assert_eq!(
            status(&format!("valid-{dialect}")),
            "completed",
            "{replies:#?}"
        );
    }

    // The schema is strict enough to notice a change of the envelope.
    let (reply, _) = &replies["partial-parts"][0];
    let pointer = "/components/messages/reply/payload";
    let mut extra = reply.clone();
    extra["retry_after"] = json!(1);
    assert!(
        !contract.faults(pointer, &extra).is_empty(),
        "an unknown member"
    );
    let mut missing = reply.clone();
    missing.as_object_mut().unwrap().remove("counts");
    assert!(
        !contract.faults(pointer, &missing).is_empty(),
        "a missing member"
    );
    let mut renamed = reply.clone();
    renamed["records"][0]["action"] = json!("inserted");
    assert!(
        !contract.faults(pointer, &renamed).is_empty(),
        "an unknown action"
    );
    // ...and of a dialect's response: each is held to its API's shape.
    for (batch, member) in [
        ("partial-upsert-by-id", "/response/data/0"),
        ("partial-add-with-accounts", "/response/data/0/customer"),
        ("partial-match-by-contact", "/response/0"),
        ("partial-parts", "/response/successful/0"),
    ] {
        let mut changed = replies[batch][0].0.clone();
        changed.pointer_mut(member).unwrap()["renamed"] = json!(true);
        assert!(
            !contract.faults(pointer, &changed).is_empty(),
            "a response of {batch} with a member its API does not have"
        );
    }

    app.stop().await;
}

#[tokio::test]
async fn a_dead_letter_conforms_to_the_asyncapi_document() {
    let contract = Contract::load();
    let mut app = TestApp::spawn().await;
    let body = customers_body("DL", 1, "Dead Letter");
    app.publish(Message {
        dialect: Some("no-such-dialect"),
        ..Message::upsert(&body, "acme", "dead-1")
    })
    .await;
    let (reply, properties) = app.next_reply().await;
    contract.check_message("reply", &reply, &properties);
    assert_eq!(reply["error"]["code"], "unknown_type", "{reply}");

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dead.is_empty() && tokio::time::Instant::now() < deadline {
        dead = app.dead_letters().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "one dead letter");
    let letter = &dead[0];
    assert_eq!(letter.data, body, "the producer's body, byte for byte");
    let payload: Value = serde_json::from_slice(&letter.data).unwrap();
    contract.check_message("deadLetter", &payload, &letter.properties);
    let headers = headers_json(&letter.properties);
    assert_eq!(headers["error-code"], "unknown_type");
    assert_eq!(headers["tenant"], "acme");
    assert_eq!(
        letter.properties.kind().as_ref().map(|k| k.as_str()),
        Some("no-such-dialect"),
        "the producer's properties are kept"
    );

    // A dead letter without the service's reason, or with a code the document does not know, fails.
    let pointer = "/components/messages/deadLetter/headers";
    let mut unknown = headers.clone();
    unknown["error-code"] = json!("gremlins");
    assert!(!contract.faults(pointer, &unknown).is_empty());
    assert!(
        !contract
            .faults(pointer, &json!({"tenant": "acme"}))
            .is_empty()
    );

    app.stop().await;
}
