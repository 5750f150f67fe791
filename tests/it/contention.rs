//! Lock contention and the retry budget: a message is retried for one budget in all, whatever step
//! it is at, and a conflict with other transactions counts against its delivery limit; only an
//! unreachable database pauses consumption.

use std::time::Duration;

use crate::helpers::{Message, TestApp, customers_body, wait_for};

/// The value of a metric line without labels, 0 if absent.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_message_behind_a_row_lock_that_is_never_released_is_dead_lettered_at_its_delivery_limit()
{
    let mut app = TestApp::spawn_with(|s| {
        s.database.lock_timeout_ms = 100;
        s.database.retry_budget_secs = 1;
        s.amqp.delivery_limit = 2;
    })
    .await;
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

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    assert_eq!(reply["error"]["code"], "processing_failed", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("locked"), "{message}");
    assert!(!message.contains("55P03"), "{message}");
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);

    let metrics = app.metrics().await;
    assert_eq!(
        counter(&metrics, "customer_ingest_requeued_for_outage_total"),
        0.0,
        "contention is not an outage"
    );
    assert_eq!(
        counter(&metrics, "customer_ingest_database_unavailable"),
        0.0
    );
    blocker.rollback().await.unwrap();
    let (_, version, data) = app.customer("acme", "K-3").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(data["name"], "Customer 3");
    // The first batch's events, and none of the dead-lettered one's.
    app.events(10).await;
    app.stop().await;
}

#[tokio::test]
async fn the_retry_budget_is_spent_by_the_whole_message_not_by_each_step() {
    // Five chunks, each behind a lock released after 600 ms: every chunk alone finishes within a
    // budget of one second, the message as a whole does not.
    let mut app = TestApp::spawn_with(|s| {
        s.database.lock_timeout_ms = 100;
        s.database.retry_budget_secs = 1;
        s.amqp.delivery_limit = 20;
        s.pipeline.chunk_size = 1;
    })
    .await;
    let body = customers_body("K", 5, "Customer");
    app.publish(Message::upsert(&body, "acme", "first")).await;
    app.next_reply().await;

    let mut blockers = Vec::new();
    for i in 0..5 {
        let mut blocker = app.pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM customers WHERE key = $1 FOR UPDATE")
            .bind(format!("K-{i}"))
            .execute(&mut *blocker)
            .await
            .unwrap();
        blockers.push(blocker);
    }
    let changed = customers_body("K", 5, "Renamed");
    app.publish(Message::upsert(&changed, "acme", "second"))
        .await;
    wait_for("the first lock timeout", || async {
        app.metrics()
            .await
            .contains("customer_ingest_db_retries_total{sqlstate=\"55P03\"}")
    })
    .await;
    for blocker in blockers {
        tokio::time::sleep(Duration::from_millis(600)).await;
        blocker.rollback().await.unwrap();
    }

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["counts"]["updated"], 5, "{reply}");
    let metrics = app.metrics().await;
    assert!(
        counter(&metrics, "customer_ingest_redeliveries_total") >= 1.0,
        "the message was given back once its budget was spent: {metrics}"
    );
    assert_eq!(
        counter(&metrics, "customer_ingest_requeued_for_outage_total"),
        0.0
    );
    // The first batch's events and the second's.
    app.events(10).await;
    app.stop().await;
}

#[tokio::test]
async fn the_bytes_of_bodies_in_flight_are_bounded_by_the_setting() {
    // Room for one ~200 kB body at a time, though four messages could be worked on at once.
    let mut app = TestApp::spawn_with(|s| {
        s.pipeline.max_body_bytes = 300_000;
        s.pipeline.max_body_bytes_in_flight = 300_000;
        s.database.lock_timeout_ms = 30_000;
    })
    .await;
    let body = customers_body("K", 500, "Customer");
    assert!(
        body.len() > 150_000 && body.len() < 300_000,
        "{}",
        body.len()
    );
    app.publish(Message::upsert(&body, "acme", "first")).await;
    app.next_reply().await;

    // The second message waits on a row lock, holding its body's bytes.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE key = 'K-3' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let renamed = customers_body("K", 500, "Renamed");
    app.publish(Message::upsert(&renamed, "acme", "second"))
        .await;
    let others = [customers_body("L", 500, "L"), customers_body("M", 500, "M")];
    app.publish(Message::upsert(&others[0], "acme", "third"))
        .await;
    app.publish(Message::upsert(&others[1], "acme", "fourth"))
        .await;
    assert!(
        app.reply_within(Duration::from_millis(1_500))
            .await
            .is_none(),
        "a message was worked on beside the one holding the bytes"
    );
    assert!(
        app.metrics()
            .await
            .contains("customer_ingest_messages_in_flight 1"),
    );

    blocker.rollback().await.unwrap();
    let mut finished = Vec::new();
    for _ in 0..3 {
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
        finished.push(reply["batch_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(finished, ["second", "third", "fourth"]);
    app.events(2_000).await;
    app.stop().await;
}
