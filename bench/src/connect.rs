//! The bench's own connections to RabbitMQ and Postgres, and the patience of every call it makes.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, anyhow};
use customer_ingest::config::Settings;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The bench's own Postgres sessions carry this name, so the session sampler can leave them out.
pub const BENCH_APP: &str = "customer-ingest bench";
/// A connection, declaration or deletion on a healthy local broker or server answers well within this.
pub const CALL_PATIENCE: Duration = Duration::from_secs(30);

/// `future`, or an error naming `what` once `limit` has passed.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {limit:?}"))?
        .with_context(|| what.to_owned())
}

/// A plain connection: no automatic recovery, because a broker hiccup during a measurement should
/// fail the run rather than be hidden in its figures.
pub async fn amqp_connection(settings: &Settings, name: &str) -> anyhow::Result<Connection> {
    // Through the service's own function, so that an amqps:// URL trusts amqp.ca_file here too.
    within(
        CALL_PATIENCE,
        "connecting to RabbitMQ",
        customer_ingest::amqp::connection::connect_once(&settings.amqp, name),
    )
    .await
}

pub async fn consume(channel: &Channel, queue: &str) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

pub fn pg_options(url: &str, application: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .context("database.url is not a valid Postgres URL")?;
    Ok(options
        .application_name(application)
        .disable_statement_logging())
}

/// A session on the server's `postgres` database, for creating, dropping and inspecting.
pub async fn admin_connection(settings: &Settings) -> anyhow::Result<PgConnection> {
    let options = pg_options(settings.database.url(), BENCH_APP)?.database("postgres");
    within(CALL_PATIENCE, "connecting to Postgres", async {
        Ok(options.connect().await?)
    })
    .await
}

/// `url` naming database `name` instead, query parameters kept.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let authority_start = url
        .find("://")
        .context("database.url is not a URL (no ://)")?
        + 3;
    let rest = &url[authority_start..];
    let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = path.split('/').next().unwrap_or(path);
    Ok(format!(
        "{}{authority}/{name}{query}",
        &url[..authority_start]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_database_replaces_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/customer_ingest", "b1").unwrap(),
            "postgres://u:p@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1/x?sslmode=disable", "b2").unwrap(),
            "postgres://127.0.0.1/b2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1:5432", "b3").unwrap(),
            "postgres://127.0.0.1:5432/b3"
        );
    }
}
