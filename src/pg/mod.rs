//! PostgreSQL access: connections with TLS ([`connect`]), catalog queries
//! ([`catalog`]), client programs ([`tools`]), SQL text split into
//! statements ([`split`]), and the one mapping of a
//! failed query to pgkeep's error ([`query_error`]).

pub mod catalog;
pub mod connect;
pub(crate) mod errors;
pub mod split; // SQL text into statements
pub mod tls;
pub mod tools;

pub use connect::{Connection, classify_pg_error, connect};
pub use tls::RustlsConnector;

use crate::error::{Error, ErrorKind};

/// The server's message for a failed query, or the client error's text.
pub fn error_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// Map a failed query to a one-line `Database` error `<what>: <message>`
/// carrying the server's SQLSTATE ([`Error::sqlstate`]).
/// Use as `.map_err(query_error("cannot list tables"))`, or `.map_err(&f)`
/// to reuse one mapper.
pub fn query_error(what: impl std::fmt::Display) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::keep_sqlstate(Error::new(ErrorKind::Database, format!("{what}: {}", error_message(&e))), &e)
}
