//! RabbitMQ: the connection, the topology, publishing with confirms, the supervised consumer, and
//! the settling of each delivery ([`inbound`]) from [`crate::ingest::process`]'s result, in a span
//! that continues the producer's trace ([`trace`]). The only
//! module that knows lapin; it knows nothing of SQL or of dialects.

pub mod connection;
pub mod consumer;
pub mod envelope;
pub mod events;
pub mod headers;
pub mod inbound;
pub mod publisher;
pub mod replies;
pub mod topology;
pub mod trace;

pub use connection::connect;
pub use publisher::Publisher;
