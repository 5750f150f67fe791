//! Events as a downstream consumer sees them: CloudEvents in structured mode, routed by kind and
//! tenant, one message per customer or (`events.mode = "batch"`) one per committed chunk, with the
//! same order and dedup guarantees either way.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use customer_ingest::amqp::headers::{header_i64, header_str};
use customer_ingest::events::EventsMode;
use futures_util::StreamExt;
use lapin::{BasicProperties, Consumer};
use serde_json::Value;

use crate::helpers::{
    Message, PATIENCE, TestApp, customers_body, failpoints_compiled_in, next_json, signal,
    spawn_worker_process, terminate, wait_for,
};

/// One delivered message: routing key, properties and body.
struct Delivered {
    routing_key: String,
    properties: BasicProperties,
    body: Value,
}

/// Every message `consumer` receives once the outbox has drained and nothing more arrives.
async fn drain(app: &TestApp, consumer: &mut Consumer) -> Vec<Delivered> {
    wait_for("the outbox to drain", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let mut messages = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        messages.push(Delivered {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties,
            body: serde_json::from_slice(&delivery.data).expect("an event message is JSON"),
        });
    }
    messages
}

fn text(value: &Option<lapin::types::ShortString>) -> &str {
    value.as_ref().map_or("", |s| s.as_str())
}

