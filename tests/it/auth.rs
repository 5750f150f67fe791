//! Who may write which tenant (`auth.mode`), tried with real RabbitMQ users made by each test: a user
//! writing its own tenant, another's, another's batch id, a message with no `user_id`, and a
//! `user_id` that is not the connection's own.

use std::collections::BTreeMap;
use std::time::Duration;

use customer_ingest::amqp::connection::user_of;
use customer_ingest::amqp::headers::{AUTHENTICATED_USER, header_str};
use customer_ingest::config::{AuthMode, Settings};
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::helpers::{Message, TestApp, amqp_url, customers_body};

/// A RabbitMQ user made for one test, with a connection and a confirming channel of its own.
/// Deleted when dropped, so a failing test leaves no user behind.
struct RabbitUser {
    name: String,
    connection: Connection,
    channel: Channel,
}

pub(crate) async fn rabbitmqctl(args: &[&str]) {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs (it is installed with RabbitMQ)");
    assert!(
        output.status.success(),
        "rabbitmqctl {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl RabbitUser {
    /// A new user allowed everything on the default vhost, as a producer's user would be.
    async fn create(role: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("ingest-test-{}-{role}", &id[..10]);
        let password = id[10..].to_owned();
        rabbitmqctl(&["add_user", &name, &password]).await;
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]).await;
        let connection = connect_as(&name, &password).await;
        let channel = confirming_channel(&connection).await;
        RabbitUser {
            name,
            connection,
            channel,
        }
    }

    /// A fresh confirming channel on the user's connection (the broker closes one it refuses).
    async fn new_channel(&self) -> Channel {
        confirming_channel(&self.connection).await
    }

    /// A message from this user: its `user_id` is the user's own name.
    fn message<'a>(&'a self, body: &'a [u8], tenant: &'a str, id: &'a str) -> Message<'a> {
        Message {
            user_id: Some(&self.name),
            ..Message::upsert(body, tenant, id)
        }
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

async fn confirming_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

async fn connect_as(name: &str, password: &str) -> Connection {
    let mut uri: AMQPUri = amqp_url().parse().unwrap();
    uri.authority.userinfo.username = name.to_owned();
    uri.authority.userinfo.password = password.to_owned();
    Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .expect("the test's user connects")
}

fn user_id_mode(settings: &mut Settings, users: &[(&str, &[&str])]) {
    settings.auth.mode = AuthMode::UserId;
    settings.auth.tenants = users
        .iter()
        .map(|(user, tenants)| {
            (
                user.to_string(),
                tenants.iter().map(|t| t.to_string()).collect(),
            )
        })
        .collect::<BTreeMap<_, _>>();
}

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn in_open_mode_a_message_without_user_id_is_applied_as_before() {
    let mut app = TestApp::spawn().await;
    assert_eq!(app.settings.auth.mode, AuthMode::Open);
    let body = customers_body("O", 2, "Open");
    app.publish(Message::upsert(&body, "acme", "open-1")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(app.customer_count("acme").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn in_user_id_mode_a_message_without_user_id_is_rejected_and_dead_lettered() {
    let mut app = TestApp::spawn_with(|s| user_id_mode(s, &[("erp-prod", &["acme"])])).await;
    let body = customers_body("N", 2, "Nobody");
    app.publish(Message::upsert(&body, "acme", "no-user")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    assert_eq!(error_code(&reply), "missing_user_id", "{reply}");
    assert_eq!(app.customer_count("acme").await, 0);
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_str(dead[0].properties.headers(), "error-code"),
        Some("missing_user_id")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_user_writes_its_own_tenant_but_not_anothers_and_never_sees_anothers_batch() {
    let alice = RabbitUser::create("a").await;
    let bob = RabbitUser::create("b").await;
    let mut app = TestApp::spawn_with(|s| {
        user_id_mode(
            s,
            &[
                (alice.name.as_str(), &["acme"]),
                (bob.name.as_str(), &["globex"]),
            ],
        )
    })
    .await;

    // Alice writes her own tenant.
    let alices = customers_body("A", 2, "Alice");
    app.publish_on(&alice.channel, alice.message(&alices, "acme", "batch-1"))
        .await
        .unwrap();
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["counts"]["created"], 2, "{reply}");

    // Bob asks for Alice's batch by its id, with its very body: refused, nothing of it disclosed.
    let forbidden = |reply: &Value| {
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert_eq!(error_code(reply), "forbidden_tenant", "{reply}");
        assert_eq!(reply["records"], serde_json::json!([]), "{reply}");
        assert_eq!(reply["response"], Value::Null, "{reply}");
        let text = reply.to_string();
        assert!(!text.contains("Alice") && !text.contains("A-0"), "{text}");
    };
    app.publish_on(&bob.channel, bob.message(&alices, "acme", "batch-1"))
        .await
        .unwrap();
    let (reply, _) = app.next_reply().await;
    forbidden(&reply);

    // Bob writes Alice's tenant under a new id: refused, nothing applied.
    let bobs_for_acme = customers_body("A", 2, "Mallory");
    app.publish_on(&bob.channel, bob.message(&bobs_for_acme, "acme", "batch-2"))
        .await
        .unwrap();
    let (reply, _) = app.next_reply().await;
    forbidden(&reply);
    assert_eq!(app.customer_count("acme").await, 2);
    let (_, version, data) = app.customer("acme", "A-0").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(data["name"], "Alice 0");

    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 2, "both refused messages are dead-lettered");
    for letter in &dead {
        assert_eq!(
            header_str(letter.properties.headers(), "error-code"),
            Some("forbidden_tenant")
        );
        // The service published the copy as itself; the broker would have refused Bob's user_id
        // on its connection. Who sent it stays on the copy.
        let service = user_of(app.settings.amqp.url());
        assert_eq!(
            letter.properties.user_id().as_ref().unwrap().as_str(),
            service
        );
        assert_eq!(
            header_str(letter.properties.headers(), AUTHENTICATED_USER),
            Some(bob.name.as_str())
        );
    }

    // Bob's own tenant with Alice's batch id is Bob's own batch: tenants scope batch ids.
    let bobs = customers_body("B", 3, "Bob");
    app.publish_on(&bob.channel, bob.message(&bobs, "globex", "batch-1"))
        .await
        .unwrap();
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["counts"]["created"], 3, "{reply}");
    assert!(!reply.to_string().contains("Alice"), "{reply}");
    assert_eq!(app.customer_count("globex").await, 3);
    assert_eq!(app.customer_count("acme").await, 2);

    app.stop().await;
    drop((alice, bob));
}

#[tokio::test]
async fn a_user_id_that_is_not_the_connections_user_is_refused_by_the_broker_and_nothing_is_applied()
 {
    let alice = RabbitUser::create("a").await;
    let bob = RabbitUser::create("b").await;
    let mut app = TestApp::spawn_with(|s| {
        user_id_mode(
            s,
            &[
                (alice.name.as_str(), &["acme"]),
                (bob.name.as_str(), &["globex"]),
            ],
        )
    })
    .await;

    // Alice claims to be Bob to write Bob's tenant: the broker closes her channel.
    let spoofed = customers_body("S", 2, "Spoofed");
    let refused = app
        .publish_on(
            &alice.channel,
            Message {
                user_id: Some(&bob.name),
                ..Message::upsert(&spoofed, "globex", "spoofed")
            },
        )
        .await
        .expect_err("the broker refuses a user_id that is not the connection's user");
    let refused = format!("{refused:?}");
    assert!(
        refused.contains("PRECONDITION") || refused.contains("406"),
        "{refused}"
    );
    assert!(!alice.channel.status().connected());

    // Her next message, on a new channel and as herself, is the only one applied.
    let channel = alice.new_channel().await;
    let own = customers_body("A", 1, "Alice");
    app.publish_on(&channel, alice.message(&own, "acme", "own"))
        .await
        .unwrap();
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["batch_id"], "own", "{reply}");
    assert_eq!(reply["status"], "completed", "{reply}");
    assert!(app.reply_within(Duration::from_millis(500)).await.is_none());
    assert_eq!(app.customer_count("globex").await, 0);
    assert!(app.dead_letters().await.is_empty());

    app.stop().await;
    drop((alice, bob));
}

#[tokio::test]
async fn a_dead_letter_replayed_with_the_services_settings_is_applied_as_its_producers() {
    crate::helpers::failpoints_compiled_in();
    fail::cfg("batch-poison", "return(poisoned-once)").unwrap();
    let alice = RabbitUser::create("a").await;
    let mut app = TestApp::spawn_with(|s| {
        s.amqp.delivery_limit = 1;
        user_id_mode(s, &[(alice.name.as_str(), &["acme"])]);
    })
    .await;
    let body = customers_body("R", 2, "Replayed");
    app.publish_on(
        &alice.channel,
        alice.message(&body, "acme", "poisoned-once"),
    )
    .await
    .unwrap();
    let (reply, _) = app.next_reply().await;
    assert_eq!(error_code(&reply), "processing_failed", "{reply}");
    fail::remove("batch-poison");

    let settings = app.settings.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
            .args(["dlq", "replay", "--id", "poisoned-once"])
            .envs(settings.to_env())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(app.customer_count("acme").await, 2);
    app.stop().await;
    drop(alice);
}
