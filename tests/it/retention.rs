//! Retention of batch bookkeeping (stored replies, fingerprints, chunk results, contact
//! resolutions) and `customer-ingest erase`.

use std::process::Command;
use std::time::Duration;

use customer_ingest::config::Settings;
use customer_ingest::events::{Data, Encoder, EventType, NewEvent};
use customer_ingest::store::{batches, outbox, retention};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Message, TestApp, customers_body, wait_for};

/// The default retention, 7 days.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Moves every timestamp of a batch's bookkeeping 8 days back, past the default retention.
async fn age(pool: &PgPool, tenant: &str, batch_id: &str) {
    for (table, column) in [
        ("processed_batches", "completed_at"),
        ("batch_fingerprints", "started_at"),
        ("batch_chunks", "recorded_at"),
        ("contact_resolutions", "resolved_at"),
    ] {
        sqlx::query(&format!(
            "UPDATE {table} SET {column} = now() - interval '8 days'
             WHERE tenant = $1 AND batch_id = $2"
        ))
        .bind(tenant)
        .bind(batch_id)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// How many rows of the batch each bookkeeping table holds, in the order of [`age`].
async fn rows_of(pool: &PgPool, tenant: &str, batch_id: &str) -> [i64; 4] {
    let mut counts = [0; 4];
    for (i, table) in [
        "processed_batches",
        "batch_fingerprints",
        "batch_chunks",
        "contact_resolutions",
    ]
    .into_iter()
    .enumerate()
    {
        counts[i] = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tenant = $1 AND batch_id = $2"
        ))
        .bind(tenant)
        .bind(batch_id)
        .fetch_one(pool)
        .await
        .unwrap();
    }
    counts
}