/// Checks one event's CloudEvents attributes against what the test knows of it.
fn assert_cloudevent(event: &Value, tenant: &str, kind: &str, version: i64, batch: &str) {
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["source"], format!("/tenants/{tenant}"), "{event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    assert_eq!(event["tenant"], tenant, "{event}");
    assert_eq!(event["customerversion"], version, "{event}");
    assert_eq!(event["batchid"], batch, "{event}");
    assert_eq!(event["subject"], event["data"]["id"], "{event}");
    assert_eq!(event["data"]["version"], version, "{event}");
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    let time = event["time"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "time is RFC 3339: {time}"
    );
    // Only CloudEvents attributes and extensions: lowercase letters and digits.
    for name in event.as_object().unwrap().keys() {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_event_is_a_structured_cloudevent_whose_properties_name_it() {
    let mut app = TestApp::spawn().await;
    let mut acme = app.bind_events("customer.*.acme").await;
    app.publish(Message::upsert(
        &customers_body("E", 1, "Customer"),
        "acme",
        "first",
    ))
    .await;
    app.next_reply().await;
    app.publish(Message::upsert(
        &customers_body("E", 1, "Renamed"),
        "acme",
        "second",
    ))
    .await;
    app.next_reply().await;

    let messages = drain(&app, &mut acme).await;
    assert_eq!(messages.len(), 2);
    for (message, (kind, version, batch, name)) in messages.iter().zip([
        ("customer.created", 1, "first", "Customer 0"),
        ("customer.updated", 2, "second", "Renamed 0"),
    ]) {
        let event = &message.body;
        assert_cloudevent(event, "acme", kind, version, batch);
        assert_eq!(event["data"]["key"], "E-0");
        assert_eq!(event["data"]["name"], name);
        assert_eq!(message.routing_key, format!("{kind}.acme"));
        let properties = &message.properties;
        assert_eq!(
            text(properties.content_type()),
            "application/cloudevents+json"
        );
        assert_eq!(text(properties.message_id()), event["id"].as_str().unwrap());
        assert_eq!(text(properties.kind()), kind);
        assert_eq!(properties.delivery_mode(), &Some(2));
        let time = chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
        assert_eq!(properties.timestamp(), &Some(time.timestamp() as u64));
        assert_eq!(header_str(properties.headers(), "tenant"), Some("acme"));
        assert_eq!(
            header_str(properties.headers(), "customer_id"),
            event["subject"].as_str()
        );
    }
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn a_consumer_bound_to_one_tenant_receives_only_that_tenants_events() {
    let mut app = TestApp::spawn().await;
    let mut acme = app.bind_events("customer.*.acme").await;
    let mut other = app.bind_events("customer.*.glo-bex_2").await;
    let mut created = app.bind_events("customer.created.*").await;
    for (tenant, customers, name, batch) in [
        ("acme", 3, "Customer", "a1"),
        ("glo-bex_2", 2, "Customer", "g1"),
        ("acme", 1, "Renamed", "a2"),
        ("glo-bex_2", 1, "Renamed", "g2"),
    ] {
        let body = customers_body("T", customers, name);
        app.publish(Message::upsert(&body, tenant, batch)).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
    }

    let kinds = |messages: &[Delivered]| {
        let mut kinds: Vec<String> = messages.iter().map(|m| m.routing_key.clone()).collect();
        kinds.sort();
        kinds
    };
    let acme_messages = drain(&app, &mut acme).await;
    assert_eq!(
        kinds(&acme_messages),
        [
            "customer.created.acme",
            "customer.created.acme",
            "customer.created.acme",
            "customer.updated.acme"
        ]
    );
    for message in &acme_messages {
        assert_eq!(message.body["tenant"], "acme");
        assert_eq!(
            header_str(message.properties.headers(), "tenant"),
            Some("acme")
        );
    }
    let other_messages = drain(&app, &mut other).await;
    assert_eq!(
        kinds(&other_messages),
        [
            "customer.created.glo-bex_2",
            "customer.created.glo-bex_2",
            "customer.updated.glo-bex_2"
        ]
    );
    assert!(
        other_messages
            .iter()
            .all(|m| m.body["tenant"] == "glo-bex_2")
    );
    let created_messages = drain(&app, &mut created).await;
    assert_eq!(created_messages.len(), 5, "every tenant's creations only");
    assert!(
        created_messages
            .iter()
            .all(|m| m.body["type"] == "customer.created")
    );
    app.events(7).await;
    app.stop().await;
}

#[tokio::test]
async fn in_batch_mode_each_chunk_is_one_message_of_its_events_in_commit_order() {
    let mut app = TestApp::spawn_with(|s| {
        s.events.mode = EventsMode::Batch;
        s.pipeline.chunk_size = 50;
    })
    .await;
    let mut acme = app.bind_events("customer.*.acme").await;
    let mut globex = app.bind_events("customer.*.globex").await;
    for (tenant, name, batch) in [
        ("acme", "Customer", "b1"),
        ("acme", "Renamed", "b2"),
        ("globex", "Customer", "g1"),
    ] {
        let body = customers_body("B", 120, name);
        app.publish(Message::upsert(&body, tenant, batch)).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
    }

    let messages = drain(&app, &mut acme).await;
    assert_eq!(messages.len(), 6, "two batches of three chunks");
    let mut sizes = Vec::new();
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    let mut ids = HashSet::new();
    for (index, message) in messages.iter().enumerate() {
        let properties = &message.properties;
        assert_eq!(message.routing_key, "customer.batch.acme");
        assert_eq!(
            text(properties.content_type()),
            "application/cloudevents-batch+json"
        );
        assert_eq!(text(properties.kind()), "customer.batch");
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert!(properties.timestamp().is_some());
        assert_eq!(header_str(properties.headers(), "tenant"), Some("acme"));
        assert_eq!(header_str(properties.headers(), "customer_id"), None);
        let events = message.body.as_array().expect("a batch is a JSON array");
        assert_eq!(
            header_i64(properties.headers(), "event_count"),
            Some(events.len() as i64)
        );
        assert!(ids.insert(text(properties.message_id()).to_owned()));
        sizes.push(events.len());
        let (kind, version, batch) = if index < 3 {
            ("customer.created", 1, "b1")
        } else {
            ("customer.updated", 2, "b2")
        };
        for event in events {
            assert_cloudevent(event, "acme", kind, version, batch);
            assert!(ids.insert(event["id"].as_str().unwrap().to_owned()));
            versions
                .entry(event["subject"].as_str().unwrap().to_owned())
                .or_default()
                .push(event["customerversion"].as_i64().unwrap());
        }
    }
    sizes.sort();
    assert_eq!(sizes, [20, 20, 50, 50, 50, 50], "one message per chunk");
    assert_eq!(versions.len(), 120);
    assert!(
        versions.values().all(|v| v == &[1, 2]),
        "each customer's events in version order"
    );

    let globex_messages = drain(&app, &mut globex).await;
    assert_eq!(globex_messages.len(), 3);
    assert!(
        globex_messages
            .iter()
            .all(|m| m.routing_key == "customer.batch.globex")
    );
    assert_eq!(app.distinct_events().await.len(), 360);
    app.stop().await;
}

#[tokio::test]
async fn in_batch_mode_a_worker_killed_after_the_broker_confirmed_sends_the_same_batches_again() {
    failpoints_compiled_in();
    let mut app = TestApp::without_worker(|s| {
        s.events.mode = EventsMode::Batch;
        s.pipeline.chunk_size = 50;
    })
    .await;
    let mut batches = app.bind_events("customer.batch.acme").await;
    let body = customers_body("K", 150, "Customer");
    app.publish(Message::upsert(&body, "acme", "crash-batch"))
        .await;

    let mut crashing = spawn_worker_process(&app.settings, Some("relay-after-publish=return"));
    let status = tokio::time::timeout(PATIENCE, crashing.wait())
        .await
        .expect("the worker stops at the failure point")
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "stopped after a confirmed publish"
    );
    let mut worker = spawn_worker_process(&app.settings, None);
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");

    let messages = drain(&app, &mut batches).await;
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for message in &messages {
        by_id
            .entry(text(message.properties.message_id()).to_owned())
            .or_default()
            .push(&message.body);
    }
    assert_eq!(by_id.len(), 3, "one message id per chunk");
    for bodies in by_id.values() {
        assert!(
            bodies.iter().all(|body| body == &bodies[0]),
            "a re-published batch is the same batch"
        );
    }
    assert!(
        messages.len() > by_id.len(),
        "what was confirmed before the crash went out again"
    );
    let mut events: HashMap<&str, &Value> = HashMap::new();
    for body in by_id.values().map(|bodies| bodies[0]) {
        for event in body.as_array().unwrap() {
            assert_cloudevent(event, "acme", "customer.created", 1, "crash-batch");
            assert!(
                events
                    .insert(event["id"].as_str().unwrap(), event)
                    .is_none()
            );
        }
    }
    assert_eq!(
        events.len(),
        150,
        "every customer's event, each in one chunk"
    );
    assert_eq!(app.distinct_events().await.len(), 150);
    assert!(terminate(&mut worker).await.success());
    app.stop().await;
}

#[tokio::test]
async fn the_relay_holds_no_transaction_open_while_it_publishes() {
    failpoints_compiled_in();
    let mut app = TestApp::without_worker(|_| {}).await;
    let mut events = app.bind_events("#").await;
    let body = customers_body("P", 20, "Customer");
    app.publish(Message::upsert(&body, "acme", "paused-relay"))
        .await;
    // The relay stops for good once the broker has confirmed its events, before it marks them done.
    let mut paused = spawn_worker_process(&app.settings, Some("relay-after-publish=pause"));
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    for _ in 0..20 {
        next_json(&mut events, "an event").await;
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        pending > 0,
        "the relay is stopped before marking the events done"
    );

    // The batch is answered, so the pipeline holds no transaction: any left open is the relay's.
    let idle: Vec<String> = sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'customer-ingest'
           AND state = 'idle in transaction'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        idle.is_empty(),
        "sessions idle in transaction while the relay publishes: {idle:?}"
    );

    // Killed there, the worker's events go out again from the next one, under the same ids.
    signal(&paused, "KILL");
    paused.wait().await.unwrap();
    let mut worker = spawn_worker_process(&app.settings, None);
    assert_eq!(app.distinct_events().await.len(), 20);
    assert!(terminate(&mut worker).await.success());
    app.stop().await;
}
