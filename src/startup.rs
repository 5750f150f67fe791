//! Wiring: [`Application::build`] connects everything, [`Application::run_until_stopped`] runs it.
//! The binary and the tests start the service through this same path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::consumer::Supervisor;
use crate::amqp::inbound::Inbound;
use crate::config::{AuthMode, IdempotencySettings, Settings};
use crate::health::Health;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::{http, store};

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    pool: PgPool,
    metrics: Metrics,
    health: Health,
}

impl Application {
    /// Binds the HTTP port, creates the database if missing and applies migrations.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.auth.mode == AuthMode::Open {
            tracing::warn!(
                "auth.mode is \"open\": a message's `tenant` header is taken as sent, so anyone who \
                 can publish to the ingest queue writes to any tenant; unless one trusted producer \
                 publishes, set auth.mode = \"user-id\" and list each user's tenants in auth.tenants"
            );
        }
        let listener = TcpListener::bind(settings.http.addr)
            .await
            .with_context(|| format!("binding http.addr {}", settings.http.addr))?;
        store::migrate(&settings.database).await?;
        let pool = store::connect(&settings.database).await?;
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        Ok(Self {
            settings,
            listener,
            pool,
            metrics,
            health,
        })
    }

    /// The address `/metrics`, `/healthz` and `/readyz` answer on.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `stop` is cancelled, then stops consuming, finishes the messages in hand (up to the
    /// shutdown deadline), publishes the outbox and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            listener,
            pool,
            metrics,
            health,
        } = self;
        let relay_wakeup = Arc::new(Notify::new());
        let (publisher_tx, publisher_rx) = watch::channel(None);
        let ingest = Arc::new(
            Ingest::new(
                pool.clone(),
                settings.pipeline.clone(),
                settings.database.retry_budget(),
                metrics.clone(),
                health.clone(),
                relay_wakeup.clone(),
            )
            .with_auth(settings.auth.clone()),
        );
        let inbound = Arc::new(Inbound::new(
            ingest,
            settings.amqp.clone(),
            &settings.pipeline,
            metrics.clone(),
        ));

        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(
            listener,
            http::router(metrics.clone(), health.clone()),
            http_stop.clone(),
        ));
        let probe_stop = CancellationToken::new();
        let probe_task = tokio::spawn(probe_database(
            pool.clone(),
            health.clone(),
            probe_stop.clone(),
        ));

        let sweep_stop = CancellationToken::new();
        let sweep_task = tokio::spawn(sweep_expired(
            pool.clone(),
            settings.idempotency.clone(),
            metrics.clone(),
            sweep_stop.clone(),
        ));

        let relay_stop = CancellationToken::new();
        let relay_task = tokio::spawn(
            Relay {
                pool: pool.clone(),
                settings: settings.relay.clone(),
                exchange: settings.amqp.events_exchange.clone(),
                mode: settings.events.mode,
                metrics: metrics.clone(),
                wakeup: relay_wakeup,
                publisher: publisher_rx,
                last_observed: None,
                connection: None,
            }
            .run(relay_stop.clone()),
        );

        let stop_requested = tokio::spawn({
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                tokio::time::Instant::now()
            }
        });
        let tracker = TaskTracker::new();
        let stopped = Supervisor {
            settings: settings.amqp.clone(),
            concurrency: settings.pipeline.concurrency,
            max_body_bytes_in_flight: settings.pipeline.max_body_bytes_in_flight,
            max_body_bytes: settings.pipeline.max_body_bytes,
            drain_deadline: settings.shutdown.deadline(),
            inbound,
            health: health.clone(),
            metrics: metrics.clone(),
            publisher: publisher_tx,
        }
        .run(stop, tracker.clone())
        .await;

        tracker.close();
        // One deadline for the whole stop, from the moment it was asked for: the messages in
        // hand, then the outbox share it; closing the connections gets a moment more.
        let requested_at = stop_requested
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now());
        let deadline = requested_at + settings.shutdown.deadline();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = tracker.len(),
                "shutdown deadline passed; unfinished messages are left for redelivery"
            );
        }
        relay_stop.cancel();
        if tokio::time::timeout_at(deadline, relay_task).await.is_err() {
            tracing::warn!(
                "outbox not flushed before the deadline; it is published on the next start"
            );
        }
        let closing = deadline.max(tokio::time::Instant::now() + Duration::from_millis(500));
        if tokio::time::timeout_at(closing, stopped.close())
            .await
            .is_err()
        {
            tracing::warn!("closing the RabbitMQ connection took too long; leaving it");
        }
        probe_stop.cancel();
        sweep_stop.cancel();
        http_stop.cancel();
        let _ = probe_task.await;
        let _ = sweep_task.await;
        let _ = http_task.await;
        // A message still in hand past the deadline keeps its connections until the process ends:
        // closing the pool under it would fail its chunks instead of leaving them for redelivery.
        if tracker.is_empty() {
            let _ = tokio::time::timeout(CLOSING, pool.close()).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long closing the connections may take once the deadline has passed.
const CLOSING: Duration = Duration::from_millis(300);

/// Checks every second that Postgres answers, so that readiness and the consumer's gate follow an
/// outage even while no message is in hand. A pool that is merely busy is not an outage.
async fn probe_database(pool: PgPool, health: Health, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await;
        match probe {
            Ok(Ok(_)) => health.set_database(true),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {}
            Ok(Err(error)) if store::is_unreachable(&error) => health.set_database(false),
            Ok(Err(_)) => {}
        }
    }
}

/// Removes batch bookkeeping past the retention at start and then every `sweep_interval_secs`
/// (see [`store::retention`]). Every worker sweeps; two sweeps at once take different rows. A sweep
/// cut short by the stop is finished by the next start.
async fn sweep_expired(
    pool: PgPool,
    settings: IdempotencySettings,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let swept = tokio::select! {
            swept = store::retention::sweep(&pool, settings.retention()) => swept,
            () = stop.cancelled() => return,
        };
        match swept {
            Ok(removed) => {
                for (table, rows) in removed.by_table() {
                    metrics
                        .retention_removed
                        .with_label_values(&[table])
                        .inc_by(rows);
                }
                if removed.total() > 0 {
                    tracing::info!(
                        processed_batches = removed.processed_batches,
                        batch_fingerprints = removed.batch_fingerprints,
                        batch_chunks = removed.batch_chunks,
                        contact_resolutions = removed.contact_resolutions,
                        "removed batch bookkeeping past the retention"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "removing expired batch bookkeeping failed; will retry")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.sweep_interval()) => {}
            () = stop.cancelled() => return,
        }
    }
}
