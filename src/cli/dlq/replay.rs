//! `dlq replay`: dead letters back to the ingest queue.

use std::collections::HashSet;

use anyhow::{Context, bail};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

use super::scan::{Message, Scan, Visit, Visited};
use super::{Filters, Selection};
use crate::amqp::Publisher;
use crate::amqp::connection::user_of;
use crate::amqp::headers::{
    self, DEAD_LETTERED_AT, ERROR_ATTEMPTS, ERROR_CODE, ERROR_MESSAGE, REPLAY_COUNT, producer_user,
    vouched,
};
use crate::amqp::publisher::{Delivered, Outgoing};
use crate::cli::text::printable;
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: Filters,
    /// Print what would be moved and move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) async fn run(
    settings: &Settings,
    connection: &Connection,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let publisher = Publisher::open(connection).await?;
    let scan = Scan::open(connection, &settings.amqp.dead_letter_queue).await?;
    let mut replay = Replay {
        publisher,
        user: user_of(settings.amqp.url()),
        ingest_queue: &settings.amqp.ingest_queue,
        max_replays: i64::from(settings.dlq.max_replays),
        ids: args.selection.ids(),
        filters: &args.filters,
        dry_run: args.dry_run,
        moved: 0,
        skipped: 0,
    };
    let result = scan.run(args.filters.limit, &mut replay).await;
    let Replay { moved, skipped, .. } = replay;
    if args.dry_run {
        println!("dry run: would move {moved}, would skip {skipped}; nothing was moved");
    } else {
        println!("moved {moved}, skipped {skipped}");
    }
    result.map(drop)
}

/// Moves each selected message to the ingest queue, unless it went round too often already.
struct Replay<'a> {
    publisher: Publisher,
    /// The AMQP user this command publishes as. Run with the service's own settings, the copy it
    /// publishes keeps its producer's user (see [`headers::vouched`]).
    user: String,
    ingest_queue: &'a str,
    max_replays: i64,
    /// The ids asked for, or `None` for `--all`.
    ids: Option<HashSet<String>>,
    filters: &'a Filters,
    dry_run: bool,
    /// Moved, or that would be in a dry run.
    moved: usize,
    /// Passed the filters but replayed `dlq.max_replays` times already.
    skipped: usize,
}

impl Visit for Replay<'_> {
    fn progress(&self) -> Option<String> {
        Some(format!("moved {}, skipped {}", self.moved, self.skipped))
    }

    async fn visit(&mut self, message: Message<'_>) -> anyhow::Result<Visited> {
        let letter = &message.letter;
        if !letter.passes(self.filters, self.ids.as_ref()) {
            return Ok(Visited::Passed);
        }
        let id = printable(&letter.id);
        let max_replays = self.max_replays;
        if letter.replays >= max_replays {
            self.skipped += 1;
            println!(
                "skipped {id}: replayed {} times already (dlq.max_replays is {max_replays})",
                letter.replays
            );
            return Ok(Visited::Passed);
        }
        let label = letter.label();
        if self.dry_run {
            self.moved += 1;
            println!("would move {id} ({label})");
            return Ok(Visited::Acted);
        }
        let ingest_queue = self.ingest_queue;
        // The copy must be confirmed on the ingest queue before the dead letter is removed: a crash
        // in between leaves two copies (the batch id makes the second harmless), never none.
        let delivered = self
            .publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: ingest_queue,
                body: &message.delivery.data,
                properties: vouched(
                    replay_properties(&message.delivery.properties, letter.replays + 1),
                    producer_user(&message.delivery.properties, &self.user).as_deref(),
                    &self.user,
                ),
                mandatory: true,
            })
            .await
            .with_context(|| format!("replaying {id}; it stays in the dead-letter queue"))?;
        if delivered == Delivered::Unroutable {
            bail!(
                "replaying {id}: no queue named {ingest_queue} took it; it stays in the \
                 dead-letter queue"
            );
        }
        message.remove().await.with_context(|| {
            format!("{id} was copied to {ingest_queue} but its dead letter could not be removed")
        })?;
        self.moved += 1;
        println!("moved {id} ({label})");
        Ok(Visited::Acted)
    }
}

/// The properties of the copy `replay` publishes: the producer's own, with the dead-letter
/// bookkeeping taken off so that the pipeline sees a fresh message. Deliberately not copied:
/// `expiration` (a TTL from the first publish would expire the replay) and `user_id` (the broker
/// refuses a publish whose user_id is not the connection's user).
fn replay_properties(original: &BasicProperties, replays: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in original.headers().iter().flatten() {
        if !is_dead_letter_header(name.as_str()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers.insert(REPLAY_COUNT.into(), AMQPValue::LongLongInt(replays));
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        properties = properties.with_reply_to(v.clone());
    }
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.delivery_mode() {
        properties = properties.with_delivery_mode(*v);
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    properties
}

/// Headers that describe a dead-lettering rather than the message: the broker's own (it adds them
/// again if the message dies again, and a stale `x-delivery-count` would be read as this delivery's)
/// and the ones this service adds when it dead-letters a message.
fn is_dead_letter_header(name: &str) -> bool {
    matches!(
        name,
        headers::X_DEATH
            | headers::DELIVERY_COUNT
            | headers::ACQUIRED_COUNT
            | ERROR_CODE
            | ERROR_MESSAGE
            | ERROR_ATTEMPTS
            | DEAD_LETTERED_AT
    ) || name.starts_with(headers::X_FIRST_DEATH_PREFIX)
        || name.starts_with(headers::X_LAST_DEATH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::{header_i64, long_string as long};
    use lapin::types::FieldArray;

    #[test]
    fn replay_drops_the_dead_letter_headers_and_counts_the_replay() {
        let mut headers = FieldTable::default();
        headers.insert(headers::TENANT.into(), long("acme"));
        headers.insert(headers::OUTAGE_REQUEUES.into(), AMQPValue::LongLongInt(2));
        headers.insert(REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
        for name in [
            ERROR_CODE.to_owned(),
            ERROR_MESSAGE.to_owned(),
            DEAD_LETTERED_AT.to_owned(),
            headers::X_FIRST_DEATH_REASON.to_owned(),
            format!("{}queue", headers::X_FIRST_DEATH_PREFIX),
            format!("{}reason", headers::X_LAST_DEATH_PREFIX),
        ] {
            headers.insert(name.into(), long("x"));
        }
        headers.insert(ERROR_ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        headers.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(5));
        headers.insert(headers::ACQUIRED_COUNT.into(), AMQPValue::LongLongInt(6));
        headers.insert(
            headers::X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![])),
        );
        let original = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m1".into())
            .with_type("upsert-by-customer-id".into())
            .with_correlation_id("c1".into())
            .with_reply_to("replies".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_expiration("1000".into())
            .with_user_id("someone-else".into());

        let replayed = replay_properties(&original, 2);
        let names: Vec<&str> = replayed
            .headers()
            .iter()
            .flatten()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            names,
            [headers::OUTAGE_REQUEUES, REPLAY_COUNT, headers::TENANT]
        );
        assert_eq!(header_i64(replayed.headers(), REPLAY_COUNT), Some(2));
        assert_eq!(replayed.message_id(), original.message_id());
        assert_eq!(replayed.kind(), original.kind());
        assert_eq!(replayed.correlation_id(), original.correlation_id());
        assert_eq!(replayed.reply_to(), original.reply_to());
        assert_eq!(replayed.content_type(), original.content_type());
        assert_eq!(replayed.delivery_mode(), &Some(2));
        assert_eq!(replayed.expiration(), &None);
        assert_eq!(replayed.user_id(), &None);
    }
}
