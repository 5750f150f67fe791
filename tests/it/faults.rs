//! Faults injected for real: processes stopped at each step of a batch, poison messages, hostile
//! input, database connections killed, locks held, workers racing. The oracle of each test: the stored
//! customers, the events received and the replies against what was published.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Message, PATIENCE, TestApp, customers_body, failpoints_compiled_in, spawn_worker_process,
    terminate, wait_for,
};

fn strip_correlation(reply: &Value) -> Value {
    let mut reply = reply.clone();
    reply.as_object_mut().unwrap().remove("correlation_id");
    reply
}

/// Customers `K-0..K-{n}` of `tenant`: present once each, all at `version`.
async fn assert_customers_at_version(app: &TestApp, tenant: &str, n: usize, version: i64) {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, version FROM customers WHERE tenant = $1")
            .bind(tenant)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), n, "every customer stored once");
    assert!(
        rows.iter().all(|(_, v)| *v == version),
        "every customer at version {version}"
    );
}

/// Stops a worker process at `failpoint` during a three-chunk batch, restarts it, and checks that
/// nothing was lost or applied twice.
async fn a_worker_killed_at(failpoint: &str) {
    a_worker_killed_by(&format!("{failpoint}=return")).await;
}

/// As [`a_worker_killed_at`], with the failure points set as `FAILPOINTS` sets them (e.g.
/// `chunk-before-commit=2*off->return`: at the third chunk, the batch's last).
async fn a_worker_killed_by(failpoints: &str) {
    failpoints_compiled_in();
    let mut app = TestApp::without_worker(|s| s.pipeline.chunk_size = 50).await;
    let body = customers_body("K", 150, "Customer");
    app.publish(Message::upsert(&body, "acme", "crash-batch"))
        .await;

    let mut crashing = spawn_worker_process(&app.settings, Some(failpoints));
    let status = tokio::time::timeout(PATIENCE, crashing.wait())
        .await
        .expect("the worker stops at the failure point")
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "stopped on the spot at {failpoints}"
    );

    let mut worker = spawn_worker_process(&app.settings, None);
    let (first, _) = app.next_reply().await;
    let mut replies = vec![first];
    while let Some(reply) = app.reply_within(Duration::from_secs(2)).await {
        replies.push(reply);
    }
    for reply in &replies {
        assert_eq!(
            strip_correlation(reply),
            strip_correlation(&replies[0]),
            "every reply of the batch has the same body"
        );
    }
    assert_eq!(replies[0]["status"], "completed");
    assert_eq!(
        replies[0]["counts"]["created"], 150,
        "{}",
        replies[0]["counts"]
    );

    assert_customers_at_version(&app, "acme", 150, 1).await;
    let events = app.distinct_events().await;
    assert_eq!(events.len(), 150, "one event per created customer");
    assert!(events.values().all(|e| e["type"] == "customer.created"));

    let ingest = app.settings.amqp.ingest_queue.clone();
    wait_for("the batch to be acknowledged", || async {
        app.queue_depth(&ingest).await == 0
    })
    .await;
    assert_eq!(
        app.queue_depth(&app.settings.amqp.dead_letter_queue).await,
        0
    );
    assert!(terminate(&mut worker).await.success());
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_before_a_chunk_commits_loses_nothing() {
    a_worker_killed_at("chunk-before-commit").await;
}

#[tokio::test]
async fn a_worker_killed_after_a_chunk_commits_applies_nothing_twice() {
    a_worker_killed_at("chunk-after-commit").await;
}

#[tokio::test]
async fn a_worker_killed_before_the_last_chunk_and_the_completion_commit_loses_nothing() {
    a_worker_killed_by("chunk-before-commit=2*off->return").await;
}

#[tokio::test]
async fn a_worker_killed_after_the_last_chunk_and_the_completion_commit_still_replies() {
    a_worker_killed_by("chunk-after-commit=2*off->return").await;
}

#[tokio::test]
async fn a_worker_killed_after_the_last_commit_still_replies() {
    a_worker_killed_at("batch-before-reply").await;
}

