//! Every header and `type` name this service reads or writes, and the readers and writers of header
//! values. The one home of the wire names: the consumer, the replies, the relay, `publish`, `dlq` and
//! the tests all use these, so a name cannot drift between the writer and the reader.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// The tenant a message writes to (producer messages), or belongs to (replies and events).
pub const TENANT: &str = "tenant";
/// Which delivery of a message this is, counted by quorum queues (absent on the first).
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// How often a quorum queue handed a message to a consumer (RabbitMQ 4.0 and later), beside
/// `x-delivery-count`.
pub const ACQUIRED_COUNT: &str = "x-acquired-count";
/// Set by the broker on a message it dead-lettered itself.
pub const X_DEATH: &str = "x-death";
/// Set by the broker beside `x-death`: why the message was dead-lettered the first time.
pub const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// The broker's other dead-letter headers, by how their names begin: `x-first-death-queue`,
/// `x-last-death-reason` and the like.
pub const X_FIRST_DEATH_PREFIX: &str = "x-first-death-";
pub const X_LAST_DEATH_PREFIX: &str = "x-last-death-";
/// Header on a copy that was handed back to the queue during a database outage.
pub const OUTAGE_REQUEUES: &str = "outage-requeues";
/// Header on a message moved back from the dead-letter queue by `dlq replay`.
pub const REPLAY_COUNT: &str = "replay-count";
/// Headers on a message this service dead-lettered: why (a code and a message), after how many
/// deliveries, and when. Messages the broker dead-lettered itself carry `x-death` instead.
pub const ERROR_CODE: &str = "error-code";
pub const ERROR_MESSAGE: &str = "error-message";
pub const ERROR_ATTEMPTS: &str = "error-attempts";
pub const DEAD_LETTERED_AT: &str = "dead-lettered-at";
/// Headers on a reply part: its batch, the batch's status, and which part of how many it is.
pub const BATCH_ID: &str = "batch_id";
pub const STATUS: &str = "status";
pub const PART: &str = "part";
pub const PARTS: &str = "parts";
/// Header on a copy of a producer's message that this service published (a dead letter, an outage
/// copy, a replay): the producer's user, whose `user_id` the copy cannot carry (see [`vouched`]).
pub const AUTHENTICATED_USER: &str = "authenticated-user";
/// Header on an event: the customer it is about.
pub const CUSTOMER_ID: &str = "customer_id";
/// Header on a batch of events: how many it holds.
pub const EVENT_COUNT: &str = "event_count";

/// W3C trace context (the AMQP trace-context draft: application properties named as the HTTP
/// headers): read from an ingest message, written on its replies.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The `type` property of a reply.
pub const REPLY_TYPE: &str = "ingest-result";

/// A header's value as text, whichever string type the producer's client used.
pub fn header_str<'a>(headers: &'a Option<FieldTable>, name: &str) -> Option<&'a str> {
    value_str(headers.as_ref()?.inner().get(name)?)
}

/// A field value as text, whichever string type it was sent as.
pub fn value_str(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A numeric header as an integer, whichever integer type the producer's client used.
pub fn header_i64(headers: &Option<FieldTable>, name: &str) -> Option<i64> {
    value_i64(headers.as_ref()?.inner().get(name)?)
}

/// A field value as an integer, whichever integer type it was sent as.
pub fn value_i64(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(v) => Some(v.into()),
        AMQPValue::ShortShortUInt(v) => Some(v.into()),
        AMQPValue::ShortInt(v) => Some(v.into()),
        AMQPValue::ShortUInt(v) => Some(v.into()),
        AMQPValue::LongInt(v) => Some(v.into()),
        AMQPValue::LongUInt(v) => Some(v.into()),
        AMQPValue::LongLongInt(v) => Some(v),
        _ => None,
    }
}

/// A text header value.
pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Which delivery of a message this is (1 for the first).
pub fn delivery_attempt(properties: &BasicProperties) -> i64 {
    header_i64(properties.headers(), DELIVERY_COUNT).unwrap_or(0) + 1
}

