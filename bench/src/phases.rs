//! What a rig is given and how it is timed: throughput phases (every batch published at once),
//! small messages one at a time, and one large message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use customer_ingest::amqp::Publisher;
use customer_ingest::amqp::headers::{self, ProducerMessage, header_i64};
use customer_ingest::amqp::publisher::{Delivered, Outgoing};
use customer_ingest::config::Settings;
use customer_ingest::model::Counts;
use futures_util::StreamExt;
use lapin::Consumer;
use serde::Deserialize;
use sqlx::postgres::PgPool;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::Args;
use crate::cleanup::Ledger;
use crate::connect::{CALL_PATIENCE, within};
use crate::cpu::{Attribution, CpuUse, CpuWatch, broker_idle_cores, broker_noise_warning};
use crate::pg_sampler::Sampler;
use crate::report::{Large, MIB, Phase, Small, per_unit, percentile, round};
use crate::rig::Rig;
use crate::worker::WorkerCounters;
use crate::workload::{
    DIALECT, LARGE_CUSTOMERS, SMALL_CUSTOMERS, SMALL_MESSAGES, SMALL_TENANT, TENANT, large_body,
    small_body,
};

/// After an `unchanged` phase, how long the bench listens for an event that should not come.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Created,
    Updated,
    Unchanged,
}

pub struct Batches {
    pub phase: &'static str,
    pub tenant: &'static str,
    pub bodies: Arc<Vec<Vec<u8>>>,
    pub customers: usize,
    pub expect: Expect,
}

/// One throughput phase as measured, before it is set against the ceiling.
pub struct Throughput {
    customers: usize,
    rabbitmq_idle_cores: f64,
    pub customers_per_sec: f64,
    seconds: f64,
    latencies_ms: Vec<f64>,
    pub peak_rss_mib: f64,
    peak_rss_per_phase: bool,
    events: u64,
    event_messages: u64,
    reply_parts: usize,
    cpu: CpuUse,
    postgres_sessions: BTreeMap<String, f64>,
    worker: WorkerCounters,
    /// What makes this phase's figures doubtful; moved into the report's `warnings`.
    pub warnings: Vec<String>,
}