/// Bookkeeping of a batch that never completed: a fingerprint, two chunks' results and two contact
/// resolutions, as a delivery that stopped half-way leaves them.
async fn orphan(pool: &PgPool, tenant: &str, batch_id: &str) {
    sqlx::query(
        "INSERT INTO batch_fingerprints (tenant, batch_id, dialect, body_sha256)
         VALUES ($1, $2, 'match-by-contact', '\\x00')",
    )
    .bind(tenant)
    .bind(batch_id)
    .execute(pool)
    .await
    .unwrap();
    for index in 0..2 {
        sqlx::query(
            "INSERT INTO batch_chunks (tenant, batch_id, chunk_index, keys, ids, versions, actions)
             VALUES ($1, $2, $3, '{}', '{}', '{}', '{}')",
        )
        .bind(tenant)
        .bind(batch_id)
        .bind(index)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO contact_resolutions (tenant, batch_id, record_index, key, adds, email)
             VALUES ($1, $2, $3, $4, true, $5)",
        )
        .bind(tenant)
        .bind(batch_id)
        .bind(index)
        .bind(format!("{batch_id}-{index}"))
        .bind(format!("{batch_id}-{index}@example.com"))
        .execute(pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_completed_batch_past_the_retention_is_forgotten_and_its_redelivery_applied_again() {
    let mut app =
        TestApp::spawn_with(|settings| settings.idempotency.sweep_interval_secs = 1).await;
    let old = customers_body("OLD", 2, "Old Store");
    let recent = customers_body("NEW", 1, "New Store");
    app.publish(Message::upsert(&old, "acme", "batch-old"))
        .await;
    let (first, _) = app.next_reply().await;
    assert_eq!(first["counts"]["created"], 2, "{first}");
    app.publish(Message::upsert(&recent, "acme", "batch-new"))
        .await;
    app.next_reply().await;
    app.events(3).await;

    age(&app.pool, "acme", "batch-old").await;
    wait_for("the worker's sweep to forget the old batch", || async {
        rows_of(&app.pool, "acme", "batch-old").await == [0; 4]
    })
    .await;
    assert_eq!(
        rows_of(&app.pool, "acme", "batch-new").await,
        [1, 1, 0, 0],
        "a recent batch keeps its reply and fingerprint"
    );
    // Counted once the whole sweep is done, a moment after its rows are gone.
    wait_for("the sweep to be counted", || async {
        app.metrics()
            .await
            .contains("customer_ingest_retention_removed_total{table=\"processed_batches\"} 1")
    })
    .await;

    // Documented: past the retention, a redelivery is a new batch. It is applied again (its
    // customers are unchanged, so nothing is written and no event goes out) and answered anew.
    app.publish(Message::upsert(&old, "acme", "batch-old"))
        .await;
    let (again, _) = app.next_reply().await;
    assert_eq!(again["counts"]["unchanged"], 2, "{again}");
    assert_ne!(again["started_at"], first["started_at"]);
    assert_eq!(rows_of(&app.pool, "acme", "batch-old").await, [1, 1, 0, 0]);
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn bookkeeping_of_a_batch_that_never_completed_is_removed_past_the_retention() {
    let app = TestApp::without_worker(|_| {}).await;
    orphan(&app.pool, "acme", "dead").await;
    orphan(&app.pool, "acme", "alive").await;
    age(&app.pool, "acme", "dead").await;

    let removed = retention::sweep(&app.pool, RETENTION).await.unwrap();

    assert_eq!(rows_of(&app.pool, "acme", "dead").await, [0; 4]);
    assert_eq!(rows_of(&app.pool, "acme", "alive").await, [0, 1, 2, 2]);
    assert_eq!(
        removed,
        retention::Removed {
            processed_batches: 0,
            batch_fingerprints: 1,
            batch_chunks: 2,
            contact_resolutions: 2,
        }
    );
    app.stop().await;
}

#[tokio::test]
async fn the_sweep_leaves_alone_a_batch_a_delivery_is_working_on() {
    let app = TestApp::without_worker(|_| {}).await;
    orphan(&app.pool, "acme", "busy").await;
    age(&app.pool, "acme", "busy").await;
    let claim = batches::try_claim(&app.pool, "acme", "busy")
        .await
        .unwrap()
        .expect("nobody else holds the claim");

    retention::sweep(&app.pool, RETENTION).await.unwrap();
    assert_eq!(rows_of(&app.pool, "acme", "busy").await, [0, 1, 2, 2]);

    claim.release("acme", "busy").await;
    retention::sweep(&app.pool, RETENTION).await.unwrap();
    assert_eq!(rows_of(&app.pool, "acme", "busy").await, [0; 4]);
    app.stop().await;
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `customer-ingest erase ARGS` against the test's database.
async fn erase(settings: &Settings, args: &[&str]) -> Run {
    let database = settings.database.url().to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
            .arg("erase")
            .args(&args)
            .env("INGEST__DATABASE__URL", database)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn erase_removes_the_customer_scrubs_its_stored_replies_and_announces_it() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("ER", 2, "Erasable Store");
    app.publish(Message::upsert(&body, "acme", "batch-erase"))
        .await;
    let (first, _) = app.next_reply().await;
    assert_eq!(first["counts"]["created"], 2, "{first}");
    app.events(2).await;
    let (id, version, _) = app.customer("acme", "ER-0").await.unwrap();

    let run = erase(&app.settings, &["--tenant", "acme", "--key", "ER-0"]).await;
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("customer.deleted"), "{}", run.stdout);
    for private in ["ER-0", "Erasable", "example.com"] {
        assert!(!run.stdout.contains(private), "{}", run.stdout);
        assert!(!run.stderr.contains(private), "{}", run.stderr);
    }

    assert!(app.customer("acme", "ER-0").await.is_none());
    assert!(app.customer("acme", "ER-1").await.is_some());
    let stored: Value =
        sqlx::query_scalar("SELECT reply FROM processed_batches WHERE batch_id = 'batch-erase'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let text = stored.to_string();
    assert!(
        !text.contains("ER-0") && !text.contains(&id.to_string()),
        "{text}"
    );

    let events = app.events(1).await;
    let (event, properties) = &events[0];
    assert_eq!(event["type"], "customer.deleted", "{event}");
    assert_eq!(event["subject"], id.to_string());
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["customerversion"], version + 1);
    assert_eq!(event["batchid"], "erasure");
    assert_eq!(event["data"]["id"], id.to_string());
    assert_eq!(event["data"]["version"], version + 1);
    assert!(event["data"]["deletedAt"].is_string(), "{event}");
    assert_eq!(
        properties.kind().as_ref().map(|kind| kind.as_str()),
        Some("customer.deleted")
    );

    // A redelivery of the batch is answered from its stored reply: without the erased customer.
    app.publish(Message::upsert(&body, "acme", "batch-erase"))
        .await;
    let (again, _) = app.next_reply().await;
    let text = again.to_string();
    assert!(
        !text.contains("ER-0") && !text.contains(&id.to_string()),
        "{text}"
    );
    assert_eq!(again["records"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["records"][0]["key"], "ER-1");
    assert_eq!(
        again["response"]["successful"],
        json!([{"id": first["records"][1]["id"], "customerID": "ER-1"}])
    );
    assert!(app.customer("acme", "ER-0").await.is_none());
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn erase_drops_the_customers_pending_events_and_queues_its_deletion() {
    let app = TestApp::without_worker(|_| {}).await;
    let erased = uuid::Uuid::now_v7();
    let kept = uuid::Uuid::now_v7();
    for (id, key) in [(erased, "GONE"), (kept, "STAYS")] {
        sqlx::query(
            "INSERT INTO customers (id, tenant, key, version, data)
             VALUES ($1, 'acme', $2, 3, '{\"name\": \"Someone\"}')",
        )
        .bind(id)
        .bind(key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let time = chrono::Utc::now();
    let mut encoder = Encoder::new("acme", "b", None, 2, 0);
    for (id, key) in [(erased, "GONE"), (kept, "STAYS")] {
        encoder.push(&NewEvent {
            id: uuid::Uuid::new_v4(),
            kind: EventType::Updated,
            customer_id: id,
            version: 3,
            time,
            key,
            data: Data::Stored {
                created_at: time,
                updated_at: time,
                document: r#"{"name":"Someone"}"#,
            },
        });
    }
    let mut conn = app.pool.acquire().await.unwrap();
    outbox::insert(&mut conn, "acme", "b", None, &encoder.finish())
        .await
        .unwrap();
    drop(conn);

    let run = erase(
        &app.settings,
        &["--tenant", "acme", "--key", "GONE", "--timeout", "0"],
    )
    .await;
    assert!(run.success, "{}{}", run.stdout, run.stderr);

    let outbox: Vec<(i32, Vec<uuid::Uuid>, Vec<u8>)> =
        sqlx::query_as("SELECT event_count, customer_ids, body FROM outbox ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!(outbox[0].0, 1);
    assert_eq!(outbox[0].1, vec![kept]);
    let events: Value = serde_json::from_slice(&outbox[0].2).unwrap();
    assert_eq!(events[0]["subject"], kept.to_string());
    assert_eq!(outbox[1].0, 1);
    assert_eq!(outbox[1].1, vec![erased]);
    let deleted: Value = serde_json::from_slice(&outbox[1].2).unwrap();
    let deleted = &deleted[0];
    assert_eq!(deleted["type"], "customer.deleted");
    assert_eq!(deleted["subject"], erased.to_string());
    assert_eq!(deleted["customerversion"], 4);
    assert!(!deleted.to_string().contains("Someone"), "{deleted}");
    assert!(app.customer("acme", "GONE").await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn erasing_a_key_the_tenant_does_not_have_fails_and_changes_nothing() {
    let app = TestApp::without_worker(|_| {}).await;
    let run = erase(&app.settings, &["--tenant", "acme", "--key", "NOBODY"]).await;
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr.contains("no customer with this key"),
        "{}",
        run.stderr
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    app.stop().await;
}
