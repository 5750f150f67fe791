//! Transient database errors are retried with jittered backoff while the message stays
//! unacknowledged, for one budget per message: however many steps a message takes, it is held for
//! retries at most `database.retry_budget_secs` in all before it is given back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::Retryable;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store;

/// How database steps are retried, and where retries are counted.
pub(super) struct Retry {
    pub budget: Duration,
    pub metrics: Metrics,
    pub health: Health,
}

impl Retry {
    /// A fresh budget for one message.
    pub fn for_message(&self) -> Budget<'_> {
        Budget {
            retry: self,
            spent: Mutex::new(Duration::ZERO),
        }
    }
}

/// The retry time one message has left. Every step of the message draws on it.
pub(super) struct Budget<'a> {
    retry: &'a Retry,
    spent: Mutex<Duration>,
}

impl Budget<'_> {
    /// The retry time left.
    pub fn remaining(&self) -> Duration {
        self.retry
            .budget
            .saturating_sub(*self.spent.lock().unwrap())
    }

    /// Counts `time` spent waiting (on a failed attempt, or on another delivery) against the budget.
    pub fn spend(&self, time: Duration) {
        *self.spent.lock().unwrap() += time;
    }

    /// Runs a database step, retrying transient errors while the message's budget lasts, and keeps
    /// readiness in step with whether Postgres can be reached. The time of a step that needed a retry
    /// counts against the budget, its failed attempts included (an attempt that waited out the lock
    /// timeout spent that wait).
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let started = Instant::now();
        let mut retried = false;
        let result = op
            .retry(store::retry_policy(self.remaining()))
            .when(store::is_transient)
            .notify(|error, delay| {
                retried = true;
                let label = store::retry_label(error);
                self.retry
                    .metrics
                    .db_retries
                    .with_label_values(&[&label])
                    .inc();
                if store::is_unreachable(error) {
                    self.retry.health.set_database(false);
                }
                tracing::warn!(sqlstate = %label, error = %error, retry_in = ?delay, "transient database error; retrying");
            })
            .await;
        if retried || result.is_err() {
            self.spend(started.elapsed());
        }
        if result.is_ok() {
            self.retry.health.set_database(true);
        }
        result
    }
}