#[tokio::test]
async fn a_worker_killed_after_the_reply_sends_the_same_reply_again() {
    a_worker_killed_at("batch-before-ack").await;
}

#[tokio::test]
async fn a_worker_killed_before_the_relay_publishes_publishes_every_event_later() {
    a_worker_killed_at("relay-before-publish").await;
}

#[tokio::test]
async fn a_worker_killed_after_events_are_confirmed_republishes_them_under_the_same_ids() {
    a_worker_killed_at("relay-after-publish").await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit_with_its_reason() {
    failpoints_compiled_in();
    fail::cfg("batch-poison", "return(poison)").unwrap();
    let mut app = TestApp::spawn_with(|s| s.amqp.delivery_limit = 3).await;
    let good = customers_body("G", 5, "C");
    let bad = customers_body("P", 5, "C");
    app.publish(Message::upsert(&good, "acme", "before")).await;
    app.publish(Message::upsert(&bad, "acme", "poison")).await;
    app.publish(Message::upsert(
        &customers_body("H", 5, "C"),
        "acme",
        "after",
    ))
    .await;

    let mut statuses = HashMap::new();
    for _ in 0..3 {
        let (reply, _) = app.next_reply().await;
        statuses.insert(reply["batch_id"].as_str().unwrap().to_owned(), reply);
    }
    assert_eq!(statuses["before"]["status"], "completed");
    assert_eq!(statuses["after"]["status"], "completed");
    assert_eq!(statuses["poison"]["status"], "rejected");
    assert_eq!(statuses["poison"]["error"]["code"], "processing_failed");

    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].properties.headers();
    use customer_ingest::amqp::headers::{header_i64, header_str};
    assert_eq!(header_str(headers, "error-code"), Some("processing_failed"));
    // The cause stays in the log, under the error id the message names.
    let message = header_str(headers, "error-message").unwrap();
    assert!(message.contains("error id"), "{message}");
    assert!(!message.contains("injected failure"), "{message}");
    assert_eq!(header_i64(headers, "error-attempts"), Some(3));
    assert_eq!(
        dead[0].properties.message_id().as_ref().unwrap().as_str(),
        "poison"
    );
    assert_eq!(
        app.customer_count("acme").await,
        10,
        "the messages around it are unharmed"
    );
    assert!(
        app.metrics()
            .await
            .contains("customer_ingest_dead_lettered_total{reason=\"processing_failed\"} 1")
    );
    app.events(10).await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_bodies_get_a_specific_rejected_reply_and_a_dead_letter_each() {
    let mut app = TestApp::spawn_with(|s| {
        s.pipeline.max_body_bytes = 100_000;
        s.pipeline.max_records = 50;
    })
    .await;
    let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
    let huge = vec![b' '; 100_001];
    let many = customers_body("M", 51, "C");
    let cases: Vec<(&str, Message, &str)> = vec![
        (
            "not JSON",
            Message::upsert(b"{{{nope", "acme", "h1"),
            "invalid_json",
        ),
        (
            "not JSON at all",
            Message::upsert(b"hello", "acme", "h1b"),
            "invalid_json",
        ),
        (
            "nested 10,000 deep",
            Message::upsert(deep.as_bytes(), "acme", "h2"),
            "too_deep",
        ),
        (
            "over the size limit",
            Message::upsert(&huge, "acme", "h3"),
            "body_too_large",
        ),
        (
            "too many records",
            Message::upsert(&many, "acme", "h4"),
            "too_many_records",
        ),
        (
            "invalid UTF-8",
            Message::upsert(b"[{\"customerID\": \"\xff\xfe\"}]", "acme", "h5"),
            "invalid_utf8",
        ),
        (
            "not an array",
            Message::upsert(br#"{"customerID": "A"}"#, "acme", "h6"),
            "invalid_body",
        ),
        (
            "an unknown type",
            Message {
                dialect: Some("nope"),
                ..Message::upsert(b"[]", "acme", "h7")
            },
            "unknown_type",
        ),
        (
            "no type",
            Message {
                dialect: None,
                ..Message::upsert(b"[]", "acme", "h8")
            },
            "missing_type",
        ),
        (
            "no tenant",
            Message {
                tenant: None,
                ..Message::upsert(b"[]", "acme", "h9")
            },
            "missing_tenant",
        ),
    ];
    for (what, message, code) in &cases {
        app.publish(*message).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "rejected", "{what}");
        assert_eq!(reply["error"]["code"], *code, "{what}: {}", reply["error"]);
    }
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), cases.len(), "one dead letter per hostile body");

    // Still alive and well.
    app.publish(Message::upsert(
        &customers_body("OK", 2, "C"),
        "acme",
        "fine",
    ))
    .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed");
    assert_eq!(app.customer_count("acme").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_field_fails_only_its_record() {
    let mut app = TestApp::spawn().await;
    let long = "x".repeat(300);
    let body = json!([
        {"customerID": "ok-1", "customerName": "fine"},
        {"customerID": "long", "customerName": long},
        {"customerID": "nul", "customerName": "a\u{0}b"},
        {"customerID": "range", "orderPermissionKey": 99999999999999999999u128 as f64},
        {"customerID": "type", "test": "yes"},
        {"customerID": "array", "salesReps": "R1"},
        {"customerID": "ok-2"}
    ]);
    app.publish(Message::upsert(
        &serde_json::to_vec(&body).unwrap(),
        "acme",
        "fields",
    ))
    .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    let codes: Vec<(&str, &str, &str)> = reply["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "failed")
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["errors"][0]["field"].as_str().unwrap(),
                r["errors"][0]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("long", "customerName", "too_long"),
            ("nul", "customerName", "invalid_character"),
            ("range", "orderPermissionKey", "invalid_type"),
            ("type", "test", "invalid_type"),
            ("array", "salesReps", "invalid_type"),
        ]
    );
    assert_eq!(app.customer_count("acme").await, 2);
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_stopped_during_a_100000_customer_batch_finishes_it_or_leaves_it_for_redelivery() {
    let mut app = TestApp::without_worker(|s| s.shutdown.deadline_secs = 2).await;
    let records: Vec<Value> = (0..100_000)
        .map(|i| json!({"customerID": format!("K-{i}"), "customerName": "n"}))
        .collect();
    let body = serde_json::to_vec(&records).unwrap();
    app.publish(Message::upsert(&body, "acme", "big")).await;

    let mut worker = spawn_worker_process(&app.settings, None);
    wait_for("some chunks to commit", || async {
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_chunks")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        chunks >= 3
    })
    .await;
    let status = terminate(&mut worker).await;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");

    // Either the batch finished before the stop (its reply is out and it is acknowledged), or it
    // is still in the queue; the next worker completes it from where it stopped.
    let finished_before_stop = app.reply_within(Duration::from_millis(500)).await;
    let waiting = app.queue_depth(&app.settings.amqp.ingest_queue).await;
    assert_eq!(
        waiting,
        u32::from(finished_before_stop.is_none()),
        "never a reply without the ack"
    );
    let mut next = spawn_worker_process(&app.settings, None);
    let reply = match finished_before_stop {
        Some(reply) => reply,
        None => app.next_reply().await.0,
    };
    assert_eq!(reply["counts"]["created"], 100_000);
    assert_customers_at_version(&app, "acme", 100_000, 1).await;
    assert_eq!(app.distinct_events().await.len(), 100_000);
    assert!(terminate(&mut next).await.success());
    app.stop().await;
}

#[tokio::test]
async fn two_worker_processes_racing_over_the_same_customers_in_opposite_orders_end_at_the_last_change()
 {
    let mut app = TestApp::without_worker(|s| {
        s.pipeline.chunk_size = 25;
        s.pipeline.concurrency = 4;
    })
    .await;
    let mut workers = [
        spawn_worker_process(&app.settings, None),
        spawn_worker_process(&app.settings, None),
    ];
    const BATCHES: usize = 12;
    const CUSTOMERS: usize = 100;
    for b in 0..BATCHES {
        let mut records: Vec<Value> = (0..CUSTOMERS)
            .map(|i| json!({"customerID": format!("K-{i:03}"), "customerName": format!("batch {b}")}))
            .collect();
        if b % 2 == 1 {
            records.reverse();
        }
        let body = serde_json::to_vec(&records).unwrap();
        app.publish(Message::upsert(&body, "acme", &format!("b{b}")))
            .await;
    }
    for _ in 0..BATCHES {
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{}", reply["batch_id"]);
    }
    // Every batch changed every customer: each ends at version BATCHES, in the state of the change
    // with that version, and the events of each customer arrive in version order.
    assert_customers_at_version(&app, "acme", CUSTOMERS, BATCHES as i64).await;
    let events = app.drain_events(Duration::from_secs(2)).await;
    let mut last_version: HashMap<String, i64> = HashMap::new();
    let mut last_name: HashMap<String, String> = HashMap::new();
    for event in &events {
        let customer = event["subject"].as_str().unwrap().to_owned();
        let version = event["customerversion"].as_i64().unwrap();
        let previous = last_version.insert(customer.clone(), version).unwrap_or(0);
        assert!(version > previous, "events of a customer in version order");
        last_name.insert(customer, event["data"]["name"].as_str().unwrap().to_owned());
    }
    let stored: Vec<(uuid::Uuid, Value)> = sqlx::query_as("SELECT id, data FROM customers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for (id, data) in stored {
        assert_eq!(last_version[&id.to_string()], BATCHES as i64);
        assert_eq!(data["name"].as_str().unwrap(), last_name[&id.to_string()]);
    }
    let distinct: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), BATCHES * CUSTOMERS);
    for worker in &mut workers {
        assert!(terminate(worker).await.success());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_row_lock_held_elsewhere_makes_a_chunk_wait_the_lock_timeout_then_retry() {
    let mut app = TestApp::spawn_with(|s| s.database.lock_timeout_ms = 200).await;
    let body = customers_body("K", 10, "Customer");
    app.publish(Message::upsert(&body, "acme", "first")).await;
    app.next_reply().await;

    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE key = 'K-3' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let changed = customers_body("K", 10, "Renamed");
    app.publish(Message::upsert(&changed, "acme", "second"))
        .await;
    wait_for("the lock timeout to be retried", || async {
        app.metrics()
            .await
            .contains("customer_ingest_db_retries_total{sqlstate=\"55P03\"}")
    })
    .await;
    assert!(app.reply_within(Duration::from_millis(300)).await.is_none());
    blocker.commit().await.unwrap();

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["counts"]["updated"], 10);
    app.events(20).await;
    app.stop().await;
}

