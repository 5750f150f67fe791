//! The result message a producer gets for each batch, and how a large one is split into parts.

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
    /// The body the dialect's own API would have answered (for the records of this part).
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
    /// response for its own records. Returns every part with its body.
    pub fn into_parts(
        self,
        records_per_message: usize,
        max_bytes: usize,
    ) -> serde_json::Result<Vec<(Reply, Vec<u8>)>> {
        let single = Reply {
            part: Part::default(),
            ..self
        };
        if single.records.len() <= records_per_message {
            let body = serde_json::to_vec(&single)?;
            if body.len() <= max_bytes || single.records.len() <= 1 {
                return Ok(vec![(single, body)]);
            }
        }
        let dialect = single.dialect.as_deref().and_then(dialect::find);
        let mut template = single;
        let records = std::mem::take(&mut template.records);
        let response = std::mem::take(&mut template.response);
        let part = |range: std::ops::Range<usize>| Reply {
            records: records[range.clone()].to_vec(),
            response: dialect
                .map(|d| d.slice_response(&response, &records, range))
                .unwrap_or(serde_json::Value::Null),
            ..template.clone_without_records()
        };
        // Ranges of records, halved until each part fits; numbered once their number is known.
        // The room left for the part's own numbers is kept free.
        let fits = max_bytes.saturating_sub(64);
        let mut pending: Vec<std::ops::Range<usize>> = (0..records.len())
            .step_by(records_per_message)
            .map(|start| start..(start + records_per_message).min(records.len()))
            .rev()
            .collect();
        let mut parts = Vec::new();
        while let Some(range) = pending.pop() {
            let reply = part(range.clone());
            if range.len() > 1 && serde_json::to_vec(&reply)?.len() > fits {
                let middle = range.start + range.len() / 2;
                pending.push(middle..range.end);
                pending.push(range.start..middle);
                continue;
            }
            parts.push(reply);
        }
        let count = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, reply)| {
                let reply = Reply {
                    part: Part {
                        index: i + 1,
                        count,
                    },
                    ..reply
                };
                let body = serde_json::to_vec(&reply)?;
                Ok((reply, body))
            })
            .collect()
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
        self.response = match self.dialect.as_deref().and_then(dialect::find) {
            Some(dialect) => dialect.response_without(&self.response, &self.records, &erased),
            // No dialect to say which entries are whose: nothing of the response is kept.
            None => serde_json::Value::Null,
        };
        self.records = dialect::without_positions(&self.records, &erased);
        self.counts = Counts::of(&self.records);
        erased.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

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
    fn a_small_reply_is_one_part() {
        let parts: Vec<Reply> = reply_with(3)
            .into_parts(10, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|(part, _)| part)
            .collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].part, Part { index: 1, count: 1 });
        assert_eq!(parts[0].records.len(), 3);
    }

    #[test]
    fn a_large_reply_is_split_and_every_record_appears_once() {
        let parts: Vec<Reply> = reply_with(25)
            .into_parts(10, 1 << 20)
            .unwrap()
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
        let parts = reply_with(100).into_parts(1_000, 4_096).unwrap();
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
