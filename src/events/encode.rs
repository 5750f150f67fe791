//! The events of one transaction, encoded once, by the worker that commits them: the outbox stores
//! the bytes of a batch body (`application/cloudevents-batch+json`, a JSON array of the events in
//! the order they are published) and where each event lies in it, so the relay publishes slices of
//! those bytes untouched and Postgres never parses an event.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{DATA_CONTENT_TYPE, EventType, SPEC_VERSION, tenant_source};
use crate::store::outbox::Trace;

/// One event to encode.
pub struct NewEvent<'a> {
    /// Stable per customer and version: `md5(customer id || ':' || version)` as a UUID.
    pub id: Uuid,
    pub kind: EventType,
    pub customer_id: Uuid,
    pub version: i64,
    /// When the change committed.
    pub time: DateTime<Utc>,
    pub key: &'a str,
    pub data: Data<'a>,
}

/// What an event's `data` holds besides the customer's id, tenant, key and version.
pub enum Data<'a> {
    /// A created or updated customer: its timestamps, then every field of its stored document
    /// (serialized JSON of a [`crate::model::Customer`], which has none of the envelope's names).
    Stored {
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        document: &'a str,
    },
    /// An erased customer: only when it was deleted (the event's time), never its data.
    Deleted,
}

/// A transaction's events as the outbox stores them: one batch body, and per event the end of its
/// bytes in that body, its id, kind and customer.
pub struct Encoded {
    pub body: Vec<u8>,
    /// Byte offset just past each event in `body`; an event starts one byte (`[` or `,`) after the
    /// previous one's end.
    pub ends: Vec<i32>,
    pub ids: Vec<Uuid>,
    pub kinds: Vec<i16>,
    pub customer_ids: Vec<Uuid>,
    /// The latest event's time.
    pub time: Option<DateTime<Utc>>,
}

/// Encodes events of one tenant's batch, one after the other.
pub struct Encoder<'a> {
    tenant: &'a str,
    batch_id: &'a str,
    trace: Option<&'a Trace>,
    encoded: Encoded,
    /// The last time written and its JSON: a chunk's events share their time (and a new customer's
    /// creation time), which is formatted once, not three times an event.
    time: Option<(DateTime<Utc>, String)>,
}

impl<'a> Encoder<'a> {
    /// An encoder for about `events` events of `bytes` document bytes in all.
    pub fn new(
        tenant: &'a str,
        batch_id: &'a str,
        trace: Option<&'a Trace>,
        events: usize,
        bytes: usize,
    ) -> Self {
        let mut body = Vec::with_capacity(bytes + events * OVERHEAD + 2);
        body.push(b'[');
        Encoder {
            tenant,
            batch_id,
            trace,
            encoded: Encoded {
                body,
                ends: Vec::with_capacity(events),
                ids: Vec::with_capacity(events),
                kinds: Vec::with_capacity(events),
                customer_ids: Vec::with_capacity(events),
                time: None,
            },
            time: None,
        }
    }

    /// `time` as JSON (a quoted RFC 3339 string, as chrono writes it).
    fn time_json(&mut self, time: DateTime<Utc>) -> &str {
        let stale = self.time.as_ref().is_none_or(|(at, _)| *at != time);
        if stale {
            let json = serde_json::to_string(&time).expect("a time serializes");
            self.time = Some((time, json));
        }
        &self.time.as_ref().expect("set above").1
    }

    /// Appends one event.
    pub fn push(&mut self, event: &NewEvent<'_>) {
        let (tenant, batch_id, trace) = (self.tenant, self.batch_id, self.trace);
        let mut body = std::mem::take(&mut self.encoded.body);
        if !self.encoded.ids.is_empty() {
            body.push(b',');
        }
        let envelope = Envelope {
            specversion: SPEC_VERSION,
            id: event.id,
            source: tenant,
            kind: event.kind,
            subject: event.customer_id,
            time: RawTime(self.time_json(event.time)),
            datacontenttype: DATA_CONTENT_TYPE,
            tenant,
            customerversion: event.version,
            batchid: batch_id,
            traceparent: trace.map(|t| t.traceparent.as_str()),
            tracestate: trace.and_then(|t| t.tracestate.as_deref()),
        };
        write_open(&mut body, &envelope);
        body.extend_from_slice(b",\"data\":");
        let head = Head {
            id: event.customer_id,
            tenant,
            key: event.key,
            version: event.version,
        };
        write_open(&mut body, &head);
        match &event.data {
            Data::Stored {
                created_at,
                updated_at,
                document,
            } => {
                body.extend_from_slice(b",\"createdAt\":");
                body.extend_from_slice(self.time_json(*created_at).as_bytes());
                body.extend_from_slice(b",\"updatedAt\":");
                body.extend_from_slice(self.time_json(*updated_at).as_bytes());
                // The document's fields follow, with its closing brace.
                let fields = document.trim();
                let fields = fields.strip_prefix('{').unwrap_or(fields);
                if fields != "}" {
                    body.push(b',');
                }
                body.extend_from_slice(fields.as_bytes());
            }
            Data::Deleted => {
                body.extend_from_slice(b",\"deletedAt\":");
                body.extend_from_slice(self.time_json(event.time).as_bytes());
                body.push(b'}');
            }
        }
        body.push(b'}');
        let out = &mut self.encoded;
        out.body = body;
        out.ends
            .push(i32::try_from(out.body.len()).expect("an outbox row holds under 2 GiB"));
        out.ids.push(event.id);
        out.kinds.push(event.kind.code());
        out.customer_ids.push(event.customer_id);
        out.time = out.time.max(Some(event.time));
    }

    /// The encoded events, the body's array closed.
    pub fn finish(mut self) -> Encoded {
        self.encoded.body.push(b']');
        self.encoded
    }
}

/// Writes `value`'s JSON object without its closing brace, so more fields can follow.
fn write_open<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("an event's attributes always serialize");
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
}

/// The bytes an event's envelope adds to its customer document, about: to size a body once.
const OVERHEAD: usize = 500;

/// One event's CloudEvents attributes (lowercase, no separators, extensions included); `data` is
/// written after them.
#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    /// Stable per customer and version: consumers drop duplicates by it.
    id: Uuid,
    #[serde(serialize_with = "tenant_source")]
    source: &'a str,
    #[serde(rename = "type")]
    kind: EventType,
    /// The customer's id.
    subject: Uuid,
    time: RawTime<'a>,
    datacontenttype: &'static str,
    tenant: &'a str,
    /// The customer's version this event brings it to: per customer, events come in its order.
    customerversion: i64,
    /// The producer's batch that made the change (`erasure` for a deletion).
    batchid: &'a str,
    /// The distributed tracing extension: the W3C trace context of that batch, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// A time already written as JSON.
struct RawTime<'a>(&'a str);

impl Serialize for RawTime<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The JSON of a time is a string without escapes: its text between the quotes.
        serializer.serialize_str(&self.0[1..self.0.len() - 1])
    }
}

/// The first fields of `data`: which customer, at which version.
#[derive(Serialize)]
struct Head<'a> {
    id: Uuid,
    tenant: &'a str,
    key: &'a str,
    version: i64,
}
