use anyhow::Context;
use lapin::{Connection, ConnectionProperties};

/// Connects with lapin's automatic recovery on: after a network error it reconnects and restores
/// channels, QoS, confirms and consumers by itself. When it gives up, the consumer supervisor builds a
/// new connection from here.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    Connection::connect(url, properties)
        .await
        .context("connecting to RabbitMQ")
}
