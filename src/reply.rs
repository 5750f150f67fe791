//! The result message a producer gets for each batch, and how a large one is split into parts.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dialect::{self, Rejection};
use crate::ingest::Envelope;
use crate::model::{BatchStatus, Counts, RecordResult};

/// The reply body. Stored whole in `processed_batches` when a batch completes; every later delivery of
/// the same batch gets this same body back, apart from `correlation_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub batch_id: String,
    pub correlation_id: Option<String>,
    pub tenant: Option<String>,
    pub dialect: Option<String>,
    pub status: BatchStatus,
    pub counts: Counts,
    pub records: Vec<RecordResult>,
    /// The body the dialect's own API would have answered (for the records of this part). `null`
    /// in a stored reply whose dialect makes it from the records alone: it is rendered when the
    /// reply is sent (see [`Reply::into_parts`]).
    pub response: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Which part of the batch's reply this message is: `records` and `response` cover one slice of the
    /// batch, everything else covers the whole batch. `{"index": 1, "count": 1}` for most batches.
    #[serde(default)]
    pub part: Part,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part { index: 1, count: 1 }
    }
}

impl Reply {
    /// The reply to a message that was rejected whole: nothing of it was applied.
    pub fn rejected(envelope: &Envelope, rejection: Rejection, started_at: DateTime<Utc>) -> Reply {
        Reply {
            batch_id: envelope.batch_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            tenant: envelope.tenant.clone(),
            dialect: envelope.dialect.clone(),
            status: BatchStatus::Rejected,
            counts: Counts::default(),
            records: vec![],
            response: serde_json::Value::Null,
            error: Some(ReplyError {
                code: rejection.code.as_str().to_owned(),
                message: rejection.message,
            }),
            started_at,
            finished_at: Utc::now(),
            part: Default::default(),
        }
    }

    /// Splits the reply into messages of at most `records_per_message` records and `max_bytes` bytes
    /// each, so that a reply to a 100,000-record batch stays far below the broker's maximum message
    /// size while still carrying every record's id and outcome. Each part re-renders the dialect
    /// response for its own records.
    ///
    /// Only where the parts split is decided here; each part is built and serialized when it is
    /// taken from [`Parts`], so a large reply is never held twice, nor all its bodies at once.
    pub fn into_parts(
        self,
        records_per_message: usize,
        max_bytes: usize,
    ) -> serde_json::Result<Parts> {
        let records_per_message = records_per_message.max(1);
        let mut whole = Reply {
            part: Part::default(),
            ..self
        };
        if whole.records.len() <= records_per_message {
            if let Some(dialect) = whole.left_out_response() {
                whole.response = dialect.render_response(&whole.records, &[]);
            }
            let body = serde_json::to_vec(&whole)?;
            if body.len() <= max_bytes || whole.records.len() <= 1 {
                return Ok(Parts {
                    dialect: None,
                    response_left_out: false,
                    ranges: std::iter::once(0..whole.records.len()).collect(),
                    records: Vec::new(),
                    response: serde_json::Value::Null,
                    template: whole,
                    single: Some(body),
                    next: 0,
                });
            }
        }
        let mut parts = Parts {
            dialect: whole.dialect.as_deref().and_then(dialect::find),
            response_left_out: whole.left_out_response().is_some(),
            ranges: Vec::new(),
            records: std::mem::take(&mut whole.records),
            response: std::mem::take(&mut whole.response),
            template: whole,
            single: None,
            next: 0,
        };
        // Ranges of records, halved until each part fits; numbered once their number is known.
        // The room left for the part's own numbers is kept free. A part is measured, not kept.
        let fits = max_bytes.saturating_sub(64);
        let total = parts.records.len();
        let mut pending: Vec<Range<usize>> = (0..total)
            .step_by(records_per_message)
            .map(|start| start..(start + records_per_message).min(total))
            .rev()
            .collect();
        while let Some(range) = pending.pop() {
            if range.len() > 1
                && serialized_len(&parts.build(range.clone(), Part::default()))? > fits
            {
                let middle = range.start + range.len() / 2;
                pending.push(middle..range.end);
                pending.push(range.start..middle);
                continue;
            }
            parts.ranges.push(range);
        }
        Ok(parts)
    }

