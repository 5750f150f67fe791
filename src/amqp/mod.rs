//! RabbitMQ: the connection, the topology, publishing with confirms and the supervised consumer.
//! Knows nothing of SQL or of dialects.

pub mod connection;
pub mod consumer;
pub mod envelope;
pub mod headers;
pub mod publisher;
pub mod topology;

pub use connection::connect;
pub use publisher::Publisher;
