//! Customer-state events as CloudEvents 1.0 in the JSON format, and how the outbox's committed
//! chunks become messages of them: one message per event (`per-customer`, structured mode) or one
//! per chunk (`batch`, a JSON array). Transport-neutral: [`crate::amqp::events`] puts a [`Message`]
//! on the broker.
//!
//! Bodies are encoded once, by the worker that commits the change ([`encode`]), and stored in the
//! outbox as bytes: a chunk's batch message is its outbox row's body as it is, and each event's
//! message is a slice of it.

use chrono::{DateTime, Utc};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::outbox::{PendingChunk, PendingEvent, Trace};

mod encode;
pub use encode::{Data, Encoded, Encoder, NewEvent};

/// `content_type` of a message holding one event (structured mode).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// `content_type` of a message holding a chunk's events (the JSON batch format).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The `datacontenttype` of every event: `data` is the customer as a JSON object.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The AMQP `type` of a batch message, and the middle word of its routing key.
pub const BATCH_TYPE: &str = "customer.batch";
const SPEC_VERSION: &str = "1.0";

/// How events leave the outbox (`events.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventsMode {
    /// One message per event, routed `customer.<created|updated|deleted>.<tenant>`.
    #[default]
    PerCustomer,
    /// One message per committed chunk holding its events in commit order, routed
    /// `customer.batch.<tenant>`: far fewer broker messages for a high-volume consumer.
    Batch,
}

/// The `[events]` settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    pub mode: EventsMode,
}

/// What happened to the customer: the CloudEvents `type`, and the middle word of a per-customer
/// routing key. Stored in the outbox under `routing_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum EventType {
    #[serde(rename = "customer.created")]
    Created,
    #[serde(rename = "customer.updated")]
    Updated,
    #[serde(rename = "customer.deleted")]
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "customer.created",
            EventType::Updated => "customer.updated",
            EventType::Deleted => "customer.deleted",
        }
    }

    /// How the outbox stores the type (`event_kinds`).
    pub fn code(self) -> i16 {
        match self {
            EventType::Created => 0,
            EventType::Updated => 1,
            EventType::Deleted => 2,
        }
    }

    /// The type stored as `code`, if it is one.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(EventType::Created),
            1 => Some(EventType::Updated),
            2 => Some(EventType::Deleted),
            _ => None,
        }
    }
}

/// One broker message of events, whatever the transport. Re-publishing the same outbox rows gives
/// the same messages: same `id`, same body.
pub struct Message<'a> {
    /// The message id: the event's id, or for a batch a digest of its events' ids.
    pub id: Uuid,
    /// `customer.<kind>.<tenant>` or `customer.batch.<tenant>`: a consumer binds `customer.*.acme`
    /// for one tenant. Tenants are `[A-Za-z0-9_-]` only, so they never add a word to the key.
    pub routing_key: String,
    pub content_type: &'static str,
    /// The event's type, or [`BATCH_TYPE`].
    pub kind: &'static str,
    pub tenant: &'a str,
    /// When the change committed (of a batch, its latest event).
    pub time: DateTime<Utc>,
    pub holds: Holds,
    /// The W3C trace context of the batch whose change the events are, for the `traceparent` and
    /// `tracestate` headers.
    pub trace: Option<&'a Trace>,
    /// Bytes of the outbox row, as they were stored.
    pub body: &'a [u8],
}

/// What a message holds, which decides its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// One event about this customer (`customer_id` header).
    One { customer_id: Uuid },
    /// A chunk's events (`event_count` header).
    Batch { event_count: usize },
}

/// The messages for `chunks`, in order: per customer, every event in commit order; in batch mode,
/// one message per chunk.
pub fn messages(mode: EventsMode, chunks: &[PendingChunk]) -> Vec<Message<'_>> {
    match mode {
        EventsMode::PerCustomer => chunks
            .iter()
            .flat_map(|chunk| chunk.events.iter().map(move |event| single(chunk, event)))
            .collect(),
        EventsMode::Batch => chunks
            .iter()
            .filter(|chunk| !chunk.events.is_empty())
            .map(batch)
            .collect(),
    }
}

