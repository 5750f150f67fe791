//! `dlq list | show | replay | purge`: the dead-letter queue for operators.
//!
//! Every command reads the queue the same way: `basic.get` one message at a time, without
//! acknowledging, up to the number of messages the queue held when the command started. A message
//! the command acts on is acknowledged once the action is done (for `replay`, once the copy on the
//! ingest queue is confirmed); every other message is held unacknowledged until the end and then
//! handed back with one `basic.nack` (requeue). Holding them is what stops a message that was handed
//! back from being read again and again, and if the command dies half-way the broker requeues what
//! it held, so reading never loses a message.
//!
//! Bodies hold customers' personal data: only `show`, asked for one message by its id, prints one.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::amqp::Publisher;
use crate::amqp::envelope::Envelope;
use crate::amqp::headers::{
    self, DEAD_LETTERED_AT, ERROR_ATTEMPTS, ERROR_CODE, ERROR_MESSAGE, REPLAY_COUNT, header_i64,
    header_str, value_i64, value_str,
};
use crate::amqp::publisher::{Delivered, Outgoing};
use crate::config::Settings;

/// The most of a body `show` prints: enough to read a batch's first records, not a 16 MiB wall.
const SHOW_BODY_LIMIT: usize = 64 * 1024;
/// `list` cuts the last error here so that one message stays on one line.
const LIST_ERROR_LIMIT: usize = 100;
/// Long runs report progress (on stderr) every this many messages read.
const PROGRESS_EVERY: u64 = 1_000;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One line per dead-lettered message: id, tenant, dialect, reason, attempts, age, last error.
    /// Never prints a body.
    List(ListArgs),
    /// One message's properties, headers and body (pretty-printed when it is JSON).
    Show(ShowArgs),
    /// Move messages back to the ingest queue, with their original properties and a `replay-count`.
    Replay(ReplayArgs),
    /// Delete messages from the dead-letter queue for good (needs --yes).
    Purge(PurgeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The message's id: its message_id, or the SHA-256 (hex) of its body when it has none.
    pub id: String,
}

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

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: Filters,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Confirm the deletion: without it nothing is deleted.
    #[arg(long)]
    pub yes: bool,
}

/// Which messages a command applies to; a message must pass every filter given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Only messages with this reason (the `error-code`, or the broker's dead-letter reason such as
    /// `delivery_limit`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only messages whose `tenant` header is this.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Act on at most this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Moving or deleting messages has to name them, or say "all" out loud.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// A message's id (message_id, or the SHA-256 of its body); repeat for several.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every message that passes the filters.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    // Refused before anything is read, so that a forgotten flag costs nothing.
    if let Command::Purge(args) = &command
        && !args.yes
        && !args.dry_run
    {
        bail!(
            "purge deletes messages for good and nothing is deleted without --yes \
             (run it with --dry-run first to see what it would delete)"
        );
    }

    // No automatic recovery: after a lost connection the unacknowledged messages are back in the
    // queue and this run's delivery tags mean nothing; the operator runs the command again.
    let connection = Connection::connect(
        settings.amqp.url(),
        ConnectionProperties::default().with_connection_name("customer-ingest dlq".into()),
    )
    .await
    .context("connecting to RabbitMQ")?;
    let result = match command {
        Command::List(args) => list(&settings, &connection, &args).await,
        Command::Show(args) => show(&settings, &connection, &args).await,
        Command::Replay(args) => replay(&settings, &connection, &args).await,
        Command::Purge(args) => purge(&settings, &connection, &args).await,
    };
    let _ = connection.close(200, "done".into()).await;
    result
}