/// What a producer puts on an ingest message. Every field is optional so that tests can leave one
/// out on purpose; a real producer sets `dialect` and `tenant`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerMessage<'a> {
    /// The `type` property: which dialect the body is written in.
    pub dialect: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// The batch id; without one the body's SHA-256 is the batch id.
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
}

impl ProducerMessage<'_> {
    /// The properties of a persistent JSON ingest message.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(tenant) = self.tenant {
            headers.insert(TENANT.into(), long_string(tenant));
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(dialect) = self.dialect {
            properties = properties.with_type(dialect.into());
        }
        if let Some(id) = self.message_id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(id) = self.correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        if let Some(reply_to) = self.reply_to {
            properties = properties.with_reply_to(reply_to.into());
        }
        properties
    }
}

/// The AMQP user that published a producer's message, as the broker vouches for it. RabbitMQ refuses
/// a publish whose `user_id` is not the connection's user, so `user_id` names the publisher; on a copy
/// published by `service_user` itself (see [`vouched`]) the producer's user is in
/// [`AUTHENTICATED_USER`], a header believed on no other message.
pub fn producer_user(properties: &BasicProperties, service_user: &str) -> Option<String> {
    let user_id = properties.user_id().as_ref()?.as_str();
    if user_id.is_empty() {
        return None;
    }
    let vouched = (user_id == service_user)
        .then(|| header_str(properties.headers(), AUTHENTICATED_USER))
        .flatten();
    Some(vouched.unwrap_or(user_id).to_owned())
}

/// The properties of a copy of a producer's message that `service_user` publishes (a dead letter,
/// an outage copy, a replay). The broker would refuse the producer's `user_id` on the service's
/// connection and close its channel, so the copy's `user_id` is the service's own and `producer`
/// (from [`producer_user`]) travels in [`AUTHENTICATED_USER`]; a header of that name the producer
/// wrote itself is dropped.
pub fn vouched(
    properties: BasicProperties,
    producer: Option<&str>,
    service_user: &str,
) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in properties.headers().iter().flatten() {
        if name.as_str() != AUTHENTICATED_USER {
            table.insert(name.clone(), value.clone());
        }
    }
    match producer {
        Some(user) => {
            table.insert(AUTHENTICATED_USER.into(), long_string(user));
            properties
                .with_headers(table)
                .with_user_id(service_user.into())
        }
        None => properties.with_headers(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_by_the_service_keeps_its_producers_user_and_nothing_else_can_claim_one() {
        let from_erp = BasicProperties::default().with_user_id("erp".into());
        assert_eq!(producer_user(&from_erp, "ingest").as_deref(), Some("erp"));

        // Dead-lettered, then replayed, then handed back in an outage: still erp's.
        let copy = vouched(from_erp, Some("erp"), "ingest");
        assert_eq!(copy.user_id().as_ref().unwrap().as_str(), "ingest");
        assert_eq!(producer_user(&copy, "ingest").as_deref(), Some("erp"));
        let again = vouched(
            copy.clone(),
            producer_user(&copy, "ingest").as_deref(),
            "ingest",
        );
        assert_eq!(producer_user(&again, "ingest").as_deref(), Some("erp"));

        // The header on a message another user published is that user's word only.
        let mut forged = FieldTable::default();
        forged.insert(AUTHENTICATED_USER.into(), long_string("erp"));
        let from_shop = BasicProperties::default()
            .with_headers(forged.clone())
            .with_user_id("shop".into());
        assert_eq!(producer_user(&from_shop, "ingest").as_deref(), Some("shop"));
        let anonymous = BasicProperties::default().with_headers(forged);
        assert_eq!(producer_user(&anonymous, "ingest"), None);
        let copy = vouched(anonymous, None, "ingest");
        assert_eq!(copy.user_id(), &None);
        assert_eq!(header_str(copy.headers(), AUTHENTICATED_USER), None);
    }
}
