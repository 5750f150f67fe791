use anyhow::Context;
use lapin::uri::AMQPUri;
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
