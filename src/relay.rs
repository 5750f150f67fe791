//! Publishes the outbox: every committed customer change becomes an event on the events exchange.
//!
//! Woken after each chunk commit, and polls as a fallback (for events another process or a crash
//! left behind). An event is deleted from the outbox only after the broker confirmed it, so every
//! event is published at least once, under the same id every time; in batch mode a chunk's
//! message, too, goes out again whole under the same message id.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Publisher, events};
use crate::config::RelaySettings;
use crate::events::EventsMode;
use crate::metrics::Metrics;
use crate::store::outbox;

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
}

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
    async fn publish_pending(&self, publisher: &Publisher) -> bool {
        let claim = match outbox::claim(&self.pool, self.settings.batch_size).await {
            Ok(Some(claim)) => claim,
            // Another process's relay holds the claim; it publishes in our place.
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(error = %error, "claiming outbox events failed; will retry");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return false;
            }
        };
        let count = claim.event_count();
        if count == 0 {
            return false;
        }
        let messages = crate::events::messages(self.mode, &claim.chunks);
        fail::fail_point!("relay-before-publish", |_| crate::failpoints::crash());
        let published = events::publish(publisher, &self.exchange, &messages).await;
        drop(messages);
        if let Err(error) = published {
            // The claim is rolled back: the same events, with the same ids, go out on the next try.
            tracing::warn!(error = ?error, "publishing events failed; will retry");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return false;
        }
        fail::fail_point!("relay-after-publish", |_| crate::failpoints::crash());
        if let Err(error) = claim.finish().await {
            // Published but not marked done: they are published again later, under the same ids.
            tracing::warn!(error = %error, "marking events published failed; they will be published again");
            return false;
        }
        self.metrics.events_published.inc_by(count as u64);
        count as i64 >= self.settings.batch_size
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
