//! The consumer supervisor: one connection, one consuming channel with the configured prefetch, a task
//! per delivery capped by a semaphore. lapin's own recovery handles network errors; when it gives up,
//! the whole session (connection, topology, consumer) is built again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Publisher, connect, topology};
use crate::config::AmqpSettings;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

pub struct Supervisor {
    pub settings: AmqpSettings,
    pub concurrency: usize,
    pub pipeline: Arc<Pipeline>,
    pub health: Health,
    pub metrics: Metrics,
    /// The publisher of the current session, for the relay; `None` while there is none.
    pub publisher: watch::Sender<Option<Publisher>>,
}

/// What the caller does once consuming stopped: messages in hand are finished through `tracker`,
/// then `close` ends the connection.
pub struct Stopped {
    connection: Option<lapin::Connection>,
}

impl Stopped {
    pub async fn close(self) {
        if let Some(connection) = self.connection {
            let _ = connection.close(200, "shutting down".into()).await;
        }
    }
}

impl Supervisor {
    /// Consumes until `stop` is cancelled, rebuilding the session whenever it is lost.
    pub async fn run(self, stop: CancellationToken, tracker: TaskTracker) -> Stopped {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut delay = Duration::from_millis(500);
        let mut first = true;
        loop {
            match self.session(&stop, &tracker, &permits).await {
                Ok(connection) => {
                    return Stopped {
                        connection: Some(connection),
                    };
                }
                Err(error) => {
                    self.health.set_broker(false);
                    self.publisher.send_replace(None);
                    if !first {
                        self.metrics.reconnects.with_label_values(&["amqp"]).inc();
                    }
                    tracing::error!(error = ?error, retry_in = ?delay, "RabbitMQ session lost; building a new one");
                }
            }
            first = false;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Stopped { connection: None },
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> anyhow::Result<lapin::Connection> {
        let connection = tokio::select! {
            connection = connect(self.settings.url(), "customer-ingest") => connection?,
            () = stop.cancelled() => bail!("stopped before RabbitMQ was reached"),
        };
        let channel = connection
            .create_channel()
            .await
            .context("opening the consuming channel")?;
        topology::declare(&channel, &self.settings)
            .await
            .context("declaring queues and exchanges")?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let publisher = Publisher::open(&connection).await?;
        self.publisher.send_replace(Some(publisher.clone()));
        let mut consumer = channel
            .basic_consume(
                self.settings.ingest_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the consumer")?;
        self.health.set_broker(true);
        tracing::info!(queue = %self.settings.ingest_queue, "consuming");

        loop {
            // While Postgres is unreachable no message is taken: they stay with the broker (or in
            // the prefetch buffer, unacknowledged) instead of failing one after another.
            if !self.health.database_available() {
                tokio::select! {
                    () = self.health.database_back() => {}
                    () = stop.cancelled() => break,
                }
            }
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = stop.cancelled() => break,
            };
            let next = tokio::select! {
                next = consumer.next() => next,
                () = stop.cancelled() => break,
            };
            match next {
                None => bail!("the broker cancelled the consumer"),
                Some(Err(error)) => {
                    self.health.set_broker(false);
                    tracing::warn!(error = %error, "RabbitMQ connection lost; waiting for recovery");
                    channel
                        .wait_for_recovery(error)
                        .await
                        .context("connection recovery gave up")?;
                    self.metrics.reconnects.with_label_values(&["amqp"]).inc();
                    self.health.set_broker(true);
                    tracing::info!("RabbitMQ connection recovered");
                }
                Some(Ok(delivery)) => {
                    let pipeline = self.pipeline.clone();
                    let publisher = publisher.clone();
                    tracker.spawn(async move {
                        pipeline.handle(delivery, &publisher).await;
                        drop(permit);
                    });
                }
            }
        }

        // No new deliveries; the ones prefetched but not started return to the queue when the
        // channel closes. The connection stays open for the messages in hand to finish.
        if let Err(error) = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(error = %error, "cancelling the consumer failed");
        }
        Ok(connection)
    }
}
