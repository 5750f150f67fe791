//! `scripts/run.sh`, the README's first command, as a person uses it: start it, publish the sample it
//! tells you to publish, read the reply and the metrics, press Ctrl-C.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use customer_ingest::config::Settings;
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

use crate::helpers::{PATIENCE, amqp_url, drop_database, test_settings};

#[tokio::test]
async fn run_sh_starts_a_worker_that_answers_the_sample_and_stops_cleanly_on_ctrl_c() {
    let mut settings = test_settings();
    // Any free port: run.sh polls /readyz there and prints it as the metrics address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.http.addr = format!("127.0.0.1:{port}").parse().unwrap();
    // Run apart, so that what the run made is removed even when a check fails.
    let outcome = tokio::spawn(start_publish_and_stop(settings.clone(), port)).await;
    clean_up(&settings).await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

async fn start_publish_and_stop(settings: Settings, port: u16) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = env!("CARGO_BIN_EXE_customer-ingest");
    let output_path = std::env::temp_dir().join(format!("run-sh-{port}.log"));
    let output = std::fs::File::create(&output_path).unwrap();

    // Its own process group, as a terminal's foreground job, so that SIGINT reaches it as Ctrl-C
    // would. A file, not a pipe, for the output: nothing waits for it to close.
    let mut run = tokio::process::Command::new("bash");
    run.arg(root.join("scripts/run.sh"))
        .args(["--bin", binary])
        .envs(settings.to_env())
        .env_remove("FAILPOINTS")
        .env_remove("INGEST_CONFIG")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = run.spawn().expect("bash runs scripts/run.sh");
    let pid = child.id().unwrap();

    let printed = wait_for_output(&output_path, "customer-ingest is ready", &mut child).await;
    let sample = "examples/upsert-by-customer-id.json";
    assert!(
        printed.contains(&format!(
            "{binary} publish {sample} --type upsert-by-customer-id --tenant acme --wait"
        )),
        "run.sh tells how to publish the sample:\n{printed}"
    );
    assert!(
        printed.contains(&format!("http://127.0.0.1:{port}/metrics")),
        "run.sh tells where the metrics are:\n{printed}"
    );

    // The command it printed, with the settings of this run.
    let publish = tokio::process::Command::new(binary)
        .current_dir(root)
        .args(["publish", sample, "--type", "upsert-by-customer-id"])
        .args(["--tenant", "acme", "--wait", "--timeout", "60"])
        .envs(settings.to_env())
        .env_remove("INGEST_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    let reply: Value = serde_json::from_slice(&publish.stdout).expect("the reply is JSON");
    assert_eq!(reply["status"], "completed", "{reply:#}");
    assert_eq!(reply["counts"]["created"], 2, "{reply:#}");
    assert_eq!(reply["response"]["successful"][0]["customerID"], "CUST0719");

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"customer_ingest_records_total{action="created",dialect="upsert-by-customer-id"} 2"#
        ),
        "{metrics}"
    );

    // Ctrl-C: SIGINT to the whole foreground group.
    let sent = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the worker stops after Ctrl-C")
        .unwrap();
    let log = std::fs::read_to_string(&output_path).unwrap();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("stop requested"), "{log}");

    std::fs::remove_file(&output_path).ok();
}

/// The output so far, once it holds `text`; fails with the output if the script ends first.
async fn wait_for_output(path: &Path, text: &str, child: &mut tokio::process::Child) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = std::fs::read_to_string(path).unwrap_or_default();
        if output.contains(text) {
            return output;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run.sh ended ({status}) before printing {text:?}:\n{output}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run.sh did not print {text:?}:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the queues, exchanges and database the run made.
async fn clean_up(settings: &Settings) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let amqp = &settings.amqp;
    for queue in [
        &amqp.ingest_queue,
        &amqp.dead_letter_queue,
        &amqp.results_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&amqp.events_exchange, &amqp.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "cleaned up".into()).await;
    drop_database(settings).await;
}