    /// Serializes the reply with `records` in place of its own, each result made, written and let go
    /// in turn, so that a large batch's results are never all held beside their text. The object's
    /// members may come in another order than [`serde_json::to_string`] writes them; the value is
    /// the same.
    pub fn to_string_with_records<E: std::fmt::Display>(
        &self,
        records: impl Iterator<Item = Result<RecordResult, E>>,
    ) -> serde_json::Result<String> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        use std::cell::Cell;

        /// The records, serialized as the sequence they make, once.
        struct Records<I>(Cell<Option<I>>);
        impl<I, E> Serialize for Records<I>
        where
            I: Iterator<Item = Result<RecordResult, E>>,
            E: std::fmt::Display,
        {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let records = self
                    .0
                    .take()
                    .ok_or_else(|| S::Error::custom("the records are serialized once"))?;
                let mut seq = serializer.serialize_seq(None)?;
                for record in records {
                    seq.serialize_element(&record.map_err(S::Error::custom)?)?;
                }
                seq.end()
            }
        }

        let serde_json::Value::Object(members) = serde_json::to_value(self)? else {
            return Err(serde_json::Error::custom("a reply serializes to an object"));
        };
        let records = Records(Cell::new(Some(records)));
        let mut text = Vec::new();
        let mut serializer = serde_json::Serializer::new(&mut text);
        let mut map = serde::Serializer::serialize_map(&mut serializer, Some(members.len()))?;
        for (name, value) in &members {
            if name == "records" {
                map.serialize_entry(name, &records)?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        SerializeMap::end(map)?;
        // serde_json writes only UTF-8.
        String::from_utf8(text).map_err(serde_json::Error::custom)
    }

    /// Removes what the reply holds of an erased customer: its records (found by `id`, and a
    /// record that failed under its `key`) and their entries in `response`. `counts` then count the
    /// records that are left; `status` stays the batch's. Returns how many records were removed.
    pub fn erase_customer(&mut self, key: &str, id: Uuid) -> usize {
        let erased: Vec<usize> = self
            .records
            .iter()
            .enumerate()
            .filter(|(_, record)| record.id == Some(id) || record.key.as_deref() == Some(key))
            .map(|(position, _)| position)
            .collect();
        if erased.is_empty() {
            return 0;
        }
        // A response left out stays left out: it is rendered from the remaining records when sent.
        if self.left_out_response().is_none() {
            self.response = match self.dialect.as_deref().and_then(dialect::find) {
                Some(dialect) => dialect.response_without(&self.response, &self.records, &erased),
                // No dialect to say which entries are whose: nothing of the response is kept.
                None => serde_json::Value::Null,
            };
        }
        self.records = dialect::without_positions(&self.records, &erased);
        self.counts = Counts::of(&self.records);
        erased.len()
    }

    /// The dialect that renders this reply's response from its records, when the response was left
    /// out (a batch's reply is stored without it when its dialect makes it from the records alone).
    fn left_out_response(&self) -> Option<&'static dyn dialect::Dialect> {
        if self.status == BatchStatus::Rejected || !self.response.is_null() {
            return None;
        }
        self.dialect
            .as_deref()
            .and_then(dialect::find)
            .filter(|dialect| !dialect.renders_customers())
    }

    fn clone_without_records(&self) -> Reply {
        Reply {
            batch_id: self.batch_id.clone(),
            correlation_id: self.correlation_id.clone(),
            tenant: self.tenant.clone(),
            dialect: self.dialect.clone(),
            status: self.status,
            counts: self.counts,
            records: Vec::new(),
            response: serde_json::Value::Null,
            error: self.error.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            part: self.part,
        }
    }
}

