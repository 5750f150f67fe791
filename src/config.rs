//! Typed settings: the defaults in `config/default.toml` (compiled in), an optional file, then
//! `INGEST__SECTION__KEY` environment variables. [`Settings::to_env`] writes settings back as those
//! variables, for a child process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod security;
pub use security::SecuritySettings;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// The prefix and separator of the variables over the files: `INGEST__AMQP__URL` is `amqp.url`.
const ENV_PREFIX: &str = "INGEST";
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub pipeline: PipelineSettings,
    pub relay: RelaySettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub dlq: DlqSettings,
    pub auth: AuthSettings,
    pub idempotency: IdempotencySettings,
    pub telemetry: crate::telemetry::TelemetrySettings,
    pub events: crate::events::EventsSettings,
    pub security: SecuritySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Holds credentials, so it never prints and is never serialized (only [`Settings::to_env`]
    /// hands it on).
    #[serde(skip_serializing)]
    pub url: SecretString,
    pub ingest_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
    pub results_queue: String,
    pub delivery_limit: u32,
    pub prefetch: u16,
    pub recovery_timeout_secs: u64,
    /// Only check that the queues and exchanges exist (passive declares) instead of declaring
    /// them: for brokers where operators own the topology and the worker's user has no configure
    /// permission.
    pub passive_topology: bool,
    /// PEM file of the CA certificates that sign RabbitMQ's certificate, trusted besides the
    /// system's roots for an `amqps://` URL; empty: the system's roots only.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Holds credentials, so it never prints and is never serialized (only [`Settings::to_env`]
    /// hands it on).
    #[serde(skip_serializing)]
    pub url: SecretString,
    pub max_connections: u32,
    pub lock_timeout_ms: u64,
    pub retry_budget_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    pub concurrency: usize,
    pub chunk_size: usize,
    pub max_body_bytes: usize,
    /// The bodies of the messages being worked on, in bytes, at most: a message waits for room
    /// before it is started. Parsed, a body takes several times its size in memory.
    pub max_body_bytes_in_flight: usize,
    pub max_records: usize,
    pub reply_records_per_message: usize,
    /// Largest reply message body: a reply is split into parts by this as well as by
    /// `reply_records_per_message`, far below the broker's maximum message size.
    pub reply_max_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    pub batch_size: i64,
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlqSettings {
    pub max_replays: u32,
}

/// Who may write to which tenant. See [`AuthMode`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Each AMQP user and the tenants it may write. Read from a table of lists in a settings file,
    /// or from one variable holding the same as a JSON object
    /// (`INGEST__AUTH__TENANTS='{"erp-prod": ["acme", "globex"]}'`): variable names are
    /// lowercased and cannot hold every user name, a value can. Serialized as that JSON text, so
    /// that [`Settings::to_env`] can hand it on.
    #[serde(
        serialize_with = "tenants_as_json",
        deserialize_with = "tenants_from_table_or_json"
    )]
    pub tenants: BTreeMap<String, Vec<String>>,
}

/// Whose word a message's tenant is taken on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// The `tenant` header is believed as sent: anyone who can publish to the ingest queue writes
    /// to any tenant. For an install with a single producer; the service warns of it at start-up.
    #[default]
    Open,
    /// Every message carries the AMQP `user_id` property, which RabbitMQ checks equals the
    /// publishing connection's user, and may write only the tenants `auth.tenants` lists for that
    /// user.
    UserId,
}

fn tenants_as_json<S: serde::Serializer>(
    tenants: &BTreeMap<String, Vec<String>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = serde_json::to_string(tenants).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

fn tenants_from_table_or_json<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tenants {
        Table(BTreeMap<String, Vec<String>>),
        Json(String),
    }
    match Tenants::deserialize(deserializer)? {
        Tenants::Table(tenants) => Ok(tenants),
        Tenants::Json(text) => serde_json::from_str(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "auth.tenants must be a table of lists, or a JSON object of lists such as \
                 {{\"erp-prod\": [\"acme\"]}}: {error}"
            ))
        }),
    }
}

