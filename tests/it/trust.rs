//! What a producer and an operator must be able to trust, tried as they would: duplicate deliveries
//! of one batch, redeliveries whose records changed, panics, hostile field names. Each test here
//! failed before the fix it stands for.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Message, TestApp, spawn_worker_process, terminate};

fn body_of(keys: usize, name: &str) -> Vec<u8> {
    let records: Vec<Value> = (0..keys)
        .map(|i| json!({"customerID": format!("K-{i:03}"), "customerName": format!("{name} {i}")}))
        .collect();
    serde_json::to_vec(&records).unwrap()
}

#[tokio::test]
async fn one_batch_delivered_twice_at_once_to_two_workers_is_applied_once_and_both_replies_are_true()
 {
    let mut app = TestApp::without_worker(|s| {
        s.pipeline.chunk_size = 10;
        s.pipeline.concurrency = 4;
    })
    .await;
    let mut workers = [
        spawn_worker_process(&app.settings, None),
        spawn_worker_process(&app.settings, None),
    ];
    const ROUNDS: usize = 20;
    const KEYS: usize = 60;
    for round in 0..ROUNDS {
        let duplicated = body_of(KEYS, &format!("A{round}"));
        let other = body_of(KEYS, &format!("B{round}"));
        let id = format!("dup-{round}");
        for copy in ["first", "second"] {
            let correlation_id = format!("{copy}-{round}");
            app.publish(Message {
                correlation_id: Some(&correlation_id),
                ..Message::upsert(&duplicated, "acme", &id)
            })
            .await;
        }
        app.publish(Message::upsert(&other, "acme", &format!("other-{round}")))
            .await;

        let mut replies: HashMap<String, Value> = HashMap::new();
        for _ in 0..3 {
            let (reply, _) = app.next_reply().await;
            replies.insert(reply["correlation_id"].as_str().unwrap().to_owned(), reply);
        }
        let first = &replies[&format!("first-{round}")];
        let second = &replies[&format!("second-{round}")];
        let other = &replies[&format!("other-{round}")];
        for reply in [first, second, other] {
            assert_eq!(reply["status"], "completed", "round {round}: {reply}");
            assert_eq!(reply["counts"]["failed"], 0, "round {round}: {reply}");
        }
        // Both deliveries of one batch tell the same, true story.
        assert_eq!(first["records"], second["records"], "round {round}");

        // Each of the two batches changed every customer once: two versions a round.
        let rows: Vec<(String, i64, Value)> =
            sqlx::query_as("SELECT key, version, data FROM customers WHERE tenant = 'acme'")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), KEYS);
        let version = 2 * (round as i64 + 1);
        for (key, stored_version, data) in rows {
            assert_eq!(stored_version, version, "round {round}: {key}");
            // The stored state is the change the replies say came last.
            let index: usize = key[2..].parse().unwrap();
            let last = if first["records"][index]["version"] == version {
                format!("A{round} {index}")
            } else {
                assert_eq!(other["records"][index]["version"], version, "round {round}");
                format!("B{round} {index}")
            };
            assert_eq!(data["name"], last.as_str(), "round {round}: {key}");
        }
    }

    // One event per change, per customer in version order.
    let events = app.drain_events(Duration::from_secs(2)).await;
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for event in &events {
        versions
            .entry(event["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["customerversion"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), KEYS);
    for seen in versions.values() {
        let mut distinct = seen.clone();
        distinct.dedup();
        assert_eq!(distinct, (1..=2 * ROUNDS as i64).collect::<Vec<_>>());
    }
    for worker in &mut workers {
        assert!(terminate(worker).await.success());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_redelivered_with_another_chunk_layout_applies_every_record_once_and_says_so() {
    crate::helpers::failpoints_compiled_in();
    let mut app = TestApp::without_worker(|s| s.pipeline.chunk_size = 7).await;
    let body = body_of(30, "Layout");
    app.publish(Message::upsert(&body, "acme", "layout")).await;

    // The first delivery commits one chunk of 7 and stops there.
    let mut crashing = spawn_worker_process(&app.settings, Some("chunk-after-commit=return"));
    let status = tokio::time::timeout(crate::helpers::PATIENCE, crashing.wait())
        .await
        .expect("the worker stops at the failure point")
        .unwrap();
    assert!(!status.success());

    // The redelivery cuts the batch into chunks of 10: its first chunk holds keys the first
    // delivery applied and keys it never reached.
    let mut settings = app.settings.clone();
    settings.pipeline.chunk_size = 10;
    let mut worker = spawn_worker_process(&settings, None);
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["counts"]["created"], 30, "{}", reply["counts"]);
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT version FROM customers WHERE tenant = 'acme'")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|(v,)| *v == 1));
    assert_eq!(app.distinct_events().await.len(), 30);
    assert_eq!(
        app.queue_depth(&app.settings.amqp.dead_letter_queue).await,
        0
    );
    assert!(terminate(&mut worker).await.success());
    app.stop().await;
}

#[tokio::test]
async fn a_panic_while_processing_a_message_dead_letters_it_and_the_next_message_goes_on() {
    crate::helpers::failpoints_compiled_in();
    fail::cfg("batch-panic", "return(panics)").unwrap();
    let mut app = TestApp::spawn().await;
    app.publish(Message::upsert(&body_of(3, "P"), "acme", "panics"))
        .await;
    app.publish(Message::upsert(&body_of(3, "Q"), "acme", "after"))
        .await;

    let mut replies: HashMap<String, Value> = HashMap::new();
    for _ in 0..2 {
        let (reply, _) = app.next_reply().await;
        replies.insert(reply["batch_id"].as_str().unwrap().to_owned(), reply);
    }
    assert_eq!(replies["after"]["status"], "completed");
    let panicked = &replies["panics"];
    assert_eq!(panicked["status"], "rejected");
    assert_eq!(panicked["error"]["code"], "internal_error");
    let message = panicked["error"]["message"].as_str().unwrap();
    assert!(message.contains("error id"), "{message}");
    assert!(!message.contains("injected"), "{message}");

    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    use customer_ingest::amqp::headers::header_str;
    assert_eq!(
        header_str(dead[0].properties.headers(), "error-code"),
        Some("internal_error")
    );
    let ingest = app.settings.amqp.ingest_queue.clone();
    crate::helpers::wait_for("the panicked message to be settled", || async {
        app.queue_depth(&ingest).await == 0
    })
    .await;
    fail::remove("batch-panic");
    app.stop().await;
}

#[tokio::test]
async fn a_control_character_in_a_field_name_fails_only_its_record_and_never_reaches_the_reply_as_database_text()
 {
    let mut app = TestApp::spawn().await;
    // A NUL in a field name, in an unknown field and inside a free-keyed map, in two dialects.
    let native = serde_json::to_vec(&json!({"customers": [
        {"externalId": "N-1", "firstName": "Anna"},
        {"externalId": "N-2", "first\u{0}Name": "Bea"},
        {"externalId": "N-3", "extra": {"note\u{0}": "x"}},
        {"externalId": "N-4", "lastName": "Lee"},
    ]}))
    .unwrap();
    app.publish(Message {
        dialect: Some("customers.v1"),
        ..Message::upsert(&native, "acme", "nul-native")
    })
    .await;
    let bulk = serde_json::to_vec(&json!([
        {"customerID": "B-1", "customerName": "One"},
        {"customerID": "B-2", "customerName": "Two", "odd\u{0}": 1},
    ]))
    .unwrap();
    app.publish(Message::upsert(&bulk, "acme", "nul-bulk"))
        .await;

    let mut replies: HashMap<String, Value> = HashMap::new();
    for _ in 0..2 {
        let (reply, _) = app.next_reply().await;
        replies.insert(reply["batch_id"].as_str().unwrap().to_owned(), reply);
    }
    for (id, failed) in [("nul-native", vec![1, 2]), ("nul-bulk", vec![1])] {
        let reply = &replies[id];
        assert_eq!(reply["status"], "partial", "{reply}");
        let records = reply["records"].as_array().unwrap();
        for (index, record) in records.iter().enumerate() {
            if failed.contains(&index) {
                assert_eq!(record["action"], "failed", "{id} {index}: {record}");
            } else {
                assert_ne!(record["action"], "failed", "{id} {index}: {record}");
            }
        }
        let text = reply.to_string();
        assert!(!text.contains("\\u0000"), "{text}");
        assert!(!text.contains("SQLSTATE"), "{text}");
    }
    assert_eq!(app.customer_count("acme").await, 3);
    assert_eq!(
        app.queue_depth(&app.settings.amqp.dead_letter_queue).await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stored_reply_this_version_cannot_read_is_retried_and_dead_lettered_as_our_fault_not_rejected()
 {
    let mut app = TestApp::spawn_with(|s| s.amqp.delivery_limit = 2).await;
    sqlx::query(
        "INSERT INTO processed_batches (tenant, batch_id, dialect, status, reply)
         VALUES ('acme', 'old-format', 'upsert-by-customer-id', 'completed', '{\"unknown\": 1}')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.publish(Message::upsert(&body_of(2, "Old"), "acme", "old-format"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected");
    assert_eq!(reply["error"]["code"], "processing_failed", "{reply}");
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    use customer_ingest::amqp::headers::header_i64;
    assert_eq!(
        header_i64(dead[0].properties.headers(), "error-attempts"),
        Some(2)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_worker_stopping_hands_back_what_it_prefetched_without_spending_a_delivery() {
    // Long enough for the messages in hand to finish on a busy machine: only what was never
    // started is handed back.
    let mut app = TestApp::without_worker(|s| s.shutdown.deadline_secs = 120).await;
    const MESSAGES: usize = 24;
    let body = body_of(2000, "Held");
    for i in 0..MESSAGES {
        app.publish(Message::upsert(&body, "acme", &format!("held-{i}")))
            .await;
    }
    let mut worker = spawn_worker_process(&app.settings, None);
    let (first, _) = app.next_reply().await;
    assert!(terminate(&mut worker).await.success());

    let mut answered = HashSet::from([first["batch_id"].as_str().unwrap().to_owned()]);
    while let Some(reply) = app.reply_within(Duration::from_millis(500)).await {
        answered.insert(reply["batch_id"].as_str().unwrap().to_owned());
    }
    // Every message not answered is back in the queue, and none of them spent a delivery.
    let mut left = HashSet::new();
    let mut spent = Vec::new();
    while let Some(message) = app
        .channel
        .basic_get(
            app.settings.amqp.ingest_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let id = properties.message_id().as_ref().unwrap().to_string();
        let count =
            customer_ingest::amqp::headers::header_i64(properties.headers(), "x-delivery-count")
                .unwrap_or(0);
        if message.delivery.redelivered || count > 0 {
            spent.push((id.clone(), count, answered.contains(&id)));
        }
        left.insert(id);
    }
    assert_eq!(
        answered.union(&left).count(),
        MESSAGES,
        "nothing lost: {} answered, {} left",
        answered.len(),
        left.len()
    );
    assert!(!left.is_empty(), "the worker stopped with messages left");
    assert!(
        spent.is_empty(),
        "deliveries spent (id, count, answered): {spent:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_id_reused_with_another_body_or_dialect_is_rejected_and_discloses_nothing_of_the_first()
 {
    let mut app = TestApp::spawn().await;
    let first = body_of(3, "Secret");
    app.publish(Message::upsert(&first, "acme", "reused")).await;
    assert_eq!(app.next_reply().await.0["status"], "completed");

    let other = body_of(3, "Other");
    app.publish(Message::upsert(&other, "acme", "reused")).await;
    let native = serde_json::to_vec(&json!({"customers": [{"externalId": "K-000"}]})).unwrap();
    app.publish(Message {
        dialect: Some("customers.v1"),
        ..Message::upsert(&native, "acme", "reused")
    })
    .await;
    for _ in 0..2 {
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert_eq!(reply["error"]["code"], "message_id_reused", "{reply}");
        assert_eq!(reply["records"], json!([]));
        assert!(!reply.to_string().contains("Secret"), "{reply}");
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT data->>'name' FROM customers WHERE tenant = 'acme'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(names.iter().all(|n| n.starts_with("Secret")), "{names:?}");

    // The first body again is the same batch: answered from its stored reply.
    app.publish(Message::upsert(&first, "acme", "reused")).await;
    let (again, _) = app.next_reply().await;
    assert_eq!(again["status"], "completed");
    assert_eq!(again["counts"]["created"], 3);
    app.stop().await;
}

/// A worker process in the middle of a 100,000-customer batch, with `deadline_secs` to stop.
async fn a_worker_busy_with_a_large_batch(deadline_secs: u64) -> (TestApp, tokio::process::Child) {
    let mut app = TestApp::without_worker(|s| s.shutdown.deadline_secs = deadline_secs).await;
    let body = body_of(100_000, "Large");
    app.publish(Message::upsert(&body, "acme", "large")).await;
    let worker = spawn_worker_process(&app.settings, None);
    crate::helpers::wait_for("some chunks to commit", || async {
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_chunks")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        chunks >= 3
    })
    .await;
    let _ = &mut app;
    (app, worker)
}

#[tokio::test]
async fn a_stopping_worker_takes_at_most_its_shutdown_deadline_in_all() {
    let (app, mut worker) = a_worker_busy_with_a_large_batch(2).await;
    let asked = std::time::Instant::now();
    crate::helpers::signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops")
        .unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    // The deadline bounds the whole stop (messages in hand, the outbox, the connections), with a
    // second of slack for the process itself.
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_second_stop_request_stops_the_worker_at_once() {
    let (app, mut worker) = a_worker_busy_with_a_large_batch(60).await;
    crate::helpers::signal(&worker, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    crate::helpers::signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        asked.elapsed()
    );
    assert!(
        !status.success(),
        "an interrupted stop is not a clean one: {status}"
    );
    app.stop().await;
}
