//! Customer events, in both modes (`events.mode`), against the document.

use std::collections::BTreeSet;
use std::process::Command;

use customer_ingest::amqp::headers;
use customer_ingest::config::Settings;
use futures_util::StreamExt;
use lapin::BasicProperties;
use serde_json::{Value, json};

use super::{Contract, header, valid_bodies};
use crate::helpers::{Message, PATIENCE, TestApp, customers_body, wait_for};

/// The next message on `consumer`: its routing key, JSON body and properties.
async fn next_event(consumer: &mut lapin::Consumer) -> (String, Value, BasicProperties) {
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for an event"))
        .unwrap()
        .unwrap();
    let body = serde_json::from_slice(&delivery.data).expect("an event is JSON");
    (delivery.routing_key.to_string(), body, delivery.properties)
}

/// What the document says of one CloudEvent beyond its schema: how its attributes, its message's
/// properties and headers, and its routing key agree.
fn check_event_relations(event: &Value, properties: Option<&BasicProperties>, routing_key: &str) {
    let tenant = event["tenant"].as_str().unwrap();
    let kind = event["type"].as_str().unwrap();
    assert_eq!(event["source"], format!("/tenants/{tenant}"), "{event}");
    assert_eq!(event["subject"], event["data"]["id"], "{event}");
    assert_eq!(event["data"]["tenant"], tenant, "{event}");
    assert_eq!(
        event["customerversion"], event["data"]["version"],
        "{event}"
    );
    if let Some(properties) = properties {
        assert_eq!(
            routing_key,
            format!("customer.{}.{tenant}", kind.trim_start_matches("customer."))
        );
        assert_eq!(
            properties.message_id().as_ref().map(|m| m.as_str()),
            event["id"].as_str()
        );
        assert_eq!(properties.kind().as_ref().map(|k| k.as_str()), Some(kind));
        assert_eq!(header(properties, headers::TENANT), Some(tenant));
        assert_eq!(
            header(properties, headers::CUSTOMER_ID),
            event["subject"].as_str()
        );
    }
}

/// Creates two customers, updates one and erases the other (a created, an updated and a deleted
/// customer), then adds customers in every other dialect, so that `data` carries every kind of
/// field. Returns how many events that makes.
async fn every_kind_of_event(app: &mut TestApp, tenant: &str) -> usize {
    let created = customers_body("EV", 2, "Event Store");
    app.publish(Message::upsert(&created, tenant, "events-1"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["created"], 2, "{reply}");
    let updated = customers_body("EV", 1, "Renamed Store");
    app.publish(Message::upsert(&updated, tenant, "events-2"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["updated"], 1, "{reply}");
    wait_for("the outbox to drain", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let database = app.settings.database.url().to_owned();
    let erased = tenant.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
            .args(["erase", "--tenant", &erased, "--key", "EV-1"])
            .env("INGEST__DATABASE__URL", database)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "erase: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut events = 4;
    for (_, dialect, body) in valid_bodies() {
        let body = serde_json::to_vec(&body).unwrap();
        let batch_id = format!("events-{dialect}");
        app.publish(Message {
            dialect: Some(dialect),
            ..Message::upsert(&body, tenant, &batch_id)
        })
        .await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
        events += reply["counts"]["created"].as_u64().unwrap() as usize;
    }
    events
}

#[tokio::test]
async fn per_customer_events_conform_to_the_asyncapi_document() {
    let contract = Contract::load();
    let mut app = TestApp::spawn().await;
    let mut events = app.bind_events("#").await;
    let expected = every_kind_of_event(&mut app, "acme").await;

    let mut kinds = BTreeSet::new();
    for _ in 0..expected {
        let (routing_key, event, properties) = next_event(&mut events).await;
        contract.check_message("customerEvent", &event, &properties);
        check_event_relations(&event, Some(&properties), &routing_key);
        kinds.insert(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(
            ["customer.created", "customer.updated", "customer.deleted"].map(String::from)
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn batched_events_conform_to_the_asyncapi_document() {
    let contract = Contract::load();
    let mut app = TestApp::spawn_with(|settings| {
        *settings = with_batched_events(settings);
    })
    .await;
    let mut events = app.bind_events("#").await;
    let expected = every_kind_of_event(&mut app, "acme").await;

    let mut kinds = BTreeSet::new();
    let mut seen = 0;
    while seen < expected {
        let (routing_key, batch, properties) = next_event(&mut events).await;
        contract.check_message("customerEventBatch", &batch, &properties);
        assert_eq!(routing_key, "customer.batch.acme");
        let batch = batch.as_array().unwrap();
        assert_eq!(
            headers::header_i64(properties.headers(), "event_count"),
            Some(batch.len() as i64)
        );
        for event in batch {
            check_event_relations(event, None, &routing_key);
            kinds.insert(event["type"].as_str().unwrap().to_owned());
        }
        seen += batch.len();
    }
    assert_eq!(seen, expected);
    assert_eq!(
        kinds,
        BTreeSet::from(
            ["customer.created", "customer.updated", "customer.deleted"].map(String::from)
        )
    );
    app.stop().await;
}

/// `settings` with `events.mode = "batch"`, set as a configuration file would set it.
fn with_batched_events(settings: &Settings) -> Settings {
    let mut value = serde_json::to_value(settings).unwrap();
    // The URLs hold credentials and are never serialized: they are put back by hand.
    value["amqp"]["url"] = json!(settings.amqp.url());
    value["database"]["url"] = json!(settings.database.url());
    value["events"]["mode"] = json!("batch");
    serde_json::from_value(value)
        .unwrap_or_else(|error| panic!("events.mode = \"batch\" is a setting: {error}"))
}
