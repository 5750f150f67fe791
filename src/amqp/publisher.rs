//! Publishing with publisher confirms: a message counts as sent only once the broker has confirmed it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

use super::topology;
use crate::config::AmqpSettings;
use crate::health::Health;

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
    /// Ask the broker to return the message if no queue takes it.
    pub mandatory: bool,
}

/// What the broker said about a confirmed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    Routed,
    /// Confirmed, but no queue took it (only reported for mandatory messages).
    Unroutable,
}

/// A channel in confirm mode. Cloning shares the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Arc<Mutex<Channel>>,
    /// How a channel the broker closed is replaced; `None` for a publisher that gives up instead.
    reopen: Option<Arc<Reopen>>,
    /// Bounds both the wait for the connection to recover and the wait for confirms: a confirm
    /// owed by a connection that is gone may never arrive.
    patience: Duration,
}

/// What the worker's publisher needs to replace a channel the broker closed.
struct Reopen {
    connection: Arc<Connection>,
    topology: AmqpSettings,
    health: Health,
    /// One reopening at a time: the publishes that failed together get one new channel.
    reopening: tokio::sync::Mutex<()>,
}

const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// How many times one publish waits for the connection to recover before giving up.
const RECOVERY_ATTEMPTS: usize = 3;

impl Publisher {
    /// A publisher on a new channel of `connection`. A channel the broker closes ends it: every
    /// later publish fails.
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
        Ok(Self {
            channel: Arc::new(Mutex::new(confirming_channel(connection).await?)),
            reopen: None,
            patience: DEFAULT_PATIENCE,
        })
    }

    /// The worker's publisher: a channel the broker closes (a publish to a deleted exchange, a
    /// message over the broker's size limit) is replaced by a new one, after the topology is
    /// declared again, and `health` reports not ready while no channel can be opened.
    pub async fn reopening(
        connection: Arc<Connection>,
        topology: AmqpSettings,
        health: Health,
    ) -> anyhow::Result<Self> {
        let channel = confirming_channel(&connection).await?;
        health.set_publishing(true);
        Ok(Self {
            channel: Arc::new(Mutex::new(channel)),
            reopen: Some(Arc::new(Reopen {
                connection,
                topology,
                health,
                reopening: tokio::sync::Mutex::new(()),
            })),
            patience: DEFAULT_PATIENCE,
        })
    }

    fn channel(&self) -> Channel {
        self.channel.lock().unwrap().clone()
    }

    /// Replaces `failed` if the broker closed it while the connection is up; returns whether a
    /// publish can be tried again on a new channel. A channel that fails because the connection is
    /// gone is left to lapin's recovery.
    async fn replace_closed(&self, failed: &Channel) -> anyhow::Result<bool> {
        let Some(reopen) = &self.reopen else {
            return Ok(false);
        };
        let status = failed.status();
        if status.connected() || status.reconnecting() || !reopen.connection.status().connected() {
            return Ok(false);
        }
        let _one_at_a_time = reopen.reopening.lock().await;
        if self.channel().id() != failed.id() {
            // Another publish has replaced it meanwhile.
            return Ok(true);
        }
        reopen.health.set_publishing(false);
        tracing::warn!("the broker closed the publishing channel; opening a new one");
        let channel = confirming_channel(&reopen.connection).await?;
        topology::declare(&channel, &reopen.topology)
            .await
            .context("declaring queues and exchanges again")?;
        *self.channel.lock().unwrap() = channel;
        reopen.health.set_publishing(true);
        tracing::info!("publishing channel reopened and topology declared again");
        Ok(true)
    }

    /// How long a publish waits for recovery or confirms before it fails.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Publishes one message and waits for its confirm; a broker nack is an error.
    pub async fn publish(&self, message: Outgoing<'_>) -> anyhow::Result<Delivered> {
        let mut results = self.publish_all(std::slice::from_ref(&message)).await?;
        Ok(results.remove(0))
    }

    /// Publishes every message, then waits for all their confirms, so a batch costs one round trip
    /// rather than one per message. Either every message is confirmed or an error is returned (some
    /// may have been delivered: callers publish only what is safe to publish twice).
    pub async fn publish_all(&self, messages: &[Outgoing<'_>]) -> anyhow::Result<Vec<Delivered>> {
        let mut attempt = 0;
        loop {
            let channel = self.channel();
            let attempted =
                tokio::time::timeout(self.patience, try_publish_all(&channel, messages))
                    .await
                    .map_err(|_| anyhow!("no publisher confirm within {:?}", self.patience))?;
            match attempted {
                Ok(confirmations) => return confirmations.into_iter().map(delivered).collect(),
                Err(error) if attempt < RECOVERY_ATTEMPTS => {
                    attempt += 1;
                    // Bounded: a connection failing at the same moment may leave the new channel
                    // waiting for a recovery that never comes.
                    let replaced =
                        tokio::time::timeout(self.patience, self.replace_closed(&channel))
                            .await
                            .map_err(|_| {
                                anyhow!("no new publishing channel within {:?}", self.patience)
                            })??;
                    if replaced {
                        continue;
                    }
                    tracing::warn!(error = %error, "publish failed; waiting for the connection to recover");
                    tokio::time::timeout(self.patience, channel.wait_for_recovery(error))
                        .await
                        .map_err(|_| {
                            anyhow!(
                                "the connection to RabbitMQ did not recover within {:?}",
                                self.patience
                            )
                        })?
                        .context("the connection to RabbitMQ did not recover")?;
                }
                Err(error) => return Err(error).context("publishing to RabbitMQ"),
            }
        }
    }
}

async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a publishing channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    Ok(channel)
}

/// Hands every message to the connection before waiting for any: lapin queues a message's frames
/// on the first poll of its publish, then waits for its I/O thread to write them. Awaiting each
/// publish in turn costs two thread wake-ups and one socket write per message; polling each once, in
/// order, queues them in order and lets the I/O thread write many at a time.
async fn try_publish_all(
    channel: &Channel,
    messages: &[Outgoing<'_>],
) -> lapin::Result<Vec<Confirmation>> {
    let mut publishes = Vec::with_capacity(messages.len());
    for message in messages {
        let mut publish = Box::pin(channel.basic_publish(
            message.exchange.into(),
            message.routing_key.into(),
            BasicPublishOptions {
                mandatory: message.mandatory,
                ..BasicPublishOptions::default()
            },
            message.body,
            message.properties.clone(),
        ));
        let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
        publishes.push(match first {
            Poll::Ready(confirm) => Written::Now(confirm?),
            Poll::Pending => Written::Later(publish),
        });
    }
    let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(publishes.len());
    for publish in publishes {
        confirms.push(match publish {
            Written::Now(confirm) => confirm,
            Written::Later(publish) => publish.await?,
        });
    }
    let mut confirmations = Vec::with_capacity(confirms.len());
    for confirm in confirms {
        confirmations.push(confirm.await?);
    }
    Ok(confirmations)
}

/// A publish whose frames are queued: already written, or waiting for the I/O thread.
enum Written<F> {
    Now(PublisherConfirm),
    Later(Pin<Box<F>>),
}

fn delivered(confirmation: Confirmation) -> anyhow::Result<Delivered> {
    match confirmation {
        Confirmation::Ack(None) => Ok(Delivered::Routed),
        Confirmation::Ack(Some(_)) => Ok(Delivered::Unroutable),
        Confirmation::Nack(_) => bail!("the broker refused (nacked) a published message"),
        Confirmation::NotRequested => bail!("publisher confirms are not enabled on this channel"),
    }
}

/// Persistent (delivery mode 2) JSON message properties.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}
