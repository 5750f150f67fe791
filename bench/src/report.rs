//! What the bench prints: one JSON object, and the targets each figure is held to.

use std::collections::BTreeMap;

use anyhow::Context;
use customer_ingest::config::Settings;
use customer_ingest::events::EventsMode;
use serde::Serialize;
use sqlx::Connection as _;

use crate::connect::admin_connection;
use crate::cpu::CpuUse;
use crate::worker::WorkerCounters;

/// Bytes in a mebibyte, for the sizes printed.
pub const MIB: f64 = 1024.0 * 1024.0;

/// What the issue asks of the pipeline on a 2-core machine shared with RabbitMQ and Postgres.
const TARGET_INSERT_RATIO: f64 = 0.5;
const TARGET_UPDATE_RATIO: f64 = 0.35;
const TARGET_UNCHANGED_RATIO: f64 = 1.0;
const TARGET_SMALL_P99_MS: f64 = 20.0;
const TARGET_PEAK_RSS_MIB: f64 = 150.0;
const TARGET_SCALE_RATIO: f64 = 1.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub messages: usize,
    pub customers_per_message: usize,
    pub customers: usize,
    pub settings: BenchSettings,
    pub ceiling: Ceiling,
    pub insert: Phase,
    pub update: Phase,
    pub unchanged: Phase,
    pub small: Option<Small>,
    pub scale: Option<Scale>,
    pub large: Option<Large>,
    pub targets: Targets,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    nproc: usize,
    cpu_model: Option<String>,
    memory_mib: Option<u64>,
    postgres_version: String,
    postgres_shared_buffers: String,
    postgres_synchronous_commit: String,
}

#[derive(Debug, Serialize)]
pub struct BenchSettings {
    pub chunk_size: usize,
    pub concurrency: usize,
    pub prefetch: u16,
    pub max_connections: u32,
    pub relay_batch_size: i64,
    /// `events.mode`: `per-customer` (a message per event) or `batch` (a message per chunk).
    pub events_mode: EventsMode,
}

#[derive(Debug, Serialize)]
pub struct Ceiling {
    pub customers_per_sec: f64,
    pub seconds: f64,
    pub copy_mib: f64,
    pub cpu: CpuUse,
    pub postgres_sessions: BTreeMap<String, f64>,
}

/// One throughput phase as printed.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub customers_per_sec: f64,
    /// `customers_per_sec` over the ceiling's.
    pub ratio: f64,
    pub seconds: f64,
    /// From the start of the phase, when every message is handed to the publisher at once, to a
    /// message's (last) reply part: this includes the time a message waits behind the others, in
    /// the publisher and in the queue.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The largest VmHWM of the phase's workers.
    pub peak_rss_mib: f64,
    /// Whether VmHWM was reset at the start of the phase (otherwise it covers the worker's life).
    pub peak_rss_per_phase: bool,
    pub events: u64,
    /// The broker messages that carried `events`: as many in per-customer mode, one per chunk in
    /// batch mode.
    pub event_messages: u64,
    pub cpu: CpuUse,
    /// Average Postgres sessions of the workers in each state (sampled every 100 ms): `CPU` is
    /// running, `idle in transaction` is waiting on the worker mid-transaction, the rest are wait
    /// events (`IO:WALSync`, `LWLock:WALWrite`, `Lock:transactionid`, ...).
    pub postgres_sessions: BTreeMap<String, f64>,
    pub worker: WorkerCounters,
}