async fn list(settings: &Settings, connection: &Connection, args: &ListArgs) -> anyhow::Result<()> {
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let now = Utc::now();
    let mut rows = vec![[
        "ID".to_owned(),
        "TENANT".to_owned(),
        "DIALECT".to_owned(),
        "REASON".to_owned(),
        "ATTEMPTS".to_owned(),
        "AGE".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    let limit = args.filters.limit.unwrap_or(usize::MAX);
    let result: anyhow::Result<()> = async {
        while rows.len() - 1 < limit {
            let Some(delivery) = queue.next().await? else {
                break;
            };
            queue.progress(&format!("listed {}", rows.len() - 1));
            let letter = DeadLetter::read(&delivery);
            if letter.passes(&args.filters, None) {
                rows.push([
                    printable(&letter.id),
                    printable(letter.tenant.as_deref().unwrap_or("-")),
                    printable(letter.dialect.as_deref().unwrap_or("-")),
                    printable(&letter.reason),
                    letter
                        .attempts
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    letter
                        .dead_lettered_at
                        .map_or_else(|| "-".to_owned(), |at| age(at, now)),
                    shorten(
                        &printable(letter.last_error.as_deref().unwrap_or("-")),
                        LIST_ERROR_LIMIT,
                    ),
                ]);
            }
        }
        Ok(())
    }
    .await;
    let read = queue.read;
    let returned = queue.hand_back().await;
    result.and(returned)?;

    // The free-text column goes last, so a long error does not push the others out of line.
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            write!(line, "{cell:<width$}  ")?;
        }
        line.push_str(&row[6]);
        writeln!(out, "{}", line.trim_end())?;
    }
    eprintln!(
        "{} listed of {read} read from {}",
        rows.len() - 1,
        settings.amqp.dead_letter_queue
    );
    Ok(())
}

async fn show(settings: &Settings, connection: &Connection, args: &ShowArgs) -> anyhow::Result<()> {
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let now = Utc::now();
    let mut found = 0usize;
    let result: anyhow::Result<()> = async {
        // Read to the end: a message dead-lettered twice has two copies, and the operator should see
        // both before replaying or purging by id.
        while let Some(delivery) = queue.next().await? {
            let letter = DeadLetter::read(&delivery);
            if letter.id != args.id {
                continue;
            }
            found += 1;
            let mut out = std::io::stdout().lock();
            if found > 1 {
                writeln!(out)?;
            }
            out.write_all(describe(&delivery, &letter, now).as_bytes())?;
        }
        Ok(())
    }
    .await;
    let returned = queue.hand_back().await;
    result.and(returned)?;
    if found == 0 {
        bail!(
            "no message with id {} in {}",
            args.id,
            settings.amqp.dead_letter_queue
        );
    }
    Ok(())
}

async fn replay(
    settings: &Settings,
    connection: &Connection,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let max_replays = i64::from(settings.dlq.max_replays);
    let ingest_queue = settings.amqp.ingest_queue.as_str();
    let publisher = Publisher::open(connection).await?;
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let ids = args.selection.ids();
    let limit = args.filters.limit.unwrap_or(usize::MAX);
    let (mut moved, mut skipped) = (0usize, 0usize);

    let result: anyhow::Result<()> = async {
        while moved < limit {
            let Some(delivery) = queue.next().await? else {
                break;
            };
            queue.progress(&format!("moved {moved}, skipped {skipped}"));
            let letter = DeadLetter::read(&delivery);
            if !letter.passes(&args.filters, ids.as_ref()) {
                continue;
            }
            let id = printable(&letter.id);
            if letter.replays >= max_replays {
                skipped += 1;
                println!(
                    "skipped {id}: replayed {} times already (dlq.max_replays is {max_replays})",
                    letter.replays
                );
                continue;
            }
            if args.dry_run {
                moved += 1;
                println!("would move {id} ({})", letter.label());
                continue;
            }
            // The copy must be confirmed on the ingest queue before the dead letter is removed: a crash
            // in between leaves two copies (the batch id makes the second harmless), never none.
            let delivered = publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key: ingest_queue,
                    body: &delivery.data,
                    properties: replay_properties(&delivery.properties, letter.replays + 1),
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
            queue.remove(&delivery).await.with_context(|| {
                format!(
                    "{id} was copied to {ingest_queue} but its dead letter could not be removed"
                )
            })?;
            moved += 1;
            println!("moved {id} ({})", letter.label());
        }
        Ok(())
    }
    .await;
    let returned = queue.hand_back().await;
    if args.dry_run {
        println!("dry run: would move {moved}, would skip {skipped}; nothing was moved");
    } else {
        println!("moved {moved}, skipped {skipped}");
    }
    result.and(returned)
}

