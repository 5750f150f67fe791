//! Customer-state events as broker messages: their properties and headers, published with confirms.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use uuid::Uuid;

use super::Publisher;
use super::headers::{CUSTOMER_ID, TENANT, long_string};
use super::publisher::{Outgoing, json_properties};

/// One event to publish, with its body already serialized.
pub struct Event<'a> {
    /// Stable across re-publishes: consumers drop duplicates by it.
    pub id: Uuid,
    /// The event's kind, also its routing key (`customer.created`, ...).
    pub kind: &'a str,
    pub tenant: &'a str,
    pub customer_id: Uuid,
    pub body: &'a [u8],
}

/// Publishes the events to `exchange`, in order, and waits for every confirm.
pub async fn publish(
    publisher: &Publisher,
    exchange: &str,
    events: &[Event<'_>],
) -> anyhow::Result<()> {
    let messages: Vec<Outgoing> = events
        .iter()
        .map(|event| Outgoing {
            exchange,
            routing_key: event.kind,
            body: event.body,
            properties: properties(event),
            mandatory: false,
        })
        .collect();
    publisher.publish_all(&messages).await?;
    Ok(())
}

fn properties(event: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(TENANT.into(), long_string(event.tenant));
    headers.insert(
        CUSTOMER_ID.into(),
        long_string(&event.customer_id.to_string()),
    );
    json_properties()
        .with_message_id(event.id.to_string().into())
        .with_type(event.kind.into())
        .with_headers(headers)
}
