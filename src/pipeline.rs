//! One message, start to finish: validate → chunk → upsert (with retries) → reply → ack.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::amqp::Publisher;
use crate::amqp::envelope::Envelope;
use crate::amqp::headers::{self, header_i64, long_string};
use crate::amqp::publisher::{Delivered, Outgoing, json_properties};
use crate::config::{AmqpSettings, PipelineSettings};
use crate::dialect::{self, Dialect, Limits, Rejection};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{
    Action, BatchStatus, Counts, Customer, FieldError, ParsedRecord, RecordResult, ReferenceTarget,
};
use crate::reply::{Reply, ReplyError};
use crate::store::{self, batches, customers};

/// Why a message did not complete, grouped by what happens to it next.
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
    /// RabbitMQ failed us mid-way (a publish was not confirmed). The message stays unacknowledged and
    /// the broker redelivers it; everything already committed is found again, not applied twice.
    #[error("broker failure")]
    Broker(#[source] anyhow::Error),
    /// Processing failed for a reason that retrying at once does not fix (Postgres refused a
    /// bookkeeping statement, say). The message is requeued with a reject, which counts against its
    /// delivery limit; on its last allowed delivery it is dead-lettered with this error, so a poison
    /// message ends in the dead-letter queue with its reason instead of looping.
    #[error("processing failed: {0:#}")]
    Failed(anyhow::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        if store::is_transient(&error) {
            BatchError::DatabaseUnavailable(error)
        } else {
            BatchError::Failed(anyhow::Error::new(error).context("database"))
        }
    }
}

pub struct Pipeline {
    pool: PgPool,
    settings: PipelineSettings,
    amqp: AmqpSettings,
    retry_budget: Duration,
    metrics: Metrics,
    health: Health,
    relay: Arc<Notify>,
}