async fn purge(
    settings: &Settings,
    connection: &Connection,
    args: &PurgeArgs,
) -> anyhow::Result<()> {
    let mut queue = DeadLetterQueue::open(connection, &settings.amqp.dead_letter_queue).await?;
    let ids = args.selection.ids();
    let limit = args.filters.limit.unwrap_or(usize::MAX);
    let mut deleted = 0usize;

    let result: anyhow::Result<()> = async {
        while deleted < limit {
            let Some(delivery) = queue.next().await? else {
                break;
            };
            queue.progress(&format!("deleted {deleted}"));
            let letter = DeadLetter::read(&delivery);
            if !letter.passes(&args.filters, ids.as_ref()) {
                continue;
            }
            let id = printable(&letter.id);
            if args.dry_run {
                deleted += 1;
                println!("would delete {id} ({})", letter.label());
                continue;
            }
            queue
                .remove(&delivery)
                .await
                .with_context(|| format!("deleting {id}"))?;
            deleted += 1;
            println!("deleted {id} ({})", letter.label());
        }
        Ok(())
    }
    .await;
    let returned = queue.hand_back().await;
    if args.dry_run {
        println!("dry run: would delete {deleted}; nothing was deleted");
    } else {
        println!("deleted {deleted}");
    }
    result.and(returned)
}

impl Selection {
    /// The ids asked for, or `None` for `--all`.
    fn ids(&self) -> Option<HashSet<String>> {
        (!self.all).then(|| self.ids.iter().cloned().collect())
    }
}

/// One pass over the dead-letter queue; see the module comment for why it holds what it reads.
struct DeadLetterQueue {
    channel: Channel,
    name: String,
    /// The messages in the queue when the pass started: reading stops there, so that nothing is
    /// read twice and a queue that keeps filling does not keep the pass going.
    total: u32,
    read: u64,
    /// Messages read and neither acknowledged nor handed back yet.
    held: u64,
}