#[derive(Debug, Serialize)]
pub struct Small {
    pub messages: usize,
    pub customers_per_message: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Scale {
    pub workers: usize,
    /// Customers per second over the single-process insert's (`ratio` is, as everywhere, over the
    /// ceiling's).
    pub ratio_to_insert: f64,
    #[serde(flatten)]
    pub phase: Phase,
}

#[derive(Debug, Serialize)]
pub struct Large {
    pub customers: usize,
    pub body_mib: f64,
    pub peak_rss_mib: f64,
    pub rss_to_body: f64,
    pub seconds: f64,
    pub customers_per_sec: f64,
    pub reply_parts: usize,
    pub cpu: CpuUse,
}

#[derive(Debug, Serialize)]
pub struct Target {
    target: String,
    value: Option<f64>,
    /// `null` when the phase was skipped.
    met: Option<bool>,
}

impl Target {
    fn at_least(value: Option<f64>, min: f64) -> Self {
        Target {
            target: format!(">= {min}"),
            value,
            met: value.map(|v| v >= min),
        }
    }

    fn at_most(value: Option<f64>, max: f64) -> Self {
        Target {
            target: format!("<= {max}"),
            value,
            met: value.map(|v| v <= max),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Targets {
    insert_ratio: Target,
    update_ratio: Target,
    unchanged_ratio: Target,
    small_p99_ms: Target,
    /// The largest peak RSS of any worker in the run (the large message included).
    peak_rss_mib: Target,
    scale_ratio: Target,
    /// Every target that was measured was met.
    all_met: bool,
}

impl Targets {
    pub fn new(
        insert: f64,
        update: f64,
        unchanged: f64,
        small_p99_ms: Option<f64>,
        peak_rss_mib: f64,
        scale: Option<f64>,
    ) -> Self {
        let mut targets = Targets {
            insert_ratio: Target::at_least(Some(round(insert, 3)), TARGET_INSERT_RATIO),
            update_ratio: Target::at_least(Some(round(update, 3)), TARGET_UPDATE_RATIO),
            unchanged_ratio: Target::at_least(Some(round(unchanged, 3)), TARGET_UNCHANGED_RATIO),
            small_p99_ms: Target::at_most(small_p99_ms, TARGET_SMALL_P99_MS),
            peak_rss_mib: Target::at_most(Some(round(peak_rss_mib, 1)), TARGET_PEAK_RSS_MIB),
            scale_ratio: Target::at_least(scale, TARGET_SCALE_RATIO),
            all_met: false,
        };
        targets.all_met = [
            &targets.insert_ratio,
            &targets.update_ratio,
            &targets.unchanged_ratio,
            &targets.small_p99_ms,
            &targets.peak_rss_mib,
            &targets.scale_ratio,
        ]
        .iter()
        .all(|t| t.met != Some(false));
        targets
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// The nearest-rank percentile `p` (in percent) of `values`, which need not be sorted: the smallest
/// value with at least `p`% of the values at or below it, so it is always one that was measured.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn machine_facts(settings: &Settings) -> anyhow::Result<Machine> {
    let mut admin = admin_connection(settings).await?;
    let (postgres_version, postgres_shared_buffers, postgres_synchronous_commit): (
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('shared_buffers'),
                current_setting('synchronous_commit')",
    )
    .fetch_one(&mut admin)
    .await
    .context("reading the Postgres settings that bound the ceiling")?;
    let _ = admin.close().await;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Ok(Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map(|model| model.trim().to_owned()),
        memory_mib: meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib / 1024),
        postgres_version,
        postgres_shared_buffers,
        postgres_synchronous_commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_a_measured_value_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.5], 99.0), Some(7.5));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_of_few_values_takes_the_largest_for_p99() {
        let values = [10.0, 20.0, 30.0, 40.0, 1000.0];
        assert_eq!(percentile(&values, 99.0), Some(1000.0));
        assert_eq!(percentile(&values, 50.0), Some(30.0));
    }

    #[test]
    fn targets_ignore_skipped_phases_but_not_misses() {
        let met = Targets::new(0.6, 0.4, 1.2, None, 100.0, None);
        assert!(met.all_met);
        assert_eq!(met.small_p99_ms.met, None);
        let missed = Targets::new(0.6, 0.3, 1.2, Some(10.0), 100.0, Some(1.1));
        assert!(!missed.all_met);
        assert_eq!(missed.update_ratio.met, Some(false));
    }
}
