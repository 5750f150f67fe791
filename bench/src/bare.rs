//! The broker's ceiling (`bare_publish`): what RabbitMQ spends per event when it has nothing else to
//! do. The event messages a per-customer insert phase delivered (same routing keys, properties and
//! bodies) are published again as the relay publishes them: persistent, with the service's
//! publisher, a confirm window of `relay.batch_size` messages (all of a window published, then
//! every confirm awaited, as `Publisher::publish_all` does), to a fresh events exchange bound to an
//! observer like the phases' own. No database, no worker.

use std::time::Duration;

use anyhow::Context;
use customer_ingest::amqp::Publisher;
use customer_ingest::amqp::publisher::Outgoing;
use customer_ingest::config::Settings;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use tokio::time::Instant;

use crate::Args;
use crate::cleanup::{Ledger, Leftovers, clean};
use crate::connect::{CALL_PATIENCE, amqp_connection, within};
use crate::cpu::{Attribution, CpuWatch, broker_idle_cores};
use crate::observer::{Captured, Observer};
use crate::report::{BarePublish, per_unit, round};

pub async fn bare_publish(
    settings: &Settings,
    args: &Args,
    run_id: &str,
    ledger: &Ledger,
    events: Vec<Captured>,
    deadline: Instant,
) -> anyhow::Result<BarePublish> {
    let prefix = format!("bench.{run_id}.bare");
    let exchange = format!("{prefix}.events");
    let queue = format!("{prefix}.observer");
    let own = Leftovers {
        queues: vec![queue.clone()],
        exchanges: vec![exchange.clone()],
        databases: Vec::new(),
    };
    ledger.record(&own);
    let window = usize::try_from(settings.relay.batch_size.max(1)).unwrap_or(usize::MAX);
    eprintln!(
        "bench: bare_publish: {} event messages, confirm window {window}",
        events.len()
    );
    let outcome =
        publish_and_observe(settings, args, &exchange, &queue, &events, window, deadline).await;
    let cleaned = clean(settings, &own).await;
    if cleaned.is_ok() {
        ledger.forget(&own);
    }
    let measured = outcome?;
    cleaned?;
    eprintln!(
        "bench: bare_publish: {:.0} events/s, RabbitMQ {:.1} µs per event",
        measured.events_per_sec,
        measured.broker_us_per_event.unwrap_or(0.0)
    );
    Ok(measured)
}

async fn publish_and_observe(
    settings: &Settings,
    args: &Args,
    exchange: &str,
    queue: &str,
    events: &[Captured],
    window: usize,
    deadline: Instant,
) -> anyhow::Result<BarePublish> {
    // As in a rig: publishing and consuming on separate connections.
    let publishing = amqp_connection(settings, "customer-ingest bench bare publisher").await?;
    let consuming = amqp_connection(settings, "customer-ingest bench bare observer").await?;
    let observer = within(
        CALL_PATIENCE,
        "declaring the bare_publish topology",
        async {
            let channel = publishing.create_channel().await?;
            // As `topology::declare` declares the events exchange.
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "declared".into()).await;
            Observer::start(&consuming, queue, exchange).await
        },
    )
    .await?;
    let publisher = within(
        CALL_PATIENCE,
        "opening the bare_publish publisher",
        Publisher::open(&publishing),
    )
    .await?
    .with_patience(Duration::from_secs(args.timeout));
    let outgoing: Vec<Outgoing> = events
        .iter()
        .map(|event| Outgoing {
            exchange,
            routing_key: &event.routing_key,
            body: &event.body,
            properties: event.properties.clone(),
            mandatory: false,
        })
        .collect();
    let mut counts = observer.counts.clone();
    let n = events.len() as u64;
    let rabbitmq_idle_cores = broker_idle_cores().await;

    let cpu = CpuWatch::start(Attribution {
        workers: Vec::new(),
        database: String::new(),
    });
    let started = Instant::now();
    tokio::time::timeout_at(deadline, async {
        for confirm_window in outgoing.chunks(window) {
            publisher
                .publish_all(confirm_window)
                .await
                .context("publishing events")?;
        }
        counts
            .wait_for(|c| c.messages >= n)
            .await
            .context("the bare_publish observer stopped")?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| {
        format!(
            "bare_publish: {} of {n} events observed before the timeout",
            observer.counts.borrow().messages
        )
    })??;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.finish(seconds).await;
    drop(observer);
    let _ = tokio::time::timeout(CALL_PATIENCE, async {
        let _ = publishing.close(200, "bench done".into()).await;
        let _ = consuming.close(200, "bench done".into()).await;
    })
    .await;
    Ok(BarePublish {
        events: events.len(),
        confirm_window: window,
        seconds: round(seconds, 3),
        events_per_sec: round(n as f64 / seconds, 0),
        broker_us_per_event: cpu.micros_per("rabbitmq", n).map(|us| round(us, 2)),
        cpu_us_per_event: per_unit(&cpu, n),
        rabbitmq_idle_cores,
        cpu,
    })
}
