//! Tests that stop RabbitMQ or Postgres themselves. They disturb every other test, so they are
//! `#[ignore]`d (a plain `cargo test` leaves the services alone) and scripts/test.sh runs them on
//! their own, one at a time, after the rest of the suite. Each restores the service it
//! stopped, even when it fails.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

use crate::helpers::{Message, PATIENCE, TestApp, amqp_url, customers_body, wait_for};

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn postgres_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed from the distribution's packages")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster")
}

/// Postgres stopped until this is dropped.
struct PostgresStopped(String);

impl PostgresStopped {
    fn now() -> Self {
        let version = postgres_version();
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &version,
                "main",
                "stop",
                "-m",
                "fast",
            ],
        );
        PostgresStopped(version)
    }
}

impl Drop for PostgresStopped {
    fn drop(&mut self) {
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &self.0, "main", "start"],
        );
    }
}

/// Makes sure RabbitMQ runs again when the test ends, however it ends.
struct RabbitRestorer;

impl Drop for RabbitRestorer {
    fn drop(&mut self) {
        if Command::new("rabbitmqctl")
            .args(["-q", "await_startup", "--timeout", "5"])
            .status()
            .is_ok_and(|s| s.success())
        {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
            return;
        }
        let _ = Command::new("rabbitmq-server").arg("-detached").status();
        // The node takes a few seconds to be reachable at all; await_startup fails until then.
        for _ in 0..120 {
            let up = Command::new("rabbitmqctl")
                .args(["-q", "await_startup", "--timeout", "5"])
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

async fn ready(app: &TestApp) -> Option<bool> {
    let response = reqwest::get(format!("http://{}/readyz", app.http))
        .await
        .ok()?;
    Some(response.status().is_success())
}

#[tokio::test]
#[ignore = "stops RabbitMQ or Postgres; scripts/test.sh runs it alone, after the rest"]
async fn postgres_stopped_for_a_minute_pauses_the_worker_and_dead_letters_nothing() {
    let mut app = TestApp::spawn_with(|s| s.database.retry_budget_secs = 10).await;
    let body = customers_body("A", 10, "C");
    app.publish(Message::upsert(&body, "acme", "before")).await;
    assert_eq!(app.next_reply().await.0["status"], "completed");

    let stopped_at = Instant::now();
    let outage = PostgresStopped::now();
    for b in 0..3 {
        let body = customers_body(&format!("B{b}"), 10, "C");
        app.publish(Message::upsert(&body, "acme", &format!("during-{b}")))
            .await;
    }
    wait_for("/readyz to report the outage", || async {
        ready(&app).await == Some(false)
    })
    .await;
    wait_for("the unavailable gauge", || async {
        app.metrics()
            .await
            .contains("customer_ingest_database_unavailable 1")
    })
    .await;
    while stopped_at.elapsed() < Duration::from_secs(60) {
        assert_eq!(
            app.queue_depth(&app.settings.amqp.dead_letter_queue).await,
            0
        );
        assert!(app.reply_within(Duration::from_secs(2)).await.is_none());
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("customer_ingest_requeued_for_outage_total"),
        "messages held past the retry budget went back to the queue:\n{metrics}"
    );
    drop(outage);

    let mut done = HashSet::new();
    for _ in 0..3 {
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed");
        done.insert(reply["batch_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(done.len(), 3, "each batch answered once");
    wait_for("/readyz to recover", || async {
        ready(&app).await == Some(true)
    })
    .await;
    assert_eq!(
        app.queue_depth(&app.settings.amqp.dead_letter_queue).await,
        0
    );
    assert_eq!(app.customer_count("acme").await, 40);
    assert_eq!(app.distinct_events().await.len(), 40);
    app.stop().await;
}

/// A queue that keeps its messages through a broker restart.
async fn declare_durable_quorum(channel: &lapin::Channel, queue: &str) {
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, quorum)
        .await
        .unwrap();
}

/// Reads a durable queue through a connection of its own, surviving broker restarts.
async fn drain_durable(queue: &str) -> Vec<Value> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is back");
    let channel = connection.create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        messages.push(serde_json::from_slice(&message.delivery.data).unwrap());
    }
    let _ = connection.close(200, "done".into()).await;
    messages
}

async fn broker_answers() -> bool {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .is_ok()
}

#[tokio::test]
#[ignore = "stops RabbitMQ or Postgres; scripts/test.sh runs it alone, after the rest"]
async fn rabbitmq_restarted_twice_during_100_batches_loses_nothing_and_applies_nothing_twice() {
    let _restore = RabbitRestorer;
    let app = TestApp::spawn_with(|s| {
        s.pipeline.chunk_size = 20;
        s.amqp.recovery_timeout_secs = 10;
    })
    .await;
    // Durable observers: the test's own consumers do not survive the broker's restarts.
    let events_queue = format!("{}.durable-observer", app.settings.amqp.events_exchange);
    declare_durable_quorum(&app.channel, &events_queue).await;
    app.channel
        .queue_bind(
            events_queue.as_str().into(),
            app.settings.amqp.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let replies_queue = format!("{}.durable", app.settings.amqp.results_queue);
    declare_durable_quorum(&app.channel, &replies_queue).await;

    for b in 0..100 {
        let body = customers_body(&format!("B{b}"), 50, "C");
        app.publish(Message {
            reply_to: Some(&replies_queue),
            ..Message::upsert(&body, "acme", &format!("b{b}"))
        })
        .await;
    }

    let done = |n: i64| {
        let pool = app.pool.clone();
        async move {
            let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_batches")
                .fetch_one(&pool)
                .await
                .unwrap();
            completed >= n
        }
    };
    wait_for("a few batches", || done(10)).await;
    run("rabbitmqctl", &["-q", "stop_app"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run("rabbitmqctl", &["-q", "start_app"]);
    wait_for("the broker to be back", broker_answers).await;

    wait_for("more batches after the first restart", || done(40)).await;
    run("rabbitmqctl", &["-q", "stop"]);
    run("rabbitmq-server", &["-detached"]);
    wait_for("the broker to be back", broker_answers).await;

    let deadline = Instant::now() + 3 * PATIENCE;
    let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
    while replies.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "only {} batches answered",
            replies.len()
        );
        for reply in drain_durable(&replies_queue).await {
            let id = reply["batch_id"].as_str().unwrap().to_owned();
            replies.entry(id).or_default().push(reply);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (batch, bodies) in &replies {
        for body in bodies {
            assert_eq!(body["status"], "completed", "{batch}");
            assert_eq!(
                body["counts"]["created"], 50,
                "{batch}: nothing applied twice"
            );
            let mut a = body.clone();
            let mut b = bodies[0].clone();
            a.as_object_mut().unwrap().remove("correlation_id");
            b.as_object_mut().unwrap().remove("correlation_id");
            assert_eq!(a, b, "{batch}: a repeated reply is the same reply");
        }
    }
    assert_eq!(app.customer_count("acme").await, 5000);
    let versions: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT version FROM customers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1]);

    wait_for("the outbox to drain", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let mut event_ids = HashSet::new();
    for event in drain_durable(&events_queue).await {
        event_ids.insert(event["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        event_ids.len(),
        5000,
        "every change published at least once"
    );
    assert!(
        app.metrics()
            .await
            .contains("customer_ingest_reconnects_total{peer=\"amqp\"}"),
        "the worker reconnected by itself"
    );
    app.stop().await;
}
