//! Queues and exchanges, declared at start-up (declaring is idempotent while the arguments match).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpSettings;

const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments
}

pub async fn declare(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };

    // Dead letters: whatever the ingest queue rejects or gives up on, whatever its routing key.
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    // Operators read the dead-letter queue by taking messages and handing them back; RabbitMQ 4.0
    // to 4.2 count each hand-back against a quorum queue's delivery limit (20 by default there) and
    // would drop a dead letter after a few reads. The limit is set far out of reach instead (-1 is
    // not "unlimited" on every version).
    let mut dead_letters = quorum_arguments();
    dead_letters.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
    );
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            durable,
            dead_letters,
        )
        .await?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // The delivery limit is explicit: RabbitMQ 3.x has no default (a poison message would loop
    // forever) and RabbitMQ 4 defaults to 20.
    let mut ingest = quorum_arguments();
    ingest.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(settings.delivery_limit.into()),
    );
    ingest.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(settings.dead_letter_exchange.as_str())),
    );
    channel
        .queue_declare(settings.ingest_queue.as_str().into(), durable, ingest)
        .await?;

    channel
        .exchange_declare(
            settings.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            settings.results_queue.as_str().into(),
            durable,
            quorum_arguments(),
        )
        .await?;
    Ok(())
}
