//! A batch's [`Reply`] as the messages that carry it: one per part, each with its headers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::headers::{self, long_string};
use super::publisher::json_properties;
use super::trace;
use crate::ingest::TraceContext;
use crate::reply::{Parts, Reply};

/// The parts of `reply`, at most `records_per_message` records and `max_bytes` bytes each; each
/// part carries `trace` (see [`trace::outgoing`]). A part is built when it is taken, so that a large
/// reply is never held whole as messages.
pub struct ReplyMessages<'a> {
    parts: Parts,
    trace: Option<&'a TraceContext>,
}

impl<'a> ReplyMessages<'a> {
    pub fn new(
        reply: Reply,
        records_per_message: usize,
        max_bytes: usize,
        trace: Option<&'a TraceContext>,
    ) -> serde_json::Result<Self> {
        Ok(Self {
            parts: reply.into_parts(records_per_message, max_bytes)?,
            trace,
        })
    }

    /// The body and properties of the next part, or `None` after the last one.
    pub fn next_message(&mut self) -> serde_json::Result<Option<(Vec<u8>, BasicProperties)>> {
        let Some(part) = self.parts.next() else {
            return Ok(None);
        };
        let (part, body) = part?;
        Ok(Some((body, properties(&part, self.trace))))
    }
}

fn properties(part: &Reply, trace: Option<&TraceContext>) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(headers::BATCH_ID.into(), long_string(&part.batch_id));
    table.insert(headers::STATUS.into(), long_string(part.status.as_str()));
    table.insert(
        headers::PART.into(),
        AMQPValue::LongLongInt(part.part.index as i64),
    );
    table.insert(
        headers::PARTS.into(),
        AMQPValue::LongLongInt(part.part.count as i64),
    );
    if let Some(tenant) = &part.tenant {
        table.insert(headers::TENANT.into(), long_string(tenant));
    }
    if let Some(context) = trace {
        trace::write(&mut table, context);
    }
    let mut properties = json_properties()
        .with_message_id(format!("{}:{}", part.batch_id, part.part.index).into())
        .with_type(headers::REPLY_TYPE.into())
        .with_headers(table);
    if let Some(correlation_id) = &part.correlation_id {
        properties = properties.with_correlation_id(correlation_id.as_str().into());
    }
    properties
}