fn single<'a>(chunk: &'a PendingChunk, event: &PendingEvent) -> Message<'a> {
    Message {
        id: event.event_id,
        routing_key: format!("{}.{}", event.kind.as_str(), chunk.tenant),
        content_type: CONTENT_TYPE,
        kind: event.kind.as_str(),
        tenant: &chunk.tenant,
        time: chunk.occurred_at,
        holds: Holds::One {
            customer_id: event.customer_id,
        },
        trace: chunk.trace.as_ref(),
        body: &chunk.body[event.span.clone()],
    }
}

fn batch(chunk: &PendingChunk) -> Message<'_> {
    Message {
        id: batch_id(&chunk.events),
        routing_key: format!("{BATCH_TYPE}.{}", chunk.tenant),
        content_type: BATCH_CONTENT_TYPE,
        kind: BATCH_TYPE,
        tenant: &chunk.tenant,
        time: chunk.occurred_at,
        holds: Holds::Batch {
            event_count: chunk.events.len(),
        },
        trace: chunk.trace.as_ref(),
        body: &chunk.body,
    }
}

/// A batch's message id: a digest of its events' ids, in order. The same events give the same id on
/// every re-publish; an erasure that removed an event from a waiting chunk gives a new one, as the
/// message is then a different one. A version-8 (custom) UUID.
fn batch_id(events: &[PendingEvent]) -> Uuid {
    let mut digest = Sha256::new();
    digest.update(b"customer-ingest event batch");
    for event in events {
        digest.update(event.event_id.as_bytes());
    }
    let bytes: [u8; 16] = digest.finalize()[..16]
        .try_into()
        .expect("SHA-256 is longer than 16 bytes");
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// `source` is the tenant's URI reference, `/tenants/<tenant>`, written without a copy.
fn tenant_source<S: Serializer>(tenant: &&str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("/tenants/{tenant}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the `i`th customer of a test chunk at `now` was created: the first one now, the
    /// others a day before.
    fn created_at(now: DateTime<Utc>, i: usize) -> DateTime<Utc> {
        if i == 0 {
            now
        } else {
            now - chrono::Duration::days(1)
        }
    }

    fn chunk(events: usize) -> PendingChunk {
        let documents: Vec<String> = (0..events)
            .map(|i| format!(r#"{{"name":"N-{i}","extra":{{"a":"{i}"}}}}"#))
            .collect();
        let keys: Vec<String> = (0..events).map(|i| format!("K-{i}")).collect();
        let mut encoder = Encoder::new("acme", "b-1", None, events, 0);
        let now = Utc::now();
        for (i, document) in documents.iter().enumerate() {
            encoder.push(&NewEvent {
                id: Uuid::new_v4(),
                kind: if i == 0 {
                    EventType::Created
                } else {
                    EventType::Updated
                },
                customer_id: Uuid::new_v4(),
                version: i as i64 + 1,
                time: now,
                key: &keys[i],
                data: Data::Stored {
                    created_at: created_at(now, i),
                    updated_at: now,
                    document,
                },
            });
        }
        let encoded = encoder.finish();
        PendingChunk {
            row: 1,
            tenant: "acme".into(),
            batch_id: "b-1".into(),
            trace: None,
            occurred_at: now,
            events: PendingEvent::from_columns(
                &encoded.body,
                &encoded.ends,
                &encoded.ids,
                &encoded.kinds,
                &encoded.customer_ids,
            )
            .unwrap(),
            body: encoded.body,
        }
    }

    #[test]
    fn an_event_is_a_structured_cloudevent_routed_by_kind_and_tenant() {
        let chunk = chunk(2);
        let messages = messages(EventsMode::PerCustomer, std::slice::from_ref(&chunk));
        assert_eq!(messages.len(), 2);
        let second = &messages[1];
        assert_eq!(second.routing_key, "customer.updated.acme");
        assert_eq!(second.content_type, CONTENT_TYPE);
        assert_eq!(second.id, chunk.events[1].event_id);
        let body: serde_json::Value = serde_json::from_slice(second.body).unwrap();
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], chunk.events[1].event_id.to_string());
        assert_eq!(body["source"], "/tenants/acme");
        assert_eq!(body["type"], "customer.updated");
        assert_eq!(body["subject"], chunk.events[1].customer_id.to_string());
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["tenant"], "acme");
        assert_eq!(body["customerversion"], 2);
        assert_eq!(body["batchid"], "b-1");
        let time = body["time"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(body["time"], serde_json::json!(chunk.occurred_at));
        assert_eq!(
            body["data"],
            serde_json::json!({
                "id": chunk.events[1].customer_id, "tenant": "acme", "key": "K-1", "version": 2,
                "createdAt": created_at(chunk.occurred_at, 1), "updatedAt": time,
                "name": "N-1", "extra": {"a": "1"}
            })
        );
        let first: serde_json::Value = serde_json::from_slice(messages[0].body).unwrap();
        assert_eq!(first["data"]["createdAt"], body["time"]);
    }

    #[test]
    fn a_deletion_carries_the_customers_identity_and_when_only() {
        let trace = Trace {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
        };
        let mut encoder = Encoder::new("acme", "erasure", Some(&trace), 1, 0);
        let (id, customer_id, time) = (Uuid::new_v4(), Uuid::new_v4(), Utc::now());
        encoder.push(&NewEvent {
            id,
            kind: EventType::Deleted,
            customer_id,
            version: 4,
            time,
            key: "GONE",
            data: Data::Deleted,
        });
        let encoded = encoder.finish();
        let events: Vec<serde_json::Value> = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(encoded.ends, vec![encoded.body.len() as i32 - 1]);
        assert_eq!(events[0]["type"], "customer.deleted");
        assert_eq!(events[0]["traceparent"], trace.traceparent);
        assert!(events[0].get("tracestate").is_none());
        assert_eq!(
            events[0]["data"],
            serde_json::json!({"id": customer_id, "tenant": "acme", "key": "GONE", "version": 4,
                               "deletedAt": events[0]["time"]})
        );
    }

    #[test]
    fn event_columns_that_do_not_fit_their_body_are_refused() {
        let chunk = chunk(2);
        let ids: Vec<Uuid> = chunk.events.iter().map(|e| e.event_id).collect();
        let customers: Vec<Uuid> = chunk.events.iter().map(|e| e.customer_id).collect();
        let ends: Vec<i32> = chunk.events.iter().map(|e| e.span.end as i32).collect();
        let len = chunk.body.len() as i32;
        let from = |ends: &[i32], kinds: &[i16]| {
            PendingEvent::from_columns(&chunk.body, ends, &ids, kinds, &customers)
        };
        assert!(from(&ends, &[0, 1]).is_ok());
        assert!(
            from(&[ends[0], len], &[0, 1]).is_err(),
            "past the closing bracket"
        );
        assert!(from(&[ends[1], ends[0]], &[0, 1]).is_err(), "out of order");
        assert!(from(&ends, &[0, 7]).is_err(), "an unknown kind");
        assert!(
            from(&ends[..1], &[0]).is_err(),
            "columns of different lengths"
        );
    }

    #[test]
    fn a_batch_is_an_array_of_the_same_events_under_an_id_that_only_its_events_decide() {
        let chunk = chunk(3);
        let singles = messages(EventsMode::PerCustomer, std::slice::from_ref(&chunk));
        let batches = messages(EventsMode::Batch, std::slice::from_ref(&chunk));
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.routing_key, "customer.batch.acme");
        assert_eq!(batch.content_type, BATCH_CONTENT_TYPE);
        assert_eq!(batch.holds, Holds::Batch { event_count: 3 });
        let array: Vec<serde_json::Value> = serde_json::from_slice(batch.body).unwrap();
        let each: Vec<serde_json::Value> = singles
            .iter()
            .map(|m| serde_json::from_slice(m.body).unwrap())
            .collect();
        assert_eq!(array, each, "the same events, in commit order");

        let id = batch.id;
        let again = messages(EventsMode::Batch, std::slice::from_ref(&chunk));
        assert_eq!(again[0].id, id, "stable across re-publishes");
        drop((singles, batches, again));
        let mut fewer = chunk;
        fewer.events.pop();
        assert_ne!(messages(EventsMode::Batch, &[fewer])[0].id, id);
    }
}