impl Pipeline {
    pub fn new(
        pool: PgPool,
        settings: PipelineSettings,
        amqp: AmqpSettings,
        retry_budget: Duration,
        metrics: Metrics,
        health: Health,
        relay: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            settings,
            amqp,
            retry_budget,
            metrics,
            health,
            relay,
        }
    }

    /// Processes one delivery and acknowledges it once its reply is confirmed. Never panics on input;
    /// a delivery that could not be finished is left unacknowledged for the broker to redeliver.
    #[tracing::instrument(skip_all, fields(batch_id, tenant, dialect))]
    pub async fn handle(&self, delivery: Delivery, publisher: &Publisher) {
        let started = Instant::now();
        let started_at = Utc::now();
        self.metrics.in_flight.inc();
        if delivery.redelivered {
            self.metrics.redeliveries.inc();
        }
        if header_i64(delivery.properties.headers(), headers::REPLAY_COUNT).is_some() {
            self.metrics.replays.inc();
        }
        let envelope = Envelope::read(&delivery.properties, &delivery.data);
        let span = tracing::Span::current();
        span.record("batch_id", envelope.batch_id.as_str());
        if let Some(tenant) = &envelope.tenant {
            span.record("tenant", tenant.as_str());
        }
        if let Some(dialect) = &envelope.dialect {
            span.record("dialect", dialect.as_str());
        }
        let dialect_label = envelope
            .dialect
            .as_deref()
            .and_then(dialect::find)
            .map_or("unknown", |d| d.name());

        let outcome = match self.process(&envelope, &delivery.data, started_at).await {
            Ok(reply) => {
                fail::fail_point!("batch-before-reply", |_| crate::failpoints::crash());
                let outcome = reply.status.as_str();
                self.send_reply(publisher, &envelope, reply)
                    .await
                    .map(|()| outcome)
            }
            Err(BatchError::Rejected(rejection)) => self
                .reject(publisher, &delivery, &envelope, rejection, started_at)
                .await
                .map(|()| "rejected"),
            Err(BatchError::DatabaseUnavailable(error)) => {
                tracing::warn!(error = %error, "database unreachable for the whole retry budget; handing the message back to the queue");
                self.requeue_for_outage(publisher, &delivery)
                    .await
                    .map(|()| "requeued")
            }
            Err(error @ (BatchError::Broker(_) | BatchError::Failed(_))) => Err(error),
        };

        match outcome {
            Ok(outcome) => {
                fail::fail_point!("batch-before-ack", |_| crate::failpoints::crash());
                self.ack(&delivery).await;
                self.metrics
                    .messages
                    .with_label_values(&[dialect_label, outcome])
                    .inc();
                self.metrics
                    .batch_duration
                    .with_label_values(&[dialect_label])
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                let outcome = self.give_back(publisher, &delivery, &envelope, error).await;
                self.metrics
                    .messages
                    .with_label_values(&[dialect_label, outcome])
                    .inc();
            }
        }
        self.metrics.in_flight.dec();
    }

    /// A message that did not finish goes back to the queue to be tried again, counting one delivery;
    /// on its last allowed delivery it is dead-lettered with the error instead.
    async fn give_back(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        envelope: &Envelope,
        error: BatchError,
    ) -> &'static str {
        let attempt = headers::delivery_attempt(&delivery.properties);
        tracing::error!(error = ?error, attempt, "message not finished");
        if let BatchError::Failed(cause) = &error
            && attempt >= i64::from(self.amqp.delivery_limit)
        {
            let rejection = Rejection::new("processing_failed", format!("{cause:#}"));
            match self
                .reject(publisher, delivery, envelope, rejection, Utc::now())
                .await
            {
                Ok(()) => {
                    self.ack(delivery).await;
                    return "dead_lettered";
                }
                Err(error) => tracing::error!(error = ?error, "dead-lettering failed"),
            }
        }
        // `reject`, not `nack`: RabbitMQ 4.3+ counts only a reject against the delivery limit, and
        // both count on earlier versions. If the channel is gone this does nothing: the broker has
        // already requeued the message.
        let options = BasicRejectOptions { requeue: true };
        let rejected =
            tokio::time::timeout(Duration::from_secs(10), delivery.acker.reject(options)).await;
        if let Ok(Err(error)) = rejected {
            tracing::warn!(error = %error, "requeue failed; the broker requeues the message when the channel closes");
        }
        "retried"
    }

    async fn ack(&self, delivery: &Delivery) {
        // An acknowledgement owed to a connection that is gone may never be answered.
        let acked = tokio::time::timeout(
            Duration::from_secs(10),
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await
        .unwrap_or_else(|_| Ok(false));
        match acked {
            Ok(true) => {}
            // The delivery belongs to a connection that has since been replaced: the broker has
            // requeued it and will deliver it again, and that delivery finds the batch completed.
            Ok(false) => tracing::warn!(
                "delivery from a closed channel not acknowledged; it will be redelivered"
            ),
            Err(error) => {
                tracing::warn!(error = %error, "acknowledgement failed; the message will be redelivered")
            }
        }
    }

    /// Everything up to the reply: returns the batch's reply, or why there is none.
    async fn process(
        &self,
        envelope: &Envelope,
        body: &[u8],
        started_at: chrono::DateTime<Utc>,
    ) -> Result<Reply, BatchError> {
        // Checked before anything is parsed, so an oversized body costs no more than its bytes.
        if body.len() > self.settings.max_body_bytes {
            return Err(BatchError::Rejected(Rejection::new(
                "body_too_large",
                format!(
                    "the body is {} bytes; at most {} are accepted",
                    body.len(),
                    self.settings.max_body_bytes
                ),
            )));
        }
        let Some(tenant) = envelope.tenant.as_deref() else {
            return Err(BatchError::Rejected(Rejection::new(
                "missing_tenant",
                "the message has no `tenant` header",
            )));
        };
        let dialect = match envelope.dialect.as_deref() {
            None => {
                return Err(BatchError::Rejected(Rejection::new(
                    "missing_type",
                    format!(
                        "the message has no `type` property; expected one of: {}",
                        dialect_names()
                    ),
                )));
            }
            Some(name) => dialect::find(name).ok_or_else(|| {
                BatchError::Rejected(Rejection::new(
                    "unknown_type",
                    format!(
                        "unknown message type `{name}`; expected one of: {}",
                        dialect_names()
                    ),
                ))
            })?,
        };

        let stored = self
            .with_db_retries(|| batches::completed_reply(&self.pool, tenant, &envelope.batch_id))
            .await?;
        if let Some(stored) = stored {
            tracing::info!("batch already completed; sending its reply again");
            return serde_json::from_value(stored).map_err(|error| {
                BatchError::Rejected(Rejection::new(
                    "stored_reply_unreadable",
                    format!("the stored reply of this batch cannot be read: {error}"),
                ))
            });
        }

        #[cfg(feature = "failpoints")]
        if fail::eval("batch-poison", |poisoned| poisoned).flatten()
            == Some(envelope.batch_id.clone())
        {
            return Err(BatchError::Failed(anyhow::anyhow!("injected failure")));
        }
        let text = std::str::from_utf8(body).map_err(|error| {
            BatchError::Rejected(Rejection::new(
                "invalid_utf8",
                format!("the body is not UTF-8: {error}"),
            ))
        })?;
        let limits = Limits {
            max_records: self.settings.max_records,
        };
        dialect::check_nesting(text).map_err(BatchError::Rejected)?;
        let parsed = dialect.parse(text, limits).map_err(BatchError::Rejected)?;
        tracing::info!(records = parsed.len(), "batch read");

        let mut parsed = parsed;
        if dialect.generates_keys() {
            for record in parsed.iter_mut().filter(|r| r.customer.is_ok()) {
                record.key = Some(format!("{}#{}", envelope.batch_id, record.index));
            }
        }
        if dialect.matches_by_contact() {
            // Each record is given the key of the customer its contact details find, or a new one.
            let rules = dialect.matching_rules(text).unwrap_or_default();
            let resolved = self
                .with_db_retries(|| {
                    store::contacts::resolve(
                        &self.pool,
                        tenant,
                        &envelope.batch_id,
                        &rules,
                        &parsed,
                    )
                })
                .await?;
            parsed = resolved;
        }
        let parsed = self.check_references(tenant, dialect, parsed).await?;
        let (rows, outline) = prepare(&parsed);
        // A large batch's parsed customers are its biggest form in memory: they are let go as soon
        // as they are serialized, unless the dialect's response is made from them.
        let kept = dialect.renders_customers().then_some(parsed);
        let records = self
            .apply(tenant, &envelope.batch_id, dialect, rows, outline)
            .await?;
        let customers: Vec<Option<&Customer>> = kept
            .iter()
            .flatten()
            .map(|r| r.customer.as_ref().ok())
            .collect();
        let response = dialect.render_response(&records, &customers);
        drop(customers);
        drop(kept);
        let counts = Counts::of(&records);
        for action in [
            Action::Created,
            Action::Updated,
            Action::Unchanged,
            Action::Failed,
        ] {
            let n = records.iter().filter(|r| r.action == action).count();
            if n > 0 {
                self.metrics
                    .records
                    .with_label_values(&[dialect.name(), action.as_str()])
                    .inc_by(n as u64);
            }
        }
        let reply = Reply {
            batch_id: envelope.batch_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            tenant: Some(tenant.to_owned()),
            dialect: Some(dialect.name().to_owned()),
            status: counts.status(),
            counts,
            response,
            records,
            error: None,
            started_at,
            finished_at: Utc::now(),
            part: Default::default(),
        };
        let stored = self
            .with_db_retries(|| {
                batches::complete(
                    &self.pool,
                    tenant,
                    &envelope.batch_id,
                    dialect.name(),
                    reply.status.as_str(),
                    &reply,
                )
            })
            .await?;
        tracing::info!(
            status = reply.status.as_str(),
            created = counts.created,
            updated = counts.updated,
            unchanged = counts.unchanged,
            failed = counts.failed,
            "batch completed"
        );
        Ok(stored
            .and_then(|earlier| serde_json::from_value(earlier).ok())
            .unwrap_or(reply))
    }

    /// Fails the records that name a customer the tenant does not have, and lets the dialect
    /// complete the others with the customers they name by id.
    async fn check_references(
        &self,
        tenant: &str,
        dialect: &dyn Dialect,
        mut parsed: Vec<ParsedRecord>,
    ) -> Result<Vec<ParsedRecord>, BatchError> {
        let mut keys: Vec<String> = Vec::new();
        let mut ids: Vec<Uuid> = Vec::new();
        for record in parsed.iter().filter(|r| r.customer.is_ok()) {
            for reference in &record.references {
                match &reference.target {
                    ReferenceTarget::Key(key) => keys.push(key.clone()),
                    ReferenceTarget::Id(id) => ids.push(*id),
                }
            }
        }
        let stored_keys: HashSet<String> = self
            .with_db_retries(|| customers::existing_keys(&self.pool, tenant, &keys))
            .await?;
        let by_id: HashMap<Uuid, Customer> = self
            .with_db_retries(|| customers::by_ids(&self.pool, tenant, &ids))
            .await?
            .into_iter()
            .filter_map(|(id, data)| Some((id, serde_json::from_value(data).ok()?)))
            .collect();
        // A key named by a record may also be created earlier in the same batch.
        let mut earlier: HashSet<String> = HashSet::new();
        for record in &mut parsed {
            if let Ok(customer) = &mut record.customer {
                let missing: Vec<FieldError> = record
                    .references
                    .iter()
                    .filter(|reference| match &reference.target {
                        ReferenceTarget::Key(key) => {
                            !stored_keys.contains(key) && !earlier.contains(key)
                        }
                        ReferenceTarget::Id(id) => !by_id.contains_key(id),
                    })
                    .map(|reference| {
                        let named = match &reference.target {
                            ReferenceTarget::Key(key) => key.clone(),
                            ReferenceTarget::Id(id) => id.to_string(),
                        };
                        FieldError::new(
                            &reference.field,
                            "unknown_reference",
                            format!(
                                "{} names customer {named}, which this tenant does not have (stored or earlier in this batch)",
                                reference.field
                            ),
                        )
                    })
                    .collect();
                if missing.is_empty() {
                    dialect.resolve(tenant, customer, &by_id);
                    if let Some(key) = &record.key {
                        earlier.insert(key.clone());
                    }
                } else {
                    record.customer = Err(missing);
                }
            }
        }
        Ok(parsed)
    }

    /// Applies the valid records chunk by chunk and returns one result per input record.
    async fn apply(
        &self,
        tenant: &str,
        batch_id: &str,
        dialect: &dyn Dialect,
        rows: Vec<customers::ChunkRow>,
        outline: Vec<Outline>,
    ) -> Result<Vec<RecordResult>, BatchError> {
        let merge = |stored: serde_json::Value, row: &customers::ChunkRow| -> String {
            let incoming: Customer =
                serde_json::from_str(&row.data).expect("the pipeline serialized this customer");
            match serde_json::from_value::<Customer>(stored) {
                Ok(stored) => serde_json::to_string(&dialect.merge(stored, incoming))
                    .expect("a customer always serializes"),
                // A stored document this version cannot read is replaced rather than lost in a merge.
                Err(_) => row.data.clone(),
            }
        };
        let merge: Option<customers::Merge> = if dialect.merges() { Some(&merge) } else { None };

        let chunk_count = rows.len().div_ceil(self.settings.chunk_size);
        let mut applied: HashMap<String, customers::Applied> = HashMap::with_capacity(rows.len());
        let mut refused: HashMap<String, FieldError> = HashMap::new();
        for (chunk_index, chunk) in rows.chunks(self.settings.chunk_size).enumerate() {
            let started = Instant::now();
            let index = i32::try_from(chunk_index).expect("chunk count is bounded by max_records");
            let result = self
                .with_db_retries(|| {
                    customers::apply_chunk(&self.pool, tenant, batch_id, index, chunk, merge)
                })
                .await;
            self.metrics
                .chunk_duration
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(results) => {
                    fail::fail_point!("chunk-after-commit", |_| crate::failpoints::crash());
                    self.relay.notify_one();
                    applied.extend(results.into_iter().map(|a| (a.key.clone(), a)));
                }
                Err(error) if store::is_transient(&error) => {
                    return Err(BatchError::DatabaseUnavailable(error));
                }
                // Postgres refused the chunk itself (a constraint, a value it cannot store): retrying
                // cannot help, and the other chunks are unaffected, so this chunk's records fail.
                Err(error) => {
                    let code = store::sqlstate(&error).unwrap_or_default();
                    tracing::error!(chunk = chunk_index, sqlstate = %code, "the database refused a chunk");
                    let failure = FieldError::new(
                        "",
                        "storage_error",
                        format!("the database refused this record's chunk (SQLSTATE {code})"),
                    );
                    for row in chunk {
                        refused.insert(row.key.clone(), failure.clone());
                    }
                }
            }
            if chunk_count > 1 && (chunk_index + 1) % 20 == 0 {
                tracing::info!(chunk = chunk_index + 1, of = chunk_count, "batch progress");
            }
        }

        Ok(outline
            .into_iter()
            .map(|record| match (record.key, record.errors) {
                (key, Some(errors)) => RecordResult::failed(record.index, key, errors),
                (Some(key), None) => match (applied.get(&key), refused.get(&key)) {
                    (Some(a), _) => RecordResult {
                        index: record.index,
                        id: Some(a.id),
                        action: a.action,
                        version: Some(a.version),
                        errors: vec![],
                        key: Some(key),
                    },
                    (None, Some(failure)) => {
                        RecordResult::failed(record.index, Some(key), vec![failure.clone()])
                    }
                    (None, None) => unreachable!("every valid record's key was applied or refused"),
                },
                (None, None) => unreachable!("a dialect never accepts a record without a key"),
            })
            .collect())
    }

    /// Runs a database step, retrying transient errors with jittered backoff for up to the retry
    /// budget while the message stays unacknowledged.
    async fn with_db_retries<T, F, Fut>(&self, op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let result = op
            .retry(store::retry_policy(self.retry_budget))
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

    async fn send_reply(
        &self,
        publisher: &Publisher,
        envelope: &Envelope,
        reply: Reply,
    ) -> Result<(), BatchError> {
        let reply = Reply {
            // A reply sent again for a redelivered or repeated batch answers this delivery.
            correlation_id: envelope.correlation_id.clone(),
            ..reply
        };
        let routing_key = envelope
            .reply_to
            .as_deref()
            .unwrap_or(&self.amqp.results_queue);
        let parts = reply.into_parts(self.settings.reply_records_per_message);
        let bodies: Vec<(Vec<u8>, BasicProperties)> = parts
            .iter()
            .map(|part| {
                let body = serde_json::to_vec(part).expect("a reply always serializes");
                let mut headers = FieldTable::default();
                headers.insert(headers::BATCH_ID.into(), long_string(&part.batch_id));
                headers.insert(headers::STATUS.into(), long_string(part.status.as_str()));
                headers.insert(
                    headers::PART.into(),
                    AMQPValue::LongLongInt(part.part.index as i64),
                );
                headers.insert(
                    headers::PARTS.into(),
                    AMQPValue::LongLongInt(part.part.count as i64),
                );
                if let Some(tenant) = &part.tenant {
                    headers.insert(headers::TENANT.into(), long_string(tenant));
                }
                let mut properties = json_properties()
                    .with_message_id(format!("{}:{}", part.batch_id, part.part.index).into())
                    .with_type(headers::REPLY_TYPE.into())
                    .with_headers(headers);
                if let Some(correlation_id) = &part.correlation_id {
                    properties = properties.with_correlation_id(correlation_id.as_str().into());
                }
                (body, properties)
            })
            .collect();
        let messages: Vec<Outgoing> = bodies
            .iter()
            .map(|(body, properties)| Outgoing {
                exchange: "",
                routing_key,
                body,
                properties: properties.clone(),
                mandatory: true,
            })
            .collect();
        let delivered = publisher
            .publish_all(&messages)
            .await
            .map_err(BatchError::Broker)?;
        self.metrics
            .replies_published
            .inc_by(delivered.len() as u64);
        if delivered.contains(&Delivered::Unroutable) {
            // Nothing more can be done for the producer: its reply queue does not exist. The reply
            // stays stored and is sent again if the batch is published again.
            tracing::warn!(
                reply_to = routing_key,
                "reply unroutable: no queue by that name"
            );
        }
        Ok(())
    }

    /// Dead-letters a message that can never be processed, with the reason in its headers, then
    /// answers it with a `rejected` reply. The copy is confirmed before the original is acknowledged,
    /// so a crash in between leaves at worst two copies, never none.
    async fn reject(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        envelope: &Envelope,
        rejection: Rejection,
        started_at: chrono::DateTime<Utc>,
    ) -> Result<(), BatchError> {
        // The message goes to the producer and the dead-letter headers; the log gets the code only.
        tracing::warn!(code = rejection.code, "message rejected");
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(headers::ERROR_CODE.into(), long_string(rejection.code));
        headers.insert(
            headers::ERROR_MESSAGE.into(),
            long_string(&rejection.message),
        );
        headers.insert(
            headers::ERROR_ATTEMPTS.into(),
            AMQPValue::LongLongInt(headers::delivery_attempt(&delivery.properties)),
        );
        headers.insert(
            headers::DEAD_LETTERED_AT.into(),
            long_string(&Utc::now().to_rfc3339()),
        );
        publisher
            .publish(Outgoing {
                exchange: &self.amqp.dead_letter_exchange,
                routing_key: &self.amqp.ingest_queue,
                body: &delivery.data,
                properties: delivery.properties.clone().with_headers(headers),
                mandatory: false,
            })
            .await
            .map_err(BatchError::Broker)?;
        self.metrics
            .dead_lettered
            .with_label_values(&[rejection.code])
            .inc();

        let reply = Reply {
            batch_id: envelope.batch_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            tenant: envelope.tenant.clone(),
            dialect: envelope.dialect.clone(),
            status: BatchStatus::Rejected,
            counts: Counts::default(),
            records: vec![],
            response: serde_json::Value::Null,
            error: Some(ReplyError {
                code: rejection.code.to_owned(),
                message: rejection.message,
            }),
            started_at,
            finished_at: Utc::now(),
            part: Default::default(),
        };
        self.send_reply(publisher, envelope, reply).await
    }

    /// Hands the message back to the queue as a new message (publish, confirm, then ack the original)
    /// instead of a requeue, which would count against the delivery limit: an outage of Postgres
    /// must not send good messages to the dead-letter queue.
    async fn requeue_for_outage(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
    ) -> Result<(), BatchError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let count = header_i64(&Some(headers.clone()), headers::OUTAGE_REQUEUES).unwrap_or(0) + 1;
        headers.insert(
            headers::OUTAGE_REQUEUES.into(),
            AMQPValue::LongLongInt(count),
        );
        publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.amqp.ingest_queue,
                body: &delivery.data,
                properties: delivery.properties.clone().with_headers(headers),
                mandatory: true,
            })
            .await
            .map_err(BatchError::Broker)?;
        self.metrics.requeued_for_outage.inc();
        Ok(())
    }
}

