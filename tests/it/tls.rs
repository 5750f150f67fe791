//! TLS to RabbitMQ and Postgres, against servers of the test's own (see [`servers`]) with a CA the
//! test makes; and `security.require_tls` refusing plain URLs at start.
//!
//! These tests need `openssl`, `rabbitmq-server` and Postgres 15's binaries, and fail (never skip)
//! without them.

mod servers;

use std::process::Stdio;
use std::time::Duration;

use customer_ingest::config::Settings;
use tokio::io::AsyncReadExt;

use crate::helpers::{
    Message, PATIENCE, TestApp, customers_body, drop_database, spawn_worker_process, terminate,
    test_settings,
};
use servers::{Pki, TlsBroker, TlsPostgres};

#[tokio::test]
async fn a_worker_trusting_the_ca_file_works_over_amqps_and_verified_postgres_tls() {
    let pki = Pki::new();
    let broker = TlsBroker::start(&pki);
    let postgres = TlsPostgres::start(&pki);
    let mut database = String::new();
    // The test's own connections (publishing, reading replies) go over amqps with the CA as well.
    let mut app = TestApp::without_worker(|settings| {
        database = settings
            .database
            .url()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        settings.amqp.url = broker.url().into();
        settings.amqp.ca_file = pki.ca.clone();
        settings.database.url = postgres.url(&database, &pki.ca).into();
        settings.security.require_tls = true;
    })
    .await;
    // A process of its own, so that its settings are loaded, and checked, as at any start.
    let mut worker = spawn_worker_process(&app.settings, None);

    let body = customers_body("tls", 3, "Over TLS");
    app.publish(Message::upsert(&body, "acme", "tls-1")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["counts"]["created"], 3, "{reply}");
    assert_eq!(app.customer_count("acme").await, 3);

    // The cluster takes TLS only, so every connection that worked above was encrypted.
    let plain = sqlx::PgPool::connect(&postgres.plain_url(&database)).await;
    let error = plain.expect_err("the test's cluster refuses a connection without TLS");
    assert!(error.to_string().contains("no encryption"), "{error}");

    assert!(terminate(&mut worker).await.success());
    app.pool.close().await;
}

#[tokio::test]
async fn a_worker_that_does_not_trust_the_brokers_ca_never_becomes_ready_and_logs_a_certificate_error()
 {
    let pki = Pki::new();
    let broker = TlsBroker::start(&pki);
    let mut settings = test_settings();
    settings.amqp.url = broker.url().into();
    settings.amqp.ca_file = pki.other_ca.clone();
    settings.http.addr = free_local_addr();
    settings.log.level = "warn".into();
    let mut worker = serve(&settings);

    let readyz = format!("http://{}/readyz", settings.http.addr);
    let status = || async { reqwest::get(&readyz).await.map(|r| r.status()).ok() };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while status().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its connection attempts (0.5 s, 1 s, 2 s... apart) fail the handshake, every one.
    for _ in 0..40 {
        let answer = status().await.expect("/readyz answers");
        assert_eq!(answer.as_u16(), 503, "ready without trusting the broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(terminate(&mut worker).await.success());
    let mut log = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        log.contains("certificate") && log.contains("UnknownIssuer"),
        "the log says why: {log}"
    );
    drop_database(&settings).await;
}

#[tokio::test]
async fn require_tls_refuses_a_plain_url_at_start_naming_the_key_and_never_its_value() {
    let verified_database = "postgres://postgres:db-secret@127.0.0.1:5432/x?sslmode=verify-full&sslrootcert=/nonexistent";
    for (amqp, database, key) in [
        (
            "amqp://guest:amqp-secret@127.0.0.1:5672/%2f",
            verified_database,
            "amqp.url",
        ),
        (
            "amqps://guest:amqp-secret@127.0.0.1:5671/%2f",
            "postgres://postgres:db-secret@127.0.0.1:5432/x?sslmode=verify-ca",
            "database.url",
        ),
        (
            "amqps://guest:amqp-secret@127.0.0.1:5671/%2f",
            "postgres://postgres:db-secret@127.0.0.1:5432/x",
            "database.url",
        ),
    ] {
        let mut settings = test_settings();
        settings.amqp.url = amqp.into();
        settings.database.url = database.into();
        settings.security.require_tls = true;
        let worker = serve(&settings);
        let output = tokio::time::timeout(PATIENCE, worker.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("started with {key} without TLS"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains("security.require_tls"),
            "{stderr}"
        );
        assert!(!stderr.contains("secret"), "a URL was printed: {stderr}");
    }
}

/// `customer-ingest serve` as its own process with `settings`, its log captured.
fn serve(settings: &Settings) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_customer-ingest"))
        .arg("serve")
        .envs(settings.to_env())
        .env_remove("FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts")
}

fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
