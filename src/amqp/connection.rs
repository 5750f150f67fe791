use std::sync::Arc;

use anyhow::Context;
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;

/// Connects with lapin's automatic recovery on: after a network error it reconnects and restores
/// channels, QoS, confirms and consumers by itself (over TLS again, with the same CA). When it gives
/// up, the consumer supervisor builds a new connection from here.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    open(settings, properties).await
}

/// Connects without automatic recovery, for the operator commands: after a lost connection their
/// delivery tags mean nothing, and the operator runs the command again.
pub async fn connect_once(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    open(
        settings,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// Every connection to RabbitMQ is opened here, so that each one trusts `amqp.ca_file`.
///
/// lapin retries a failed TCP connect or TLS handshake by itself (16 times over several minutes with
/// auto-recovery) without a word; each failure is logged here, so that a certificate the worker
/// does not trust shows in the log at once rather than as a worker that never becomes ready.
async fn open(
    settings: &AmqpSettings,
    properties: ConnectionProperties,
) -> anyhow::Result<Connection> {
    let uri: AMQPUri = settings
        .url()
        .parse()
        .map_err(|_| anyhow::anyhow!("amqp.url is not an AMQP URL"))?;
    let tls = tls_config(settings)?;
    let runtime = lapin::runtime::default_runtime().context("starting lapin's runtime")?;
    let attempt = async move |uri: AMQPUri, runtime| {
        uri.connect_with_config_async(tls.as_ref(), &runtime)
            .await
            .map_err(|error| {
                // The URL holds credentials: only the address is logged.
                tracing::warn!(
                    host = %uri.authority.host,
                    port = uri.authority.port,
                    error = %error,
                    "could not connect to RabbitMQ"
                );
                // As lapin's own connector does: a runtime shutting down is not a network fault.
                if runtime.is_runtime_shutdown_error(&error) {
                    lapin::ErrorKind::RuntimeShutdownError(Arc::new(error)).into()
                } else {
                    lapin::Error::from(error)
                }
            })
    };
    Connection::connector(uri, runtime, attempt, properties)
        .await
        .context("connecting to RabbitMQ")
}

/// The CA certificates of `amqp.ca_file`, trusted besides the system's roots (lapin's rustls
/// connector adds them to the native store). Used only by an `amqps://` URL.
fn tls_config(settings: &AmqpSettings) -> anyhow::Result<OwnedTLSConfig> {
    let cert_chain = if settings.ca_file.as_os_str().is_empty() {
        None
    } else {
        Some(
            std::fs::read_to_string(&settings.ca_file)
                .with_context(|| format!("reading amqp.ca_file {}", settings.ca_file.display()))?,
        )
    };
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// The user a connection to `url` logs in as (`guest` when the URL names none, as for lapin).
pub fn user_of(url: &str) -> String {
    url.parse::<AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_user_comes_from_the_url() {
        assert_eq!(
            super::user_of("amqp://erp%2Dprod:pw@10.0.0.1:5672/%2f"),
            "erp-prod"
        );
        assert_eq!(super::user_of("amqp://10.0.0.1"), "guest");
    }
}