/// How long a batch's stored reply and bookkeeping are kept (see [`crate::store::retention`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// A batch completed longer ago than this is forgotten: a redelivery after it is applied again.
    pub retention_hours: u64,
    /// How often each worker looks for expired bookkeeping.
    pub sweep_interval_secs: u64,
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, None)
    }

    /// As [`Settings::load`], reading `environment` instead of the process's variables if given.
    fn load_from(
        file: Option<&Path>,
        environment: Option<config::Map<String, String>>,
    ) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let settings: Settings = builder
            .add_source(
                // `prefix_separator` must be set as well: it would otherwise default to `_` in some
                // versions of `config`, and INGEST__AMQP__URL would not match.
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(environment),
            )
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every setting as an `INGEST__SECTION__KEY` variable, so that a child process started with
    /// them (`serve`, a worker of the bench or of a test) loads these very settings, whatever file
    /// or variables this process read. Secrets are exposed here, and only here: the variables are
    /// meant for a child's environment, never for a log.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("settings have string keys only");
        let mut variables = Vec::new();
        flatten_into(ENV_PREFIX.to_owned(), value, &mut variables);
        // Secrets are not serialized (see the fields), so they are added by name.
        for (name, secret) in [
            ("AMQP__URL", self.amqp.url()),
            ("DATABASE__URL", self.database.url()),
        ] {
            variables.push((
                format!("{ENV_PREFIX}{ENV_SEPARATOR}{name}"),
                secret.to_owned(),
            ));
        }
        variables
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
            (
                self.pipeline.max_body_bytes_in_flight < self.pipeline.max_body_bytes,
                "pipeline.max_body_bytes_in_flight must be at least pipeline.max_body_bytes",
            ),
            (
                self.pipeline.reply_max_bytes < 16 * 1024,
                "pipeline.reply_max_bytes must be at least 16384",
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
            (
                self.idempotency.retention_hours == 0,
                "idempotency.retention_hours must be at least 1",
            ),
            (
                self.idempotency.sweep_interval_secs == 0,
                "idempotency.sweep_interval_secs must be at least 1",
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, message)) => anyhow::bail!("invalid configuration: {message}"),
            None => {
                self.auth.validate()?;
                security::check(
                    &self.security,
                    self.amqp.url(),
                    &self.amqp.ca_file,
                    self.database.url(),
                )
            }
        }
    }
}

impl AuthSettings {
    fn validate(&self) -> anyhow::Result<()> {
        // Without a single user, user-id mode would refuse every message.
        anyhow::ensure!(
            self.mode == AuthMode::Open || !self.tenants.is_empty(),
            "invalid configuration: auth.mode \"user-id\" needs auth.tenants to name at least one \
             user and its tenants"
        );
        for (user, tenants) in &self.tenants {
            anyhow::ensure!(
                !user.is_empty(),
                "invalid configuration: auth.tenants has an empty user name"
            );
            if let Some(bad) = tenants.iter().find(|t| !crate::ingest::is_tenant_name(t)) {
                anyhow::bail!(
                    "invalid configuration: auth.tenants.{user} lists {bad:?}, which is not a \
                     tenant name ([A-Za-z0-9_-], 1 to 64 characters)"
                );
            }
        }
        Ok(())
    }

    /// Whether `user` may write to `tenant`.
    pub fn allows(&self, user: &str, tenant: &str) -> bool {
        self.tenants
            .get(user)
            .is_some_and(|tenants| tenants.iter().any(|t| t == tenant))
    }
}

/// Appends `value` as variables named `name` and, for a table, `name__KEY` for each of its keys.
fn flatten_into(name: String, value: serde_json::Value, variables: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let name = format!("{name}{ENV_SEPARATOR}{}", key.to_uppercase());
                flatten_into(name, value, variables);
            }
        }
        Value::String(text) => variables.push((name, text)),
        Value::Number(number) => variables.push((name, number.to_string())),
        Value::Bool(flag) => variables.push((name, flag.to_string())),
        // No variable can say "unset"; no setting is optional today.
        Value::Null => {}
        // The loader reads no lists from the environment (`config` would need a list separator).
        Value::Array(_) => panic!("{name} is a list, which no environment variable can carry"),
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

impl IdempotencySettings {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }
}

impl ShutdownSettings {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

#[cfg(test)]
mod tests;
