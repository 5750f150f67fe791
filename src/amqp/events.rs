//! Customer-state events on the broker: each [`Message`] of [`crate::events`] with its properties
//! and headers, published in order with confirms.
//!
//! Every message: `message_id` (the event's id, or the batch's), `type` (the event's type, or
//! `customer.batch`), `content_type`, `timestamp`, persistent delivery, and the `tenant` header;
//! one event also carries `customer_id`, a batch `event_count`; the events of a batch that carried W3C
//! trace context carry its `traceparent` and `tracestate`.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::Publisher;
use super::headers::{CUSTOMER_ID, EVENT_COUNT, TENANT, TRACEPARENT, TRACESTATE, long_string};
use super::publisher::Outgoing;
use crate::events::{Holds, Message};

/// Publishes the messages to `exchange`, in order, and waits for every confirm.
pub async fn publish(
    publisher: &Publisher,
    exchange: &str,
    messages: &[Message<'_>],
) -> anyhow::Result<()> {
    let outgoing: Vec<Outgoing> = messages
        .iter()
        .map(|message| Outgoing {
            exchange,
            routing_key: &message.routing_key,
            body: message.body,
            properties: properties(message),
            mandatory: false,
        })
        .collect();
    publisher.publish_all(&outgoing).await?;
    Ok(())
}

fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(TENANT.into(), long_string(message.tenant));
    match message.holds {
        Holds::One { customer_id } => {
            headers.insert(CUSTOMER_ID.into(), long_string(&customer_id.to_string()));
        }
        Holds::Batch { event_count } => {
            let count = i64::try_from(event_count).unwrap_or(i64::MAX);
            headers.insert(EVENT_COUNT.into(), AMQPValue::LongLongInt(count));
        }
    }
    if let Some(trace) = message.trace {
        headers.insert(TRACEPARENT.into(), long_string(&trace.traceparent));
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE.into(), long_string(state));
        }
    }
    BasicProperties::default()
        .with_content_type(message.content_type.into())
        .with_delivery_mode(2)
        .with_message_id(message.id.to_string().into())
        .with_type(message.kind.into())
        .with_timestamp(message.time.timestamp().max(0) as u64)
        .with_headers(headers)
}
