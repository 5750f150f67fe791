//! `security.*`: whether plain connections are refused, and the checks of the TLS settings.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Refuse to start unless both connections are encrypted and their servers verified:
    /// `amqp.url` is `amqps://` and `database.url` carries `sslmode=verify-full`. Checked when the
    /// settings are loaded, so that every command (the worker and the operator commands) refuses.
    pub require_tls: bool,
}

/// The checks of `security.require_tls` and `amqp.ca_file`. Messages name the key, never its
/// value: the URLs hold credentials.
pub(super) fn check(
    security: &SecuritySettings,
    amqp_url: &str,
    ca_file: &Path,
    database_url: &str,
) -> anyhow::Result<()> {
    if !ca_file.as_os_str().is_empty() {
        check_ca_file(ca_file)?;
    }
    if !security.require_tls {
        return Ok(());
    }
    anyhow::ensure!(
        is_amqps(amqp_url),
        "invalid configuration: security.require_tls is true and amqp.url is not an amqps:// URL \
         (RabbitMQ's TLS listener, usually port 5671)"
    );
    let options: PgConnectOptions = database_url.parse().map_err(|_| {
        anyhow::anyhow!("invalid configuration: database.url is not a Postgres URL")
    })?;
    // verify-ca is not enough: it checks that the server's certificate comes from a trusted CA but
    // not that it names the host, so any other server holding a certificate from that CA passes.
    anyhow::ensure!(
        matches!(options.get_ssl_mode(), PgSslMode::VerifyFull),
        "invalid configuration: security.require_tls is true and database.url does not carry \
         sslmode=verify-full (add `sslmode=verify-full&sslrootcert=<CA file>` to its query; \
         verify-ca is refused as it does not check the server's name)"
    );
    Ok(())
}

/// Whether the URL's scheme is `amqps`, as lapin reads it (schemes are case-insensitive).
fn is_amqps(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("amqps"))
}

/// A CA file that cannot be read would otherwise show only as a worker that never connects.
fn check_ca_file(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        anyhow::anyhow!(
            "invalid configuration: amqp.ca_file {} cannot be read: {error}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        text.contains("-----BEGIN CERTIFICATE-----"),
        "invalid configuration: amqp.ca_file {} holds no PEM certificate",
        path.display()
    );
    Ok(())
}
