//! Publishing with publisher confirms: a message counts as sent only once the broker has confirmed it.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

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
    channel: Channel,
    /// Bounds both the wait for the connection to recover and the wait for confirms: a confirm
    /// owed by a connection that is gone may never arrive.
    patience: Duration,
}

const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// How many times one publish waits for the connection to recover before giving up.
const RECOVERY_ATTEMPTS: usize = 3;

impl Publisher {
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a publishing channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Self {
            channel,
            patience: DEFAULT_PATIENCE,
        })
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
            let attempted = tokio::time::timeout(self.patience, self.try_publish_all(messages))
                .await
                .map_err(|_| anyhow!("no publisher confirm within {:?}", self.patience))?;
            match attempted {
                Ok(confirmations) => return confirmations.into_iter().map(delivered).collect(),
                Err(error) if attempt < RECOVERY_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %error, "publish failed; waiting for the connection to recover");
                    tokio::time::timeout(self.patience, self.channel.wait_for_recovery(error))
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

    async fn try_publish_all(&self, messages: &[Outgoing<'_>]) -> lapin::Result<Vec<Confirmation>> {
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = self
                .channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    message.body,
                    message.properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut confirmations = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            confirmations.push(confirm.await?);
        }
        Ok(confirmations)
    }
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
