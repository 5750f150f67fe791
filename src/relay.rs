//! Publishes the outbox: every committed customer change becomes an event on the events exchange.
//!
//! Woken after each chunk commit, and polls as a fallback (for events another process or a crash
//! left behind). An event is deleted from the outbox only after the broker confirmed it, so every
//! event is published at least once, under the same `event_id` every time.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Publisher, events};
use crate::config::RelaySettings;
use crate::metrics::Metrics;
use crate::store::outbox::{self, PendingEvent};

pub struct Relay {
    pub pool: PgPool,
    pub settings: RelaySettings,
    pub exchange: String,
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
        if claim.events.is_empty() {
            return false;
        }
        let bodies: Vec<Vec<u8>> = claim.events.iter().map(event_body).collect();
        let messages: Vec<events::Event> = claim
            .events
            .iter()
            .zip(&bodies)
            .map(|(event, body)| events::Event {
                id: event.event_id,
                kind: &event.routing_key,
                tenant: &event.tenant,
                customer_id: event.customer_id,
                body,
            })
            .collect();
        let count = messages.len();
        fail::fail_point!("relay-before-publish", |_| crate::failpoints::crash());
        if let Err(error) = events::publish(publisher, &self.exchange, &messages).await {
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

/// The event body, serialized straight from the outbox row (no copy of the customer document).
#[derive(serde::Serialize)]
struct EventBody<'a> {
    event_id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    tenant: &'a str,
    customer_id: uuid::Uuid,
    version: i64,
    batch_id: &'a str,
    occurred_at: chrono::DateTime<chrono::Utc>,
    customer: &'a serde_json::value::RawValue,
}

fn event_body(event: &PendingEvent) -> Vec<u8> {
    serde_json::to_vec(&EventBody {
        event_id: event.event_id,
        kind: &event.routing_key,
        tenant: &event.tenant,
        customer_id: event.customer_id,
        version: event.version,
        batch_id: &event.batch_id,
        occurred_at: event.occurred_at,
        customer: &event.customer,
    })
    .expect("an event always serializes")
}
