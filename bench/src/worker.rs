//! One worker: a `customer-ingest serve` child process, and what the bench reads from it over HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use customer_ingest::config::Settings;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use crate::report::round;

/// The service's binary, which `cargo build` puts beside this one.
const SERVICE_BINARY: &str = "customer-ingest";

/// The service binary beside this executable (`target/release/` when built as `scripts/bench.sh`
/// builds it).
pub fn service_binary() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("finding this executable")?;
    let service = bench.with_file_name(SERVICE_BINARY);
    if !service.is_file() {
        bail!(
            "no {SERVICE_BINARY} binary beside this one ({}) to start workers with: build it too \
             (`cargo build --release -p customer-ingest`)",
            service.display()
        );
    }
    Ok(service)
}

/// A `customer-ingest serve` child process.
pub struct Worker {
    /// Killed (SIGKILL) if dropped while running, so that an interrupted bench leaves no worker.
    pub child: Child,
    pub pid: u32,
    pub http: SocketAddr,
}

impl Worker {
    /// Starts the service's `serve` with `settings` passed whole as `INGEST__` variables, so that
    /// a `--config` file given to the bench reaches the worker too.
    pub fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let http = free_local_port()?;
        let mut settings = settings.clone();
        settings.http.addr = http;
        settings.log.level = "warn".into();
        let exe = service_binary()?;
        // The worker's stdout goes to our stderr: our stdout carries only the JSON report.
        let log = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr for a worker")?;
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .envs(settings.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Worker { child, pid, http })
    }

    /// SIGTERM, then wait for the clean exit the service promises; SIGKILL after `patience`.
    pub async fn stop(mut self, patience: Duration) -> anyhow::Result<()> {
        // Only signalled while `try_wait` says it runs: an unreaped child keeps its pid, so the
        // signal cannot reach another process.
        if self.child.try_wait()?.is_none() {
            let status = tokio::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .await
                .context("running kill -TERM")?;
            if !status.success() {
                bail!("kill -TERM {} failed ({status})", self.pid);
            }
        }
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("worker {} exited with {status} after SIGTERM", self.pid),
            Ok(Err(error)) => Err(error).context("waiting for a worker"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!(
                    "worker {} did not stop within {patience:?} of SIGTERM; killed",
                    self.pid
                )
            }
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on right now, for a worker's `/metrics` and `/readyz`.
fn free_local_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// The status code and body of a plain `GET`, or `None` if nothing sensible answered within two
/// seconds. Written out by hand: the service has no HTTP client, and `/readyz` and `/metrics` of a
/// local worker are all the bench asks for.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()
        .flatten()
}

/// The worker's own account of a phase, from its `/metrics`: how long its chunk transactions took,
/// and anything that means the figures are not those of a healthy run (retries, reconnects,
/// redeliveries, outage requeues, dead letters).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerCounters {
    chunks: u64,
    chunk_ms_avg: f64,
    db_retries: u64,
    reconnects: u64,
    redeliveries: u64,
    requeued_for_outage: u64,
    dead_lettered: u64,
}

/// Every sample of a Prometheus text exposition, summed by metric name over its labels.
pub fn metric_sums(text: &str) -> HashMap<String, f64> {
    let mut sums = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(value), Some(name)) = (value, line.get(..name_end)) {
            *sums.entry(name.to_owned()).or_default() += value;
        }
    }
    sums
}

impl WorkerCounters {
    pub fn between(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Self {
        let delta = |name: &str| {
            let name = format!("customer_ingest_{name}");
            (after.get(&name).copied().unwrap_or(0.0) - before.get(&name).copied().unwrap_or(0.0))
                .max(0.0)
        };
        let chunks = delta("chunk_duration_seconds_count");
        WorkerCounters {
            chunks: chunks as u64,
            chunk_ms_avg: if chunks > 0.0 {
                round(delta("chunk_duration_seconds_sum") * 1000.0 / chunks, 1)
            } else {
                0.0
            },
            db_retries: delta("db_retries_total") as u64,
            reconnects: delta("reconnects_total") as u64,
            redeliveries: delta("redeliveries_total") as u64,
            requeued_for_outage: delta("requeued_for_outage_total") as u64,
            dead_lettered: delta("dead_lettered_total") as u64,
        }
    }

    pub fn troubled(&self) -> bool {
        self.db_retries
            + self.reconnects
            + self.redeliveries
            + self.requeued_for_outage
            + self.dead_lettered
            > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_metrics_are_summed_over_labels_and_compared_between_scrapes() {
        let before = metric_sums(
            "# HELP customer_ingest_db_retries_total Retries.\n\
             customer_ingest_chunk_duration_seconds_sum 1.5\n\
             customer_ingest_chunk_duration_seconds_count 10\n",
        );
        let after = metric_sums(
            "customer_ingest_db_retries_total{sqlstate=\"40P01\"} 2\n\
             customer_ingest_db_retries_total{sqlstate=\"connection\"} 1\n\
             customer_ingest_chunk_duration_seconds_sum 3.5\n\
             customer_ingest_chunk_duration_seconds_count 30\n",
        );
        let counters = WorkerCounters::between(&before, &after);
        assert_eq!(counters.chunks, 20);
        assert_eq!(counters.chunk_ms_avg, 100.0);
        assert_eq!(counters.db_retries, 3);
        assert!(counters.troubled());
        assert!(!WorkerCounters::between(&before, &before).troubled());
    }
}
