//! `customer-ingest dlq ...` run as an operator runs it: the real binary, against the queues of a
//! running service.

use std::process::Command;
use std::time::Duration;

use customer_ingest::config::Settings;
use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::helpers::{Message, PATIENCE, TestApp, customers_body, wait_for};

/// What one run of the command printed.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) {
        assert!(
            self.success,
            "the command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Runs `customer-ingest dlq ARGS` against the test's queues.
async fn dlq(settings: &Settings, args: &[&str]) -> Run {
    dlq_with(settings, args, &[]).await
}

async fn dlq_with(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> Run {
    let amqp = settings.amqp.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let shown = args.join(" ");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
        .arg("dlq")
        .args(&args)
        .env("INGEST__AMQP__URL", amqp.url())
        .env("INGEST__AMQP__INGEST_QUEUE", &amqp.ingest_queue)
        .env(
            "INGEST__AMQP__DEAD_LETTER_EXCHANGE",
            &amqp.dead_letter_exchange,
        )
        .env("INGEST__AMQP__DEAD_LETTER_QUEUE", &amqp.dead_letter_queue)
        .env("INGEST__AMQP__EVENTS_EXCHANGE", &amqp.events_exchange)
        .env("INGEST__AMQP__RESULTS_QUEUE", &amqp.results_queue)
        .envs(env)
        .kill_on_drop(true)
        .output();
    // A command that hangs fails its test instead of the whole run.
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .unwrap_or_else(|_| panic!("`dlq {shown}` did not finish within 120 s"))
        .unwrap();
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A message as this service leaves it in the dead-letter queue.
struct DeadLetter<'a> {
    body: &'a [u8],
    id: &'a str,
    tenant: &'a str,
    reason: &'a str,
    correlation_id: Option<&'a str>,
    replays: Option<i64>,
}

impl<'a> DeadLetter<'a> {
    fn new(body: &'a [u8], id: &'a str, tenant: &'a str, reason: &'a str) -> Self {
        DeadLetter {
            body,
            id,
            tenant,
            reason,
            correlation_id: None,
            replays: None,
        }
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Puts a message straight into the dead-letter queue, with the headers the pipeline writes.
async fn dead_letter(app: &TestApp, letter: DeadLetter<'_>) {
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), long_string(letter.tenant));
    headers.insert("error-code".into(), long_string(letter.reason));
    headers.insert(
        "error-message".into(),
        long_string("the database refused a bookkeeping statement"),
    );
    headers.insert("error-attempts".into(), AMQPValue::LongLongInt(5));
    headers.insert(
        "dead-lettered-at".into(),
        long_string(&chrono::Utc::now().to_rfc3339()),
    );
    if let Some(replays) = letter.replays {
        headers.insert("replay-count".into(), AMQPValue::LongLongInt(replays));
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_type("upsert-by-customer-id".into())
        .with_message_id(letter.id.into())
        .with_headers(headers);
    if let Some(correlation_id) = letter.correlation_id {
        properties = properties.with_correlation_id(correlation_id.into());
    }
    app.channel
        .basic_publish(
            "".into(),
            app.settings.amqp.dead_letter_queue.as_str().into(),
            BasicPublishOptions::default(),
            letter.body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn depth(app: &TestApp, queue: &str) -> u32 {
    app.channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// Waits until the dead-letter queue holds exactly `n` messages ready to be read.
async fn wait_for_dead_letters(app: &TestApp, n: u32) {
    let queue = &app.settings.amqp.dead_letter_queue;
    wait_for(
        &format!("{n} messages in the dead-letter queue"),
        || async { depth(app, queue).await == n },
    )
    .await;
}

/// Waits until the dead-letter queue holds `n` messages again, takes them all and returns their
/// ids, sorted.
async fn remaining_ids(app: &TestApp, n: u32) -> Vec<String> {
    wait_for_dead_letters(app, n).await;
    let mut ids: Vec<String> = app
        .dead_letters()
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

#[tokio::test]
async fn list_shows_one_line_per_dead_letter_with_its_reason_and_never_the_body() {
    let mut app = TestApp::spawn().await;
    app.publish(Message::upsert(b"not json", "acme", "bad-1"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected");
    let body = customers_body("L", 2, "Zelda Quartermaine");
    dead_letter(
        &app,
        DeadLetter::new(&body, "failed-1", "globex", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 2).await;

    let run = dlq(&app.settings, &["list"]).await;
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a line each:\n{}", run.stdout);
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("REASON"),
        "{}",
        lines[0]
    );
    let columns = |id: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|line| line.starts_with(id))
            .unwrap_or_else(|| panic!("a line for {id}:\n{}", run.stdout))
            .split_whitespace()
            .collect()
    };
    let rejected = columns("bad-1");
    assert_eq!(
        rejected[..5],
        [
            "bad-1",
            "acme",
            "upsert-by-customer-id",
            "invalid_json",
            "1"
        ]
    );
    let failed = columns("failed-1");
    assert_eq!(
        failed[..5],
        [
            "failed-1",
            "globex",
            "upsert-by-customer-id",
            "processing_failed",
            "5"
        ]
    );
    assert!(
        failed[6..].join(" ") == "the database refused a bookkeeping statement",
        "the last error ends the line: {failed:?}"
    );
    for output in [&run.stdout, &run.stderr] {
        assert!(!output.contains("Zelda"), "a customer's name:\n{output}");
        assert!(!output.contains("not json"), "a body:\n{output}");
    }

    assert_eq!(remaining_ids(&app, 2).await, ["bad-1", "failed-1"]);
    app.stop().await;
}

#[tokio::test]
async fn show_prints_the_headers_and_the_body_pretty_printed() {
    let app = TestApp::spawn().await;
    let body = br#"[{"customerID":"S-1","customerName":"Zelda Quartermaine"}]"#;
    dead_letter(
        &app,
        DeadLetter::new(body, "show-1", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 1).await;

    let run = dlq(&app.settings, &["show", "show-1"]).await;
    run.assert_success();
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|line| line.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("a `{name}` line:\n{}", run.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("message_id"), ["message_id", "show-1"]);
    assert_eq!(line("type"), ["type", "upsert-by-customer-id"]);
    assert_eq!(line("error-code"), ["error-code", "processing_failed"]);
    assert_eq!(line("error-attempts"), ["error-attempts", "5"]);
    assert_eq!(line("tenant"), ["tenant", "acme"]);
    assert!(
        run.stdout.contains(
            "[\n  {\n    \"customerID\": \"S-1\",\n    \"customerName\": \"Zelda Quartermaine\"\n  }\n]"
        ),
        "the body, pretty-printed in its own key order:\n{}",
        run.stdout
    );

    let missing = dlq(&app.settings, &["show", "no-such-id"]).await;
    assert!(!missing.success, "{}", missing.stdout);
    assert!(
        missing.stderr.contains("no message with id no-such-id"),
        "{}",
        missing.stderr
    );

    assert_eq!(remaining_ids(&app, 1).await, ["show-1"]);
    app.stop().await;
}

#[tokio::test]
async fn replay_moves_a_message_back_and_the_service_applies_it() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("R", 3, "Customer");
    dead_letter(
        &app,
        DeadLetter {
            correlation_id: Some("corr-r"),
            ..DeadLetter::new(&body, "replay-1", "acme", "processing_failed")
        },
    )
    .await;
    let bystander = customers_body("B", 1, "Customer");
    dead_letter(
        &app,
        DeadLetter::new(&bystander, "bystander-1", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 2).await;

    let run = dlq(&app.settings, &["replay", "--id", "replay-1"]).await;
    run.assert_success();
    assert!(run.stdout.contains("moved replay-1"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().last(), Some("moved 1, skipped 0"));

    let (reply, properties) = app.next_reply().await;
    assert_eq!(reply["batch_id"], "replay-1");
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["counts"]["created"], 3);
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-r"),
        "the replay keeps the producer's properties"
    );
    assert_eq!(app.customer_count("acme").await, 3);
    assert_eq!(remaining_ids(&app, 1).await, ["bystander-1"]);
    app.stop().await;
}

#[tokio::test]
async fn replaying_a_batch_that_was_already_applied_sends_the_same_reply_and_applies_nothing_twice()
{
    let mut app = TestApp::spawn().await;
    let body = customers_body("A", 2, "Customer");
    app.publish(Message::upsert(&body, "acme", "applied-1"))
        .await;
    let (first, _) = app.next_reply().await;
    assert_eq!(first["status"], "completed");
    app.events(2).await;
    dead_letter(
        &app,
        DeadLetter::new(&body, "applied-1", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 1).await;

    dlq(&app.settings, &["replay", "--id", "applied-1"])
        .await
        .assert_success();

    let (second, _) = app.next_reply().await;
    assert_eq!(second["batch_id"], "applied-1");
    assert_eq!(second["status"], "completed");
    assert_eq!(second["counts"], first["counts"]);
    assert_eq!(second["records"], first["records"]);
    assert_eq!(
        second["started_at"], first["started_at"],
        "the stored reply, not a second run"
    );
    let (_, version, _) = app.customer("acme", "A-0").await.unwrap();
    assert_eq!(version, 1);
    app.no_more_events().await;
    assert!(remaining_ids(&app, 0).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn replay_refuses_a_message_already_replayed_max_replays_times() {
    let mut app = TestApp::spawn().await;
    let tired = customers_body("T", 1, "Customer");
    let fresh = customers_body("F", 1, "Customer");
    dead_letter(
        &app,
        DeadLetter {
            replays: Some(1),
            ..DeadLetter::new(&tired, "tired-1", "tired", "processing_failed")
        },
    )
    .await;
    dead_letter(
        &app,
        DeadLetter::new(&fresh, "fresh-1", "fresh", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 2).await;

    let run = dlq_with(
        &app.settings,
        &["replay", "--all"],
        &[("INGEST__DLQ__MAX_REPLAYS", "1")],
    )
    .await;
    run.assert_success();
    assert!(
        run.stdout
            .contains("skipped tired-1: replayed 1 times already"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("moved fresh-1"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().last(), Some("moved 1, skipped 1"));

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["batch_id"], "fresh-1");
    assert_eq!(reply["status"], "completed");
    assert_eq!(remaining_ids(&app, 1).await, ["tired-1"]);
    assert_eq!(app.customer_count("tired").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_dry_run_replay_moves_nothing() {
    let app = TestApp::spawn().await;
    let body = customers_body("D", 1, "Customer");
    dead_letter(
        &app,
        DeadLetter::new(&body, "dry-1", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 1).await;

    let run = dlq(&app.settings, &["replay", "--all", "--dry-run"]).await;
    run.assert_success();
    assert!(run.stdout.contains("would move dry-1"), "{}", run.stdout);
    assert_eq!(
        run.stdout.lines().last(),
        Some("dry run: would move 1, would skip 0; nothing was moved")
    );

    assert_eq!(remaining_ids(&app, 1).await, ["dry-1"]);
    assert_eq!(app.customer_count("acme").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn replay_filters_by_reason_and_tenant_and_leaves_the_others_in_the_dlq() {
    let mut app = TestApp::spawn().await;
    let bodies = [
        customers_body("M", 1, "Customer"),
        customers_body("O", 1, "Customer"),
        customers_body("G", 1, "Customer"),
    ];
    for (body, id, tenant, reason) in [
        (&bodies[0], "match-1", "acme", "processing_failed"),
        (&bodies[1], "other-reason", "acme", "invalid_json"),
        (&bodies[2], "other-tenant", "globex", "processing_failed"),
    ] {
        dead_letter(&app, DeadLetter::new(body, id, tenant, reason)).await;
    }
    wait_for_dead_letters(&app, 3).await;

    let run = dlq(
        &app.settings,
        &[
            "replay",
            "--all",
            "--reason",
            "processing_failed",
            "--tenant",
            "acme",
        ],
    )
    .await;
    run.assert_success();
    assert_eq!(run.stdout.lines().last(), Some("moved 1, skipped 0"));

    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["batch_id"], "match-1");
    assert_eq!(reply["status"], "completed");
    assert_eq!(
        remaining_ids(&app, 2).await,
        ["other-reason", "other-tenant"]
    );
    app.stop().await;
}

#[tokio::test]
async fn replay_with_a_limit_moves_no_more_than_the_limit() {
    let mut app = TestApp::spawn().await;
    let first = customers_body("X", 1, "Customer");
    let second = customers_body("Y", 1, "Customer");
    dead_letter(
        &app,
        DeadLetter::new(&first, "limit-1", "acme", "processing_failed"),
    )
    .await;
    dead_letter(
        &app,
        DeadLetter::new(&second, "limit-2", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 2).await;

    let run = dlq(&app.settings, &["replay", "--all", "--limit", "1"]).await;
    run.assert_success();
    assert_eq!(run.stdout.lines().last(), Some("moved 1, skipped 0"));

    let (reply, _) = app.next_reply().await;
    let moved = reply["batch_id"].as_str().unwrap().to_owned();
    let left = remaining_ids(&app, 1).await;
    let mut both = vec![moved, left[0].clone()];
    both.sort();
    assert_eq!(both, ["limit-1", "limit-2"]);
    assert_eq!(app.customer_count("acme").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_replay_no_queue_takes_fails_and_leaves_the_message_in_the_dlq() {
    let app = TestApp::spawn().await;
    let body = customers_body("U", 1, "Customer");
    dead_letter(
        &app,
        DeadLetter::new(&body, "unroutable-1", "acme", "processing_failed"),
    )
    .await;
    wait_for_dead_letters(&app, 1).await;

    let missing = format!("{}.missing", app.settings.amqp.ingest_queue);
    let run = dlq_with(
        &app.settings,
        &["replay", "--all"],
        &[("INGEST__AMQP__INGEST_QUEUE", &missing)],
    )
    .await;
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr.contains("it stays in the dead-letter queue"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout.lines().last(), Some("moved 0, skipped 0"));

    assert_eq!(remaining_ids(&app, 1).await, ["unroutable-1"]);
    app.stop().await;
}

#[tokio::test]
async fn purge_without_yes_deletes_nothing_and_fails() {
    let app = TestApp::spawn().await;
    dead_letter(
        &app,
        DeadLetter::new(b"not json", "keep-1", "acme", "invalid_json"),
    )
    .await;
    wait_for_dead_letters(&app, 1).await;

    let run = dlq(&app.settings, &["purge", "--all"]).await;
    assert!(!run.success, "{}", run.stdout);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);

    assert_eq!(remaining_ids(&app, 1).await, ["keep-1"]);
    app.stop().await;
}

#[tokio::test]
async fn purge_with_yes_and_a_filter_deletes_only_the_matching_messages() {
    let app = TestApp::spawn().await;
    for (id, tenant, reason) in [
        ("junk-1", "acme", "invalid_json"),
        ("junk-2", "globex", "invalid_json"),
        ("keep-1", "acme", "processing_failed"),
    ] {
        dead_letter(&app, DeadLetter::new(b"not json", id, tenant, reason)).await;
    }
    wait_for_dead_letters(&app, 3).await;

    let dry = dlq(
        &app.settings,
        &["purge", "--all", "--reason", "invalid_json", "--dry-run"],
    )
    .await;
    dry.assert_success();
    assert!(dry.stdout.contains("would delete junk-1"), "{}", dry.stdout);
    assert!(dry.stdout.contains("would delete junk-2"), "{}", dry.stdout);
    assert_eq!(
        dry.stdout.lines().last(),
        Some("dry run: would delete 2; nothing was deleted")
    );
    wait_for_dead_letters(&app, 3).await;

    let run = dlq(
        &app.settings,
        &[
            "purge",
            "--all",
            "--reason",
            "invalid_json",
            "--tenant",
            "acme",
            "--yes",
        ],
    )
    .await;
    run.assert_success();
    assert_eq!(run.stdout.lines().last(), Some("deleted 1"));

    assert_eq!(remaining_ids(&app, 2).await, ["junk-2", "keep-1"]);
    app.stop().await;
}

#[tokio::test]
async fn a_message_the_broker_dead_lettered_is_listed_with_its_reason_and_replays_without_its_death_headers()
 {
    let mut app = TestApp::spawn().await;
    // A quorum queue that, like the ingest queue, dead-letters into the service's exchange once a
    // message has used up its deliveries; the broker writes the `x-death` headers itself.
    let poison_queue = format!("{}.poison", app.settings.amqp.ingest_queue);
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        long_string(&app.settings.amqp.dead_letter_exchange),
    );
    app.channel
        .queue_declare(
            poison_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), long_string("acme"));
    app.channel
        .basic_publish(
            "".into(),
            poison_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default()
                .with_message_id("poison-1".into())
                .with_type("upsert-by-customer-id".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let dead_letter_queue = app.settings.amqp.dead_letter_queue.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while depth(&app, &dead_letter_queue).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker dead-letters the message"
        );
        if let Some(message) = app
            .channel
            .basic_get(poison_queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            message
                .delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.channel
        .queue_delete(poison_queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let list = dlq(&app.settings, &["list"]).await;
    list.assert_success();
    let line = list
        .stdout
        .lines()
        .find(|line| line.starts_with("poison-1"))
        .unwrap_or_else(|| panic!("a line for poison-1:\n{}", list.stdout));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns[..4],
        [
            "poison-1",
            "acme",
            "upsert-by-customer-id",
            "delivery_limit"
        ]
    );
    assert_eq!(columns.last(), Some(&"-"), "no last error is known: {line}");

    let replay = dlq(&app.settings, &["replay", "--id", "poison-1"]).await;
    replay.assert_success();
    assert_eq!(replay.stdout.lines().last(), Some("moved 1, skipped 0"));

    // Still not JSON: the service rejects it back into the dead-letter queue, with the headers the
    // replay sent and none of the broker's from the first death.
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["batch_id"], "poison-1");
    assert_eq!(reply["status"], "rejected");
    wait_for_dead_letters(&app, 1).await;
    let letters = app.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let properties = &letters[0].properties;
    assert_eq!(
        header(properties, "replay-count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    assert_eq!(
        header(properties, "error-code"),
        Some(&long_string("invalid_json"))
    );
    assert_eq!(
        header(properties, "tenant"),
        Some(&long_string("acme")),
        "the producer's headers stay"
    );
    for broker_header in ["x-death", "x-first-death-reason", "x-first-death-queue"] {
        assert_eq!(
            header(properties, broker_header),
            None,
            "{broker_header} was replayed: {properties:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn replay_and_purge_must_name_messages_or_say_all() {
    for args in [&["dlq", "replay"][..], &["dlq", "purge", "--yes"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--all"), "{stderr}");
    }
}
