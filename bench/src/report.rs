//! What the bench prints: one JSON object, and the targets each figure is held to.

use std::collections::BTreeMap;

use anyhow::Context;
use customer_ingest::config::Settings;
use customer_ingest::events::EventsMode;
use serde::Serialize;
use sqlx::Connection as _;

use crate::connect::admin_connection;
use crate::cpu::CpuUse;
use crate::targets::Targets;
use crate::worker::WorkerCounters;

/// Bytes in a mebibyte, for the sizes printed.
pub const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub messages: usize,
    pub customers_per_message: usize,
    pub customers: usize,
    pub settings: BenchSettings,
    /// The `copy` ceiling: what Postgres takes of the same customers by a plain `COPY`.
    pub ceiling: Ceiling,
    /// The broker's ceiling: the same event messages published with nothing else to do; `null`
    /// when no per-customer phase ran to take them from.
    pub bare_publish: Option<BarePublish>,
    /// Under the settings' `events.mode` (`settings.events_mode`): the same measurements as
    /// `events_modes.<that mode>.insert` and `.update`.
    pub insert: Phase,
    pub update: Phase,
    pub unchanged: Phase,
    /// Insert and update under each events mode, each on a fresh worker.
    pub events_modes: BTreeMap<&'static str, ModePhases>,
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
    /// Postgres CPU per row copied, what the pipeline's Postgres CPU per customer is set against.
    pub postgres_us_per_row: Option<f64>,
    pub cpu_us_per_row: BTreeMap<&'static str, f64>,
    pub cpu: CpuUse,
    pub postgres_sessions: BTreeMap<String, f64>,
}

/// The broker alone: the event messages of a per-customer insert phase published again, as the
/// relay publishes them, to an events exchange bound to an observer like the phases' own.
#[derive(Debug, Serialize)]
pub struct BarePublish {
    pub events: usize,
    /// Messages published before their confirms are awaited (`relay.batch_size`).
    pub confirm_window: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// RabbitMQ CPU per event: what the phases' `broker_us_per_event` is set against.
    pub broker_us_per_event: Option<f64>,
    pub cpu_us_per_event: BTreeMap<&'static str, f64>,
    /// RabbitMQ's cores in the second before, as for a phase.
    pub rabbitmq_idle_cores: f64,
    pub cpu: CpuUse,
}

/// Insert and update under one events mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModePhases {
    pub insert: Phase,
    pub update: Phase,
}

/// The process groups whose CPU per customer (or row, or event) is reported.
pub const TIERS: [&str; 4] = ["worker", "postgres", "rabbitmq", "bench"];

/// CPU microseconds per unit of work of each tier, rounded for printing.
pub fn per_unit(cpu: &CpuUse, units: u64) -> BTreeMap<&'static str, f64> {
    TIERS
        .iter()
        .filter_map(|&tier| cpu.micros_per(tier, units).map(|us| (tier, round(us, 2))))
        .collect()
}

/// One throughput phase as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub customers: usize,
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
    /// CPU microseconds per customer of each tier: `worker`, `postgres`, `rabbitmq` and `bench`.
    pub cpu_us_per_customer: BTreeMap<&'static str, f64>,
    /// RabbitMQ CPU over the events delivered (all the broker did in the phase, the batches in
    /// and the replies out included); `null` when no event was published.
    pub broker_us_per_event: Option<f64>,
    /// RabbitMQ's cores in the second before the phase, when the run did nothing: other users of
    /// the broker, whose work the `rabbitmq` figures include.
    pub rabbitmq_idle_cores: f64,
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
    pub cpu_us_per_customer: BTreeMap<&'static str, f64>,
    pub cpu: CpuUse,
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
}
