//! What the outbox and the chunk results held when the service is upgraded to their compact
//! formats: the same events go out, the same results are found.

use std::path::Path;

use customer_ingest::config::Settings;
use customer_ingest::events::{self, EventsMode};
use customer_ingest::model::Action;
use customer_ingest::store::batches;
use customer_ingest::store::customers::Applied;
use customer_ingest::store::outbox;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::helpers::test_settings;

/// The migration that turned the outbox's JSON events into bytes.
const BYTES_MIGRATION: i64 = 20261126000011;

/// A fresh database migrated up to the stored-bytes migration, its settings and an admin pool.
async fn database_before_the_upgrade() -> (Settings, PgPool, PgPool) {
    let settings = test_settings();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut before = Migrator::new(dir.as_path()).await.unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < BYTES_MIGRATION)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let url = settings.database.url();
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(url).await.unwrap();
    before.run(&pool).await.unwrap();
    (settings, pool, admin)
}

/// Applies the remaining migrations, as a new version's start does.
async fn upgrade(settings: &Settings, pool: PgPool) -> PgPool {
    pool.close().await;
    customer_ingest::store::migrate(&settings.database)
        .await
        .unwrap();
    PgPool::connect(settings.database.url()).await.unwrap()
}

async fn drop_database(settings: &Settings, pool: PgPool, admin: PgPool) {
    pool.close().await;
    let url = settings.database.url();
    let name = url.rsplit_once('/').unwrap().1;
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test]
async fn events_waiting_in_the_old_format_are_published_unchanged_after_the_upgrade() {
    let (settings, pool, admin) = database_before_the_upgrade().await;
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let event = |id: uuid::Uuid, kind: &str, version: i64, name: &str| {
        json!({"event_id": uuid::Uuid::new_v4(), "routing_key": kind, "customer_id": id,
               "version": version, "occurred_at": "2026-11-25T10:00:00.123456+00:00",
               "customer": {"id": id, "tenant": "acme", "key": name, "version": version,
                            "name": format!("Ünïcode {name}")}})
    };
    let old = json!([
        event(first, "customer.created", 1, "A"),
        event(second, "customer.updated", 3, "B")
    ]);
    sqlx::query(
        "INSERT INTO outbox (tenant, batch_id, event_count, events, traceparent)
         VALUES ('acme', 'b-1', 2, $1, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')",
    )
    .bind(&old)
    .execute(&pool)
    .await
    .unwrap();
    let pool = upgrade(&settings, pool).await;
    let connection = pool.acquire().await.unwrap().detach();
    let outbox::Claimed::Claim(claim) = outbox::claim(connection, 1000).await.unwrap() else {
        panic!("no other relay runs on this database");
    };
    assert_eq!(claim.event_count(), 2);
    let singles = events::messages(EventsMode::PerCustomer, &claim.chunks);
    let batch = events::messages(EventsMode::Batch, &claim.chunks);
    let bodies: Vec<Value> = singles
        .iter()
        .map(|m| serde_json::from_slice(m.body).unwrap())
        .collect();
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(batch[0].body).unwrap(),
        bodies
    );
    for ((body, message), old) in bodies.iter().zip(&singles).zip(old.as_array().unwrap()) {
        assert_eq!(message.id.to_string(), old["event_id"]);
        assert_eq!(
            message.routing_key,
            format!("{}.acme", old["routing_key"].as_str().unwrap())
        );
        assert_eq!(body["id"], old["event_id"]);
        assert_eq!(body["type"], old["routing_key"]);
        assert_eq!(body["subject"], old["customer_id"]);
        assert_eq!(body["customerversion"], old["version"]);
        assert_eq!(body["source"], "/tenants/acme");
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["tenant"], "acme");
        assert_eq!(body["batchid"], "b-1");
        assert_eq!(
            body["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(body.get("tracestate").is_none(), "{body}");
        assert_eq!(body["data"], old["customer"]);
        let time = chrono::DateTime::parse_from_rfc3339(body["time"].as_str().unwrap()).unwrap();
        assert_eq!(time.timestamp_micros() % 1_000_000, 123456);
    }
    drop((singles, batch));
    claim.finish().await.unwrap();
    drop_database(&settings, pool, admin).await;
}

#[tokio::test]
async fn chunk_results_recorded_in_the_old_format_are_found_after_the_upgrade() {
    let (settings, pool, admin) = database_before_the_upgrade().await;
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sqlx::query(
        "INSERT INTO batch_chunks (tenant, batch_id, chunk_index, results) VALUES ('acme', 'b-1', 3, $1)",
    )
    .bind(json!([
        {"key": "A", "id": a, "version": 1, "action": "created"},
        {"key": "B", "id": b, "version": 4, "action": "unchanged"}
    ]))
    .execute(&pool)
    .await
    .unwrap();
    let pool = upgrade(&settings, pool).await;

    let batches::Earlier {
        recorded,
        next_chunk: next,
        ..
    } = batches::earlier(&pool, "acme", "b-1").await.unwrap();
    assert_eq!(next, 4);
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        recorded["A"],
        Applied {
            key: "A".into(),
            id: a,
            version: 1,
            action: Action::Created
        }
    );
    assert_eq!(
        recorded["B"],
        Applied {
            key: "B".into(),
            id: b,
            version: 4,
            action: Action::Unchanged
        }
    );
    drop_database(&settings, pool, admin).await;
}
