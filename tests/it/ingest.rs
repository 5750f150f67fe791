//! The pipeline called directly, without a broker: `Ingest::process` on an envelope and a body, as
//! the transport calls it. What only the broker can show (settling, dead-lettering, replies on the
//! wire) stays in the tests over RabbitMQ.

use std::sync::Arc;

use customer_ingest::config::Settings;
use customer_ingest::health::Health;
use customer_ingest::ingest::{BatchError, Envelope, Ingest};
use customer_ingest::metrics::Metrics;
use customer_ingest::model::{Action, BatchStatus};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::helpers::{customers_body, drop_database, test_settings};

/// An [`Ingest`] over a fresh database of its own.
struct Direct {
    ingest: Ingest,
    pool: PgPool,
    settings: Settings,
}

/// An `Ingest` on `pool` with the settings' pipeline and retry budget, as the worker builds it.
fn ingest_on(pool: &PgPool, settings: &Settings) -> Ingest {
    let metrics = Metrics::new();
    Ingest::new(
        pool.clone(),
        settings.pipeline.clone(),
        settings.database.retry_budget(),
        metrics.clone(),
        Health::new(metrics),
        Arc::new(Notify::new()),
    )
}

impl Direct {
    async fn new() -> Self {
        let settings = test_settings();
        customer_ingest::store::migrate(&settings.database)
            .await
            .expect("the test database is created: is Postgres running on 127.0.0.1:5432? (scripts/test.sh starts it)");
        let pool = PgPool::connect(settings.database.url())
            .await
            .expect("the test database is reachable");
        let ingest = ingest_on(&pool, &settings);
        Direct {
            ingest,
            pool,
            settings,
        }
    }

    async fn finish(self) {
        self.pool.close().await;
        drop_database(&self.settings).await;
    }
}

fn envelope(batch_id: &str, tenant: Option<&str>, dialect: Option<&str>) -> Envelope {
    Envelope {
        batch_id: batch_id.to_owned(),
        correlation_id: Some(format!("{batch_id}-c")),
        reply_to: None,
        dialect: dialect.map(str::to_owned),
        tenant: tenant.map(str::to_owned),
        content_encoding: None,
        user_id: None,
        trace: None,
    }
}

#[tokio::test]
async fn a_batch_processed_directly_is_stored_and_answered_with_a_result_per_record() {
    let direct = Direct::new().await;
    let body = customers_body("D", 3, "Direct");
    let message = envelope("b-1", Some("acme"), Some("upsert-by-customer-id"));

    let reply = direct.ingest.process(&message, &body).await.unwrap();
    assert_eq!(reply.status, BatchStatus::Completed);
    assert_eq!(reply.records.len(), 3);
    assert!(reply.records.iter().all(|r| r.action == Action::Created));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE tenant = 'acme'")
        .fetch_one(&direct.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3);

    // The same batch again is answered from its stored reply, not applied again.
    let again = direct.ingest.process(&message, &body).await.unwrap();
    assert_eq!(again.records, reply.records);
    assert_eq!(again.finished_at, reply.finished_at);
    direct.finish().await;
}