impl Throughput {
    pub fn into_phase(self, ceiling_per_sec: f64) -> Phase {
        let ms = |p: f64| round(percentile(&self.latencies_ms, p).unwrap_or(0.0), 1);
        let customers = self.customers as u64;
        Phase {
            customers: self.customers,
            customers_per_sec: round(self.customers_per_sec, 0),
            ratio: round(self.customers_per_sec / ceiling_per_sec, 3),
            seconds: round(self.seconds, 3),
            p50_ms: ms(50.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
            peak_rss_mib: round(self.peak_rss_mib, 1),
            peak_rss_per_phase: self.peak_rss_per_phase,
            events: self.events,
            event_messages: self.event_messages,
            cpu_us_per_customer: per_unit(&self.cpu, customers),
            broker_us_per_event: self
                .cpu
                .micros_per("rabbitmq", self.events)
                .map(|us| round(us, 2)),
            rabbitmq_idle_cores: self.rabbitmq_idle_cores,
            cpu: self.cpu,
            postgres_sessions: self.postgres_sessions,
            worker: self.worker,
        }
    }
}

/// Hands every batch to the publisher at once and times the worker from then until the last reply
/// has arrived, every event has been delivered and the outbox is empty.
/// Every reply's counts are checked: a wrong count fails the run.
pub async fn throughput(
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
    let rabbitmq_idle_cores = broker_idle_cores().await;
    let events_before = *rig.observer.counts.borrow();
    let peak_rss_per_phase = rig.reset_peaks();
    let postmaster_before = postmaster_started(&rig.pool).await?;
    let metrics_before = rig.metric_sums().await;
    let sampler = Sampler::start_for(rig);
    let cpu = CpuWatch::start(Attribution {
        workers: rig.pids(),
        database: rig.database_name.clone(),
    });

    let started = Instant::now();
    let publisher = AbortOnDropHandle::new(tokio::spawn(publish_all(
        rig.publisher.clone(),
        rig.amqp.ingest_queue.clone(),
        rig.amqp.results_queue.clone(),
        tenant,
        ids.clone(),
        bodies,
    )));
    let (answered, reply_parts) =
        collect_replies(rig, &ids, k, expect, publisher, deadline).await?;

    let target = events_before.total() + expected_events;
    let waited = tokio::time::timeout_at(
        deadline,
        rig.observer.counts.wait_for(|c| c.total() >= target),
    )
    .await
    .map(|seen| seen.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => bail!("{phase}: the events consumer stopped"),
        Err(_) => {
            let seen = rig.observer.counts.borrow().total() - events_before.total();
            bail!(
                "{phase}: {seen} of {expected_events} events arrived before the timeout; {}",
                rig.worker_states()
            );
        }
    }
    wait_for_empty_outbox(rig, deadline).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.finish(seconds).await;
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
    warnings.extend(broker_noise_warning(
        &format!("{}: {phase}", rig.label),
        rabbitmq_idle_cores,
    ));
    if worker.troubled() {
        warnings.push(format!(
            "{}: {phase}: the worker retried or reconnected ({worker:?}); its figures include that",
            rig.label
        ));
    }

    if expect == Expect::Unchanged {
        tokio::time::sleep(QUIET_PERIOD).await;
    }
    let after = *rig.observer.counts.borrow();
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

    let latencies_ms = answered
        .iter()
        .map(|got| got.duration_since(started).as_secs_f64() * 1000.0)
        .collect();
    let throughput = Throughput {
        customers: m * k,
        rabbitmq_idle_cores,
        customers_per_sec: (m * k) as f64 / seconds,
        seconds,
        latencies_ms,
        peak_rss_mib,
        peak_rss_per_phase,
        events: created + updated + other,
        event_messages: after.messages - events_before.messages,
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

/// Reads replies until every batch has all its parts, while `publisher` runs. Returns when each
/// batch was answered (in `ids` order) and the number of reply parts read.
async fn collect_replies(
    rig: &mut Rig,
    ids: &[String],
    k: usize,
    expect: Expect,
    mut publisher: AbortOnDropHandle<anyhow::Result<()>>,
    deadline: Instant,
) -> anyhow::Result<(Vec<Instant>, usize)> {
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut parts_seen: Vec<HashSet<i64>> = vec![HashSet::new(); ids.len()];
    let mut answered: Vec<Option<Instant>> = vec![None; ids.len()];
    let mut remaining = ids.len();
    let mut published = false;
    let mut parts_read = 0;
    while remaining > 0 || !published {
        tokio::select! {
            joined = &mut publisher, if !published => {
                joined.context("the publishing task failed")??;
                published = true;
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
                let part = header_i64(properties.headers(), headers::PART).unwrap_or(1);
                let parts = header_i64(properties.headers(), headers::PARTS).unwrap_or(1);
                parts_seen[i].insert(part);
                if parts_seen[i].len() as i64 >= parts && answered[i].is_none() {
                    answered[i] = Some(arrived);
                    remaining -= 1;
                }
            }
        }
    }
    let answered = answered
        .into_iter()
        .map(|a| a.expect("the loop ends only once every batch is answered"))
        .collect();
    Ok((answered, parts_read))
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

/// Publishes every batch with the service's publisher: all of them, then every confirm.
async fn publish_all(
    publisher: Publisher,
    queue: String,
    reply_to: String,
    tenant: &'static str,
    ids: Vec<String>,
    bodies: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<()> {
    let messages: Vec<Outgoing> = ids
        .iter()
        .zip(bodies.iter())
        .map(|(id, body)| batch(&queue, &reply_to, tenant, id, body))
        .collect();
    let delivered = publisher
        .publish_all(&messages)
        .await
        .context("publishing the batches")?;
    routed(&delivered)
}

/// One batch as a producer sends it: persistent, with its dialect, tenant, batch id and the queue
/// its reply goes to; `mandatory`, so that a missing queue is an error rather than a loss.
fn batch<'a>(
    queue: &'a str,
    reply_to: &str,
    tenant: &str,
    id: &str,
    body: &'a [u8],
) -> Outgoing<'a> {
    let producer = ProducerMessage {
        dialect: Some(DIALECT),
        tenant: Some(tenant),
        message_id: Some(id),
        correlation_id: Some(id),
        reply_to: Some(reply_to),
    };
    Outgoing {
        exchange: "",
        routing_key: queue,
        body,
        properties: producer.properties(),
        mandatory: true,
    }
}

fn routed(delivered: &[Delivered]) -> anyhow::Result<()> {
    if delivered.contains(&Delivered::Unroutable) {
        bail!("the broker returned a batch: no queue took it");
    }
    Ok(())
}

/// Small messages one at a time: publish, wait for the reply, then the next. This is the latency a
/// producer sees when nothing else is queued.
pub async fn small(rig: &mut Rig, deadline: Instant) -> anyhow::Result<Small> {
    eprintln!(
        "bench: {}: small: {SMALL_MESSAGES} messages of {SMALL_CUSTOMERS} customers, one at a time",
        rig.label
    );
    let mut latencies = Vec::with_capacity(SMALL_MESSAGES);
    for m in 0..SMALL_MESSAGES {
        let body = small_body(m);
        let id = format!("small-{m}");
        let message = batch(
            &rig.amqp.ingest_queue,
            &rig.amqp.results_queue,
            SMALL_TENANT,
            &id,
            &body,
        );
        let sent = Instant::now();
        let publish = async {
            let delivered = tokio::time::timeout_at(deadline, rig.publisher.publish(message))
                .await
                .map_err(|_| anyhow!("no publisher confirm for {id} before the timeout"))?
                .context("publishing a small batch")?;
            routed(&[delivered])
        };
        // The reply is awaited beside the confirm, so that it is timed when it arrives.
        let (_, reply) = tokio::try_join!(publish, reply_to(&mut rig.replies, &id, deadline))?;
        let Some((arrived, reply)) = reply else {
            bail!(
                "no reply to {id} before the timeout; {}",
                rig.worker_states()
            );
        };
        check_reply(&reply, SMALL_CUSTOMERS, Expect::Created)
            .with_context(|| format!("the reply to batch {id}"))?;
        latencies.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
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

/// The next reply to batch `id` and when it arrived, skipping any other; `None` at the deadline.
async fn reply_to(
    replies: &mut Consumer,
    id: &str,
    deadline: Instant,
) -> anyhow::Result<Option<(Instant, Vec<u8>)>> {
    loop {
        let Ok(delivery) = tokio::time::timeout_at(deadline, replies.next()).await else {
            return Ok(None);
        };
        let delivery = delivery
            .context("the reply consumer stopped")?
            .context("reading a reply")?;
        let arrived = Instant::now();
        let correlation = delivery.properties.correlation_id().as_ref();
        if correlation.map(|c| c.as_str()) == Some(id) {
            return Ok(Some((arrived, delivery.data)));
        }
    }
}

/// One message with as many customers as a batch may hold, on a fresh worker, so that the worker's
/// peak RSS is the cost of one large batch. `None` (with a warning) if such a body would be refused.
pub async fn large(
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
        cpu_us_per_customer: per_unit(&large.cpu, n as u64),
        cpu: large.cpu,
    }))
}