/// A reply cut into parts that fit a message each (see [`Reply::into_parts`]), yielded in order,
/// each built when it is taken.
pub struct Parts {
    /// Everything but the records and the response, which each part has of its own; for a reply
    /// of one part, the whole reply.
    template: Reply,
    records: Vec<RecordResult>,
    /// The batch's whole response, which a dialect may cut each part's from.
    response: serde_json::Value,
    dialect: Option<&'static dyn dialect::Dialect>,
    /// Whether the response was left out: each part then renders its own from its records.
    response_left_out: bool,
    /// The records of each part, in order.
    ranges: Vec<Range<usize>>,
    /// The body of a reply that is one part as it is: serialized once, while its size was checked.
    single: Option<Vec<u8>>,
    /// The index of the next part to take.
    next: usize,
}

impl Parts {
    fn build(&self, range: Range<usize>, part: Part) -> Reply {
        let response = match self.dialect {
            Some(dialect) if self.response_left_out => {
                dialect.render_response(&self.records[range.clone()], &[])
            }
            Some(dialect) => dialect.slice_response(&self.response, &self.records, range.clone()),
            None => serde_json::Value::Null,
        };
        Reply {
            records: self.records[range].to_vec(),
            response,
            part,
            ..self.template.clone_without_records()
        }
    }
}

impl Iterator for Parts {
    /// A part and its body.
    type Item = serde_json::Result<(Reply, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        let range = self.ranges.get(index)?.clone();
        self.next += 1;
        if let Some(body) = self.single.take() {
            let rest = self.template.clone_without_records();
            return Some(Ok((std::mem::replace(&mut self.template, rest), body)));
        }
        let numbered = Part {
            index: index + 1,
            count: self.ranges.len(),
        };
        let reply = self.build(range, numbered);
        Some(serde_json::to_vec(&reply).map(|body| (reply, body)))
    }
}

