//! Reading a dead letter: its id, why it died, after how many attempts, when, and how often it was
//! replayed.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use super::Filters;
use crate::amqp::headers::{
    self, DEAD_LETTERED_AT, ERROR_ATTEMPTS, ERROR_CODE, ERROR_MESSAGE, REPLAY_COUNT, header_i64,
    header_str, value_i64, value_str,
};
use crate::cli::text::printable;
use crate::ingest::Envelope;

/// What an operator needs to decide about a dead letter, from its properties and headers.
#[derive(Debug)]
pub(super) struct DeadLetter {
    /// The batch id: `message_id`, or the SHA-256 of the body, exactly as the pipeline names it.
    pub(super) id: String,
    pub(super) tenant: Option<String>,
    pub(super) dialect: Option<String>,
    /// This service's `error-code`, or the broker's reason (`delivery_limit`, `rejected`, ...).
    pub(super) reason: String,
    /// Unknown for a message the broker dead-lettered: it was never answered, only redelivered.
    pub(super) last_error: Option<String>,
    pub(super) attempts: Option<i64>,
    pub(super) dead_lettered_at: Option<DateTime<Utc>>,
    /// From `replay-count`, a plain header (`x-` headers belong to the broker). The pipeline copies a
    /// message's headers onto the dead letter it makes, so the count survives a replay that fails
    /// again and `dlq.max_replays` can stop a message going round for ever.
    pub(super) replays: i64,
}

impl DeadLetter {
    pub(super) fn read(delivery: &Delivery) -> Self {
        let envelope = Envelope::read(&delivery.properties, &delivery.data);
        let headers = delivery.properties.headers();
        let death = latest_death(headers);
        let reason = header_str(headers, ERROR_CODE)
            .map(str::to_owned)
            .or_else(|| death.as_ref().and_then(|d| d.reason.clone()))
            .or_else(|| header_str(headers, headers::X_FIRST_DEATH_REASON).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        // Not `x-delivery-count`: on a delivery from the dead-letter queue it counts the dead-letter
        // queue's own deliveries, which is to say how often someone listed it.
        let attempts =
            header_i64(headers, ERROR_ATTEMPTS).or_else(|| death.as_ref().and_then(|d| d.count));
        let dead_lettered_at = header_str(headers, DEAD_LETTERED_AT)
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| death.as_ref().and_then(|d| d.time));
        DeadLetter {
            id: envelope.batch_id,
            tenant: envelope.tenant,
            dialect: envelope.dialect,
            reason,
            last_error: header_str(headers, ERROR_MESSAGE).map(str::to_owned),
            attempts,
            dead_lettered_at,
            replays: header_i64(headers, REPLAY_COUNT).unwrap_or(0),
        }
    }

    pub(super) fn passes(&self, filters: &Filters, ids: Option<&HashSet<String>>) -> bool {
        ids.is_none_or(|ids| ids.contains(&self.id))
            && filters.reason.as_ref().is_none_or(|r| *r == self.reason)
            && filters
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == self.tenant.as_ref())
    }

    /// What `replay` and `purge` print after the id.
    pub(super) fn label(&self) -> String {
        printable(&format!(
            "tenant {}, reason {}",
            self.tenant.as_deref().unwrap_or("-"),
            self.reason
        ))
    }
}

/// The newest entry of the broker's `x-death` header (RabbitMQ keeps the most recent first).
struct Death {
    reason: Option<String>,
    count: Option<i64>,
    time: Option<DateTime<Utc>>,
}

fn latest_death(headers: &Option<FieldTable>) -> Option<Death> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.as_ref()?.inner().get(headers::X_DEATH)
    else {
        return None;
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        return None;
    };
    let field = |name: &str| death.inner().get(name);
    Some(Death {
        reason: field("reason").and_then(value_str).map(str::to_owned),
        count: field("count").and_then(value_i64),
        time: match field("time") {
            Some(AMQPValue::Timestamp(seconds)) => timestamp(*seconds),
            _ => None,
        },
    })
}

pub(super) fn timestamp(seconds: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::long_string as long;
    use lapin::BasicProperties;
    use lapin::types::FieldArray;

    #[test]
    fn a_broker_dead_letter_takes_its_reason_count_and_time_from_x_death() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert(
            headers::X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(headers::X_FIRST_DEATH_REASON.into(), long("rejected"));
        headers.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(7));
        let mut delivery = Delivery::mock(1, "".into(), "".into(), false, b"[]".to_vec());
        delivery.properties = BasicProperties::default().with_headers(headers);

        let letter = DeadLetter::read(&delivery);
        assert_eq!(letter.reason, "delivery_limit");
        assert_eq!(letter.attempts, Some(1));
        assert_eq!(letter.last_error, None);
        assert_eq!(letter.dead_lettered_at, timestamp(1_700_000_000));
        assert_eq!(
            letter.id.len(),
            64,
            "no message_id: the SHA-256 of the body"
        );
    }
}
