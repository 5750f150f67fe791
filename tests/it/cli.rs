use std::process::Command;

use serde_json::Value;

use crate::helpers::{TestApp, drop_database, postgres_base, test_settings};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
}

#[tokio::test]
async fn migrate_creates_the_database_named_by_the_environment() {
    let settings = test_settings();
    let output = binary()
        .arg("migrate")
        .env("INGEST__DATABASE__URL", settings.database.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pool = sqlx::PgPool::connect(settings.database.url())
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('customers', 'outbox', 'processed_batches')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
    pool.close().await;
    drop_database(&settings).await;
    let _ = postgres_base();
}

#[tokio::test]
async fn an_invalid_setting_is_refused_naming_the_key() {
    let output = binary()
        .arg("migrate")
        .env("INGEST__PIPELINE__CHUNK_SIZE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pipeline.chunk_size"), "{stderr}");
}

#[tokio::test]
async fn publish_with_wait_prints_the_reply_of_the_running_service() {
    let app = TestApp::spawn().await;
    let file = std::env::temp_dir().join(format!("{}.json", app.settings.amqp.ingest_queue));
    std::fs::write(
        &file,
        br#"[{"customerID": "CUST0719", "customerName": "Corner Store"}]"#,
    )
    .unwrap();
    let amqp = &app.settings.amqp;
    let output = tokio::task::spawn_blocking({
        let file = file.clone();
        let amqp = amqp.clone();
        move || {
            binary()
                .args([
                    "publish",
                    file.to_str().unwrap(),
                    "--type",
                    "upsert-by-customer-id",
                ])
                .args(["--tenant", "acme", "--wait", "--timeout", "60"])
                .env("INGEST__AMQP__INGEST_QUEUE", &amqp.ingest_queue)
                .env(
                    "INGEST__AMQP__DEAD_LETTER_EXCHANGE",
                    &amqp.dead_letter_exchange,
                )
                .env("INGEST__AMQP__DEAD_LETTER_QUEUE", &amqp.dead_letter_queue)
                .env("INGEST__AMQP__EVENTS_EXCHANGE", &amqp.events_exchange)
                .env("INGEST__AMQP__RESULTS_QUEUE", &amqp.results_queue)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value =
        serde_json::from_slice(&output.stdout).expect("the reply is printed as JSON");
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["response"]["successful"][0]["customerID"], "CUST0719");
    app.stop().await;
}
