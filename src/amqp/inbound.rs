//! One delivery from the ingest queue: read its envelope, hand it to [`Ingest::process`], and settle
//! it from the typed result. Ack only after the reply is confirmed; a rejected message is
//! dead-lettered (confirmed) and answered; an outage hands back a fresh copy; anything else goes back
//! to the queue, counting one delivery, until its last allowed delivery dead-letters it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tracing::Instrument;
use uuid::Uuid;

use super::Publisher;
use super::connection::user_of;
use super::headers::{self, header_i64, long_string, producer_user, vouched};
use super::publisher::{Delivered, Outgoing};
use super::{replies, trace};
use crate::codes::RejectionCode;
use crate::config::{AmqpSettings, PipelineSettings};
use crate::dialect::Rejection;
use crate::ingest::{BatchError, Envelope, Ingest};
use crate::metrics::Metrics;
use crate::reply::Reply;

/// Why a delivery was not settled for good.
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    /// RabbitMQ failed us mid-way (a publish was not confirmed). Everything already committed is
    /// found again by the next delivery, not applied twice.
    #[error("broker failure: {0:#}")]
    Broker(anyhow::Error),
    /// See [`BatchError::Failed`].
    #[error("processing failed: {0:#}")]
    Failed(anyhow::Error),
    /// See [`BatchError::Contended`].
    #[error("lock contention: {0:#}")]
    Contended(anyhow::Error),
}

pub struct Inbound {
    ingest: Arc<Ingest>,
    amqp: AmqpSettings,
    reply_records_per_message: usize,
    reply_max_bytes: usize,
    metrics: Metrics,
    /// The AMQP user this service publishes as: the `user_id` of the copies it makes of producers'
    /// messages (see [`headers::vouched`]).
    service_user: String,
}