/// The length of `value` serialized, without keeping the bytes.
fn serialized_len(value: &impl Serialize) -> serde_json::Result<usize> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    Ok(count.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

    /// Every part of `reply`, built.
    fn all_parts(
        reply: Reply,
        records_per_message: usize,
        max_bytes: usize,
    ) -> Vec<(Reply, Vec<u8>)> {
        reply
            .into_parts(records_per_message, max_bytes)
            .unwrap()
            .collect::<serde_json::Result<_>>()
            .unwrap()
    }

    fn reply_with(n: usize) -> Reply {
        let records: Vec<RecordResult> = (0..n)
            .map(|index| RecordResult {
                index,
                key: Some(format!("K{index}")),
                id: Some(uuid::Uuid::now_v7()),
                action: Action::Created,
                version: Some(1),
                errors: vec![],
            })
            .collect();
        Reply {
            batch_id: "b".into(),
            correlation_id: Some("c".into()),
            tenant: Some("t".into()),
            dialect: Some("upsert-by-customer-id".into()),
            status: BatchStatus::Completed,
            counts: Counts::of(&records),
            records,
            response: serde_json::Value::Null,
            error: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            part: Part::default(),
        }
    }

    #[test]
    fn an_erased_customer_leaves_no_record_and_no_response_entry() {
        let mut reply = reply_with(3);
        reply.records[2] = RecordResult::failed(2, Some("K0".into()), vec![]);
        reply.response = dialect::find("upsert-by-customer-id")
            .unwrap()
            .render_response(&reply.records, &[]);
        let id = reply.records[0].id.unwrap();
        assert_eq!(reply.erase_customer("K0", id), 2);
        let text = serde_json::to_string(&reply).unwrap();
        assert!(
            !text.contains("K0") && !text.contains(&id.to_string()),
            "{text}"
        );
        assert_eq!(reply.records.len(), 1);
        assert_eq!(reply.counts.total, 1);
        assert_eq!(reply.response["successful"][0]["customerID"], "K1");
        assert_eq!(reply.erase_customer("K0", id), 0);
    }

    #[test]
    fn an_erased_customer_leaves_no_row_in_a_response_of_customers() {
        for (dialect, rows) in [("add-with-accounts", "/data"), ("match-by-contact", "")] {
            let mut reply = reply_with(3);
            reply.dialect = Some(dialect.into());
            let row = |i: usize| serde_json::json!({"name": format!("Customer {i}")});
            let all: Vec<_> = (0..3).map(row).collect();
            reply.response = if rows.is_empty() {
                serde_json::json!(all)
            } else {
                serde_json::json!({ "data": all })
            };
            let id = reply.records[1].id.unwrap();
            assert_eq!(reply.erase_customer("K1", id), 1);
            assert_eq!(
                reply.response.pointer(rows).unwrap(),
                &serde_json::json!([row(0), row(2)]),
                "{dialect}"
            );
        }
    }

    #[test]
    fn a_response_left_out_is_rendered_for_each_part_from_its_records() {
        let responses = |reply: Reply| -> Vec<serde_json::Value> {
            all_parts(reply, 10, 1 << 20)
                .into_iter()
                .map(|(part, _)| part.response)
                .collect()
        };
        for n in [3, 25] {
            let left_out = reply_with(n);
            let mut rendered = left_out.clone();
            rendered.response = dialect::find("upsert-by-customer-id")
                .unwrap()
                .render_response(&rendered.records, &[]);
            let parts = responses(left_out);
            assert_eq!(parts, responses(rendered), "{n} records");
            assert!(parts.iter().all(|r| r["successful"].is_array()), "{n}");
        }
        let mut rejected = reply_with(0);
        rejected.status = BatchStatus::Rejected;
        assert_eq!(responses(rejected), [serde_json::Value::Null]);
    }

    #[test]
    fn a_reply_serialized_with_its_records_streamed_is_the_same_value() {
        let reply = reply_with(25);
        let header = Reply {
            records: Vec::new(),
            ..reply.clone()
        };
        let streamed = header
            .to_string_with_records(reply.records.iter().cloned().map(Ok::<_, String>))
            .unwrap();
        let streamed: serde_json::Value = serde_json::from_str(&streamed).unwrap();
        assert_eq!(streamed, serde_json::to_value(&reply).unwrap());
        let failed = header.to_string_with_records(
            [Ok(reply.records[0].clone()), Err("record 1 has no result")].into_iter(),
        );
        assert!(failed.is_err());
    }

    #[test]
    fn a_small_reply_is_one_part() {
        let parts: Vec<Reply> = all_parts(reply_with(3), 10, 1 << 20)
            .into_iter()
            .map(|(part, _)| part)
            .collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].part, Part { index: 1, count: 1 });
        assert_eq!(parts[0].records.len(), 3);
    }

    #[test]
    fn a_large_reply_is_split_and_every_record_appears_once() {
        let parts: Vec<Reply> = all_parts(reply_with(25), 10, 1 << 20)
            .into_iter()
            .map(|(part, _)| part)
            .collect();
        assert_eq!(parts.len(), 3);
        let indexes: Vec<usize> = parts
            .iter()
            .flat_map(|p| p.records.iter().map(|r| r.index))
            .collect();
        assert_eq!(indexes, (0..25).collect::<Vec<_>>());
        assert_eq!(parts[2].part, Part { index: 3, count: 3 });
        assert_eq!(parts[2].counts.total, 25);
        assert_eq!(parts[2].response["successful"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn a_reply_over_the_byte_limit_is_split_until_every_part_fits() {
        let parts = all_parts(reply_with(100), 1_000, 4_096);
        assert!(parts.len() > 1);
        for (part, body) in &parts {
            assert!(body.len() <= 4_096, "a part of {} bytes", body.len());
            assert_eq!(serde_json::to_vec(part).unwrap(), *body);
        }
        let indexes: Vec<usize> = parts
            .iter()
            .flat_map(|(p, _)| p.records.iter().map(|r| r.index))
            .collect();
        assert_eq!(indexes, (0..100).collect::<Vec<_>>());
        let numbers: Vec<usize> = parts.iter().map(|(p, _)| p.part.index).collect();
        assert_eq!(numbers, (1..=parts.len()).collect::<Vec<_>>());
    }
}
