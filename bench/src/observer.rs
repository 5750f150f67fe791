//! The events observer: what a real downstream of the events exchange declares and does, so that
//! the broker's cost of an event is measured with a consumer like the ones production has.
//!
//! A durable quorum queue (`x-queue-type: quorum`, with an explicit `x-delivery-limit`: RabbitMQ 3.x
//! has no default), bound to the events exchange with `#`, consumed with a prefetch and a manual
//! acknowledgement per message. Only what the bench needs is read: a per-customer event is counted by
//! its routing key, a batch is read for its events' types. During one phase the observer can also
//! keep what it receives, so that the `bare_publish` ceiling publishes the very same messages.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// Unacknowledged messages the broker sends ahead to the observer, as a downstream consumer of small
/// messages would set it: enough to keep it busy, not the whole queue.
pub const OBSERVER_PREFETCH: u16 = 100;
/// A message handed back this often is dead (dropped: the observer has no dead-letter exchange). The
/// bench acknowledges everything, so this is never reached; it is set because a real downstream sets
/// it.
const OBSERVER_DELIVERY_LIMIT: i64 = 5;

/// Events received, by kind, and the broker messages that carried them (one per event, or one per
/// chunk in batch mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventCounts {
    pub created: u64,
    pub updated: u64,
    pub other: u64,
    pub messages: u64,
}

impl EventCounts {
    pub fn total(&self) -> u64 {
        self.created + self.updated + self.other
    }

    /// The counts of one message: a per-customer event is known by its routing key
    /// (`customer.<kind>.<tenant>`); a batch (`customer.batch.<tenant>`) is read for its events'
    /// types, and nothing more of it.
    fn of(routing_key: &str, body: &[u8]) -> EventCounts {
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        let mut counts = EventCounts {
            messages: 1,
            ..EventCounts::default()
        };
        let mut add = |kind: &str| match kind {
            "customer.created" => counts.created += 1,
            "customer.updated" => counts.updated += 1,
            _ => counts.other += 1,
        };
        match routing_key.split('.').nth(1) {
            Some("batch") => match serde_json::from_slice::<Vec<Kind>>(body) {
                Ok(events) => events.iter().for_each(|event| add(event.kind)),
                Err(_) => add("unreadable"),
            },
            Some(kind) => add(&format!("customer.{kind}")),
            None => add("unroutable"),
        }
        counts
    }

    fn add(&mut self, other: EventCounts) {
        self.created += other.created;
        self.updated += other.updated;
        self.other += other.other;
        self.messages += other.messages;
    }
}

/// A message as the observer received it, to be published again as it was.
pub struct Captured {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Messages kept while a capture is on, up to a number.
struct Capture {
    kept: Vec<Captured>,
    limit: usize,
}

type SharedCapture = Arc<Mutex<Option<Capture>>>;

/// A running observer: the counts so far, and the task that consumes.
pub struct Observer {
    pub counts: watch::Receiver<EventCounts>,
    capture: SharedCapture,
    _task: AbortOnDropHandle<()>,
}

impl Observer {
    /// Declares `queue` (durable, quorum), binds it to `exchange` with `#` and consumes it on a
    /// channel of its own.
    pub async fn start(
        connection: &Connection,
        queue: &str,
        exchange: &str,
    ) -> anyhow::Result<Observer> {
        let channel = connection.create_channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(OBSERVER_DELIVERY_LIMIT),
        );
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .context("declaring the events observer")?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the events observer")?;
        channel
            .basic_qos(OBSERVER_PREFETCH, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming the events observer")?;
        let (counts_tx, counts) = watch::channel(EventCounts::default());
        let capture: SharedCapture = Arc::default();
        let capturing = capture.clone();
        // The bench shares the machine with what it measures: per customer only the routing key is
        // read, and a kept body is moved, not copied. A failed acknowledgement ends the task, and a
        // phase waiting for events then fails saying that the consumer stopped.
        let task = tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = deliveries.next().await {
                let counted = EventCounts::of(delivery.routing_key.as_str(), &delivery.data);
                if delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .is_err()
                {
                    break;
                }
                keep(&capturing, delivery);
                counts_tx.send_modify(|total| total.add(counted));
            }
        });
        Ok(Observer {
            counts,
            capture,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// Keeps every message received from now on, up to `limit`.
    pub fn capture(&self, limit: usize) {
        *self.capture.lock().unwrap_or_else(PoisonError::into_inner) = Some(Capture {
            kept: Vec::with_capacity(limit),
            limit,
        });
    }

    /// What was kept since [`capture`](Self::capture), and the capture ends.
    pub fn take_captured(&self) -> Vec<Captured> {
        self.capture
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|capture| capture.kept)
            .unwrap_or_default()
    }
}

fn keep(capture: &SharedCapture, delivery: lapin::message::Delivery) {
    let mut capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(capture) = capture.as_mut().filter(|c| c.kept.len() < c.limit) {
        capture.kept.push(Captured {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties,
            body: delivery.data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_by_routing_key_or_by_the_types_in_a_batch() {
        let one = EventCounts::of("customer.updated.acme", b"not read");
        assert_eq!((one.updated, one.messages), (1, 1));
        let batch = EventCounts::of(
            "customer.batch.acme",
            br#"[{"type":"customer.created"},{"type":"customer.created"},{"type":"customer.deleted"}]"#,
        );
        assert_eq!(
            (batch.created, batch.other, batch.messages, batch.total()),
            (2, 1, 1, 3)
        );
    }
}