impl DeadLetterQueue {
    async fn open(connection: &Connection, name: &str) -> anyhow::Result<Self> {
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

    /// Removes a message for good.
    async fn remove(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        if !delivery.acker.ack(BasicAckOptions::default()).await? {
            bail!("the channel closed before the acknowledgement was sent");
        }
        self.held -= 1;
        Ok(())
    }

    fn progress(&self, done: &str) {
        if self.read.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("read {} of {}: {done}", self.read, self.total);
        }
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

/// What an operator needs to decide about a dead letter, from its properties and headers.
#[derive(Debug)]
struct DeadLetter {
    /// The batch id: `message_id`, or the SHA-256 of the body, exactly as the pipeline names it.
    id: String,
    tenant: Option<String>,
    dialect: Option<String>,
    /// This service's `error-code`, or the broker's reason (`delivery_limit`, `rejected`, ...).
    reason: String,
    /// Unknown for a message the broker dead-lettered: it was never answered, only redelivered.
    last_error: Option<String>,
    attempts: Option<i64>,
    dead_lettered_at: Option<DateTime<Utc>>,
    /// From `replay-count`, a plain header (`x-` headers belong to the broker). The pipeline copies a
    /// message's headers onto the dead letter it makes, so the count survives a replay that fails
    /// again and `dlq.max_replays` can stop a message going round for ever.
    replays: i64,
}

impl DeadLetter {
    fn read(delivery: &Delivery) -> Self {
        let envelope = Envelope::read(&delivery.properties, &delivery.data);
        let headers = delivery.properties.headers();
        let death = latest_death(headers);
        let reason = header_str(headers, ERROR_CODE)
            .map(str::to_owned)
            .or_else(|| death.as_ref().and_then(|d| d.reason.clone()))
            .or_else(|| header_str(headers, headers::X_FIRST_DEATH_REASON).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        // Not `x-delivery-count`: on a delivery from the dead-letter queue it counts the dead-letter
        // queue's own deliveries, which is to say how often someone listed it.
        let attempts =
            header_i64(headers, ERROR_ATTEMPTS).or_else(|| death.as_ref().and_then(|d| d.count));
        let dead_lettered_at = header_str(headers, DEAD_LETTERED_AT)
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| death.as_ref().and_then(|d| d.time));
        DeadLetter {
            id: envelope.batch_id,
            tenant: envelope.tenant,
            dialect: envelope.dialect,
            reason,
            last_error: header_str(headers, ERROR_MESSAGE).map(str::to_owned),
            attempts,
            dead_lettered_at,
            replays: header_i64(headers, REPLAY_COUNT).unwrap_or(0),
        }
    }

    fn passes(&self, filters: &Filters, ids: Option<&HashSet<String>>) -> bool {
        ids.is_none_or(|ids| ids.contains(&self.id))
            && filters.reason.as_ref().is_none_or(|r| *r == self.reason)
            && filters
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == self.tenant.as_ref())
    }

    /// What `replay` and `purge` print after the id.
    fn label(&self) -> String {
        printable(&format!(
            "tenant {}, reason {}",
            self.tenant.as_deref().unwrap_or("-"),
            self.reason
        ))
    }
}

/// The newest entry of the broker's `x-death` header (RabbitMQ keeps the most recent first).
struct Death {
    reason: Option<String>,
    count: Option<i64>,
    time: Option<DateTime<Utc>>,
}

fn latest_death(headers: &Option<FieldTable>) -> Option<Death> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.as_ref()?.inner().get(headers::X_DEATH)
    else {
        return None;
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        return None;
    };
    let field = |name: &str| death.inner().get(name);
    Some(Death {
        reason: field("reason").and_then(value_str).map(str::to_owned),
        count: field("count").and_then(value_i64),
        time: match field("time") {
            Some(AMQPValue::Timestamp(seconds)) => timestamp(*seconds),
            _ => None,
        },
    })
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

/// Everything `show` prints about one message.
fn describe(delivery: &Delivery, letter: &DeadLetter, now: DateTime<Utc>) -> String {
    let mut text = String::new();
    let p = &delivery.properties;
    let mut line = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(text, "  {name:<18}{value}");
        }
    };
    let short = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|v| printable(v.as_str()));

    let at = letter.dead_lettered_at.map(|at| {
        format!(
            "{} ({} ago)",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            age(at, now)
        )
    });
    let mut out = format!("message {}\n", printable(&letter.id));
    let mut summary = |name: &str, value: Option<String>| {
        let _ = writeln!(
            out,
            "  {name:<18}{}",
            value.unwrap_or_else(|| "-".to_owned())
        );
    };
    summary("reason", Some(printable(&letter.reason)));
    summary("last error", letter.last_error.as_deref().map(printable));
    summary("attempts", letter.attempts.map(|n| n.to_string()));
    summary("dead-lettered", at);
    summary("replays", Some(letter.replays.to_string()));

    line("message_id", short(p.message_id()));
    line("type", short(p.kind()));
    line("correlation_id", short(p.correlation_id()));
    line("reply_to", short(p.reply_to()));
    line("content_type", short(p.content_type()));
    line("content_encoding", short(p.content_encoding()));
    line("delivery_mode", p.delivery_mode().map(|v| v.to_string()));
    line("priority", p.priority().map(|v| v.to_string()));
    line("timestamp", p.timestamp().as_ref().map(render_timestamp));
    line("expiration", short(p.expiration()));
    line("app_id", short(p.app_id()));
    line("user_id", short(p.user_id()));
    out.push_str("properties:\n");
    out.push_str(&text);

    out.push_str("headers:\n");
    let headers = p.headers().iter().flatten();
    // Header names are the producer's and the broker's (`x-first-death-exchange`): as wide as needed.
    let width = headers
        .clone()
        .map(|(name, _)| name.as_str().chars().count() + 2)
        .fold(18, usize::max);
    for (name, value) in headers {
        let name = printable(name.as_str());
        let _ = writeln!(out, "  {name:<width$}{}", render(value));
    }

    let body = &delivery.data;
    // Checked without building a value, so an object's keys print in the producer's order.
    let (kind, mut text, truncated) =
        if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            let text = std::str::from_utf8(body).expect("valid JSON is UTF-8");
            let (pretty, truncated) = pretty_json(text, SHOW_BODY_LIMIT);
            ("JSON", pretty, truncated)
        } else {
            let text = String::from_utf8_lossy(body);
            let (text, truncated) = printable_text(&text, SHOW_BODY_LIMIT);
            ("not JSON, shown as text", text, truncated)
        };
    let _ = writeln!(out, "body ({} bytes, {kind}):", body.len());
    if truncated {
        let _ = write!(
            text,
            "\n[... cut at {} KiB; the body is {} bytes]",
            SHOW_BODY_LIMIT / 1024,
            body.len()
        );
    }
    out.push_str(&text);
    out.push('\n');
    out
}

