//! Queues and exchanges, declared at start-up (declaring is idempotent while the arguments match).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use anyhow::Context;

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

/// Declares the queues and exchanges, or with `amqp.passive_topology` only checks that each exists
/// (for brokers where operators own the declarations and the worker's user may not configure).
pub async fn declare(channel: &Channel, settings: &AmqpSettings) -> anyhow::Result<()> {
    if settings.passive_topology {
        return check_exists(channel, settings).await;
    }
    declare_all(channel, settings).await?;
    Ok(())
}

/// Checks, by passive declares, that every queue and exchange the service uses exists. Bindings
/// cannot be checked this way: the operator binds the dead-letter queue to its exchange.
async fn check_exists(channel: &Channel, settings: &AmqpSettings) -> anyhow::Result<()> {
    let passive_exchange = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let passive_queue = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let missing = |what: &str, name: &str| {
        format!(
            "{what} {name:?} does not exist; with amqp.passive_topology the worker only checks the \
             topology, and an operator declares it (see README)"
        )
    };
    for (name, kind) in [
        (&settings.dead_letter_exchange, ExchangeKind::Fanout),
        (&settings.events_exchange, ExchangeKind::Topic),
    ] {
        channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                passive_exchange,
                FieldTable::default(),
            )
            .await
            .with_context(|| missing("exchange", name))?;
    }
    for name in [
        &settings.dead_letter_queue,
        &settings.ingest_queue,
        &settings.results_queue,
    ] {
        channel
            .queue_declare(name.as_str().into(), passive_queue, FieldTable::default())
            .await
            .with_context(|| missing("queue", name))?;
    }
    Ok(())
}

async fn declare_all(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
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
