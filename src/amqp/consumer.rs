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

use super::inbound::{Inbound, acknowledge};
use super::{Publisher, connect, topology};
use crate::config::AmqpSettings;
use crate::health::Health;
use crate::ingest::Encoding;
use crate::metrics::Metrics;

/// How long no delivery must arrive before the consumer is cancelled (see
/// [`Supervisor::hand_back_prefetched`]).
const QUIET: Duration = Duration::from_millis(300);

pub struct Supervisor {
    pub settings: AmqpSettings,
    pub concurrency: usize,
    /// The bodies of the messages being worked on, in bytes, at most.
    pub max_body_bytes_in_flight: usize,
    /// The largest body a message may have once decompressed (`pipeline.max_body_bytes`): what a
    /// compressed body is counted as among the bodies in flight.
    pub max_body_bytes: usize,
    /// How long a stop waits for the messages in hand (`shutdown.deadline_secs`).
    pub drain_deadline: Duration,
    pub inbound: Arc<Inbound>,
    pub health: Health,
    pub metrics: Metrics,
    /// The publisher of the current session, for the relay; `None` while there is none.
    pub publisher: watch::Sender<Option<Publisher>>,
}

/// What the caller does once consuming stopped: messages in hand are finished through `tracker`,
/// then `close` ends the consuming channel and the connection. The channel stays open until then:
/// closing it would hand every message in hand back to the broker, unacknowledged, as a delivery
/// spent.
pub struct Stopped {
    session: Option<(Arc<lapin::Connection>, lapin::Channel)>,
}

impl Stopped {
    pub async fn close(self) {
        if let Some((connection, channel)) = self.session {
            let _ = channel.close(200, "shutting down".into()).await;
            let _ = connection.close(200, "shutting down".into()).await;
        }
    }
}

