//! Postgres: customers, the outbox and batch bookkeeping. Knows nothing of AMQP.

pub mod batches;
pub mod contacts;
pub mod customers;
pub mod erasure;
pub mod outbox;
pub mod retention;
pub mod status;

use std::time::Duration;

use anyhow::Context;
use backon::ExponentialBuilder;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database named in the settings if it is missing, then applies pending migrations.
pub async fn migrate(settings: &DatabaseSettings) -> anyhow::Result<()> {
    create_database_if_missing(settings).await?;
    let pool = connect(settings).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying database migrations")?;
    pool.close().await;
    Ok(())
}

fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = settings
        .url()
        .parse()
        .context("database.url is not a valid Postgres URL")?;
    Ok(options
        .application_name("customer-ingest")
        // A chunk waiting on a row lock held elsewhere gives up after this and is retried, rather
        // than holding its message until RabbitMQ's consumer timeout.
        .options([("lock_timeout", settings.lock_timeout_ms.to_string())])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// A pool that connects lazily, so the service starts (and reports not-ready) while Postgres is
/// still down.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = connect_options(settings)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

async fn create_database_if_missing(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_owned();
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .context("connecting to the `postgres` database to check that ours exists")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE.
            Err(error) if sqlstate(&error).as_deref() == Some("42P04") => {}
            Err(error) => return Err(error).context("creating the database"),
        }
    }
    Ok(())
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// Errors that go away by themselves: retrying the same transaction later may succeed.
///
/// - `40001` serialization failure, `40P01` deadlock: another transaction won; ours can run again.
/// - `55P03` lock not available: `lock_timeout` expired waiting for someone else's row lock.
/// - `57P01`..`57P03` the server is shutting down or starting, `53300` too many connections,
///   class `08` connection exceptions; and a lost or unobtainable connection.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300"
            ) || code.starts_with("08")
        }),
        _ => false,
    }
}

/// Whether the error says Postgres itself cannot be reached (as opposed to a conflict between
/// transactions): the worker then stops taking messages until it is back.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
        }),
        _ => false,
    }
}

/// Whether the error is a conflict with other transactions (`40001` serialization failure, `40P01`
/// deadlock, `55P03` lock not available): Postgres is up, another transaction is in the way.
pub fn is_contention(error: &sqlx::Error) -> bool {
    matches!(
        sqlstate(error).as_deref(),
        Some("40001" | "40P01" | "55P03")
    )
}

/// The label a retried error is counted under in `db_retries_total`.
pub fn retry_label(error: &sqlx::Error) -> String {
    sqlstate(error).unwrap_or_else(|| "connection".to_owned())
}

/// Jittered exponential backoff for transient database errors, given up after `budget`.
pub fn retry_policy(budget: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_total_delay(Some(budget))
}
