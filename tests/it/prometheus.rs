//! A real Prometheus (Debian's package: scripts/install-prometheus.sh, run by scripts/test.sh)
//! scrapes a running worker, loads deploy/prometheus-alerts.yml, and answers the dashboard's
//! queries over its HTTP API.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::dashboard::{dashboard, dashboard_queries, repo_file};
use crate::helpers::{Message, PATIENCE, TestApp, customers_body};

/// A Prometheus server on a free loopback port, with its own storage; killed when dropped, so a
/// failing test leaves none behind.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (host:port) every second as job `customer-ingest`.
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ingest-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = repo_file("deploy/prometheus-alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{}\"\n\
             scrape_configs:\n  - job_name: customer-ingest\n    static_configs:\n      \
             - targets: [\"{target}\"]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "cannot run `prometheus` ({e}): scripts/install-prometheus.sh installs \
                     Debian's prometheus package (scripts/test.sh runs it)"
                )
            });
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Panics with Prometheus's log if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// `GET /api/v1/<path>` with `query`; None until the server answers.
    async fn api(&mut self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        self.assert_running();
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    /// Polls until `check` finds what it wants in the answer to `path`, at most `PATIENCE`.
    async fn wait_for(
        &mut self,
        what: &str,
        path: &str,
        query: &[(&str, &str)],
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = None;
        loop {
            if let Some(answer) = self.api(path, query).await {
                if check(&answer) {
                    return answer;
                }
                last = Some(answer);
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "waited {PATIENCE:?} for {what}; last answer: {last:?}\nprometheus log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one sample in a Prometheus text exposition.
fn sample(exposition: &str, series: &str) -> String {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
        .to_owned()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_worker_and_answers_with_its_values() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("P", 3, "Scraped");
    app.publish(Message::upsert(&body, "acme", "scraped-1"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let series =
        r#"customer_ingest_records_total{action="created",dialect="upsert-by-customer-id"}"#;
    let exported = sample(&app.metrics().await, series);
    assert_eq!(exported, "3");

    let mut prometheus = Prometheus::start(&app.http.to_string());

    // The worker's value, through a scrape, the TSDB and the query API.
    let query = r#"customer_ingest_records_total{job="customer-ingest",action="created"}"#;
    let answer = prometheus
        .wait_for(
            "the worker's records_total",
            "query",
            &[("query", query)],
            |a| !a["data"]["result"].as_array().is_none_or(|r| r.is_empty()),
        )
        .await;
    let result = &answer["data"]["result"][0];
    assert_eq!(result["metric"]["dialect"], "upsert-by-customer-id");
    assert_eq!(result["metric"]["instance"], app.http.to_string());
    assert_eq!(result["value"][1], exported, "{answer}");

    // The alerting rules load and evaluate against the real series without an error.
    let rules = prometheus
        .wait_for("every rule evaluated", "rules", &[], |a| {
            let rules: Vec<&Value> = a["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().unwrap())
                .collect();
            !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")
        })
        .await;
    for rule in rules["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let names: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"CustomerIngestNoProgress"), "{names:?}");

    // Every dashboard query parses and evaluates, with Grafana's variables filled in; the records
    // panel shows what the worker did.
    let amqp = &app.settings.amqp;
    let mut records_by_action = None;
    for (title, expr) in dashboard_queries(&dashboard()) {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", "customer-ingest")
            .replace("$ingest_queue", &amqp.ingest_queue)
            .replace("$dlq", &amqp.dead_letter_queue);
        let answer = prometheus.api("query", &[("query", &expr)]).await.unwrap();
        assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
        if title == "Records by action" {
            records_by_action = Some(expr);
        }
    }
    let records_by_action = records_by_action.expect("the dashboard has a records panel");
    prometheus
        .wait_for(
            "the records panel's query to show created records",
            "query",
            &[("query", &records_by_action)],
            |a| {
                a["data"]["result"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|s| s["metric"]["action"] == "created"))
            },
        )
        .await;

    drop(prometheus);
    app.stop().await;
}
