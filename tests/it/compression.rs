//! Compressed bodies (`content_encoding` `gzip` and `zstd`): applied like any other, bounded by
//! `pipeline.max_body_bytes` once decompressed, and refused clearly when unreadable.

use std::io::Write;

use customer_ingest::amqp::headers::ProducerMessage;
use lapin::options::BasicPublishOptions;

use crate::helpers::{Message, TestApp, customers_body};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Publishes `message` with its body sent under `content_encoding`, and waits for the confirm.
async fn publish_encoded(app: &TestApp, message: Message<'_>, content_encoding: &str) {
    let properties = ProducerMessage {
        dialect: message.dialect,
        tenant: message.tenant,
        message_id: message.message_id,
        correlation_id: message.correlation_id,
        reply_to: message.reply_to,
    }
    .properties()
    .with_content_encoding(content_encoding.into());
    app.channel
        .basic_publish(
            "".into(),
            app.settings.amqp.ingest_queue.as_str().into(),
            BasicPublishOptions::default(),
            message.body,
            properties,
        )
        .await
        .unwrap()
        .await
        .expect("the broker confirms the message");
}

/// The largest resident set this process has had, in bytes (Linux's `VmHWM`).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn gzip_and_zstd_bodies_are_applied_like_plain_ones() {
    let mut app = TestApp::spawn().await;
    let cases = [
        ("gzip", gzip(&customers_body("GZ", 5, "Gzipped"))),
        ("zstd", zstd(&customers_body("ZS", 5, "Zstandard"))),
        ("GZIP", gzip(&customers_body("GU", 5, "Upper"))),
    ];
    for (encoding, body) in &cases {
        publish_encoded(&app, Message::upsert(body, "acme", encoding), encoding).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "completed", "{encoding}: {reply}");
        assert_eq!(reply["counts"]["created"], 5, "{encoding}");
    }
    let (_, _, data) = app.customer("acme", "ZS-3").await.unwrap();
    assert_eq!(data["name"], "Zstandard 3");
    assert_eq!(app.customer_count("acme").await, 15);
    app.events(15).await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_body_compressed_again_under_its_message_id_is_the_same_batch() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("R", 3, "Retried");
    publish_encoded(&app, Message::upsert(&gzip(&body), "acme", "again"), "gzip").await;
    let (first, _) = app.next_reply().await;
    assert_eq!(first["status"], "completed", "{first}");
    // A producer's retry that compresses the body another way is not a reused message_id.
    publish_encoded(&app, Message::upsert(&zstd(&body), "acme", "again"), "zstd").await;
    let (second, _) = app.next_reply().await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["records"], first["records"]);
    app.events(3).await;
    app.stop().await;
}

#[tokio::test]
async fn a_compressed_bomb_is_rejected_as_too_large_without_being_expanded() {
    let mut app = TestApp::spawn().await;
    let limit = app.settings.pipeline.max_body_bytes;
    // 1 GiB of zeros: 1,024 gzip members of 1 MiB each (read one after the other, as `gunzip` reads
    // them), about 1 MiB on the wire; and the same as 1,024 Zstandard frames, a few KiB.
    let mib = vec![0u8; 1 << 20];
    let bombs = [
        ("gzip", gzip(&mib).repeat(1024)),
        ("zstd", zstd(&mib).repeat(1024)),
    ];
    for (encoding, bomb) in &bombs {
        assert!(bomb.len() < limit, "the bomb itself fits the limit");
        let id = format!("bomb-{encoding}");
        publish_encoded(&app, Message::upsert(bomb, "acme", &id), encoding).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "rejected", "{encoding}");
        assert_eq!(
            reply["error"]["code"], "body_too_large",
            "{encoding}: {reply}"
        );
    }
    // The worker runs in this process: had it expanded a bomb, its gibibyte would be resident here.
    let peak = peak_rss_bytes();
    assert!(
        peak < 512 << 20,
        "peak RSS {} MiB: a bomb was expanded",
        peak >> 20
    );
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 2, "each bomb is dead-lettered");
    assert_eq!(
        dead[0]
            .properties
            .content_encoding()
            .as_ref()
            .unwrap()
            .as_str(),
        "gzip",
        "the dead letter is the message as it was sent"
    );
    assert_eq!(dead[0].data, bombs[0].1);
    assert_eq!(app.customer_count("acme").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_encoding_and_corrupt_data_are_rejected_with_their_own_codes() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("X", 2, "Never");
    let mut cut = gzip(&body);
    cut.truncate(cut.len() / 2);
    let cases = [
        ("br", body.clone(), "unknown_encoding"),
        ("gzip", body.clone(), "invalid_compression"),
        ("gzip", cut, "invalid_compression"),
        ("zstd", gzip(&body), "invalid_compression"),
    ];
    for (i, (encoding, body, code)) in cases.iter().enumerate() {
        let id = format!("bad-{i}");
        publish_encoded(&app, Message::upsert(body, "acme", &id), encoding).await;
        let (reply, _) = app.next_reply().await;
        assert_eq!(reply["status"], "rejected", "{encoding} #{i}");
        assert_eq!(reply["error"]["code"], *code, "{encoding} #{i}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&encoding.to_ascii_lowercase()),
            "the message names the encoding: {message}"
        );
    }
    assert_eq!(app.dead_letters().await.len(), cases.len());
    assert_eq!(app.customer_count("acme").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn publish_with_gzip_or_zstd_sends_a_compressed_body_the_service_applies() {
    let app = TestApp::spawn().await;
    let body = customers_body("CLI", 50, "Compressed");
    let file = std::env::temp_dir().join(format!("{}.json", app.settings.amqp.ingest_queue));
    std::fs::write(&file, &body).unwrap();
    for flag in ["--gzip", "--zstd"] {
        let amqp = app.settings.amqp.clone();
        let file = file.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
                .args(["publish", file.to_str().unwrap(), flag])
                .args(["--type", "upsert-by-customer-id", "--tenant", "acme"])
                .args(["--wait", "--timeout", "60"])
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
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{flag}: {stderr}");
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(reply["status"], "completed", "{flag}: {reply}");
        let sent: usize = stderr
            .split_whitespace()
            .skip_while(|w| *w != "published")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{flag}: the bytes sent are reported: {stderr}"));
        assert!(
            sent < body.len() / 4,
            "{flag}: {sent} bytes sent for {}",
            body.len()
        );
    }
    std::fs::remove_file(&file).ok();
    assert_eq!(app.customer_count("acme").await, 50);
    app.stop().await;
}
