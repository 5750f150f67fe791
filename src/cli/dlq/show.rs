//! `dlq show ID`: everything about one message, its body included.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::bail;
use chrono::{DateTime, Utc};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

use super::letter::{DeadLetter, timestamp};
use super::scan::{Message, Scan, Visit, Visited};
use crate::amqp::headers::value_i64;
use crate::cli::text::{age, printable};
use crate::config::Settings;

/// The most of a body `show` prints: enough to read a batch's first records, not a 16 MiB wall.
const SHOW_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The message's id: its message_id, or the SHA-256 (hex) of its body when it has none.
    pub id: String,
}

pub(super) async fn run(
    settings: &Settings,
    connection: &Connection,
    args: &ShowArgs,
) -> anyhow::Result<()> {
    let scan = Scan::open(connection, &settings.amqp.dead_letter_queue).await?;
    let mut showing = Showing {
        id: &args.id,
        now: Utc::now(),
        found: 0,
    };
    // No limit, read to the end: a message dead-lettered twice has two copies, and the operator
    // should see both before replaying or purging by id.
    scan.run(None, &mut showing).await?;
    if showing.found == 0 {
        bail!(
            "no message with id {} in {}",
            args.id,
            settings.amqp.dead_letter_queue
        );
    }
    Ok(())
}

/// Prints every message with the id asked for.
struct Showing<'a> {
    id: &'a str,
    now: DateTime<Utc>,
    found: usize,
}

impl Visit for Showing<'_> {
    fn progress(&self) -> Option<String> {
        None
    }

    async fn visit(&mut self, message: Message<'_>) -> anyhow::Result<Visited> {
        if message.letter.id != self.id {
            return Ok(Visited::Passed);
        }
        self.found += 1;
        let mut out = std::io::stdout().lock();
        if self.found > 1 {
            writeln!(out)?;
        }
        out.write_all(describe(&message.delivery, &message.letter, self.now).as_bytes())?;
        Ok(Visited::Acted)
    }
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
    // UTF-8 first: serde_json skips over a string without checking its bytes, so a body can pass
    // as JSON without being text.
    let (kind, mut text, truncated) = match std::str::from_utf8(body) {
        // Checked without building a value, so an object's keys print in the producer's order.
        Ok(json) if serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok() => {
            let (pretty, truncated) = pretty_json(json, SHOW_BODY_LIMIT);
            ("JSON", pretty, truncated)
        }
        Ok(text) => {
            let (text, truncated) = printable_text(text, SHOW_BODY_LIMIT);
            ("not JSON, shown as text", text, truncated)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let (text, truncated) = printable_text(&text, SHOW_BODY_LIMIT);
            (
                "not UTF-8, invalid bytes shown as \u{FFFD}",
                text,
                truncated,
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn show(body: &[u8]) -> String {
        let delivery = Delivery::mock(1, "".into(), "".into(), false, body.to_vec());
        let letter = DeadLetter::read(&delivery);
        describe(&delivery, &letter, Utc::now())
    }

    /// What `show` prints from the body on: the line naming its kind, then the body.
    fn body_part(shown: &str) -> &str {
        &shown[shown.find("body (").expect("a body line")..]
    }

    #[test]
    fn a_body_that_is_not_utf8_is_shown_with_its_bad_bytes_replaced() {
        // Shaped like JSON, but JSON is UTF-8: the byte inside the string makes it neither.
        let shown = show(b"[\"caf\xe9\"]");
        assert_eq!(
            body_part(&shown),
            "body (8 bytes, not UTF-8, invalid bytes shown as \u{FFFD}):\n[\"caf\u{FFFD}\"]\n"
        );

        let shown = show(b"\xff\xfe plain");
        assert_eq!(
            body_part(&shown),
            "body (8 bytes, not UTF-8, invalid bytes shown as \u{FFFD}):\n\u{FFFD}\u{FFFD} plain\n"
        );

        let shown = show(b"plain\ttext");
        assert_eq!(
            body_part(&shown),
            "body (10 bytes, not JSON, shown as text):\nplain\ttext\n"
        );
    }
}
