//! A rig: fresh workers on their own queues and their own database, and what the bench needs to
//! drive them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use customer_ingest::amqp::{Publisher, topology};
use customer_ingest::config::{AmqpSettings, DatabaseSettings, Settings};
use customer_ingest::events::EventsMode;
use customer_ingest::store;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::time::Instant;

use crate::Args;
use crate::cleanup::{Ledger, Leftovers, clean};
use crate::connect::{
    BENCH_APP, CALL_PATIENCE, amqp_connection, consume, pg_options, with_database, within,
};
use crate::observer::Observer;
use crate::worker::{Worker, http_get, metric_sums};

/// A fresh worker applies its migrations and starts consuming well within this.
pub const START_PATIENCE: Duration = Duration::from_secs(60);
/// Added to the workers' own shutdown deadline before a worker that ignores SIGTERM is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Fresh workers on their own queues and their own database, and what the bench needs to drive them:
/// the service's confirming publisher, the replies, and a running count of the events they publish.
pub struct Rig {
    pub label: &'static str,
    /// The workers' `events.mode`.
    pub events_mode: EventsMode,
    pub amqp: AmqpSettings,
    pub database_name: String,
    own: Leftovers,
    pub pool: PgPool,
    /// Publishing and consuming use separate connections, so that the megabytes being published do
    /// not sit in front of the replies whose arrival is being timed.
    publishing: Connection,
    consuming: Connection,
    pub publisher: Publisher,
    pub replies: Consumer,
    /// The events exchange's downstream: a quorum queue consumed as a real consumer would.
    pub observer: Observer,
    workers: Vec<Worker>,
    shutdown_deadline: Duration,
}

impl Rig {
    pub async fn start(
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
        let observer_queue = format!("{prefix}.observer");
        let database_name = format!("ingest_bench_{run_id}_{label}");
        // Recorded before anything exists, so that a failure halfway still removes what was made.
        let own = Leftovers {
            queues: vec![
                amqp.ingest_queue.clone(),
                amqp.dead_letter_queue.clone(),
                amqp.results_queue.clone(),
                observer_queue.clone(),
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
        within(CALL_PATIENCE, "declaring the bench topology", async {
            let channel = publishing.create_channel().await?;
            // Declared here, exactly as the worker declares them, so that nothing published before
            // the worker is up is lost.
            topology::declare(&channel, &amqp).await?;
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        })
        .await?;
        // A phase hands all its batches to the publisher at once, and the confirms come as fast as
        // the broker stores them: the publisher may wait as long as the phase may last.
        let publisher = within(
            CALL_PATIENCE,
            "opening the bench publisher",
            Publisher::open(&publishing),
        )
        .await?
        .with_patience(Duration::from_secs(args.timeout));

        let (replies, observer) =
            within(CALL_PATIENCE, "subscribing to replies and events", async {
                let observer =
                    Observer::start(&consuming, &observer_queue, &amqp.events_exchange).await?;
                let replies =
                    consume(&consuming.create_channel().await?, &amqp.results_queue).await?;
                Ok((replies, observer))
            })
            .await?;

        let mut rig = Rig {
            label,
            events_mode: settings.events.mode,
            amqp,
            database_name,
            own,
            pool,
            publishing,
            consuming,
            publisher,
            replies,
            observer,
            workers: Vec::new(),
            shutdown_deadline: settings.shutdown.deadline(),
        };
        // The bench's own settings, on the rig's queues and database.
        let worker_settings = Settings {
            amqp: rig.amqp.clone(),
            database,
            ..settings.clone()
        };
        for _ in 0..workers {
            let worker = Worker::spawn(&worker_settings)?;
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
    pub async fn metric_sums(&self) -> HashMap<String, f64> {
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

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Starts a new peak-RSS window on every worker (Linux: writing 5 to `clear_refs` resets VmHWM).
    pub fn reset_peaks(&self) -> bool {
        self.workers
            .iter()
            .all(|w| std::fs::write(format!("/proc/{}/clear_refs", w.pid), "5").is_ok())
    }

    /// The largest VmHWM among the workers, in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
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
    pub fn worker_states(&mut self) -> String {
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
    pub async fn finish(self, settings: &Settings, ledger: &Ledger) -> Vec<String> {
        let mut warnings = Vec::new();
        for worker in self.workers {
            if let Err(error) = worker.stop(self.shutdown_deadline + STOP_GRACE).await {
                warnings.push(format!("{}: {error:#}", self.label));
            }
        }
        drop(self.observer);
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