#[tokio::test]
async fn database_connections_killed_mid_chunk_are_retried_and_every_batch_completes() {
    let mut app = TestApp::spawn_with(|s| s.pipeline.chunk_size = 100).await;
    let database = app
        .settings
        .database
        .url()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    for b in 0..10 {
        let body = customers_body(&format!("B{b}"), 500, "C");
        app.publish(Message::upsert(&body, "acme", &format!("b{b}")))
            .await;
    }
    let killer_pool = app.pool.clone();
    let killer = tokio::spawn(async move {
        for _ in 0..40 {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'customer-ingest' AND pid <> pg_backend_pid()",
            )
            .bind(&database)
            .execute(&killer_pool)
            .await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let mut batches = HashSet::new();
    for _ in 0..10 {
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
        assert_eq!(reply["counts"]["created"], 500);
        batches.insert(reply["batch_id"].as_str().unwrap().to_owned());
    }
    killer.await.unwrap();
    assert_eq!(batches.len(), 10);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("customer_ingest_db_retries_total{sqlstate=\"57P01\"}")
            || metrics.contains("customer_ingest_db_retries_total{sqlstate=\"connection\"}"),
        "the killed connections were retried:\n{metrics}"
    );
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM customers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions.len(), 5000);
    assert!(versions.iter().all(|v| *v == 1));
    // A relay whose connection was killed after the broker confirmed its events publishes them
    // again: at least once, under the same ids.
    assert_eq!(app.distinct_events().await.len(), 5000);
    app.stop().await;
}
