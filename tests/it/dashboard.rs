//! The Grafana dashboard and the alerting rules ask only for metrics that exist: the worker's own
//! (`customer_ingest_*`, checked against what a running worker exports) and RabbitMQ's
//! (`rabbitmq_*`, from its Prometheus plugin, each one named in the README).

use std::collections::BTreeSet;
use std::path::PathBuf;

use customer_ingest::metrics::Metrics;
use serde_json::Value;

use crate::helpers::{Message, TestApp, customers_body, wait_for};

pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn dashboard() -> Value {
    let path = repo_file("deploy/grafana/customer-ingest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// Every panel's title with the `expr` of each of its targets.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel has a title");
        let targets = panel["targets"].as_array();
        let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "a target of {title:?} has no expr");
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    queries
}

/// The metric names a PromQL expression (or a rules file) mentions: the identifiers with the
/// worker's or RabbitMQ's prefix.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("customer_ingest_") || word.starts_with("rabbitmq_"))
        .map(str::to_owned)
        .collect()
}

/// The sample names of every family `Metrics` registers.
fn registered_names() -> BTreeSet<String> {
    Metrics::new()
        .families()
        .iter()
        .flat_map(|family| family.sample_names())
        .collect()
}

/// The sample names in a Prometheus text exposition.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Each name is the worker's (registered) or RabbitMQ's (documented in the README); returns the
/// offenders with where they were found.
fn unknown_names(
    used: impl IntoIterator<Item = (String, String)>,
    registered: &BTreeSet<String>,
) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    used.into_iter()
        .filter(|(_, name)| {
            if name.starts_with("rabbitmq_") {
                !readme.contains(&format!("`{name}`"))
            } else {
                !registered.contains(name)
            }
        })
        .map(|(place, name)| format!("{name} (in {place})"))
        .collect()
}

#[tokio::test]
async fn the_registered_metric_families_are_what_a_running_worker_exports() {
    let mut app = TestApp::spawn().await;
    // Traffic, so that labelled families count something.
    let body = customers_body("D", 3, "Dashboard");
    app.publish(Message::upsert(&body, "acme", "dashboard-1"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    // The message is counted once acknowledged, just after its reply.
    wait_for("the message to be counted", || async {
        app.metrics().await.contains(r#"outcome="completed"} 1"#)
    })
    .await;

    let exposed = exposed_names(&app.metrics().await);
    let registered = registered_names();
    let unlisted: Vec<_> = exposed.difference(&registered).collect();
    assert!(
        unlisted.is_empty(),
        "the worker exports {unlisted:?}, which Metrics::families does not list"
    );
    for family in Metrics::new().families() {
        let names = family.sample_names();
        let shown = names.iter().filter(|n| exposed.contains(*n)).count();
        if family.labels.is_empty() {
            assert_eq!(
                shown,
                names.len(),
                "{} has no labels, so a running worker shows it from the start",
                family.name
            );
        } else {
            assert!(
                shown == 0 || shown == names.len(),
                "{} shows only some of {names:?}",
                family.name
            );
        }
    }
    // What the traffic above counted is there under the names the dashboard uses.
    for name in [
        "customer_ingest_records_total",
        "customer_ingest_messages_total",
        "customer_ingest_batch_duration_seconds_bucket",
        "customer_ingest_chunk_duration_seconds_count",
    ] {
        assert!(exposed.contains(name), "{name} is not exported");
    }
    app.stop().await;
}

#[test]
fn every_metric_the_dashboard_asks_for_is_one_the_worker_or_rabbitmq_exports() {
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    let used: Vec<(String, String)> = queries
        .iter()
        .flat_map(|(title, expr)| {
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{title:?} asks for no known metric: {expr}"
            );
            names
                .into_iter()
                .map(move |name| (format!("panel {title:?}"), name))
        })
        .collect();
    let unknown = unknown_names(used, &registered_names());
    assert!(
        unknown.is_empty(),
        "the dashboard asks for metrics nobody exports (rabbitmq_ ones must be named in the \
         README): {unknown:#?}"
    );

    // What an operator looks for first has a panel.
    let titles: BTreeSet<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for title in [
        "Records by action",
        "Batch latency",
        "Dead-letter queue",
        "Outbox lag",
        "Retries and reconnects",
        "In flight",
    ] {
        assert!(titles.contains(title), "no panel {title:?} in {titles:?}");
    }
}

#[test]
fn every_metric_the_alerts_ask_for_is_one_the_worker_or_rabbitmq_exports() {
    let path = repo_file("deploy/prometheus-alerts.yml");
    let rules = std::fs::read_to_string(&path).unwrap();
    let used: Vec<(String, String)> = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .map(|name| ("deploy/prometheus-alerts.yml".to_owned(), name))
        .collect();
    assert!(used.len() > 10, "the rules ask for {used:?}");
    let unknown = unknown_names(used, &registered_names());
    assert!(
        unknown.is_empty(),
        "the alerts ask for metrics nobody exports (rabbitmq_ ones must be named in the README): \
         {unknown:#?}"
    );
}
