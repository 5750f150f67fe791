//! The one pass over the dead-letter queue that every `dlq` command makes: what it reads, what it
//! holds and how it hands the rest back are decided here and nowhere else. What that guarantees is
//! in the comment on `cli::dlq`.

use anyhow::{Context, bail};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::letter::DeadLetter;
use crate::cli::progress::Progress;

/// Long runs report progress (on stderr) every this many messages read.
const PROGRESS_EVERY: u64 = 1_000;

/// What a command does with the messages of a scan.
pub(super) trait Visit {
    /// What the command has done so far, for the progress line of a long run; `None` for no line.
    fn progress(&self) -> Option<String>;

    /// Decides about one message. A message the command does not remove is held to the end of the
    /// scan and then handed back.
    async fn visit(&mut self, message: Message<'_>) -> anyhow::Result<Visited>;
}

/// What a command did with a message; `--limit` counts the messages acted on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Visited {
    /// Listed, shown, moved or deleted, or would have been in a dry run.
    Acted,
    /// Filtered out or skipped.
    Passed,
}

/// A message the scan read and holds, with what the command needs to decide about it.
pub(super) struct Message<'a> {
    pub(super) delivery: Delivery,
    pub(super) letter: DeadLetter,
    /// The scan's count of messages held: removing the message takes it off.
    held: &'a mut u64,
}

impl Message<'_> {
    /// Removes the message from the dead-letter queue for good.
    pub(super) async fn remove(self) -> anyhow::Result<()> {
        if !self.delivery.acker.ack(BasicAckOptions::default()).await? {
            bail!("the channel closed before the acknowledgement was sent");
        }
        *self.held -= 1;
        Ok(())
    }
}

/// One pass over the dead-letter queue.
pub(super) struct Scan {
    channel: Channel,
    name: String,
    /// The messages in the queue when the pass started: reading stops there, so that nothing is
    /// read twice and a queue that keeps filling does not keep the pass going.
    total: u32,
    read: u64,
    /// Messages read and neither acknowledged nor handed back yet.
    held: u64,
}

impl Scan {
    /// Opens the pass, failing if the queue does not exist.
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

    /// Shows `command` each message of the queue, up to the number the queue held when the pass
    /// was opened, until the command has acted on `limit` of them; then hands back every message
    /// still held, whether or not the command failed. Returns how many messages were read.
    pub(super) async fn run(
        mut self,
        limit: Option<usize>,
        command: &mut impl Visit,
    ) -> anyhow::Result<u64> {
        let result = self.visit_all(limit.unwrap_or(usize::MAX), command).await;
        let read = self.read;
        let returned = self.hand_back().await;
        result.and(returned).map(|()| read)
    }

    async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
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

    async fn visit_all(&mut self, limit: usize, command: &mut impl Visit) -> anyhow::Result<()> {
        let mut acted = 0usize;
        let mut progress = Progress::new();
        while acted < limit {
            let Some(delivery) = self.next().await? else {
                break;
            };
            if self.read.is_multiple_of(PROGRESS_EVERY)
                && let Some(done) = command.progress()
            {
                progress.update(&format!("read {} of {}: {done}", self.read, self.total));
            }
            let letter = DeadLetter::read(&delivery);
            let message = Message {
                delivery,
                letter,
                held: &mut self.held,
            };
            if command.visit(message).await? == Visited::Acted {
                acted += 1;
            }
        }
        Ok(())
    }

    /// Hands every message still held back to the queue. `basic.nack` (requeue) rather than closing
    /// the channel: RabbitMQ 4.3 and later do not count a nack against a quorum queue's delivery
    /// limit, while a message returned by a closing channel counts as a failed delivery.
    async fn hand_back(self) -> anyhow::Result<()> {
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
