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

#[tokio::test]
async fn status_shows_queues_outbox_idempotency_and_each_tenants_last_batch_without_customer_data()
{
    let mut app = TestApp::spawn().await;
    let acme = crate::helpers::customers_body("A", 3, "Secret Name");
    app.publish(crate::helpers::Message::upsert(&acme, "acme", "acme-1"))
        .await;
    app.next_reply().await;
    let globex = br#"[{"customerID": "G-1", "customerName": "Secret Name"}, {"customerID": "G-2", "email": "not an email"}]"#;
    app.publish(crate::helpers::Message::upsert(
        globex, "globex", "globex-1",
    ))
    .await;
    app.next_reply().await;
    app.events(4).await;

    let run = |json: bool, results_queue: String| {
        let env = app.settings.to_env();
        tokio::task::spawn_blocking(move || {
            let mut command = binary();
            command
                .arg("status")
                .envs(env)
                .env("INGEST__AMQP__RESULTS_QUEUE", results_queue);
            if json {
                command.arg("--json");
            }
            command.output().unwrap()
        })
    };
    let output = run(true, app.settings.amqp.results_queue.clone())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ingest = &status["queues"][0];
    assert_eq!(ingest["name"], app.settings.amqp.ingest_queue.as_str());
    assert_eq!(ingest["messages"], 0);
    assert_eq!(ingest["consumers"], 1);
    assert_eq!(status["outbox"]["pending_events"], 0);
    assert_eq!(status["idempotency"]["retention_hours"], 168);
    let tables: Vec<&str> = status["idempotency"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        tables,
        [
            "processed_batches",
            "batch_chunks",
            "batch_fingerprints",
            "contact_resolutions"
        ]
    );
    let tenants = status["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0]["tenant"], "acme");
    assert_eq!(tenants[0]["batch_id"], "acme-1");
    assert_eq!(tenants[0]["counts"]["created"], 3);
    assert_eq!(tenants[1]["tenant"], "globex");
    assert_eq!(tenants[1]["status"], "partial");
    assert_eq!(tenants[1]["counts"]["failed"], 1);

    let output = run(false, "no.such.queue".to_owned()).await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("CONSUMERS"), "{text}");
    assert!(
        text.lines()
            .any(|line| line.contains("no.such.queue") && line.ends_with("missing")),
        "{text}"
    );
    assert!(
        text.contains("globex") && text.contains("partial"),
        "{text}"
    );
    assert!(!text.contains("Secret Name"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn publish_with_wait_prints_every_part_and_reports_the_parts_received() {
    let app = TestApp::spawn_with(|s| s.pipeline.reply_records_per_message = 2).await;
    let file = std::env::temp_dir().join(format!("{}.json", app.settings.amqp.ingest_queue));
    std::fs::write(&file, crate::helpers::customers_body("P", 5, "Parted")).unwrap();
    let env = app.settings.to_env();
    let output = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            binary()
                .args(["publish", file.to_str().unwrap()])
                .args(["--type", "upsert-by-customer-id", "--tenant", "acme"])
                .args(["--wait", "--timeout", "60"])
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    std::fs::remove_file(&file).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let parts: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parts.len(), 3);
    let records: usize = parts
        .iter()
        .map(|p| p["records"].as_array().unwrap().len())
        .sum();
    assert_eq!(records, 5);
    // Not a terminal: one plain line per part received.
    for n in 1..=3 {
        assert!(
            stderr.contains(&format!("received reply part {n} of 3\n")),
            "{stderr}"
        );
    }
    app.stop().await;
}
