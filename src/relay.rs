//! Publishes the outbox: every committed customer change becomes an event on the events exchange.
//!
//! Woken after each chunk commit, and polls as a fallback (for events another process or a crash
//! left behind). An event is deleted from the outbox only after the broker confirmed it, so every
//! event is published at least once, under the same id every time; in batch mode a chunk's
//! message, too, goes out again whole under the same message id.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Publisher, events};
use crate::config::RelaySettings;
use crate::events::EventsMode;
use crate::metrics::Metrics;
use crate::store::outbox::{self, Claimed};

pub struct Relay {
    pub pool: PgPool,
    pub settings: RelaySettings,
    pub exchange: String,
    /// One message per event, or one per committed chunk.
    pub mode: EventsMode,
    pub metrics: Metrics,
    pub wakeup: Arc<Notify>,
    pub publisher: watch::Receiver<Option<Publisher>>,
    /// When the backlog gauges were last refreshed.
    pub last_observed: Option<std::time::Instant>,
    /// The relay's own session, outside `pool`: it holds the relay lock during a claim, so no other
    /// work may run on it. Opened on first use, and again after it failed.
    pub connection: Option<PgConnection>,
}

/// How long the relay waits before trying again after Postgres or the broker failed.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Bounds the relay's connecting as the pool bounds an acquire, so that an unreachable Postgres
/// delays neither the next try nor a shutdown for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Relay {
    /// Runs until `stop` is cancelled, then publishes what is left (while the broker is reachable)
    /// and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let more = match self.current_publisher(&stop).await {
                Some(publisher) => self.publish_pending(&publisher).await,
                None => false,
            };
            self.observe_backlog().await;
            if stop.is_cancelled() {
                break;
            }
            if more {
                continue;
            }
            tokio::select! {
                () = self.wakeup.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval()) => {}
                () = stop.cancelled() => {}
            }
        }
        self.flush().await;
        if let Some(connection) = self.connection.take() {
            // Ends the session cleanly; it holds no lock between claims.
            let _ = connection.close().await;
        }
    }

    /// Publishes until the outbox is empty or publishing fails.
    async fn flush(&mut self) {
        let Some(publisher) = self.publisher.borrow().clone() else {
            return;
        };
        while self.publish_pending(&publisher).await {}
        self.observe_backlog().await;
    }

    async fn current_publisher(&mut self, stop: &CancellationToken) -> Option<Publisher> {
        tokio::select! {
            publisher = self.publisher.wait_for(Option::is_some) => publisher.ok().and_then(|p| p.clone()),
            () = stop.cancelled() => None,
        }
    }

    /// Publishes one claim's worth of events. Returns whether a full batch went out (so more may wait).
    async fn publish_pending(&mut self, publisher: &Publisher) -> bool {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let options = self.pool.connect_options();
                let connecting = PgConnection::connect_with(&options);
                match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(error)) => {
                        tracing::warn!(error = %error, "connecting the relay failed; will retry");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        return false;
                    }
                    Err(_) => {
                        tracing::warn!("connecting the relay timed out; will retry");
                        return false;
                    }
                }
            }
        };
        let claim = match outbox::claim(connection, self.settings.batch_size).await {
            Ok(Claimed::Claim(claim)) => claim,
            // Another process's relay holds the claim; it publishes in our place.
            Ok(Claimed::Elsewhere(connection)) => {
                self.connection = Some(connection);
                return false;
            }
            Err(error) => {
                // The connection is dropped, and with it the lock if it was taken.
                tracing::warn!(error = %error, "claiming outbox events failed; will retry");
                tokio::time::sleep(RETRY_PAUSE).await;
                return false;
            }
        };
        let count = claim.event_count();
        if count == 0 {
            self.keep(claim.release().await);
            return false;
        }
        let messages = crate::events::messages(self.mode, &claim.chunks);
        fail::fail_point!("relay-before-publish", |_| crate::failpoints::crash());
        let published = events::publish(publisher, &self.exchange, &messages).await;
        drop(messages);
        if let Err(error) = published {
            // Nothing is marked done: the same events, with the same ids, go out on the next try.
            tracing::warn!(error = ?error, "publishing events failed; will retry");
            self.keep(claim.release().await);
            tokio::time::sleep(RETRY_PAUSE).await;
            return false;
        }
        // Off the runtime's threads: a test pauses the relay here (`pause` blocks its thread) while
        // the rest of the worker goes on.
        #[cfg(feature = "failpoints")]
        let _ = tokio::task::spawn_blocking(|| {
            fail::fail_point!("relay-after-publish", |_| crate::failpoints::crash())
        })
        .await;
        match claim.finish().await {
            Ok(connection) => self.connection = Some(connection),
            Err(error) => {
                // Published but not marked done: they are published again later, under the same ids.
                tracing::warn!(error = %error, "marking events published failed; they will be published again");
                return false;
            }
        }
        self.metrics.events_published.inc_by(count as u64);
        count as i64 >= self.settings.batch_size
    }

    /// Keeps the connection a claim handed back; one that failed is dropped (its session ends, and
    /// its lock with it), and the next claim connects again.
    fn keep(&mut self, released: Result<PgConnection, sqlx::Error>) {
        match released {
            Ok(connection) => self.connection = Some(connection),
            Err(error) => {
                tracing::warn!(error = %error, "releasing the relay lock failed; reconnecting")
            }
        }
    }

    /// Counting the outbox scans it, so it is done at most once per poll interval (and at least every
    /// few seconds while events flow), never once per published batch.
    async fn observe_backlog(&mut self) {
        let now = std::time::Instant::now();
        let every = self.settings.poll_interval().max(Duration::from_secs(1));
        if self
            .last_observed
            .is_some_and(|last| now.duration_since(last) < every)
        {
            return;
        }
        self.last_observed = Some(now);
        if let Ok((pending, oldest)) = outbox::backlog(&self.pool).await {
            self.metrics.outbox_pending.set(pending);
            let age = oldest.map_or(0, |t| (chrono::Utc::now() - t).num_seconds().max(0));
            self.metrics.outbox_oldest_pending_age.set(age);
        }
    }
}
