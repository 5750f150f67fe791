//! Typed settings: the defaults in `config/default.toml` (compiled in), an optional file, then
//! `INGEST__SECTION__KEY` environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub pipeline: PipelineSettings,
    pub relay: RelaySettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub dlq: DlqSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// Holds credentials, so it never prints.
    pub url: SecretString,
    pub ingest_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
    pub results_queue: String,
    pub delivery_limit: u32,
    pub prefetch: u16,
    pub recovery_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Holds credentials, so it never prints.
    pub url: SecretString,
    pub max_connections: u32,
    pub lock_timeout_ms: u64,
    pub retry_budget_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineSettings {
    pub concurrency: usize,
    pub chunk_size: usize,
    pub max_body_bytes: usize,
    pub max_records: usize,
    pub reply_records_per_message: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    pub batch_size: i64,
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DlqSettings {
    pub max_replays: u32,
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let settings: Settings = builder
            .add_source(
                // `prefix_separator` must be set as well: it would otherwise default to `_` in some
                // versions of `config`, and INGEST__AMQP__URL would not match.
                config::Environment::with_prefix("INGEST")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        // Deliveries prefetched beyond what is worked on would wait unacknowledged, and be handed
        // back by a closing channel as a delivery spent.
        anyhow::ensure!(
            u32::from(self.amqp.prefetch) as usize <= self.pipeline.concurrency,
            "invalid configuration: amqp.prefetch ({}) must be at most pipeline.concurrency ({}): \
             a prefetched message waiting for a free worker would spend a delivery when handed back",
            self.amqp.prefetch,
            self.pipeline.concurrency,
        );
        // Each message in hand holds one connection for its batch claim and needs another to work.
        anyhow::ensure!(
            self.database.max_connections as usize > self.pipeline.concurrency,
            "invalid configuration: database.max_connections ({}) must be more than \
             pipeline.concurrency ({}): each message in hand holds a connection for its batch \
             claim and needs another to work",
            self.database.max_connections,
            self.pipeline.concurrency,
        );
        let checks = [
            (
                self.pipeline.concurrency == 0,
                "pipeline.concurrency must be at least 1",
            ),
            (
                self.pipeline.chunk_size == 0,
                "pipeline.chunk_size must be at least 1",
            ),
            (
                self.pipeline.max_records == 0,
                "pipeline.max_records must be at least 1",
            ),
            (
                self.pipeline.reply_records_per_message == 0,
                "pipeline.reply_records_per_message must be at least 1",
            ),
            (self.amqp.prefetch == 0, "amqp.prefetch must be at least 1"),
            (
                self.amqp.delivery_limit == 0,
                "amqp.delivery_limit must be at least 1",
            ),
            (
                self.database.max_connections == 0,
                "database.max_connections must be at least 1",
            ),
            (
                self.relay.batch_size <= 0,
                "relay.batch_size must be at least 1",
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, message)) => anyhow::bail!("invalid configuration: {message}"),
            None => Ok(()),
        }
    }
}

impl AmqpSettings {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }

    pub fn recovery_timeout(&self) -> Duration {
        Duration::from_secs(self.recovery_timeout_secs)
    }
}

impl DatabaseSettings {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }

    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms)
    }

    pub fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_budget_secs)
    }
}

impl RelaySettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

impl ShutdownSettings {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_hold_the_documented_values() {
        let settings = Settings::load(None).expect("defaults load");
        assert_eq!(settings.amqp.url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(settings.amqp.ingest_queue, "customers.ingest");
        assert_eq!(settings.amqp.delivery_limit, 5);
        assert_eq!(settings.pipeline.chunk_size, 500);
        assert_eq!(settings.http.addr.port(), 9464);
    }

    #[test]
    fn secrets_do_not_print() {
        let settings = Settings::load(None).expect("defaults load");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("guest:guest"), "{printed}");
        assert!(!printed.contains("postgres:postgres"), "{printed}");
    }
}