impl Inbound {
    pub fn new(
        ingest: Arc<Ingest>,
        amqp: AmqpSettings,
        pipeline: &PipelineSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            service_user: user_of(amqp.url()),
            ingest,
            amqp,
            reply_records_per_message: pipeline.reply_records_per_message,
            reply_max_bytes: pipeline.reply_max_bytes,
            metrics,
        }
    }

    /// Processes one delivery and settles it, in a span that continues the producer's trace (see
    /// [`trace::process_span`]). Never panics on input; a delivery that could not be finished is
    /// handed back for the broker to redeliver.
    pub async fn handle(&self, delivery: Delivery, publisher: &Publisher) {
        let envelope = Envelope::read_by(&delivery.properties, &delivery.data, &self.service_user);
        // Made before it is entered: entering starts the exported span, whose parent is then fixed.
        let span = trace::process_span(&self.amqp.ingest_queue, &delivery.properties, &envelope);
        self.settle(delivery, envelope, publisher)
            .instrument(span)
            .await
    }

    async fn settle(&self, delivery: Delivery, mut envelope: Envelope, publisher: &Publisher) {
        // What this message sends on (its reply, its events) continues the processing span when
        // spans are exported, else the producer's trace.
        envelope.trace = trace::outgoing(&tracing::Span::current(), envelope.trace.as_ref());
        let started = Instant::now();
        let started_at = Utc::now();
        self.metrics.in_flight.inc();
        if delivery.redelivered {
            self.metrics.redeliveries.inc();
        }
        if header_i64(delivery.properties.headers(), headers::REPLAY_COUNT).is_some() {
            self.metrics.replays.inc();
        }
        let dialect_label = envelope.dialect_label();

        // A panic settles this delivery (dead-lettered, answered) instead of leaving it unacked
        // until the broker's consumer timeout closes the channel and every other delivery with it.
        let processed = AssertUnwindSafe(self.ingest.process(&envelope, &delivery.data))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                let error_id = Uuid::now_v7();
                tracing::error!(%error_id, "processing the message panicked; dead-lettering it");
                Err(BatchError::Rejected(Rejection::new(
                    RejectionCode::InternalError,
                    format!(
                        "processing stopped on a fault of the service; error id {error_id} is in its log"
                    ),
                )))
            });
        let outcome = match processed {
            Ok(reply) => {
                trace::record_count(&tracing::Span::current(), reply.counts.total);
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
            Err(BatchError::Failed(error)) => Err(Unfinished::Failed(error)),
            Err(BatchError::Contended(error)) => Err(Unfinished::Contended(error)),
        };

        match outcome {
            Ok(outcome) => {
                fail::fail_point!("batch-before-ack", |_| crate::failpoints::crash());
                ack(&delivery).await;
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
        error: Unfinished,
    ) -> &'static str {
        let attempt = headers::delivery_attempt(&delivery.properties);
        let error_id = Uuid::now_v7();
        tracing::error!(%error_id, error = ?error, attempt, "message not finished");
        // The cause may quote the database or the data: it stays in the log, under this id.
        let last_words = match &error {
            Unfinished::Failed(_) => Some("processing failed on every allowed delivery"),
            Unfinished::Contended(_) => Some(
                "the batch's customers stayed locked by other transactions on every allowed delivery",
            ),
            // The broker failed us: dead-lettering would need the broker too.
            Unfinished::Broker(_) => None,
        };
        if let Some(last_words) = last_words
            && attempt >= i64::from(self.amqp.delivery_limit)
        {
            let rejection = Rejection::new(
                RejectionCode::ProcessingFailed,
                format!("{last_words}; error id {error_id} is in the service's log"),
            );
            match self
                .reject(publisher, delivery, envelope, rejection, Utc::now())
                .await
            {
                Ok(()) => {
                    ack(delivery).await;
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

    async fn send_reply(
        &self,
        publisher: &Publisher,
        envelope: &Envelope,
        reply: Reply,
    ) -> Result<(), Unfinished> {
        let reply = Reply {
            // A reply sent again for a redelivered or repeated batch answers this delivery.
            correlation_id: envelope.correlation_id.clone(),
            ..reply
        };
        let routing_key = envelope
            .reply_to
            .as_deref()
            .unwrap_or(&self.amqp.results_queue);
        let trace = trace::outgoing(&tracing::Span::current(), envelope.trace.as_ref());
        let failed = |error| Unfinished::Failed(anyhow::Error::new(error).context("the reply"));
        let mut messages = replies::ReplyMessages::new(
            reply,
            self.reply_records_per_message,
            self.reply_max_bytes,
            trace.as_ref(),
        )
        .map_err(failed)?;
        // One part at a time, each confirmed before the next is built: a large batch's reply is
        // never held in memory as all its messages at once.
        let mut delivered = Vec::new();
        while let Some((body, properties)) = messages.next_message().map_err(failed)? {
            let outcome = publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key,
                    body: &body,
                    properties,
                    mandatory: true,
                })
                .await
                .map_err(Unfinished::Broker)?;
            delivered.push(outcome);
        }
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
        started_at: DateTime<Utc>,
    ) -> Result<(), Unfinished> {
        // The message goes to the producer and the dead-letter headers; the log gets the code only.
        tracing::warn!(code = rejection.code.as_str(), "message rejected");
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        table.insert(
            headers::ERROR_CODE.into(),
            long_string(rejection.code.as_str()),
        );
        table.insert(
            headers::ERROR_MESSAGE.into(),
            long_string(&rejection.message),
        );
        table.insert(
            headers::ERROR_ATTEMPTS.into(),
            AMQPValue::LongLongInt(headers::delivery_attempt(&delivery.properties)),
        );
        table.insert(
            headers::DEAD_LETTERED_AT.into(),
            long_string(&Utc::now().to_rfc3339()),
        );
        publisher
            .publish(Outgoing {
                exchange: &self.amqp.dead_letter_exchange,
                routing_key: &self.amqp.ingest_queue,
                body: &delivery.data,
                properties: vouched(
                    delivery.properties.clone().with_headers(table),
                    envelope.user_id.as_deref(),
                    &self.service_user,
                ),
                mandatory: false,
            })
            .await
            .map_err(Unfinished::Broker)?;
        self.metrics
            .dead_lettered
            .with_label_values(&[rejection.code.as_str()])
            .inc();
        let reply = Reply::rejected(envelope, rejection, started_at);
        self.send_reply(publisher, envelope, reply).await
    }

    /// Hands a delivery that was not started back to the queue as a fresh copy (see
    /// [`Inbound::requeue_for_outage`]); if that fails, the broker requeues it when the channel
    /// closes.
    pub async fn hand_back(&self, delivery: &Delivery, publisher: &Publisher) {
        if self.copy_back(delivery, publisher).await {
            ack(delivery).await;
        }
    }

    /// Publishes a fresh copy of a delivery that was not started to the queue, without settling the
    /// original: the caller acknowledges it (see [`acknowledge`]) when it no longer needs its
    /// prefetch slot kept. Returns whether the copy was confirmed; if not, the original stays
    /// unsettled, and the broker requeues it when the channel closes.
    pub async fn copy_back(&self, delivery: &Delivery, publisher: &Publisher) -> bool {
        match self.requeue_for_outage(publisher, delivery).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, "handing a prefetched message back failed; the broker requeues it");
                false
            }
        }
    }

    /// Hands the message back to the queue as a new message (publish, confirm, then ack the original)
    /// instead of a requeue, which would count against the delivery limit: an outage of Postgres
    /// must not send good messages to the dead-letter queue.
    async fn requeue_for_outage(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
    ) -> Result<(), Unfinished> {
        let count =
            header_i64(delivery.properties.headers(), headers::OUTAGE_REQUEUES).unwrap_or(0) + 1;
        // The broker's own headers (`x-delivery-count`, `x-death`...) describe the original's
        // deliveries, not the copy's: carried over, they would be read as the copy's.
        let mut table = FieldTable::default();
        if let Some(original) = delivery.properties.headers() {
            for (name, value) in original.inner() {
                if !name.as_str().starts_with("x-") {
                    table.insert(name.clone(), value.clone());
                }
            }
        }
        table.insert(
            headers::OUTAGE_REQUEUES.into(),
            AMQPValue::LongLongInt(count),
        );
        publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.amqp.ingest_queue,
                body: &delivery.data,
                properties: vouched(
                    delivery.properties.clone().with_headers(table),
                    producer_user(&delivery.properties, &self.service_user).as_deref(),
                    &self.service_user,
                ),
                mandatory: true,
            })
            .await
            .map_err(Unfinished::Broker)?;
        self.metrics.requeued_for_outage.inc();
        Ok(())
    }
}

/// Acknowledges a delivery, bounded in time; a failure is logged (the broker redelivers it).
pub async fn acknowledge(delivery: &Delivery) {
    ack(delivery).await
}

async fn ack(delivery: &Delivery) {
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
        Ok(false) => {
            tracing::warn!(
                "delivery from a closed channel not acknowledged; it will be redelivered"
            )
        }
        Err(error) => {
            tracing::warn!(error = %error, "acknowledgement failed; the message will be redelivered")
        }
    }
}
