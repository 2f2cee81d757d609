//! PostgreSQL access: connections with TLS ([`connect`]), and later catalog
//! queries, snapshot export and COPY streams.

pub mod connect;
pub mod tls;

pub use connect::{connect, Connection};
