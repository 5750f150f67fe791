//! One batch from its envelope to its reply, with no broker in sight: checks → keys → references →
//! chunked upsert → stored reply. The transport ([`crate::amqp::inbound`]) reads the envelope, calls
//! [`Ingest::process`] and settles the message from its typed result; tests call it directly.

mod apply;
mod checks;
mod encoding;
mod error;
mod keys;
mod read;
mod references;
mod retry;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Notify;

pub use checks::{MAX_NESTING, check_nesting, is_tenant_name};
pub use encoding::Encoding;
pub use error::BatchError;

use crate::codes::RejectionCode;
use crate::config::{AuthSettings, PipelineSettings};
use crate::dialect::{self, Keying, Limits, Rejection};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{Action, Counts, Customer, RecordResult};
use crate::reply::Reply;
use crate::store::{batches, customers, outbox};
use retry::{Budget, Retry};

/// How often a delivery waiting for another delivery of its batch looks again.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// What the transport tells the pipeline about a message, besides its body.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The producer's `message_id`, or without one the SHA-256 of the body as it was sent
    /// (compressed, if it is): the batch's identity, known before the body is read.
    pub batch_id: String,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// The `type` property, naming the dialect.
    pub dialect: Option<String>,
    pub tenant: Option<String>,
    /// The `content_encoding` property: how the body is compressed, if it is (see [`Encoding`]).
    pub content_encoding: Option<String>,
    /// The AMQP user that published the message, as the broker vouches for it (see
    /// [`crate::config::AuthMode::UserId`]); `None` when the message names none.
    pub user_id: Option<String>,
    /// The producer's W3C trace context, when it sent a valid one: the worker's span continues its
    /// trace, and the reply carries it on.
    pub trace: Option<TraceContext>,
}

/// A W3C trace context (<https://www.w3.org/TR/trace-context/>) as it travels in message headers:
/// a valid `traceparent` and, if any, the `tracestate` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Envelope {
    /// The dialect's name for metric labels: a known name or `unknown`, never a producer's text.
    pub fn dialect_label(&self) -> &'static str {
        self.dialect
            .as_deref()
            .and_then(dialect::find)
            .map_or("unknown", |d| d.name())
    }
}

/// Everything a batch needs besides its message: the database, the limits, and whom to tell.
pub struct Ingest {
    pool: PgPool,
    settings: PipelineSettings,
    /// Which user may write which tenant; open (anyone, anything) unless [`Ingest::with_auth`].
    auth: AuthSettings,
    retry: Retry,
    metrics: Metrics,
    /// Woken after each committed chunk, so the relay publishes its events at once.
    relay: Arc<Notify>,
}