/// What the result of a record needs once its customer is stored: where it was, its key, and why it
/// failed if it did.
struct Outline {
    index: usize,
    key: Option<String>,
    errors: Option<Vec<FieldError>>,
}

/// The rows to store (duplicate keys collapse to their last valid occurrence; the earlier ones report
/// its result) and every record's outline.
fn prepare(parsed: &[ParsedRecord]) -> (Vec<customers::ChunkRow>, Vec<Outline>) {
    let mut last_of_key: HashMap<&str, usize> = HashMap::new();
    for record in parsed {
        if let (Some(key), Ok(_)) = (&record.key, &record.customer) {
            last_of_key.insert(key.as_str(), record.index);
        }
    }
    let rows = parsed
        .iter()
        .filter_map(|record| match (&record.key, &record.customer) {
            (Some(key), Ok(customer)) if last_of_key[key.as_str()] == record.index => {
                Some(customers::ChunkRow {
                    key: key.clone(),
                    data: serde_json::to_string(customer).expect("a customer always serializes"),
                })
            }
            _ => None,
        })
        .collect();
    let outline = parsed
        .iter()
        .map(|record| Outline {
            index: record.index,
            key: record.key.clone(),
            errors: record.customer.as_ref().err().cloned(),
        })
        .collect();
    (rows, outline)
}

fn dialect_names() -> String {
    dialect::DIALECTS
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}
