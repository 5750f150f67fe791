//! `publish FILE --type DIALECT --tenant T [--gzip | --zstd] [--wait]`: how a person tries the
//! service by hand.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::amqp::connection::user_of;
use crate::amqp::headers::{self, ProducerMessage, header_i64};
use crate::amqp::publisher::Outgoing;
use crate::amqp::{Publisher, connect, topology};
use crate::cli::progress::Progress;
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The request body, exactly as the dialect's API takes it.
    pub file: PathBuf,
    /// The dialect (the message's `type` property), e.g. upsert-by-customer-id.
    #[arg(long = "type")]
    pub dialect: String,
    #[arg(long)]
    pub tenant: String,
    /// The batch id; defaults to the SHA-256 of the body as sent (compressed, with --gzip or --zstd).
    #[arg(long)]
    pub message_id: Option<String>,
    /// Sends the body gzip-compressed (`content_encoding` `gzip`).
    #[arg(long, conflicts_with = "zstd")]
    pub gzip: bool,
    /// Sends the body Zstandard-compressed (`content_encoding` `zstd`).
    #[arg(long)]
    pub zstd: bool,
    /// Wait for the reply and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<()> {
    let body =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let (body, content_encoding) = compress(body, args.gzip, args.zstd)?;
    let connection = connect(&settings.amqp, "customer-ingest publish").await?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, &settings.amqp).await?;

    let correlation_id = uuid::Uuid::new_v4().to_string();
    let mut properties = ProducerMessage {
        dialect: Some(&args.dialect),
        tenant: Some(&args.tenant),
        message_id: args.message_id.as_deref(),
        correlation_id: Some(&correlation_id),
        reply_to: None,
    }
    .properties()
    // Who publishes, for `auth.mode = "user-id"`: the broker accepts only the connection's own user.
    .with_user_id(user_of(settings.amqp.url()).into());
    if let Some(encoding) = content_encoding {
        properties = properties.with_content_encoding(encoding.into());
    }

    let mut replies = None;
    if args.wait {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        properties = properties.with_reply_to(queue.name().clone());
        replies = Some(
            channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }

    Publisher::open(&connection)
        .await?
        .with_patience(settings.amqp.recovery_timeout())
        .publish(Outgoing {
            exchange: "",
            routing_key: &settings.amqp.ingest_queue,
            body: &body,
            properties,
            mandatory: true,
        })
        .await?;
    eprintln!(
        "published {} bytes to {}",
        body.len(),
        settings.amqp.ingest_queue
    );

    if let Some(mut replies) = replies {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        let mut progress = Progress::new();
        let mut received = 0;
        loop {
            let delivery = tokio::time::timeout_at(deadline, replies.next())
                .await
                .context("no reply before the timeout")?
                .context("the reply consumer ended")??;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            let reply: serde_json::Value =
                serde_json::from_slice(&delivery.data).context("the reply is not JSON")?;
            progress.finish();
            println!("{}", serde_json::to_string_pretty(&reply)?);
            let parts = header_i64(delivery.properties.headers(), headers::PARTS).unwrap_or(1);
            received += 1;
            if parts > 1 {
                progress.update(&format!("received reply part {received} of {parts}"));
            }
            if received >= parts {
                break;
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The body as it is sent, and its `content_encoding`: compressed when asked, so that a batch larger
/// than the broker's message limit can still be published.
fn compress(
    body: Vec<u8>,
    gzip: bool,
    zstd: bool,
) -> anyhow::Result<(Vec<u8>, Option<&'static str>)> {
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&body)?;
        return Ok((encoder.finish()?, Some("gzip")));
    }
    if zstd {
        return Ok((zstd::encode_all(&body[..], 3)?, Some("zstd")));
    }
    Ok((body, None))
}
