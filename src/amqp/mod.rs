//! RabbitMQ: the connection, the topology, publishing with confirms and the supervised consumer.
//! Knows nothing of SQL or of dialects.

pub mod connection;
pub mod consumer;
pub mod publisher;
pub mod topology;

pub use connection::connect;
pub use publisher::Publisher;

use lapin::types::{AMQPValue, FieldTable};

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