#[tokio::test]
async fn a_message_without_tenant_or_with_an_unknown_type_is_rejected_before_anything_is_read() {
    let direct = Direct::new().await;
    let body = customers_body("D", 1, "Direct");
    for (message, code) in [
        (
            envelope("b-1", None, Some("upsert-by-customer-id")),
            "missing_tenant",
        ),
        (envelope("b-2", Some("acme"), None), "missing_type"),
        (
            envelope("b-3", Some("acme"), Some("no-such-dialect")),
            "unknown_type",
        ),
    ] {
        match direct.ingest.process(&message, &body).await {
            Err(BatchError::Rejected(rejection)) => assert_eq!(rejection.code.as_str(), code),
            other => panic!("expected a rejection `{code}`, got {other:?}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&direct.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    direct.finish().await;
}

#[tokio::test]
async fn a_tenant_or_batch_id_that_is_not_a_plain_name_is_rejected_before_anything_is_read() {
    let direct = Direct::new().await;
    let body = customers_body("D", 1, "Direct");
    let long = "t".repeat(65);
    for (message, code) in [
        (
            envelope("b-1", Some("ac\u{1}me"), Some("upsert-by-customer-id")),
            "invalid_tenant",
        ),
        (
            envelope("b-2", Some(&long), Some("upsert-by-customer-id")),
            "invalid_tenant",
        ),
        (
            envelope("b-3", Some("acme.prod"), Some("upsert-by-customer-id")),
            "invalid_tenant",
        ),
        (
            envelope("b\u{0}4", Some("acme"), Some("upsert-by-customer-id")),
            "invalid_message_id",
        ),
    ] {
        match direct.ingest.process(&message, &body).await {
            Err(BatchError::Rejected(rejection)) => {
                assert_eq!(rejection.code.as_str(), code, "{}", rejection.message)
            }
            other => panic!("expected a rejection `{code}`, got {other:?}"),
        }
    }
    // The longest tenant a name may be, of every allowed character, is accepted.
    let widest = format!("{}-_09AZ", "a".repeat(58));
    let reply = direct
        .ingest
        .process(
            &envelope("b-5", Some(&widest), Some("upsert-by-customer-id")),
            &body,
        )
        .await
        .unwrap();
    assert_eq!(reply.counts.created, 1);
    direct.finish().await;
}

/// Each customer's events in the outbox, as (key, version) pairs in publishing order.
async fn outbox_versions(pool: &PgPool) -> Vec<(String, i64)> {
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    bodies
        .iter()
        .flat_map(|body| serde_json::from_slice::<Vec<serde_json::Value>>(body).unwrap())
        .map(|event| {
            (
                event["data"]["key"].as_str().unwrap().to_owned(),
                event["customerversion"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_change_made_between_a_chunks_read_and_its_write_is_detected_and_the_chunk_redone() {
    crate::helpers::failpoints_compiled_in();
    let direct = Direct::new().await;
    let dialect = Some("upsert-by-customer-id");
    direct
        .ingest
        .process(
            &envelope("first", Some("acme"), dialect),
            &customers_body("K", 2, "Customer"),
        )
        .await
        .unwrap();

    // Once, while a chunk sits between its read and its write, another worker updates K-0 and K-1
    // and creates K-2 in a transaction of its own.
    let settings = direct.settings.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    fail::cfg_callback("chunk-after-read", move || {
        if once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let settings = settings.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let pool = PgPool::connect(settings.database.url()).await.unwrap();
                let other = ingest_on(&pool, &settings);
                let reply = other
                    .process(
                        &envelope("elsewhere", Some("acme"), Some("upsert-by-customer-id")),
                        &customers_body("K", 3, "Elsewhere"),
                    )
                    .await
                    .unwrap();
                assert_eq!(reply.counts.updated, 2);
                assert_eq!(reply.counts.created, 1);
                pool.close().await;
            })
        })
        .join()
        .unwrap();
    })
    .unwrap();

    let reply = direct
        .ingest
        .process(
            &envelope("renamed", Some("acme"), dialect),
            &customers_body("K", 3, "Renamed"),
        )
        .await
        .unwrap();
    fail::remove("chunk-after-read");
    assert_eq!(reply.status, BatchStatus::Completed);
    assert!(reply.records.iter().all(|r| r.action == Action::Updated));
    let versions: Vec<i64> = reply.records.iter().map(|r| r.version.unwrap()).collect();
    assert_eq!(
        versions,
        [3, 3, 2],
        "written over the other worker's change"
    );

    let stored: Vec<(String, i64, serde_json::Value)> =
        sqlx::query_as("SELECT key, version, data FROM customers ORDER BY key")
            .fetch_all(&direct.pool)
            .await
            .unwrap();
    for (key, version, data) in &stored {
        let i = &key[2..];
        assert_eq!(
            data["name"],
            format!("Renamed {i}"),
            "{key} keeps the last change"
        );
        assert_eq!(*version, if key == "K-2" { 2 } else { 3 });
    }
    // One event per version, each customer's in version order.
    let mut events = outbox_versions(&direct.pool).await;
    events.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, i64)> = [("K-0", 1), ("K-0", 2), ("K-0", 3), ("K-1", 1), ("K-1", 2)]
        .into_iter()
        .chain([("K-1", 3), ("K-2", 1), ("K-2", 2)])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(events, expected);
    direct.finish().await;
}
