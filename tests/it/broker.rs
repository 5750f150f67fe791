//! What the broker does to a running worker besides dropping the connection: closing a channel
//! (a deleted exchange, a message over its size limit), and how large what the worker publishes may be.

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;

use crate::helpers::{Message, TestApp, customers_body, wait_for};

async fn outbox_pending(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn exchange_exists(app: &TestApp, name: &str) -> bool {
    // A passive declare of a missing exchange closes its channel: it gets one of its own.
    let channel = app.connection.create_channel().await.unwrap();
    let exists = channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = channel.close(200, "checked".into()).await;
    exists
}

#[tokio::test]
async fn a_channel_closed_by_the_broker_is_reopened_and_the_topology_declared_again() {
    let mut app = TestApp::spawn().await;
    let exchange = app.settings.amqp.events_exchange.clone();
    let body = customers_body("K", 3, "Customer");
    app.publish(Message::upsert(&body, "acme", "first")).await;
    assert_eq!(app.next_reply().await.0["status"], "completed");
    app.events(3).await;

    // Publishing an event to a deleted exchange makes the broker close the publishing channel
    // (404 NOT_FOUND): the replies, the dead letters and the events published on it with it.
    app.channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    for (n, message_id) in ["second", "third", "fourth"].into_iter().enumerate() {
        let body = customers_body(&format!("N{n}"), 3, "Customer");
        app.publish(Message::upsert(&body, "acme", message_id))
            .await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{reply}");
    }

    wait_for("the events exchange to be declared again", || async {
        exchange_exists(&app, &exchange).await
    })
    .await;
    wait_for("the outbox to be published", || async {
        outbox_pending(&app).await == 0
    })
    .await;
    let ready = reqwest::get(format!("http://{}/readyz", app.http))
        .await
        .unwrap();
    assert!(ready.status().is_success());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_record_with_a_huge_key_is_answered_with_the_key_cut_short() {
    let mut app = TestApp::spawn().await;
    let huge_key = "K".repeat(4 * 1024 * 1024);
    let body = serde_json::to_vec(&serde_json::json!([
        {"customerID": huge_key, "customerName": "Big", "priceZone": "not a number"},
        {"customerID": "ok-1", "customerName": "Fine"},
    ]))
    .unwrap();
    app.publish(Message::upsert(&body, "acme", "huge-key"))
        .await;
    let (reply, _) = app.next_reply().await;
    let size = serde_json::to_vec(&reply).unwrap().len();
    assert!(size < 16 * 1024, "a reply of {size} bytes");
    assert_eq!(reply["counts"]["failed"], 1);
    assert_eq!(reply["counts"]["created"], 1);
    let echoed = reply["records"][0]["key"].as_str().unwrap();
    assert!(echoed.chars().count() <= 101, "{echoed}");
    assert!(
        echoed.starts_with("KKKK") && echoed.ends_with('…'),
        "{echoed}"
    );
    let codes: Vec<&str> = reply["records"][0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"too_long"), "{codes:?}");
    app.events(1).await;
    app.stop().await;
}

#[tokio::test]
async fn a_reply_is_split_into_parts_by_size_as_well_as_by_records() {
    let mut app = TestApp::spawn_with(|s| {
        s.pipeline.reply_records_per_message = 10_000;
        s.pipeline.reply_max_bytes = 32 * 1024;
    })
    .await;
    let body = customers_body("K", 1_000, "Customer");
    app.publish(Message::upsert(&body, "acme", "many")).await;
    let mut keys = std::collections::HashSet::new();
    let (first, properties) = app.next_reply().await;
    let parts = first["part"]["count"].as_u64().unwrap();
    assert!(
        parts > 1,
        "one part of {} bytes",
        serde_json::to_vec(&first).unwrap().len()
    );
    let mut replies = vec![(first, properties)];
    for _ in 1..parts {
        replies.push(app.next_reply().await);
    }
    for (reply, _) in &replies {
        let size = serde_json::to_vec(reply).unwrap().len();
        assert!(size <= 32 * 1024, "a part of {size} bytes");
        for record in reply["records"].as_array().unwrap() {
            keys.insert(record["key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(keys.len(), 1_000);
    app.events(1_000).await;
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_ingest_queue_is_declared_again_and_consumed() {
    let mut app = TestApp::spawn().await;
    let queue = app.settings.amqp.ingest_queue.clone();
    app.channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    wait_for("the ingest queue to be declared again", || async {
        let channel = app.connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "checked".into()).await;
        declared.is_ok_and(|queue| queue.consumer_count() == 1)
    })
    .await;
    let body = customers_body("K", 3, "Customer");
    app.publish(Message::upsert(&body, "acme", "after")).await;
    assert_eq!(app.next_reply().await.0["status"], "completed");
    app.events(3).await;
    app.stop().await;
}

#[tokio::test]
async fn with_passive_topology_a_user_without_configure_permission_runs_the_worker() {
    use crate::auth::rabbitmqctl;
    use crate::helpers::{InProcessWorker, amqp_url};

    // Queues and exchanges declared beforehand, as an operator would.
    let mut app = TestApp::without_worker(|_| {}).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (user, password) = (format!("ingest-test-{}-worker", &id[..10]), &id[10..]);
    rabbitmqctl(&["add_user", &user, password]).await;
    // May read and write, but not configure (declare or delete) anything.
    rabbitmqctl(&["set_permissions", "-p", "/", &user, "^$", ".*", ".*"]).await;
    let url = amqp_url().replacen("guest:guest", &format!("{user}:{password}"), 1);

    let mut settings = app.settings.clone();
    settings.amqp.url = url.into();
    settings.amqp.passive_topology = true;
    let worker = InProcessWorker::start(&settings).await;
    let body = customers_body("K", 2, "Customer");
    app.publish(Message::upsert(&body, "acme", "passive")).await;
    assert_eq!(app.next_reply().await.0["status"], "completed");
    app.events(2).await;
    worker.stop().await;

    // The same user without passive_topology cannot start: declaring needs configure permission.
    settings.amqp.passive_topology = false;
    let application = customer_ingest::startup::Application::build(settings.clone())
        .await
        .unwrap();
    let http = application.http_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(application.run_until_stopped(stop.clone()));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let ready = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    stop.cancel();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_user", &user]).await;
    app.stop().await;
}