impl Supervisor {
    /// Consumes until `stop` is cancelled, rebuilding the session whenever it is lost.
    pub async fn run(self, stop: CancellationToken, tracker: TaskTracker) -> Stopped {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let room = Arc::new(Semaphore::new(self.max_body_bytes_in_flight));
        let mut delay = Duration::from_millis(500);
        let mut sessions = 0u64;
        loop {
            match self
                .session(&stop, &tracker, &permits, &room, &mut sessions)
                .await
            {
                Ok(session) => {
                    return Stopped {
                        session: Some(session),
                    };
                }
                Err(error) => {
                    self.health.set_broker(false);
                    self.publisher.send_replace(None);

                    tracing::error!(error = ?error, retry_in = ?delay, "RabbitMQ session lost; building a new one");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Stopped { session: None },
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
        room: &Arc<Semaphore>,
        sessions: &mut u64,
    ) -> anyhow::Result<(Arc<lapin::Connection>, lapin::Channel)> {
        let connection = tokio::select! {
            connection = connect(&self.settings, "customer-ingest") => Arc::new(connection?),
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
        let publisher = Publisher::reopening(
            connection.clone(),
            self.settings.clone(),
            self.health.clone(),
        )
        .await?
        .with_patience(self.settings.recovery_timeout());
        self.publisher.send_replace(Some(publisher.clone()));
        let mut consumer = self.start_consumer(&channel).await?;
        self.health.set_broker(true);
        *sessions += 1;
        if *sessions > 1 {
            self.metrics.reconnects.with_label_values(&["amqp"]).inc();
        }
        tracing::info!(queue = %self.settings.ingest_queue, "consuming");

        let consumed = self
            .consume(
                &connection,
                &channel,
                &mut consumer,
                &publisher,
                stop,
                tracker,
                permits,
                room,
            )
            .await;
        // No new deliveries; the ones prefetched but not started go back as fresh copies. The
        // connection and the channel stay open for the messages in hand to finish.
        if consumed.is_ok() {
            self.hand_back_prefetched(&channel, &mut consumer, &publisher, tracker)
                .await;
        }
        consumed.map(|()| (connection, channel))
    }

    async fn start_consumer(&self, channel: &lapin::Channel) -> anyhow::Result<lapin::Consumer> {
        channel
            .basic_consume(
                self.settings.ingest_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the consumer")
    }

    /// Cancels the consumer and hands every delivery it had prefetched, not started, back to the
    /// queue as a fresh copy: returned by a closing channel or a requeue, each would count as a
    /// delivery (quorum queues count them), and rolling restarts or a long outage would then
    /// dead-letter messages that were never worked on.
    ///
    /// A delivery the broker sent for an acknowledgement made just before the cancel may arrive
    /// after it is confirmed; lapin drops such a delivery, and the broker returns it, counted, when
    /// the channel closes. So first, until none has arrived for [`QUIET`], each arriving delivery
    /// is copied back and held unacknowledged: held, it keeps its prefetch slot, and the broker has
    /// no room to send another. Only then is the consumer cancelled and the held ones acknowledged.
    async fn hand_back_prefetched(
        &self,
        channel: &lapin::Channel,
        consumer: &mut lapin::Consumer,
        publisher: &Publisher,
        tracker: &TaskTracker,
    ) {
        let mut held = Vec::new();
        let mut copied = 0;
        // An acknowledgement frees a slot the broker may fill, and a delivery sent for one made
        // just before the cancel may arrive after it: so the cancel waits until neither a delivery
        // has arrived nor a message in hand has finished for `QUIET`. The messages in hand are let
        // finish for up to half the drain deadline; past that, one still running acknowledges after
        // the cancel, which the broker has processed by then, so nothing is sent for it.
        let give_up_at = tokio::time::Instant::now() + self.drain_deadline / 2;
        let mut in_hand = tracker.len();
        let mut changed_at = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    changed_at = tokio::time::Instant::now();
                    if self.inbound.copy_back(&delivery, publisher).await {
                        copied += 1;
                        held.push(delivery);
                    }
                }
                Ok(_) => break,
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    if tracker.len() != in_hand {
                        in_hand = tracker.len();
                        changed_at = now;
                    }
                    let waited_enough = in_hand == 0 || now >= give_up_at;
                    if waited_enough && now.duration_since(changed_at) >= QUIET {
                        break;
                    }
                }
            }
        }
        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(Duration::from_secs(5), cancel).await {
            Ok(Err(error)) => tracing::warn!(error = %error, "cancelling the consumer failed"),
            Err(_) => tracing::warn!("cancelling the consumer timed out"),
            Ok(Ok(())) => {
                while let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
                {
                    self.inbound.hand_back(&delivery, publisher).await;
                    copied += 1;
                }
            }
        }
        for delivery in &held {
            acknowledge(delivery).await;
        }
        if copied > 0 {
            tracing::info!(
                handed_back = copied,
                "prefetched messages handed back to the queue"
            );
        }
    }

    /// Takes deliveries until `stop`, or until the connection is lost for good.
    #[allow(clippy::too_many_arguments)]
    async fn consume(
        &self,
        connection: &lapin::Connection,
        channel: &lapin::Channel,
        consumer: &mut lapin::Consumer,
        publisher: &Publisher,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
        room: &Arc<Semaphore>,
    ) -> anyhow::Result<()> {
        let lost = connection_lost(
            connection,
            &self.health,
            &self.metrics,
            self.settings.recovery_timeout(),
        );
        tokio::pin!(lost);
        loop {
            // While Postgres is unreachable no message is taken: the consumer is cancelled and what
            // it had prefetched handed back, so the messages wait with the broker instead of
            // failing one after another or being held here.
            if !self.health.database_available() {
                tracing::warn!("database unreachable; consuming paused");
                self.hand_back_prefetched(channel, consumer, publisher, tracker)
                    .await;
                tokio::select! {
                    () = self.health.database_back() => {}
                    () = stop.cancelled() => return Ok(()),
                    () = &mut lost => bail!("the connection to RabbitMQ did not recover"),
                }
                *consumer = self.start_consumer(channel).await?;
                tracing::info!("database back; consuming again");
            }
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = stop.cancelled() => break,
                () = &mut lost => bail!("the connection to RabbitMQ did not recover"),
            };
            let next = tokio::select! {
                next = consumer.next() => next,
                () = stop.cancelled() => break,
                () = &mut lost => bail!("the connection to RabbitMQ did not recover"),
            };
            match next {
                None => bail!("the broker cancelled the consumer"),
                Some(Err(error)) => {
                    self.health.set_broker(false);
                    tracing::warn!(error = %error, "RabbitMQ connection lost; waiting for recovery");
                    tokio::select! {
                        recovered = channel.wait_for_recovery(error) => {
                            recovered.context("connection recovery gave up")?;
                        }
                        () = &mut lost => bail!("the connection to RabbitMQ did not recover"),
                    }
                    tracing::info!("RabbitMQ connection recovered");
                }
                Some(Ok(delivery)) => {
                    // Room for the body among the bodies in flight; a body larger than the bound
                    // (rejected for its size at once) waits for all of it. A compressed body is
                    // counted as the most it may expand to: its size on the wire says nothing of
                    // the memory it takes.
                    let encoding = delivery.properties.content_encoding().as_ref();
                    let bytes = match Encoding::named(encoding.map(|e| e.as_str())) {
                        Ok(Encoding::Identity) => delivery.data.len(),
                        _ => self.max_body_bytes,
                    }
                    .clamp(1, self.max_body_bytes_in_flight);
                    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                    let room = tokio::select! {
                        room = room.clone().acquire_many_owned(bytes) => room.expect("the semaphore is never closed"),
                        () = stop.cancelled() => {
                            self.inbound.hand_back(&delivery, publisher).await;
                            break;
                        }
                        () = &mut lost => bail!("the connection to RabbitMQ did not recover"),
                    };
                    let inbound = self.inbound.clone();
                    let publisher = publisher.clone();
                    let metrics = self.metrics.clone();
                    metrics.body_bytes_in_flight.add(i64::from(bytes));
                    tracker.spawn(async move {
                        inbound.handle(delivery, &publisher).await;
                        metrics.body_bytes_in_flight.sub(i64::from(bytes));
                        drop(room);
                        drop(permit);
                    });
                }
            }
        }

        Ok(())
    }
}

/// Resolves once the connection has been down for longer than `timeout`; meanwhile keeps readiness in
/// step with it. lapin's recovery can stall (a reconnect racing operations in flight); past this
/// point the session is given up and built anew.
async fn connection_lost(
    connection: &lapin::Connection,
    health: &Health,
    metrics: &Metrics,
    timeout: Duration,
) {
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connected = connection.status().connected();
        health.set_broker(connected);
        if connected {
            if down_since.take().is_some() {
                metrics.reconnects.with_label_values(&["amqp"]).inc();
                tracing::info!("RabbitMQ connection recovered");
            }
            continue;
        }
        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= timeout {
            tracing::warn!(down_for = ?since.elapsed(), "RabbitMQ connection not recovered; giving it up");
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(320, "recovery took too long".into()),
            )
            .await;
            return;
        }
    }
}
