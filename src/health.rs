//! What `/readyz` reports, and the gate that stops taking messages while Postgres is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    database: watch::Sender<bool>,
    broker: AtomicBool,
    /// Whether the worker has a channel to publish replies, dead letters and events on.
    publishing: AtomicBool,
    metrics: Metrics,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                database: watch::Sender::new(true),
                broker: AtomicBool::new(false),
                publishing: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    pub fn ready(&self) -> bool {
        self.database_available()
            && self.inner.broker.load(Ordering::Relaxed)
            && self.inner.publishing.load(Ordering::Relaxed)
    }

    pub fn database_available(&self) -> bool {
        *self.inner.database.borrow()
    }

    /// Records whether Postgres answers; the first success after an outage counts a reconnect.
    pub fn set_database(&self, available: bool) {
        let changed = self.inner.database.send_if_modified(|current| {
            let changed = *current != available;
            *current = available;
            changed
        });
        if changed {
            self.inner
                .metrics
                .database_unavailable
                .set(i64::from(!available));
            if available {
                self.inner
                    .metrics
                    .reconnects
                    .with_label_values(&["database"])
                    .inc();
                tracing::info!("database reachable again; taking messages");
            } else {
                tracing::warn!("database unreachable; no new messages are taken until it is back");
            }
        }
    }

    pub fn set_broker(&self, connected: bool) {
        self.inner.broker.store(connected, Ordering::Relaxed);
    }

    /// Records whether replies, dead letters and events can be published: a message taken while
    /// they cannot would only be applied and handed back.
    pub fn set_publishing(&self, possible: bool) {
        self.inner.publishing.store(possible, Ordering::Relaxed);
    }

    /// Resolves once Postgres is reachable.
    pub async fn database_back(&self) {
        let mut receiver = self.inner.database.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = receiver.wait_for(|available| *available).await;
    }
}
