//! Transient database errors are retried with jittered backoff while the message stays unacknowledged.

use std::time::Duration;

use backon::Retryable;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store;

/// Runs database steps under the retry budget, counting retries and keeping readiness in step with
/// whether Postgres can be reached.
pub(super) struct Retry {
    pub budget: Duration,
    pub metrics: Metrics,
    pub health: Health,
}

impl Retry {
    /// Runs a database step, retrying transient errors for up to the retry budget.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let result = op
            .retry(store::retry_policy(self.budget))
            .when(store::is_transient)
            .notify(|error, delay| {
                let label = store::retry_label(error);
                self.metrics.db_retries.with_label_values(&[&label]).inc();
                if store::is_unreachable(error) {
                    self.health.set_database(false);
                }
                tracing::warn!(sqlstate = %label, error = %error, retry_in = ?delay, "transient database error; retrying");
            })
            .await;
        if result.is_ok() {
            self.health.set_database(true);
        }
        result
    }
}
