//! Why a batch did not produce a reply, grouped by what the transport does with its message next.

use crate::dialect::Rejection;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The message can never be processed (not JSON, unknown dialect, no tenant, too large...).
    /// Retrying cannot help, so it is dead-lettered at once and answered with a `rejected` reply.
    #[error("message rejected: {0}")]
    Rejected(Rejection),
    /// Postgres stayed unreachable for the whole retry budget. The message goes back to the queue as
    /// a fresh copy, so an outage does not use up its delivery attempts.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// Other transactions held what this batch needs (row locks, a serialization conflict, a
    /// deadlock, another delivery of the batch) for the message's whole retry budget. Postgres is up,
    /// so this is no outage: the message is requeued counting a delivery, as for
    /// [`BatchError::Failed`], and dead-lettered with this reason at its delivery limit, so a message
    /// behind a lock that is never released does not circulate for ever.
    #[error("lock contention: {0:#}")]
    Contended(anyhow::Error),
    /// Processing failed for a reason that retrying at once does not fix (Postgres refused a
    /// bookkeeping statement, say). The message is requeued with a reject, which counts against its
    /// delivery limit; on its last allowed delivery it is dead-lettered with this error, so a poison
    /// message ends in the dead-letter queue with its reason instead of looping.
    #[error("processing failed: {0:#}")]
    Failed(anyhow::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        if store::is_unreachable(&error) {
            BatchError::DatabaseUnavailable(error)
        } else if store::is_contention(&error) {
            BatchError::Contended(anyhow::Error::new(error).context("database"))
        } else {
            BatchError::Failed(anyhow::Error::new(error).context("database"))
        }
    }
}

impl From<Rejection> for BatchError {
    fn from(rejection: Rejection) -> Self {
        BatchError::Rejected(rejection)
    }
}
