//! The message properties the service reads from an ingest message, out of lapin's types.

use lapin::BasicProperties;
use sha2::{Digest, Sha256};

use super::headers::{self, header_str, producer_user};
use crate::ingest::Envelope;

impl Envelope {
    /// The envelope of an ingest message as the service whose AMQP user is `service_user` receives
    /// it: a copy it published itself (see [`headers::vouched`]) carries its producer's user.
    pub fn read_by(properties: &BasicProperties, body: &[u8], service_user: &str) -> Self {
        Envelope {
            user_id: producer_user(properties, service_user),
            ..Self::read(properties, body)
        }
    }

    /// The envelope of an ingest message: its batch id, reply address, dialect, tenant, user and
    /// trace context.
    pub fn read(properties: &BasicProperties, body: &[u8]) -> Self {
        let text = |value: &Option<lapin::types::ShortString>| {
            value
                .as_ref()
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        Envelope {
            // Without a message_id the body itself is the identity: the same body is the same batch.
            // It is the body as sent, compressed or not: the identity is known before anything is
            // decompressed.
            batch_id: text(properties.message_id())
                .unwrap_or_else(|| hex::encode(Sha256::digest(body))),
            correlation_id: text(properties.correlation_id()),
            reply_to: text(properties.reply_to()),
            dialect: text(properties.kind()),
            tenant: header_str(properties.headers(), headers::TENANT)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            content_encoding: text(properties.content_encoding()),
            user_id: text(properties.user_id()),
            trace: super::trace::read(properties),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::long_string;
    use lapin::types::FieldTable;

    #[test]
    fn a_message_without_message_id_is_identified_by_its_body() {
        let properties = BasicProperties::default();
        let a = Envelope::read(&properties, b"[1]");
        let b = Envelope::read(&properties, b"[1]");
        let c = Envelope::read(&properties, b"[2]");
        assert_eq!(a.batch_id, b.batch_id);
        assert_ne!(a.batch_id, c.batch_id);
        assert_eq!(a.batch_id.len(), 64);
    }

    #[test]
    fn the_tenant_comes_from_its_header() {
        let mut headers = FieldTable::default();
        headers.insert(headers::TENANT.into(), long_string("acme"));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m1".into())
            .with_type("upsert-by-customer-id".into());
        let envelope = Envelope::read(&properties, b"[]");
        assert_eq!(envelope.tenant.as_deref(), Some("acme"));
        assert_eq!(envelope.batch_id, "m1");
        assert_eq!(envelope.dialect.as_deref(), Some("upsert-by-customer-id"));
    }
}
