//! A consumer of one tenant's customer events, as a downstream system (a search index, a CRM sync)
//! would write one. The whole contract is `docs/asyncapi.yaml`; README "For events consumers" tells
//! the rules this example follows.
//!
//! ```sh
//! cargo run --example events_consumer -- --tenant acme
//! ```
//!
//! - It binds its own durable queue to `customer.*.<tenant>` (one event per message,
//!   `events.mode = "per-customer"`) and `customer.batch.<tenant>` (a chunk's events in one message,
//!   `events.mode = "batch"`), so it works whichever mode the service runs in, and never receives
//!   another tenant's customers.
//! - Events come at least once: it drops an event whose CloudEvents `id` it has already handled,
//!   remembering the last `--remember` ids (bounded memory). An event older than that window that
//!   comes again is caught by the second rule: a customer's events carry `customerversion`, and an
//!   event that is not newer than the version already applied changes nothing.
//! - It acknowledges a message only after every event in it was handled, so a crash re-delivers
//!   rather than loses it.
//!
//! It prints one line per event: kind, id, customer, version, batch. Never the customer's data,
//! which holds personal data (names, birth dates, SSNs).

use std::collections::{HashMap, HashSet, VecDeque};

use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;

/// The content type of a message holding one event.
const ONE_EVENT: &str = "application/cloudevents+json";
/// The content type of a message holding a JSON array of events.
const BATCH: &str = "application/cloudevents-batch+json";

#[derive(Parser, Debug)]
#[command(about = "Consume one tenant's customer events (per-customer and batch mode)")]
struct Args {
    /// The tenant whose events to receive.
    #[arg(long)]
    tenant: String,
    /// The broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// The service's events exchange (`amqp.events_exchange`).
    #[arg(long, default_value = "customers.events")]
    exchange: String,
    /// This consumer's queue; by default `<tenant>.customer-events.example`.
    #[arg(long)]
    queue: Option<String>,
    /// How many event ids to remember for dropping duplicates.
    #[arg(long, default_value_t = 100_000)]
    remember: usize,
    /// Stop after this many events (by default, run until interrupted).
    #[arg(long)]
    max_events: Option<usize>,
}

/// The attributes of a customer event this consumer reads (the whole event is in
/// `docs/asyncapi.yaml`, `customerEvent`). `data` is the customer's state after the change.
#[derive(Debug, Deserialize)]
struct CustomerEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    /// The customer's id.
    subject: String,
    tenant: String,
    customerversion: i64,
    batchid: String,
    #[allow(dead_code)]
    data: serde_json::Value,
}

/// The ids of the last `capacity` events handled: memory stays bounded however long it runs.
struct SeenIds {
    capacity: usize,
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenIds {
    fn new(capacity: usize) -> Self {
        SeenIds {
            capacity: capacity.max(1),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` is new; remembers it (forgetting the oldest one when full).
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// What this example does with an event. A real consumer upserts `data` into its store (or deletes
/// the customer on `customer.deleted`) where the stored version is older than `customerversion`.
struct Handler {
    seen: SeenIds,
    /// The last version applied per customer (a real consumer keeps it with its copy).
    versions: HashMap<String, i64>,
    handled: usize,
}

impl Handler {
    fn handle(&mut self, event: CustomerEvent) {
        if !self.seen.first_time(&event.id) {
            println!("duplicate {} {} (already handled)", event.kind, event.id);
            return;
        }
        let applied = self.versions.get(&event.subject).copied().unwrap_or(0);
        let outcome = if event.customerversion <= applied {
            "stale, ignored"
        } else {
            self.versions
                .insert(event.subject.clone(), event.customerversion);
            "applied"
        };
        println!(
            "{} id={} tenant={} customer={} version={} batch={} {outcome}",
            event.kind, event.id, event.tenant, event.subject, event.customerversion, event.batchid
        );
        self.handled += 1;
    }
}

/// The events of one message, by its content type.
fn events_of(content_type: Option<&str>, body: &[u8]) -> Result<Vec<CustomerEvent>, String> {
    match content_type {
        Some(ONE_EVENT) => serde_json::from_slice(body)
            .map(|event| vec![event])
            .map_err(|error| format!("not a customer event: {error}")),
        Some(BATCH) => serde_json::from_slice(body)
            .map_err(|error| format!("not a batch of customer events: {error}")),
        other => Err(format!("unexpected content type {other:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("{}.customer-events.example", args.tenant));

    let connection = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // The service declares the exchange too, the same way; declaring it here lets this consumer
    // start first.
    channel
        .exchange_declare(
            args.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Durable and replicated: events published while this consumer is down wait for it.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    for routing_key in [
        format!("customer.*.{}", args.tenant),
        format!("customer.batch.{}", args.tenant),
    ] {
        channel
            .queue_bind(
                queue.as_str().into(),
                args.exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "events-consumer-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "consuming {queue}: customer.*.{tenant} and customer.batch.{tenant} on {exchange}",
        tenant = args.tenant,
        exchange = args.exchange
    );

    let mut handler = Handler {
        seen: SeenIds::new(args.remember),
        versions: HashMap::new(),
        handled: 0,
    };
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str());
        match events_of(content_type, &delivery.data) {
            Ok(events) => {
                for event in events {
                    handler.handle(event);
                }
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(error) => {
                // Retrying cannot make it readable: drop it (a real consumer would dead-letter it).
                eprintln!("dropping a message: {error}");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        if args.max_events.is_some_and(|max| handler.handled >= max) {
            break;
        }
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_handled_once_and_memory_stays_bounded() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert_eq!(seen.ids.len(), 2);
        // "a" was forgotten: the version check catches it if it comes back.
        assert!(seen.first_time("a"));
    }

    #[test]
    fn both_content_types_are_read() {
        let event = serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/tenants/acme", "type": "customer.created",
            "subject": "c1", "time": "2026-11-23T15:00:00Z", "datacontenttype": "application/json",
            "data": {"id": "c1"}, "tenant": "acme", "customerversion": 1, "batchid": "b1"
        });
        let one = serde_json::to_vec(&event).unwrap();
        let batch = serde_json::to_vec(&[&event, &event]).unwrap();
        assert_eq!(events_of(Some(ONE_EVENT), &one).unwrap().len(), 1);
        assert_eq!(events_of(Some(BATCH), &batch).unwrap().len(), 2);
        assert!(events_of(Some("application/json"), &one).is_err());
    }
}