/// Re-indents JSON text (already known to be valid) two spaces a level, keeping the producer's key
/// order, and stops once `limit` bytes are written. Returns the text and whether it was cut.
fn pretty_json(json: &str, limit: usize) -> (String, bool) {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
    let is_space = |c: &char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let mut out = String::with_capacity(json.len().min(limit) + 64);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= limit {
            return (out, true);
        }
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(is_space).is_some() {}
                // An empty object or array stays on its line.
                if let Some(close) = chars.next_if(|n| matches!(n, '}' | ']')) {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if is_space(&c) => {}
            c => out.push(c),
        }
    }
    (out, false)
}

/// A header value as one line of text.
fn render(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::DecimalValue(v) => format!("{}e-{}", v.value, v.scale),
        AMQPValue::ShortString(v) => printable(v.as_str()),
        AMQPValue::LongString(v) => printable(&String::from_utf8_lossy(v.as_bytes())),
        AMQPValue::FieldArray(values) => format!(
            "[{}]",
            values
                .as_slice()
                .iter()
                .map(render)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(table) => format!(
            "{{{}}}",
            table
                .inner()
                .iter()
                .map(|(name, value)| format!("{}: {}", printable(name.as_str()), render(value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::Timestamp(seconds) => render_timestamp(seconds),
        AMQPValue::ByteArray(bytes) => format!("0x{}", hex::encode(bytes.as_slice())),
        AMQPValue::Void => "(void)".to_owned(),
        other => value_i64(other).map_or_else(|| format!("{other:?}"), |n| n.to_string()),
    }
}

fn render_timestamp(seconds: &u64) -> String {
    timestamp(*seconds).map_or_else(
        || seconds.to_string(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn timestamp(seconds: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)
}

/// "42s", "17m", "5h", "3d": how long ago, coarsely.
fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Header values and ids come from producers: control characters are escaped so that none of them
/// can break a line of the listing or drive the operator's terminal.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A body that is not JSON, as text: line breaks and tabs kept, other control characters escaped,
/// cut after `limit` bytes. Returns the text and whether it was cut.
fn printable_text(text: &str, limit: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(limit));
    for c in text.chars() {
        if out.len() >= limit {
            return (out, true);
        }
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    (out, false)
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn long(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    #[test]
    fn pretty_json_keeps_the_key_order_and_stops_at_the_limit() {
        let body = r#"[{"z":1,"a":{"s":"a, \"b\": [c]"},"e":[],"o":{ }}]"#;
        let (pretty, cut) = pretty_json(body, 1024);
        assert!(!cut);
        assert_eq!(
            pretty,
            "[\n  {\n    \"z\": 1,\n    \"a\": {\n      \"s\": \"a, \\\"b\\\": [c]\"\n    },\n    \
             \"e\": [],\n    \"o\": {}\n  }\n]"
        );
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(
            reparsed,
            serde_json::from_str::<serde_json::Value>(body).unwrap()
        );

        let (short, cut) = pretty_json(body, 10);
        assert!(cut);
        assert!(short.len() <= 11, "{short}");
    }

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

    #[test]
    fn a_broker_dead_letter_takes_its_reason_count_and_time_from_x_death() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert(
            headers::X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(headers::X_FIRST_DEATH_REASON.into(), long("rejected"));
        headers.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(7));
        let mut delivery = Delivery::mock(1, "".into(), "".into(), false, b"[]".to_vec());
        delivery.properties = BasicProperties::default().with_headers(headers);

        let letter = DeadLetter::read(&delivery);
        assert_eq!(letter.reason, "delivery_limit");
        assert_eq!(letter.attempts, Some(1));
        assert_eq!(letter.last_error, None);
        assert_eq!(letter.dead_lettered_at, timestamp(1_700_000_000));
        assert_eq!(
            letter.id.len(),
            64,
            "no message_id: the SHA-256 of the body"
        );
    }

    #[test]
    fn control_characters_in_producer_text_are_escaped() {
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("plain"), "plain");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
