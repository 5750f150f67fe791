//! `bench`: how close the worker comes to what Postgres can take on this machine, in one run.
//!
//! The ceiling is a plain `COPY` of the very customer documents the worker would store, into a table
//! shaped like `customers`. Every worker figure is divided by it: the ratios say how much of the
//! database's capacity the pipeline turns into applied customers, and they travel between machines
//! far better than raw rates do.
//!
//! The workers are real `serve` processes (this same binary), each started fresh with its own queues,
//! its own database and `log.level = warn`, so what is measured is what production runs: AMQP in,
//! parse, chunked upsert with its outbox, relay, confirmed replies. A phase counts as done only when
//! every reply has arrived, every event has been delivered and the outbox is empty.
//!
//! Everything the bench creates is named after the run (`bench.<run>.*` queues and exchanges,
//! `ingest_bench_<run>_*` databases) and removed at the end, after an error or on SIGINT/SIGTERM too.
//! One JSON object goes to stdout; progress and the workers' logs go to stderr.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Consumer, PublisherConfirm};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::amqp::headers::header_i64;
use crate::amqp::publisher::json_properties;
use crate::amqp::topology;
use crate::config::{AmqpSettings, DatabaseSettings, Settings};
use crate::dialect::{self, Limits};
use crate::model::Counts;
use crate::{shutdown, store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages per throughput phase (M).
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Customers per message (K).
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Unacknowledged messages the broker sends ahead to each worker (INGEST__AMQP__PREFETCH).
    #[arg(long, default_value_t = 8)]
    pub prefetch: u16,
    /// Skip the insert with two worker processes on one queue.
    #[arg(long)]
    pub skip_scale: bool,
    /// Skip the latency of small messages sent one at a time.
    #[arg(long)]
    pub skip_small: bool,
    /// Skip the single 100,000-customer message.
    #[arg(long)]
    pub skip_large: bool,
    /// The longest one phase may take, in seconds, before the bench gives up on it.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

const DIALECT: &str = "upsert-by-customer-id";
const TENANT: &str = "bench";
const SMALL_TENANT: &str = "bench-small";
const SMALL_MESSAGES: usize = 200;
const SMALL_CUSTOMERS: usize = 10;
const LARGE_CUSTOMERS: usize = 100_000;

/// The bench's own Postgres sessions carry this name, so the session sampler can leave them out.
const BENCH_APP: &str = "customer-ingest bench";
/// The ceiling's `COPY` session is named apart from [`BENCH_APP`] because it is what is measured.
const CEILING_APP: &str = "customer-ingest bench ceiling";

/// A connection, declaration or deletion on a healthy local broker or server answers well within this.
const CALL_PATIENCE: Duration = Duration::from_secs(30);
/// A fresh worker applies its migrations and starts consuming well within this.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// Added to the workers' own shutdown deadline before a worker that ignores SIGTERM is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// After an `unchanged` phase, how long the bench listens for an event that should not come.
const QUIET_PERIOD: Duration = Duration::from_millis(500);
/// How often Postgres sessions are sampled during a phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux this runs on, and not
/// readable without libc.
const TICKS_PER_SECOND: f64 = 100.0;
const MIB: f64 = 1024.0 * 1024.0;

/// What the issue asks of the pipeline on a 2-core machine shared with RabbitMQ and Postgres.
const TARGET_INSERT_RATIO: f64 = 0.5;
const TARGET_UPDATE_RATIO: f64 = 0.35;
const TARGET_UNCHANGED_RATIO: f64 = 1.0;
const TARGET_SMALL_P99_MS: f64 = 20.0;
const TARGET_PEAK_RSS_MIB: f64 = 150.0;
const TARGET_SCALE_RATIO: f64 = 1.0;

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<()> {
    validate(&settings, &args)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    eprintln!("bench {run_id}: M={} K={}", args.messages, args.customers);
    let ledger = Ledger::default();
    let mut warnings = Vec::new();
    let stop = CancellationToken::new();
    shutdown::on_signal(stop.clone());
    let outcome = tokio::select! {
        outcome = bench(&settings, &args, &run_id, &ledger, &mut warnings) => outcome,
        () = stop.cancelled() => Err(anyhow!("interrupted")),
    };
    // Whatever a failed or interrupted phase left behind. Its workers were killed when the phase was
    // dropped (`kill_on_drop`); their queues and databases are removed here.
    if let Err(error) = clean(&settings, &ledger.take()).await {
        warnings.push(format!("{error:#}"));
    }
    for warning in &warnings {
        eprintln!("bench: warning: {warning}");
    }
    let mut report = outcome?;
    report.warnings = warnings;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn validate(settings: &Settings, args: &Args) -> anyhow::Result<()> {
    if args.messages == 0 || args.customers == 0 {
        bail!("--messages and --customers must be at least 1");
    }
    if args.customers > settings.pipeline.max_records {
        bail!(
            "--customers {} is more than pipeline.max_records ({}): every batch would be rejected",
            args.customers,
            settings.pipeline.max_records
        );
    }
    if args.prefetch == 0 || args.timeout == 0 {
        bail!("--prefetch and --timeout must be at least 1");
    }
    // The figures describe this machine, and the bench puts a heavy load on what it talks to.
    for (key, url) in [
        ("amqp.url", settings.amqp.url()),
        ("database.url", settings.database.url()),
    ] {
        if !is_loopback(url) {
            bail!("{key} must name 127.0.0.1, ::1 or localhost: the bench measures this machine");
        }
    }
    Ok(())
}

/// Whether a URL's host is this machine.
fn is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

async fn bench(
    settings: &Settings,
    args: &Args,
    run_id: &str,
    ledger: &Ledger,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Report> {
    let phase_limit = Duration::from_secs(args.timeout);
    let deadline = || Instant::now() + phase_limit;
    let (m, k) = (args.messages, args.customers);
    let machine = machine_facts(settings).await?;

    let inserts: Arc<Vec<Vec<u8>>> = Arc::new((0..m).map(|i| bulk_body(i, k, 0)).collect());
    let largest = inserts.iter().map(Vec::len).max().unwrap_or(0);
    if largest > settings.pipeline.max_body_bytes {
        bail!(
            "a message of {k} customers is {largest} bytes, over pipeline.max_body_bytes ({}); \
             use fewer --customers",
            settings.pipeline.max_body_bytes
        );
    }

    eprintln!("bench: ceiling: COPY of {} customers", m * k);
    let ceiling = ceiling(settings, run_id, ledger, &inserts, deadline()).await?;
    eprintln!(
        "bench: ceiling: {:.0} customers/s",
        ceiling.customers_per_sec
    );

    let mut rig = Rig::start(settings, args, run_id, "main", 1, ledger).await?;
    let outcome = main_phases(&mut rig, args, &inserts, deadline).await;
    warnings.extend(rig.finish(settings, ledger).await);
    let (mut insert, mut update, mut unchanged, small) = outcome?;
    for phase in [&mut insert, &mut update, &mut unchanged] {
        warnings.append(&mut phase.warnings);
    }
    let ratio = |t: &Throughput| t.customers_per_sec / ceiling.customers_per_sec;
    let insert_ratio = ratio(&insert);
    let insert_cps = insert.customers_per_sec;

    let scale = if args.skip_scale {
        None
    } else {
        let mut rig = Rig::start(settings, args, run_id, "scale", 2, ledger).await?;
        let batches = Batches {
            phase: "scale",
            tenant: TENANT,
            bodies: inserts.clone(),
            customers: k,
            expect: Expect::Created,
        };
        let outcome = throughput(&mut rig, batches, deadline()).await;
        warnings.extend(rig.finish(settings, ledger).await);
        let mut scale = outcome?;
        warnings.append(&mut scale.warnings);
        Some(Scale {
            workers: 2,
            ratio_to_insert: round(scale.customers_per_sec / insert_cps, 3),
            phase: scale.into_phase(ceiling.customers_per_sec),
        })
    };
    drop(inserts);

    let large = if args.skip_large {
        None
    } else {
        large(settings, args, run_id, ledger, deadline(), warnings).await?
    };

    let peak_rss = [
        Some(insert.peak_rss_mib),
        Some(update.peak_rss_mib),
        Some(unchanged.peak_rss_mib),
        scale.as_ref().map(|s| s.phase.peak_rss_mib),
        large.as_ref().map(|l| l.peak_rss_mib),
    ]
    .into_iter()
    .flatten()
    .fold(0.0, f64::max);
    let targets = Targets::new(
        insert_ratio,
        ratio(&update),
        ratio(&unchanged),
        small.as_ref().map(|s| s.p99_ms),
        peak_rss,
        scale.as_ref().map(|s| s.ratio_to_insert),
    );
    let report = Report {
        machine,
        messages: m,
        customers_per_message: k,
        customers: m * k,
        settings: BenchSettings {
            chunk_size: settings.pipeline.chunk_size,
            concurrency: settings.pipeline.concurrency,
            prefetch: args.prefetch,
            max_connections: settings.database.max_connections,
            relay_batch_size: settings.relay.batch_size,
        },
        insert: insert.into_phase(ceiling.customers_per_sec),
        update: update.into_phase(ceiling.customers_per_sec),
        unchanged: unchanged.into_phase(ceiling.customers_per_sec),
        ceiling,
        small,
        scale,
        large,
        targets,
        warnings: Vec::new(),
    };
    let measured = [
        Some(("ceiling", &report.ceiling.cpu)),
        Some(("insert", &report.insert.cpu)),
        Some(("update", &report.update.cpu)),
        Some(("unchanged", &report.unchanged.cpu)),
        report.scale.as_ref().map(|s| ("scale", &s.phase.cpu)),
        report.large.as_ref().map(|l| ("large", &l.cpu)),
    ];
    warnings.extend(
        measured
            .into_iter()
            .flatten()
            .filter_map(|(what, cpu)| noise_warning(what, cpu)),
    );
    Ok(report)
}

/// Insert, update and unchanged on one worker, then the small-message latency on that same worker.
async fn main_phases(
    rig: &mut Rig,
    args: &Args,
    inserts: &Arc<Vec<Vec<u8>>>,
    deadline: impl Fn() -> Instant,
) -> anyhow::Result<(Throughput, Throughput, Throughput, Option<Small>)> {
    let k = args.customers;
    let insert = throughput(
        rig,
        Batches {
            phase: "insert",
            tenant: TENANT,
            bodies: inserts.clone(),
            customers: k,
            expect: Expect::Created,
        },
        deadline(),
    )
    .await?;
    let updates: Arc<Vec<Vec<u8>>> =
        Arc::new((0..args.messages).map(|i| bulk_body(i, k, 1)).collect());
    let update = throughput(
        rig,
        Batches {
            phase: "update",
            tenant: TENANT,
            bodies: updates.clone(),
            customers: k,
            expect: Expect::Updated,
        },
        deadline(),
    )
    .await?;
    // The same documents again under new batch ids: nothing may change and nothing may be published.
    let unchanged = throughput(
        rig,
        Batches {
            phase: "unchanged",
            tenant: TENANT,
            bodies: updates,
            customers: k,
            expect: Expect::Unchanged,
        },
        deadline(),
    )
    .await?;
    let small = if args.skip_small {
        None
    } else {
        Some(small(rig, deadline()).await?)
    };
    Ok((insert, update, unchanged, small))
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    messages: usize,
    customers_per_message: usize,
    customers: usize,
    settings: BenchSettings,
    ceiling: Ceiling,
    insert: Phase,
    update: Phase,
    unchanged: Phase,
    small: Option<Small>,
    scale: Option<Scale>,
    large: Option<Large>,
    targets: Targets,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Machine {
    nproc: usize,
    cpu_model: Option<String>,
    memory_mib: Option<u64>,
    postgres_version: String,
    postgres_shared_buffers: String,
    postgres_synchronous_commit: String,
}

#[derive(Debug, Serialize)]
struct BenchSettings {
    chunk_size: usize,
    concurrency: usize,
    prefetch: u16,
    max_connections: u32,
    relay_batch_size: i64,
}

#[derive(Debug, Serialize)]
struct Ceiling {
    customers_per_sec: f64,
    seconds: f64,
    copy_mib: f64,
    cpu: CpuUse,
    postgres_sessions: BTreeMap<String, f64>,
}

/// One throughput phase as printed.
#[derive(Debug, Serialize)]
struct Phase {
    customers_per_sec: f64,
    /// `customers_per_sec` over the ceiling's.
    ratio: f64,
    seconds: f64,
    /// From a message's publish to its (last) reply part; every message is published at once, so
    /// this includes the time a message waits in the queue behind the others.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The largest VmHWM of the phase's workers.
    peak_rss_mib: f64,
    /// Whether VmHWM was reset at the start of the phase (otherwise it covers the worker's life).
    peak_rss_per_phase: bool,
    events: u64,
    cpu: CpuUse,
    /// Average Postgres sessions of the workers in each state (sampled every 100 ms): `CPU` is
    /// running, `idle in transaction` is waiting on the worker mid-transaction, the rest are wait
    /// events (`IO:WALSync`, `LWLock:WALWrite`, `Lock:transactionid`, ...).
    postgres_sessions: BTreeMap<String, f64>,
    worker: WorkerCounters,
}

#[derive(Debug, Serialize)]
struct Small {
    messages: usize,
    customers_per_message: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Scale {
    workers: usize,
    /// Customers per second over the single-process insert's (`ratio` is, as everywhere, over the
    /// ceiling's).
    ratio_to_insert: f64,
    #[serde(flatten)]
    phase: Phase,
}

#[derive(Debug, Serialize)]
struct Large {
    customers: usize,
    body_mib: f64,
    peak_rss_mib: f64,
    rss_to_body: f64,
    seconds: f64,
    customers_per_sec: f64,
    reply_parts: usize,
    cpu: CpuUse,
}

#[derive(Debug, Serialize)]
struct Target {
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
struct Targets {
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
    fn new(
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

fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// The nearest-rank percentile `p` (in percent) of `values`, which need not be sorted: the smallest
/// value with at least `p`% of the values at or below it, so it is always one that was measured.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

async fn machine_facts(settings: &Settings) -> anyhow::Result<Machine> {
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

/// Message `m` of a throughput phase: `k` customers in the `upsert-by-customer-id` dialect, with the
/// fields a typical producer sends. `revision` changes every customer's name, so a later revision
/// updates every record of an earlier one.
fn bulk_body(m: usize, k: usize, revision: u32) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..k)
        .map(|i| {
            let name = match revision {
                0 => format!("Customer {m}-{i}"),
                r => format!("Customer {m}-{i} rev {r}"),
            };
            json!({
                "customerID": format!("B{m:05}-{i:05}"),
                "customerName": name,
                "email": format!("c{m}.{i}@example.com"),
                "phone": format!("555-{:04}", (m * k + i) % 10_000),
                "street1": format!("{} Main Street", i + 1),
                "city": "Springfield",
                "state": "IL",
                "zipCode": "62701",
                "priceZone": (i % 5) as i64,
                "warehouseID": "W1",
                "customerClassID": "RETAIL",
                "primarySalesRep": "R1",
                "salesReps": ["R1", "R2"],
                "extra1": "bench"
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

/// The large message: as many customers as a batch may hold, each with only a few fields, so that the
/// body stays under the 16 MiB a message may have and the test is of the record count.
fn large_body(n: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({
                "customerID": format!("L{i:06}"),
                "customerName": format!("Customer {i}"),
                "email": format!("l{i}@example.com"),
                "city": "Springfield",
                "priceZone": (i % 5) as i64
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

/// What the worker stores for a body: each record read by the dialect, exactly as the pipeline
/// reads it, and serialized the way the pipeline serializes it.
fn stored_documents(body: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let dialect = dialect::find(DIALECT).context("the dialect is registered")?;
    let body = std::str::from_utf8(body).context("a generated body is UTF-8")?;
    let records = dialect.parse(
        body,
        Limits {
            max_records: usize::MAX,
        },
    )?;
    records
        .into_iter()
        .map(|record| {
            let key = record.key.context("a generated record has a key")?;
            let customer = record
                .customer
                .map_err(|errors| anyhow!("generated record {key} is invalid: {errors:?}"))?;
            Ok((key, serde_json::to_string(&customer)?))
        })
        .collect()
}

/// Appends `value` as one field of `COPY`'s text format, where backslash starts an escape and tab and
/// newline separate fields and rows.
fn push_copy_text(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(byte),
        }
    }
}

/// `COPY` of the same customers into a fresh `customers` table (the service's own migrations, so the
/// same columns, primary key and unique index), committed. Nothing else touches Postgres meanwhile.
async fn ceiling(
    settings: &Settings,
    run_id: &str,
    ledger: &Ledger,
    bodies: &[Vec<u8>],
    deadline: Instant,
) -> anyhow::Result<Ceiling> {
    let name = format!("ingest_bench_{run_id}_ceiling");
    let own = Leftovers {
        databases: vec![name.clone()],
        ..Leftovers::default()
    };
    ledger.record(&own);
    let database = DatabaseSettings {
        url: with_database(settings.database.url(), &name)?.into(),
        ..settings.database.clone()
    };
    within(
        START_PATIENCE,
        "creating the ceiling database",
        store::migrate(&database),
    )
    .await?;

    // The rows are built before the clock starts: the ceiling is what Postgres can take, not how fast
    // the bench can format.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut piece = Vec::with_capacity(1 << 20);
    let mut rows = 0u64;
    for body in bodies {
        for (key, document) in stored_documents(body)? {
            piece.extend_from_slice(uuid::Uuid::now_v7().to_string().as_bytes());
            piece.push(b'\t');
            push_copy_text(&mut piece, TENANT);
            piece.push(b'\t');
            push_copy_text(&mut piece, &key);
            piece.extend_from_slice(b"\t1\t");
            push_copy_text(&mut piece, &document);
            piece.push(b'\n');
            rows += 1;
            if piece.len() >= 1 << 20 {
                pieces.push(std::mem::replace(&mut piece, Vec::with_capacity(1 << 20)));
            }
        }
    }
    pieces.push(piece);
    let copy_bytes: usize = pieces.iter().map(Vec::len).sum();

    let options = pg_options(database.url(), CEILING_APP)?;
    let mut connection = within(CALL_PATIENCE, "connecting to the ceiling database", async {
        Ok(options.connect().await?)
    })
    .await?;
    let sampler = Sampler::start(settings, &name)?;
    let cpu_before = CpuSnapshot::take(&[]);
    let started = Instant::now();
    let copied = tokio::time::timeout_at(deadline, async {
        let mut tx = connection.begin().await?;
        let mut copy = tx
            .copy_in_raw("COPY customers (id, tenant, key, version, data) FROM STDIN")
            .await?;
        for piece in &pieces {
            copy.send(piece.as_slice()).await?;
        }
        let copied = copy.finish().await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(copied)
    })
    .await
    .map_err(|_| anyhow!("the ceiling COPY did not finish before the phase timeout"))?
    .context("the ceiling COPY")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(&[]).since(&cpu_before, seconds);
    let postgres_sessions = sampler.finish().await;
    if copied != rows {
        bail!("the ceiling COPY stored {copied} rows of {rows}");
    }
    let _ = connection.close().await;
    clean(settings, &own).await?;
    ledger.forget(&own);
    Ok(Ceiling {
        customers_per_sec: round(rows as f64 / seconds, 0),
        seconds: round(seconds, 3),
        copy_mib: round(copy_bytes as f64 / MIB, 1),
        cpu,
        postgres_sessions,
    })
}

/// Fresh workers on their own queues and their own database, and what the bench needs to drive them:
/// a confirming publisher, the replies, and a running count of the events they publish.
struct Rig {
    label: &'static str,
    amqp: AmqpSettings,
    database_name: String,
    own: Leftovers,
    pool: PgPool,
    /// Publishing and consuming use separate connections, so that the megabytes being published do
    /// not sit in front of the replies whose arrival is being timed.
    publishing: Connection,
    consuming: Connection,
    channel: Channel,
    replies: Consumer,
    events: watch::Receiver<EventCounts>,
    events_task: AbortOnDropHandle<()>,
    workers: Vec<Worker>,
    shutdown_deadline: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct EventCounts {
    created: u64,
    updated: u64,
    other: u64,
}

impl EventCounts {
    fn total(&self) -> u64 {
        self.created + self.updated + self.other
    }
}

impl Rig {
    async fn start(
        settings: &Settings,
        args: &Args,
        run_id: &str,
        label: &'static str,
        workers: usize,
        ledger: &Ledger,
    ) -> anyhow::Result<Rig> {
        let prefix = format!("bench.{run_id}.{label}");
        let mut amqp = settings.amqp.clone();
        amqp.ingest_queue = format!("{prefix}.ingest");
        amqp.dead_letter_exchange = format!("{prefix}.dlx");
        amqp.dead_letter_queue = format!("{prefix}.dlq");
        amqp.events_exchange = format!("{prefix}.events");
        amqp.results_queue = format!("{prefix}.results");
        amqp.prefetch = args.prefetch;
        let observer = format!("{prefix}.observer");
        let database_name = format!("ingest_bench_{run_id}_{label}");
        // Recorded before anything exists, so that a failure halfway still removes what was made.
        let own = Leftovers {
            queues: vec![
                amqp.ingest_queue.clone(),
                amqp.dead_letter_queue.clone(),
                amqp.results_queue.clone(),
                observer.clone(),
            ],
            exchanges: vec![
                amqp.dead_letter_exchange.clone(),
                amqp.events_exchange.clone(),
            ],
            databases: vec![database_name.clone()],
        };
        ledger.record(&own);

        let database = DatabaseSettings {
            url: with_database(settings.database.url(), &database_name)?.into(),
            ..settings.database.clone()
        };
        within(
            START_PATIENCE,
            "creating the bench database",
            store::migrate(&database),
        )
        .await?;
        let options = pg_options(database.url(), BENCH_APP)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CALL_PATIENCE)
            .connect_lazy_with(options);

        let publishing = amqp_connection(settings, "customer-ingest bench publisher").await?;
        let consuming = amqp_connection(settings, "customer-ingest bench consumer").await?;
        let channel = within(CALL_PATIENCE, "declaring the bench topology", async {
            let channel = publishing.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            // Declared here, exactly as the worker declares them, so that nothing published before
            // the worker is up is lost.
            topology::declare(&channel, &amqp).await?;
            Ok(channel)
        })
        .await?;

        let (events_tx, events) = watch::channel(EventCounts::default());
        let (replies, mut event_deliveries) =
            within(CALL_PATIENCE, "subscribing to replies and events", async {
                let observe = consuming.create_channel().await?;
                observe
                    .queue_declare(
                        observer.as_str().into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                observe
                    .queue_bind(
                        observer.as_str().into(),
                        amqp.events_exchange.as_str().into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let events = consume(&observe, &observer).await?;
                let replies =
                    consume(&consuming.create_channel().await?, &amqp.results_queue).await?;
                Ok((replies, events))
            })
            .await?;
        // Only the routing key is read: the bench shares the machine with what it measures, and
        // parsing a few hundred thousand events would take CPU from the worker.
        let events_task = AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(Ok(delivery)) = event_deliveries.next().await {
                events_tx.send_modify(|counts| match delivery.routing_key.as_str() {
                    "customer.created" => counts.created += 1,
                    "customer.updated" => counts.updated += 1,
                    _ => counts.other += 1,
                });
            }
        }));

        let mut rig = Rig {
            label,
            amqp,
            database_name,
            own,
            pool,
            publishing,
            consuming,
            channel,
            replies,
            events,
            events_task,
            workers: Vec::new(),
            shutdown_deadline: settings.shutdown.deadline(),
        };
        for _ in 0..workers {
            let worker = Worker::spawn(settings, &rig.amqp, database.url())?;
            eprintln!(
                "bench: {label}: started worker {} (http {})",
                worker.pid, worker.http
            );
            rig.workers.push(worker);
        }
        rig.wait_until_consuming().await?;
        Ok(rig)
    }

    /// Ready means `/readyz` answers 200 on every worker and every worker consumes the ingest queue,
    /// so the clock of the first phase does not include a worker's start-up.
    async fn wait_until_consuming(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_PATIENCE;
        for index in 0..self.workers.len() {
            loop {
                let worker = &mut self.workers[index];
                if let Some(status) = worker.child.try_wait()? {
                    bail!(
                        "worker {} exited ({status}) before it was ready; its log is above",
                        worker.pid
                    );
                }
                if http_get(worker.http, "/readyz")
                    .await
                    .map(|(status, _)| status)
                    == Some(200)
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "worker {} was not ready within {START_PATIENCE:?}; its log is above",
                        worker.pid
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let channel = self.publishing.create_channel().await?;
        loop {
            let queue = within(CALL_PATIENCE, "inspecting the ingest queue", async {
                Ok(channel
                    .queue_declare(
                        self.amqp.ingest_queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?)
            })
            .await?;
            if queue.consumer_count() as usize >= self.workers.len() {
                let _ = channel.close(200, "ready".into()).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {} workers consume {} after {START_PATIENCE:?}",
                    queue.consumer_count(),
                    self.workers.len(),
                    self.amqp.ingest_queue
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The workers' metrics, summed over the workers.
    async fn metric_sums(&self) -> HashMap<String, f64> {
        let mut sums = HashMap::new();
        for worker in &self.workers {
            if let Some((200, text)) = http_get(worker.http, "/metrics").await {
                for (name, value) in metric_sums(&text) {
                    *sums.entry(name).or_default() += value;
                }
            }
        }
        sums
    }

    fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Starts a new peak-RSS window on every worker (Linux: writing 5 to `clear_refs` resets VmHWM).
    fn reset_peaks(&self) -> bool {
        self.workers
            .iter()
            .all(|w| std::fs::write(format!("/proc/{}/clear_refs", w.pid), "5").is_ok())
    }

    /// The largest VmHWM among the workers, in MiB.
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let mut peak = 0.0f64;
        for worker in &self.workers {
            let status = std::fs::read_to_string(format!("/proc/{}/status", worker.pid))
                .with_context(|| format!("reading /proc/{}/status", worker.pid))?;
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .context("no VmHWM in /proc/<pid>/status")?;
            peak = peak.max(kib / 1024.0);
        }
        Ok(peak)
    }

    /// One line per worker, for an error message: a stalled phase is often a worker that died.
    fn worker_states(&mut self) -> String {
        self.workers
            .iter_mut()
            .map(|worker| match worker.child.try_wait() {
                Ok(None) => format!("worker {} is running", worker.pid),
                Ok(Some(status)) => format!("worker {} exited ({status})", worker.pid),
                Err(error) => format!("worker {}: {error}", worker.pid),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stops the workers as production does (SIGTERM, then wait), then removes the rig's queues,
    /// exchanges and database. Returns what went wrong, as warnings: the figures are still good.
    async fn finish(self, settings: &Settings, ledger: &Ledger) -> Vec<String> {
        let mut warnings = Vec::new();
        for worker in self.workers {
            if let Err(error) = worker.stop(self.shutdown_deadline + STOP_GRACE).await {
                warnings.push(format!("{}: {error:#}", self.label));
            }
        }
        drop(self.events_task);
        drop(self.replies);
        let _ = tokio::time::timeout(CALL_PATIENCE, async {
            let _ = self.publishing.close(200, "bench done".into()).await;
            let _ = self.consuming.close(200, "bench done".into()).await;
            self.pool.close().await;
        })
        .await;
        match clean(settings, &self.own).await {
            Ok(()) => ledger.forget(&self.own),
            Err(error) => warnings.push(format!("{}: {error:#}", self.label)),
        }
        warnings
    }
}

/// A `customer-ingest serve` child process.
struct Worker {
    /// Killed (SIGKILL) if dropped while running, so that an interrupted bench leaves no worker.
    child: Child,
    pid: u32,
    http: SocketAddr,
}

impl Worker {
    /// Starts this binary's `serve` with the rig's names and the bench's settings passed explicitly,
    /// so that a `--config` file given to the bench reaches the worker too.
    fn spawn(settings: &Settings, amqp: &AmqpSettings, database_url: &str) -> anyhow::Result<Self> {
        let http = free_local_port()?;
        let exe = std::env::current_exe().context("finding this executable to start workers")?;
        // The worker's stdout goes to our stderr: our stdout carries only the JSON report.
        let log = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr for a worker")?;
        let pipeline = &settings.pipeline;
        let env: [(&str, String); 20] = [
            ("INGEST__AMQP__URL", amqp.url().to_owned()),
            ("INGEST__AMQP__INGEST_QUEUE", amqp.ingest_queue.clone()),
            (
                "INGEST__AMQP__DEAD_LETTER_EXCHANGE",
                amqp.dead_letter_exchange.clone(),
            ),
            (
                "INGEST__AMQP__DEAD_LETTER_QUEUE",
                amqp.dead_letter_queue.clone(),
            ),
            (
                "INGEST__AMQP__EVENTS_EXCHANGE",
                amqp.events_exchange.clone(),
            ),
            ("INGEST__AMQP__RESULTS_QUEUE", amqp.results_queue.clone()),
            (
                "INGEST__AMQP__DELIVERY_LIMIT",
                amqp.delivery_limit.to_string(),
            ),
            ("INGEST__AMQP__PREFETCH", amqp.prefetch.to_string()),
            ("INGEST__DATABASE__URL", database_url.to_owned()),
            (
                "INGEST__DATABASE__MAX_CONNECTIONS",
                settings.database.max_connections.to_string(),
            ),
            (
                "INGEST__DATABASE__LOCK_TIMEOUT_MS",
                settings.database.lock_timeout_ms.to_string(),
            ),
            (
                "INGEST__PIPELINE__CONCURRENCY",
                pipeline.concurrency.to_string(),
            ),
            (
                "INGEST__PIPELINE__CHUNK_SIZE",
                pipeline.chunk_size.to_string(),
            ),
            (
                "INGEST__PIPELINE__MAX_BODY_BYTES",
                pipeline.max_body_bytes.to_string(),
            ),
            (
                "INGEST__PIPELINE__MAX_RECORDS",
                pipeline.max_records.to_string(),
            ),
            (
                "INGEST__PIPELINE__REPLY_RECORDS_PER_MESSAGE",
                pipeline.reply_records_per_message.to_string(),
            ),
            (
                "INGEST__RELAY__BATCH_SIZE",
                settings.relay.batch_size.to_string(),
            ),
            (
                "INGEST__RELAY__POLL_INTERVAL_MS",
                settings.relay.poll_interval_ms.to_string(),
            ),
            ("INGEST__HTTP__ADDR", http.to_string()),
            ("INGEST__LOG__LEVEL", "warn".to_owned()),
        ];
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Worker { child, pid, http })
    }

    /// SIGTERM, then wait for the clean exit the service promises; SIGKILL after `patience`.
    async fn stop(mut self, patience: Duration) -> anyhow::Result<()> {
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
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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
#[derive(Debug, Default, Serialize)]
struct WorkerCounters {
    chunks: u64,
    chunk_ms_avg: f64,
    db_retries: u64,
    reconnects: u64,
    redeliveries: u64,
    requeued_for_outage: u64,
    dead_lettered: u64,
}

/// Every sample of a Prometheus text exposition, summed by metric name over its labels.
fn metric_sums(text: &str) -> HashMap<String, f64> {
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
    fn between(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Self {
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

    fn troubled(&self) -> bool {
        self.db_retries
            + self.reconnects
            + self.redeliveries
            + self.requeued_for_outage
            + self.dead_lettered
            > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Created,
    Updated,
    Unchanged,
}

struct Batches {
    phase: &'static str,
    tenant: &'static str,
    bodies: Arc<Vec<Vec<u8>>>,
    customers: usize,
    expect: Expect,
}

/// One throughput phase as measured, before it is set against the ceiling.
struct Throughput {
    customers_per_sec: f64,
    seconds: f64,
    latencies_ms: Vec<f64>,
    peak_rss_mib: f64,
    peak_rss_per_phase: bool,
    events: u64,
    reply_parts: usize,
    cpu: CpuUse,
    postgres_sessions: BTreeMap<String, f64>,
    worker: WorkerCounters,
    /// What makes this phase's figures doubtful; moved into the report's `warnings`.
    warnings: Vec<String>,
}

impl Throughput {
    fn into_phase(self, ceiling_per_sec: f64) -> Phase {
        let ms = |p: f64| round(percentile(&self.latencies_ms, p).unwrap_or(0.0), 1);
        Phase {
            customers_per_sec: round(self.customers_per_sec, 0),
            ratio: round(self.customers_per_sec / ceiling_per_sec, 3),
            seconds: round(self.seconds, 3),
            p50_ms: ms(50.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
            peak_rss_mib: round(self.peak_rss_mib, 1),
            peak_rss_per_phase: self.peak_rss_per_phase,
            events: self.events,
            cpu: self.cpu,
            postgres_sessions: self.postgres_sessions,
            worker: self.worker,
        }
    }
}

/// Publishes every batch as fast as the broker confirms them and times the worker from the first
/// publish until the last reply has arrived, every event has been delivered and the outbox is empty.
/// Every reply's counts are checked: a wrong count fails the run.
async fn throughput(
    rig: &mut Rig,
    batches: Batches,
    deadline: Instant,
) -> anyhow::Result<Throughput> {
    let Batches {
        phase,
        tenant,
        bodies,
        customers: k,
        expect,
    } = batches;
    let m = bodies.len();
    let expected_events = match expect {
        Expect::Created | Expect::Updated => (m * k) as u64,
        Expect::Unchanged => 0,
    };
    eprintln!(
        "bench: {}: {phase}: {m} messages of {k} customers",
        rig.label
    );
    let ids: Vec<String> = (0..m).map(|i| format!("{phase}-{i}")).collect();
    let events_before = *rig.events.borrow();
    let peak_rss_per_phase = rig.reset_peaks();
    let postmaster_before = postmaster_started(&rig.pool).await?;
    let metrics_before = rig.metric_sums().await;
    let sampler = Sampler::start_for(rig);
    let cpu_before = CpuSnapshot::take(&rig.pids());

    let started = Instant::now();
    let publisher = AbortOnDropHandle::new(tokio::spawn(publish_all(
        rig.channel.clone(),
        rig.amqp.ingest_queue.clone(),
        rig.amqp.results_queue.clone(),
        tenant,
        ids.clone(),
        bodies,
    )));
    let (published, answered, reply_parts) =
        collect_replies(rig, &ids, k, expect, publisher, deadline).await?;

    let target = events_before.total() + expected_events;
    let waited = tokio::time::timeout_at(deadline, rig.events.wait_for(|c| c.total() >= target))
        .await
        .map(|seen| seen.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => bail!("{phase}: the events consumer stopped"),
        Err(_) => {
            let seen = rig.events.borrow().total() - events_before.total();
            bail!(
                "{phase}: {seen} of {expected_events} events arrived before the timeout; {}",
                rig.worker_states()
            );
        }
    }
    wait_for_empty_outbox(rig, deadline).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(&rig.pids()).since(&cpu_before, seconds);
    let postgres_sessions = sampler.finish().await;
    let peak_rss_mib = rig.peak_rss_mib()?;
    let worker = WorkerCounters::between(&metrics_before, &rig.metric_sums().await);
    let mut warnings = Vec::new();
    if postmaster_started(&rig.pool).await? != postmaster_before {
        warnings.push(format!(
            "{}: {phase}: Postgres restarted during the phase; its figures are void",
            rig.label
        ));
    }
    if worker.troubled() {
        warnings.push(format!(
            "{}: {phase}: the worker retried or reconnected ({worker:?}); its figures include that",
            rig.label
        ));
    }

    if expect == Expect::Unchanged {
        tokio::time::sleep(QUIET_PERIOD).await;
    }
    let after = *rig.events.borrow();
    let (created, updated, other) = (
        after.created - events_before.created,
        after.updated - events_before.updated,
        after.other - events_before.other,
    );
    let wanted = match expect {
        Expect::Created => (expected_events, 0),
        Expect::Updated => (0, expected_events),
        Expect::Unchanged => (0, 0),
    };
    // At-least-once allows an event twice, but never the wrong kind, and never one for no change.
    if (created > 0) != (wanted.0 > 0)
        || (updated > 0) != (wanted.1 > 0)
        || created < wanted.0
        || updated < wanted.1
        || other > 0
    {
        bail!(
            "{phase}: expected {} created and {} updated events; got {created} created, {updated} \
             updated, {other} other",
            wanted.0,
            wanted.1
        );
    }

    let latencies_ms = published
        .iter()
        .zip(&answered)
        .map(|(sent, got)| got.duration_since(*sent).as_secs_f64() * 1000.0)
        .collect();
    let throughput = Throughput {
        customers_per_sec: (m * k) as f64 / seconds,
        seconds,
        latencies_ms,
        peak_rss_mib,
        peak_rss_per_phase,
        events: created + updated + other,
        reply_parts,
        cpu,
        postgres_sessions,
        worker,
        warnings,
    };
    eprintln!(
        "bench: {}: {phase}: {:.0} customers/s in {seconds:.1} s, peak RSS {peak_rss_mib:.0} MiB",
        rig.label, throughput.customers_per_sec
    );
    Ok(throughput)
}

/// Reads replies until every batch has all its parts, while `publisher` runs. Returns the publish
/// and reply times of each batch (in `ids` order) and the number of reply parts read.
async fn collect_replies(
    rig: &mut Rig,
    ids: &[String],
    k: usize,
    expect: Expect,
    mut publisher: AbortOnDropHandle<anyhow::Result<Vec<Instant>>>,
    deadline: Instant,
) -> anyhow::Result<(Vec<Instant>, Vec<Instant>, usize)> {
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut parts_seen: Vec<HashSet<i64>> = vec![HashSet::new(); ids.len()];
    let mut answered: Vec<Option<Instant>> = vec![None; ids.len()];
    let mut remaining = ids.len();
    let mut published: Option<Vec<Instant>> = None;
    let mut parts_read = 0;
    while remaining > 0 || published.is_none() {
        tokio::select! {
            joined = &mut publisher, if published.is_none() => {
                published = Some(joined.context("the publishing task failed")??);
            }
            delivery = tokio::time::timeout_at(deadline, rig.replies.next()), if remaining > 0 => {
                let Ok(delivery) = delivery else {
                    bail!(
                        "{} of {} batches answered before the timeout; {}",
                        ids.len() - remaining,
                        ids.len(),
                        rig.worker_states()
                    );
                };
                let delivery = delivery
                    .context("the reply consumer stopped")?
                    .context("reading a reply")?;
                let arrived = Instant::now();
                parts_read += 1;
                let properties = &delivery.properties;
                let correlation = properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default();
                let Some(&i) = index.get(correlation.as_str()) else {
                    eprintln!("bench: ignoring a reply to an unknown batch {correlation:?}");
                    continue;
                };
                check_reply(&delivery.data, k, expect)
                    .with_context(|| format!("the reply to batch {correlation}"))?;
                let part = header_i64(properties.headers(), "part").unwrap_or(1);
                let parts = header_i64(properties.headers(), "parts").unwrap_or(1);
                parts_seen[i].insert(part);
                if parts_seen[i].len() as i64 >= parts && answered[i].is_none() {
                    answered[i] = Some(arrived);
                    remaining -= 1;
                }
            }
        }
    }
    let published = published.expect("the loop ends only once publishing finished");
    let answered = answered
        .into_iter()
        .map(|a| a.expect("the loop ends only once every batch is answered"))
        .collect();
    Ok((published, answered, parts_read))
}

/// The envelope of a reply; the per-record part is not read.
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    counts: Counts,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn check_reply(body: &[u8], k: usize, expect: Expect) -> anyhow::Result<()> {
    let envelope: Envelope =
        serde_json::from_slice(body).context("a reply is not the contract's JSON")?;
    let mut wanted = Counts {
        total: k,
        ..Counts::default()
    };
    match expect {
        Expect::Created => wanted.created = k,
        Expect::Updated => wanted.updated = k,
        Expect::Unchanged => wanted.unchanged = k,
    }
    if envelope.status != "completed" || envelope.counts != wanted {
        bail!(
            "expected status completed with {wanted:?}; the worker answered status {} with {:?}{}",
            envelope.status,
            envelope.counts,
            envelope
                .error
                .map(|e| format!(" and error {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// When the Postgres server started: a change during a phase means it was restarted under the run
/// (on a shared machine, someone else's test may do that).
async fn postmaster_started(pool: &PgPool) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    within(CALL_PATIENCE, "asking Postgres when it started", async {
        Ok(sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(pool)
            .await?)
    })
    .await
}

async fn wait_for_empty_outbox(rig: &mut Rig, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let pending: i64 = within(CALL_PATIENCE, "counting the outbox", async {
            Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&rig.pool)
                .await?)
        })
        .await?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{pending} events still in the outbox at the timeout; {}",
                rig.worker_states()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(
    channel: Channel,
    queue: String,
    reply_to: String,
    tenant: &'static str,
    ids: Vec<String>,
    bodies: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<Vec<Instant>> {
    let mut sent = Vec::with_capacity(ids.len());
    let mut confirms = Vec::with_capacity(ids.len());
    for (id, body) in ids.iter().zip(bodies.iter()) {
        sent.push(Instant::now());
        confirms.push(
            publish(&channel, &queue, &reply_to, tenant, id, body)
                .await
                .context("publishing a batch")?,
        );
    }
    for confirm in confirms {
        confirmed(confirm.await.context("waiting for a publisher confirm")?)?;
    }
    Ok(sent)
}

/// Publishes one batch as a producer does: persistent, with its dialect, tenant, batch id and the
/// queue its reply goes to; `mandatory`, so that a missing queue is an error rather than a loss.
async fn publish(
    channel: &Channel,
    queue: &str,
    reply_to: &str,
    tenant: &str,
    id: &str,
    body: &[u8],
) -> lapin::Result<PublisherConfirm> {
    let mut headers = FieldTable::default();
    headers.insert(
        "tenant".into(),
        AMQPValue::LongString(LongString::from(tenant)),
    );
    let properties = json_properties()
        .with_type(DIALECT.into())
        .with_message_id(id.into())
        .with_correlation_id(id.into())
        .with_reply_to(reply_to.into())
        .with_headers(headers);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
}

fn confirmed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("the broker returned a batch: no queue took it"),
        Confirmation::Nack(_) => bail!("the broker refused (nacked) a batch"),
        Confirmation::NotRequested => bail!("publisher confirms are not enabled"),
    }
}

/// Small messages one at a time: publish, wait for the reply, then the next. This is the latency a
/// producer sees when nothing else is queued.
async fn small(rig: &mut Rig, deadline: Instant) -> anyhow::Result<Small> {
    eprintln!(
        "bench: {}: small: {SMALL_MESSAGES} messages of {SMALL_CUSTOMERS} customers, one at a time",
        rig.label
    );
    let mut latencies = Vec::with_capacity(SMALL_MESSAGES);
    for m in 0..SMALL_MESSAGES {
        let body = small_body(m);
        let id = format!("small-{m}");
        let sent = Instant::now();
        let confirm = publish(
            &rig.channel,
            &rig.amqp.ingest_queue,
            &rig.amqp.results_queue,
            SMALL_TENANT,
            &id,
            &body,
        )
        .await
        .context("publishing a small batch")?;
        loop {
            let Ok(delivery) = tokio::time::timeout_at(deadline, rig.replies.next()).await else {
                bail!(
                    "no reply to {id} before the timeout; {}",
                    rig.worker_states()
                );
            };
            let delivery = delivery
                .context("the reply consumer stopped")?
                .context("reading a reply")?;
            let arrived = Instant::now();
            let correlation = delivery.properties.correlation_id().as_ref();
            if correlation.map(|c| c.as_str()) != Some(id.as_str()) {
                continue;
            }
            check_reply(&delivery.data, SMALL_CUSTOMERS, Expect::Created)
                .with_context(|| format!("the reply to batch {id}"))?;
            latencies.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
            break;
        }
        confirmed(
            tokio::time::timeout_at(deadline, confirm)
                .await
                .map_err(|_| anyhow!("no publisher confirm for {id} before the timeout"))??,
        )?;
    }
    let ms = |p: f64| round(percentile(&latencies, p).unwrap_or(0.0), 1);
    let small = Small {
        messages: SMALL_MESSAGES,
        customers_per_message: SMALL_CUSTOMERS,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
    };
    eprintln!(
        "bench: {}: small: p50 {} ms, p99 {} ms",
        rig.label, small.p50_ms, small.p99_ms
    );
    Ok(small)
}

fn small_body(m: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..SMALL_CUSTOMERS)
        .map(|i| {
            json!({
                "customerID": format!("S{m:04}-{i:02}"),
                "customerName": format!("Small customer {m}-{i}"),
                "email": format!("s{m}.{i}@example.com"),
                "city": "Springfield",
                "salesReps": ["R1"]
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

/// One message with as many customers as a batch may hold, on a fresh worker, so that the worker's
/// peak RSS is the cost of one large batch. `None` (with a warning) if such a body would be refused.
async fn large(
    settings: &Settings,
    args: &Args,
    run_id: &str,
    ledger: &Ledger,
    deadline: Instant,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Option<Large>> {
    let n = LARGE_CUSTOMERS.min(settings.pipeline.max_records);
    let body = large_body(n);
    if body.len() > settings.pipeline.max_body_bytes {
        warnings.push(format!(
            "large: a body of {n} customers is {} bytes, over pipeline.max_body_bytes; skipped",
            body.len()
        ));
        return Ok(None);
    }
    let body_mib = body.len() as f64 / MIB;
    let mut rig = Rig::start(settings, args, run_id, "large", 1, ledger).await?;
    let batches = Batches {
        phase: "large",
        tenant: TENANT,
        bodies: Arc::new(vec![body]),
        customers: n,
        expect: Expect::Created,
    };
    let outcome = throughput(&mut rig, batches, deadline).await;
    warnings.extend(rig.finish(settings, ledger).await);
    let mut large = outcome?;
    warnings.append(&mut large.warnings);
    Ok(Some(Large {
        customers: n,
        body_mib: round(body_mib, 1),
        peak_rss_mib: round(large.peak_rss_mib, 1),
        rss_to_body: round(large.peak_rss_mib / body_mib, 1),
        seconds: round(large.seconds, 3),
        customers_per_sec: round(large.customers_per_sec, 0),
        reply_parts: large.reply_parts,
        cpu: large.cpu,
    }))
}

/// CPU time so far, of the machine and of every process on it.
struct CpuSnapshot {
    machine_busy: u64,
    machine_total: u64,
    processes: HashMap<u32, ProcessTicks>,
}

struct ProcessTicks {
    group: &'static str,
    command: String,
    /// The process's own ticks.
    own: u64,
    /// Its own ticks plus those of the children it reaped.
    with_children: u64,
}

/// CPU used during a phase: the machine's busy share, and cores used per process group (`worker`,
/// `postgres`, `rabbitmq`, `bench`, `other`, and `unattributed` for busy time no live process
/// accounts for).
#[derive(Debug, Serialize)]
struct CpuUse {
    machine_busy_percent: f64,
    cores: BTreeMap<&'static str, f64>,
    /// The busiest live commands in `other` by their own time: on a shared machine, what else took
    /// CPU from the run.
    other_top: BTreeMap<String, f64>,
}

impl CpuUse {
    /// Cores that went to neither the run nor the services it measures.
    fn other(&self) -> f64 {
        self.cores.get("other").copied().unwrap_or(0.0)
    }
}

/// Above this many cores of `other` during a phase, its figures say more about the neighbours than
/// about the pipeline, and the report says so.
const NOISY_OTHER_CORES: f64 = 0.2;

fn noise_warning(what: &str, cpu: &CpuUse) -> Option<String> {
    (cpu.other() > NOISY_OTHER_CORES).then(|| {
        format!(
            "{what}: other processes used {:.2} cores ({:?}); its figures are understated",
            cpu.other(),
            cpu.other_top
        )
    })
}

impl CpuSnapshot {
    fn take(workers: &[u32]) -> Self {
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| machine_ticks(&stat))
            .unwrap_or((0, 0));
        let me = std::process::id();
        let mut processes = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((command, own, children)) = process_ticks(&stat) else {
                continue;
            };

            let group = if workers.contains(&pid) {
                "worker"
            } else if pid == me {
                "bench"
            } else {
                match command {
                    "postgres" => "postgres",
                    "beam.smp" | "epmd" | "erl_child_setup" | "inet_gethost" => "rabbitmq",
                    _ => "other",
                }
            };
            processes.insert(
                pid,
                ProcessTicks {
                    group,
                    command: command.to_owned(),
                    own,
                    with_children: own + children,
                },
            );
        }
        CpuSnapshot {
            machine_busy,
            machine_total,
            processes,
        }
    }

    /// What was used between `before` and this snapshot. A process that started meanwhile counts
    /// in full.
    fn since(&self, before: &CpuSnapshot, seconds: f64) -> CpuUse {
        let cores_of = |ticks: f64| ticks / TICKS_PER_SECOND / seconds;
        let mut cores: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut others: HashMap<&str, f64> = HashMap::new();
        // Group totals include the children a process reaped, so that a process that ended during
        // the phase (a Postgres parallel worker, a neighbour's rustc) is still counted...
        for (pid, now) in &self.processes {
            let earlier = before.processes.get(pid);
            let grown = now
                .with_children
                .saturating_sub(earlier.map_or(0, |p| p.with_children));
            *cores.entry(now.group).or_default() += cores_of(grown as f64);
            if now.group == "other" {
                let own = now.own.saturating_sub(earlier.map_or(0, |p| p.own));
                *others.entry(now.command.as_str()).or_default() += cores_of(own as f64);
            }
        }
        // ...but it reached its parent's total with the time it had used before the phase, which
        // is taken back here. Parent and child share a group (the postmaster and its backends,
        // cargo and rustc); the exception, a restarted Postgres, voids the phase anyway.
        for (pid, earlier) in &before.processes {
            if !self.processes.contains_key(pid) {
                *cores.entry(earlier.group).or_default() -= cores_of(earlier.with_children as f64);
            }
        }
        cores.values_mut().for_each(|c| *c = c.max(0.0));
        let total = self.machine_total.saturating_sub(before.machine_total);
        let busy = self.machine_busy.saturating_sub(before.machine_busy);
        // Busy time no process accounts for: the kernel's own work (interrupts, softirqs), and
        // processes whose parent ended before them.
        let attributed: f64 = cores.values().sum();
        let busy_cores = busy as f64 / TICKS_PER_SECOND / seconds;
        cores.insert("unattributed", (busy_cores - attributed).max(0.0));
        cores.values_mut().for_each(|c| *c = round(*c, 2));
        let mut others: Vec<(&str, f64)> = others.into_iter().filter(|(_, c)| *c >= 0.01).collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        let other_top = others
            .into_iter()
            .take(3)
            .map(|(command, used)| (command.to_owned(), round(used, 2)))
            .collect();
        CpuUse {
            machine_busy_percent: if total == 0 {
                0.0
            } else {
                round(busy as f64 * 100.0 / total as f64, 1)
            },
            cores,
            other_top,
        }
    }
}

/// Busy and total ticks of all CPUs from `/proc/stat` (idle and iowait are not busy).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// A process's command name, its user+system ticks and those of its children that ended, from
/// `/proc/<pid>/stat`. The name is in parentheses and may hold spaces, so the fields are counted from
/// its closing parenthesis.
fn process_ticks(stat: &str) -> Option<(&str, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((
        stat.get(open + 1..close)?,
        field(11)? + field(12)?,
        field(13)? + field(14)?,
    ))
}

/// Samples `pg_stat_activity` during a phase: on average, how many sessions of the measured database
/// were running, waiting on something (and on what), or idle inside a transaction.
struct Sampler {
    stop: CancellationToken,
    task: AbortOnDropHandle<BTreeMap<String, f64>>,
}

impl Sampler {
    fn start_for(rig: &Rig) -> Self {
        let options = (*rig.pool.connect_options()).clone().database("postgres");
        Self::spawn(options, rig.database_name.clone())
    }

    fn start(settings: &Settings, database: &str) -> anyhow::Result<Self> {
        let options = pg_options(settings.database.url(), BENCH_APP)?.database("postgres");
        Ok(Self::spawn(options, database.to_owned()))
    }

    fn spawn(options: PgConnectOptions, database: String) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut samples = 0u64;
            let Ok(Ok(mut connection)) =
                tokio::time::timeout(CALL_PATIENCE, options.connect()).await
            else {
                return BTreeMap::new();
            };
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
                let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
                    "SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction'
                                 WHEN wait_event IS NULL THEN 'CPU'
                                 ELSE wait_event_type || ':' || wait_event END,
                            count(*)
                     FROM pg_stat_activity
                     WHERE datname = $1 AND application_name <> $2
                       AND state IN ('active', 'idle in transaction')
                     GROUP BY 1",
                )
                .bind(&database)
                .bind(BENCH_APP)
                .fetch_all(&mut connection)
                .await;
                if let Ok(rows) = rows {
                    samples += 1;
                    for (state, n) in rows {
                        *counts.entry(state).or_default() += n.max(0) as u64;
                    }
                }
            }
            let _ = connection.close().await;
            counts
                .into_iter()
                .map(|(state, n)| (state, round(n as f64 / samples.max(1) as f64, 2)))
                .collect()
        });
        Sampler {
            stop,
            task: AbortOnDropHandle::new(task),
        }
    }

    async fn finish(self) -> BTreeMap<String, f64> {
        self.stop.cancel();
        tokio::time::timeout(CALL_PATIENCE, self.task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

/// The queues, exchanges and databases a run made, so that they can be removed whatever happens.
#[derive(Debug, Default, Clone)]
struct Leftovers {
    queues: Vec<String>,
    exchanges: Vec<String>,
    databases: Vec<String>,
}

/// Everything made and not yet removed, shared so that the final sweep in [`run`] sees what a failed
/// or interrupted phase left.
#[derive(Default, Clone)]
struct Ledger(Arc<Mutex<Leftovers>>);

impl Ledger {
    fn record(&self, items: &Leftovers) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.queues.extend(items.queues.iter().cloned());
        all.exchanges.extend(items.exchanges.iter().cloned());
        all.databases.extend(items.databases.iter().cloned());
    }

    fn forget(&self, items: &Leftovers) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.queues.retain(|q| !items.queues.contains(q));
        all.exchanges.retain(|e| !items.exchanges.contains(e));
        all.databases.retain(|d| !items.databases.contains(d));
    }

    fn take(&self) -> Leftovers {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Deletes the queues and exchanges and drops the databases (`WITH (FORCE)`: a killed worker's
/// sessions must not keep one alive). Goes on after a failure and reports every one of them.
async fn clean(settings: &Settings, items: &Leftovers) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    if !items.queues.is_empty() || !items.exchanges.is_empty() {
        match amqp_connection(settings, "customer-ingest bench clean-up").await {
            Ok(connection) => {
                for queue in &items.queues {
                    let deleted = within(CALL_PATIENCE, "deleting a queue", async {
                        // A channel per deletion: a refused one closes its channel.
                        let channel = connection.create_channel().await?;
                        channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await?;
                        let _ = channel.close(200, "deleted".into()).await;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = deleted {
                        failures.push(format!("queue {queue}: {error:#}"));
                    }
                }
                for exchange in &items.exchanges {
                    let deleted = within(CALL_PATIENCE, "deleting an exchange", async {
                        let channel = connection.create_channel().await?;
                        channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await?;
                        let _ = channel.close(200, "deleted".into()).await;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = deleted {
                        failures.push(format!("exchange {exchange}: {error:#}"));
                    }
                }
                let _ = connection.close(200, "bench done".into()).await;
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if !items.databases.is_empty() {
        match admin_connection(settings).await {
            Ok(mut admin) => {
                for database in &items.databases {
                    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
                    let dropped = within(CALL_PATIENCE, "dropping a database", async {
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                            .execute(&mut admin)
                            .await?;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = dropped {
                        failures.push(format!("database {database}: {error:#}"));
                    }
                }
                let _ = admin.close().await;
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "could not remove everything the bench made: {}",
            failures.join("; ")
        )
    }
}

/// `future`, or an error naming `what` once `limit` has passed.
async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {limit:?}"))?
        .with_context(|| what.to_owned())
}

/// A plain connection: no automatic recovery, because a broker hiccup during a measurement should
/// fail the run rather than be hidden in its figures.
async fn amqp_connection(settings: &Settings, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    within(CALL_PATIENCE, "connecting to RabbitMQ", async {
        Ok(Connection::connect(settings.amqp.url(), properties).await?)
    })
    .await
}

async fn consume(channel: &Channel, queue: &str) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

fn pg_options(url: &str, application: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .context("database.url is not a valid Postgres URL")?;
    Ok(options
        .application_name(application)
        .log_statements(tracing::log::LevelFilter::Off))
}

/// A session on the server's `postgres` database, for creating, dropping and inspecting.
async fn admin_connection(settings: &Settings) -> anyhow::Result<PgConnection> {
    let options = pg_options(settings.database.url(), BENCH_APP)?.database("postgres");
    within(CALL_PATIENCE, "connecting to Postgres", async {
        Ok(options.connect().await?)
    })
    .await
}

/// `url` naming database `name` instead, query parameters kept.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let authority_start = url
        .find("://")
        .context("database.url is not a URL (no ://)")?
        + 3;
    let rest = &url[authority_start..];
    let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = path.split('/').next().unwrap_or(path);
    Ok(format!(
        "{}{authority}/{name}{query}",
        &url[..authority_start]
    ))
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
    fn the_bench_database_replaces_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/customer_ingest", "b1").unwrap(),
            "postgres://u:p@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1/x?sslmode=disable", "b2").unwrap(),
            "postgres://127.0.0.1/b2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1:5432", "b3").unwrap(),
            "postgres://127.0.0.1:5432/b3"
        );
    }

    #[test]
    fn only_this_machine_is_benched() {
        assert!(is_loopback("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(is_loopback(
            "postgres://postgres@localhost/x?sslmode=disable"
        ));
        assert!(is_loopback("postgres://u:p@[::1]:5432/x"));
        assert!(!is_loopback("postgres://u:p@db.internal:5432/x"));
        assert!(!is_loopback("amqp://guest:guest@10.0.0.5:5672/%2f"));
        assert!(!is_loopback("not a url"));
    }

    #[test]
    fn copy_text_escapes_what_would_split_a_row() {
        let mut out = Vec::new();
        push_copy_text(&mut out, "a\\b\tc\nd\re\"f");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\"f");
    }

    #[test]
    fn generated_bodies_are_read_by_the_dialect_without_errors() {
        let documents = stored_documents(&bulk_body(3, 20, 1)).unwrap();
        assert_eq!(documents.len(), 20);
        assert!(documents[0].1.contains("rev 1"));
        assert_eq!(
            stored_documents(&small_body(1)).unwrap().len(),
            SMALL_CUSTOMERS
        );
        assert_eq!(stored_documents(&large_body(10)).unwrap().len(), 10);
    }

    #[test]
    fn a_large_batch_fits_in_one_message() {
        assert!(large_body(LARGE_CUSTOMERS).len() < 16 * 1024 * 1024);
    }

    #[test]
    fn proc_stat_lines_are_read_past_the_command_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(process_ticks(stat), Some(("my (odd) name", 300, 0)));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3";
        assert_eq!(machine_ticks(machine), Some((150, 1000)));
    }

    #[test]
    fn a_process_that_ends_during_a_phase_counts_only_its_time_in_the_phase() {
        let snapshot = |processes: Vec<(u32, &'static str, u64)>| CpuSnapshot {
            machine_busy: 0,
            machine_total: 0,
            processes: processes
                .into_iter()
                .map(|(pid, group, ticks)| {
                    let process = ProcessTicks {
                        group,
                        command: format!("p{pid}"),
                        own: ticks,
                        with_children: ticks,
                    };
                    (pid, process)
                })
                .collect(),
        };
        // The postmaster (1) used 10 ticks itself; its parallel worker (2) used 30 more, then ended
        // and was reaped; a new session (3) started and used 20.
        let before = snapshot(vec![(1, "postgres", 100), (2, "postgres", 50)]);
        let after = snapshot(vec![(1, "postgres", 110 + 80), (3, "postgres", 20)]);
        let used = after.since(&before, 1.0);
        assert_eq!(used.cores["postgres"], 0.6);
    }

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
