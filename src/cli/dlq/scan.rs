//! One pass over the dead-letter queue, shared by every `dlq` command.

use anyhow::{Context, bail};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// Long runs report progress (on stderr) every this many messages read.
const PROGRESS_EVERY: u64 = 1_000;

/// One pass over the dead-letter queue; see the module comment for why it holds what it reads.
pub(super) struct DeadLetterQueue {
    channel: Channel,
    name: String,
    /// The messages in the queue when the pass started: reading stops there, so that nothing is
    /// read twice and a queue that keeps filling does not keep the pass going.
    total: u32,
    pub(super) read: u64,
    /// Messages read and neither acknowledged nor handed back yet.
    held: u64,
}

impl DeadLetterQueue {
    pub(super) async fn open(connection: &Connection, name: &str) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        // Passive: an operator tool must not create a queue because a name was mistyped.
        let declared = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("the dead-letter queue {name} does not exist"))?;
        Ok(Self {
            channel,
            name: name.to_owned(),
            total: declared.message_count(),
            read: 0,
            held: 0,
        })
    }

    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.read >= u64::from(self.total) {
            return Ok(None);
        }
        let message = self
            .channel
            .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading {}", self.name))?;
        Ok(message.map(|message| {
            self.read += 1;
            self.held += 1;
            message.delivery
        }))
    }

    /// Removes a message for good.
    pub(super) async fn remove(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        if !delivery.acker.ack(BasicAckOptions::default()).await? {
            bail!("the channel closed before the acknowledgement was sent");
        }
        self.held -= 1;
        Ok(())
    }

    pub(super) fn progress(&self, done: &str) {
        if self.read.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("read {} of {}: {done}", self.read, self.total);
        }
    }

    /// Hands every message still held back to the queue. `basic.nack` (requeue) rather than closing
    /// the channel: RabbitMQ 4.3 and later do not count a nack against a quorum queue's delivery
    /// limit, while a message returned by a closing channel counts as a failed delivery.
    pub(super) async fn hand_back(self) -> anyhow::Result<()> {
        if self.held > 0 {
            // Delivery tag 0 with `multiple`: every message still unacknowledged on this channel.
            self.channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .context("handing messages back to the dead-letter queue")?;
        }
        let _ = self.channel.close(200, "done".into()).await;
        Ok(())
    }
}
