//! PostgreSQL access: connections with TLS ([`connect`]), and later catalog
//! queries, snapshot export and COPY streams.

pub mod catalog;
pub mod connect;
pub(crate) mod errors;
pub mod tls;
pub mod tools;

pub use connect::{classify_pg_error, connect, Connection};
pub use tls::RustlsConnector;
