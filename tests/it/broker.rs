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