impl Ingest {
    pub fn new(
        pool: PgPool,
        settings: PipelineSettings,
        retry_budget: Duration,
        metrics: Metrics,
        health: Health,
        relay: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            settings,
            auth: AuthSettings::default(),
            retry: Retry {
                budget: retry_budget,
                metrics: metrics.clone(),
                health,
            },
            metrics,
            relay,
        }
    }

    /// Checks each message's user against `auth` (see [`crate::config::AuthMode`]).
    pub fn with_auth(self, auth: AuthSettings) -> Self {
        Self { auth, ..self }
    }

    /// Everything up to the reply: returns the batch's reply, or why there is none. A batch that
    /// completed before is answered from its stored reply; otherwise its records are applied, its
    /// reply stored, and returned.
    ///
    /// One delivery of a batch works on it at a time: another delivery of the same batch waits for
    /// it, then finds the batch completed and returns its stored reply.
    ///
    /// `body` is the body as sent; a compressed one is decompressed here, up to
    /// `pipeline.max_body_bytes`, and everything after reads the decompressed body.
    pub async fn process(&self, envelope: &Envelope, body: &[u8]) -> Result<Reply, BatchError> {
        let started_at = Utc::now();
        let addressed = checks::envelope(envelope, body, self.settings.max_body_bytes, &self.auth)?;
        let body = Encoding::named(envelope.content_encoding.as_deref())?
            .decode(body, self.settings.max_body_bytes)?;
        let body = &*body;
        let budget = self.retry.for_message();
        let claim = self
            .claim(&budget, addressed.tenant, &envelope.batch_id)
            .await?;
        let processed = self
            .process_claimed(&budget, envelope, body, addressed, started_at)
            .await;
        claim.release(addressed.tenant, &envelope.batch_id).await;
        processed
    }

    /// Claims the batch for this delivery, waiting while another delivery holds it.
    async fn claim(
        &self,
        budget: &Budget<'_>,
        tenant: &str,
        batch_id: &str,
    ) -> Result<batches::Claim, BatchError> {
        let mut waiting = false;
        loop {
            let claim = budget
                .run(|| batches::try_claim(&self.pool, tenant, batch_id))
                .await?;
            if let Some(claim) = claim {
                return Ok(claim);
            }
            if !waiting {
                tracing::info!("another delivery of this batch is being processed; waiting for it");
                waiting = true;
            }
            if budget.remaining().is_zero() {
                return Err(BatchError::Contended(anyhow::anyhow!(
                    "another delivery of this batch held it for the whole retry budget"
                )));
            }
            tokio::time::sleep(CLAIM_POLL).await;
            budget.spend(CLAIM_POLL);
        }
    }

    async fn process_claimed(
        &self,
        budget: &Budget<'_>,
        envelope: &Envelope,
        body: &[u8],
        checks::Addressed { tenant, dialect }: checks::Addressed<'_>,
        started_at: DateTime<Utc>,
    ) -> Result<Reply, BatchError> {
        // The same batch id with another body or dialect is another batch: it is refused, and
        // nothing of the batch that id stands for is disclosed. The body is the decompressed one:
        // a producer's retry that compresses the same body differently is the same batch.
        let fingerprint = batches::Fingerprint {
            dialect: dialect.name().to_owned(),
            body_sha256: Sha256::digest(body).to_vec(),
        };
        // What an earlier delivery left: the fingerprint, the stored reply of a completed batch, and
        // what the chunks of an unfinished one applied before it stopped.
        let batches::Earlier {
            fingerprint: recorded_fingerprint,
            reply: stored,
            recorded,
            next_chunk,
        } = budget
            .run(|| batches::earlier(&self.pool, tenant, &envelope.batch_id))
            .await?;
        if recorded_fingerprint.is_some_and(|recorded| recorded != fingerprint) {
            return Err(BatchError::Rejected(Rejection::new(
                RejectionCode::MessageIdReused,
                "this message_id was used before by this tenant for another body or dialect; \
                 a new batch needs a new message_id",
            )));
        }
        if let Some(stored) = stored {
            tracing::info!("batch already completed; sending its reply again");
            // A reply this version cannot read is our fault, not the producer's: the message is
            // retried, and dead-lettered with an error id at its delivery limit, never rejected.
            return serde_json::from_value(stored).map_err(|error| {
                BatchError::Failed(
                    anyhow::Error::new(error)
                        .context("the stored reply of this batch cannot be read"),
                )
            });
        }

        #[cfg(feature = "failpoints")]
        if fail::eval("batch-poison", |poisoned| poisoned).flatten()
            == Some(envelope.batch_id.clone())
        {
            return Err(BatchError::Failed(anyhow::anyhow!("injected failure")));
        }
        #[cfg(feature = "failpoints")]
        if fail::eval("batch-panic", |chosen| chosen).flatten() == Some(envelope.batch_id.clone()) {
            panic!("injected panic");
        }
        let text = checks::body(body)?;
        let limits = Limits {
            max_records: self.settings.max_records,
        };
        let read = read::Body::read(dialect, text, limits)?;
        tracing::info!(records = read.len(), "batch read");
        // The fingerprint is recorded with the first chunk that commits (or with the completion),
        // so that nothing of the batch is stored without it; first, when matching by contact
        // details records decisions under the batch id before any chunk.
        let fingerprint_pending = if dialect.keying() == Keying::ByContact {
            budget
                .run(|| {
                    batches::record_fingerprint(
                        &self.pool,
                        tenant,
                        &envelope.batch_id,
                        &fingerprint,
                    )
                })
                .await?;
            None
        } else {
            Some(&fingerprint)
        };

        let read::Prepared {
            rows,
            outline,
            kept,
        } = read::prepare(
            self,
            budget,
            read::Batch {
                tenant,
                batch_id: &envelope.batch_id,
                dialect,
                text,
                recorded: &recorded,
                window: self.settings.chunk_size,
            },
            read,
        )
        .await?;
        let customers: Vec<Option<&Customer>> = kept
            .iter()
            .flatten()
            .map(|r| r.customer.as_ref().ok())
            .collect();
        // A response made from the results alone is not rendered for the whole batch, where it
        // would be the largest form of a large one: it is left out of the stored reply, and each
        // reply part renders its own (see `Reply::into_parts`).
        let response_of = |records: &[RecordResult]| {
            if dialect.renders_customers() {
                dialect.render_response(records, &customers)
            } else {
                serde_json::Value::Null
            }
        };
        let reply_of = |records: Vec<RecordResult>, counts: Counts, finished_at| Reply {
            batch_id: envelope.batch_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            tenant: Some(tenant.to_owned()),
            dialect: Some(dialect.name().to_owned()),
            status: counts.status(),
            counts,
            response: response_of(&records),
            records,
            error: None,
            started_at,
            finished_at,
            part: Default::default(),
        };
        // When the reply stored with the last chunk was finished: once that chunk commits, the
        // reply sent is made again of the same results, at the same time.
        let built: Mutex<Option<DateTime<Utc>>> = Mutex::new(None);
        let finish = |results: &apply::Results<'_>| {
            let finished_at = Utc::now();
            let (counts, reply) = if dialect.renders_customers() {
                // The response is made of every record's result and customer.
                let records = results.iter().collect::<Result<Vec<_>, _>>().ok()?;
                let counts = Counts::of(&records);
                let reply = serde_json::to_string(&reply_of(records, counts, finished_at)).ok()?;
                (counts, reply)
            } else {
                // The results are made twice, to count them and as they are written, rather than
                // held all at once beside the reply's text.
                let counts = results.counts().ok()?;
                let reply = reply_of(Vec::new(), counts, finished_at)
                    .to_string_with_records(results.iter())
                    .ok()?;
                (counts, reply)
            };
            *built.lock().unwrap() = Some(finished_at);
            Some(customers::Completion {
                dialect: dialect.name(),
                status: counts.status().as_str(),
                reply,
            })
        };
        let (records, completed) = apply::apply(
            self,
            budget,
            apply::Batch {
                tenant,
                batch_id: &envelope.batch_id,
                merge: dialect.merge(),
                first_chunk: next_chunk,
                trace: envelope.trace.as_ref().map(|trace| outbox::Trace {
                    traceparent: trace.traceparent.clone(),
                    tracestate: trace.tracestate.clone(),
                }),
                fingerprint: fingerprint_pending,
            },
            rows,
            outline,
            recorded,
            &finish,
        )
        .await?;
        let reply = match (completed, built.into_inner().unwrap()) {
            (customers::Completed::Stored, Some(finished_at)) => {
                let counts = Counts::of(&records);
                reply_of(records, counts, finished_at)
            }
            (customers::Completed::Earlier, _) => {
                let stored = budget
                    .run(|| batches::completed_reply(&self.pool, tenant, &envelope.batch_id))
                    .await?;
                if let Some(reply) = stored.and_then(|earlier| serde_json::from_value(earlier).ok())
                {
                    return Ok(reply);
                }
                return Err(BatchError::Failed(anyhow::anyhow!(
                    "the stored reply of this batch cannot be read"
                )));
            }
            _ => {
                let counts = Counts::of(&records);
                let reply = reply_of(records, counts, Utc::now());
                let stored = budget
                    .run(|| {
                        batches::complete(
                            &self.pool,
                            tenant,
                            &envelope.batch_id,
                            &fingerprint,
                            reply.status.as_str(),
                            &reply,
                        )
                    })
                    .await?;
                if let Some(earlier) =
                    stored.and_then(|earlier| serde_json::from_value(earlier).ok())
                {
                    return Ok(earlier);
                }
                reply
            }
        };
        drop(customers);
        drop(kept);
        let counts = reply.counts;
        for action in [
            Action::Created,
            Action::Updated,
            Action::Unchanged,
            Action::Failed,
        ] {
            let n = reply.records.iter().filter(|r| r.action == action).count();
            if n > 0 {
                self.metrics
                    .records
                    .with_label_values(&[dialect.name(), action.as_str()])
                    .inc_by(n as u64);
            }
        }
        tracing::info!(
            status = reply.status.as_str(),
            created = counts.created,
            updated = counts.updated,
            unchanged = counts.unchanged,
            failed = counts.failed,
            "batch completed"
        );
        Ok(reply)
    }
}
