//! pgkeep's own replication-protocol client, on `postgres-protocol` and tokio
//! (tokio-postgres has no replication protocol).
//!
//! A [`ReplicationConnection`] is one walsender connection in logical mode
//! (`replication=database`). `pgkeep backup` uses it to create a logical slot
//! with an exported snapshot ([`ReplicationConnection::create_logical_slot`]).
//! [`stream`] runs `START_REPLICATION … LOGICAL` over the same framed stream
//! (CopyBoth: XLogData, keepalives, standby status updates), and
//! [`pgoutput`] decodes the payloads — the groundwork of `pgkeep stream`.
//!
//! The layers, bottom up:
//! - [`transport`]: TCP, Unix socket, or rustls TLS negotiated per `sslmode`
//!   (rustls setup shared with `crate::pg::tls`), and the CancelRequest.
//! - [`wire`]: whole backend messages read from the stream (pure parser plus a
//!   cancel-safe buffered reader), frontend messages written from a buffer.
//! - `auth`: cleartext, MD5, SCRAM-SHA-256 and SCRAM-SHA-256-PLUS.
//! - [`simple_query`]: rows and command tags from a simple query's messages.
//! - [`commands`]: command text per server version and result rows as types.
//! - `conn`: the connection, tying these together.
//! - `errors`: the same one-line, classified errors as `crate::pg::connect`.
//! - [`stream`]: logical streaming (CopyBoth) on a connection.
//! - [`copy_out`]: `COPY … TO STDOUT` read in pieces, on a regular
//!   connection (`ReplicationConnection::connect_regular`) — the backup's
//!   and the verify read-back's COPY reader, bounded whatever the row size.
//! - [`pgoutput`]: the pure, fuzzed decoder of pgoutput protocol-1 messages.

mod auth;
pub mod commands;
mod conn;
pub mod copy_out;
mod errors;
pub mod pgoutput;
pub mod simple_query;
pub mod stream;
pub mod transport;
pub mod wire;

pub use auth::AuthMethod;
pub use commands::{CreatedSlot, FAILOVER_MIN_SERVER_VERSION, SystemIdentity, alter_slot_failover_command, validate_slot_name};
pub use conn::{CancelInfo, ReplicationConnection};
pub use copy_out::CopyOutReader;
pub use errors::ServerError;
pub use pgoutput::{PgOutputMessage, PgTimestamp};
pub use simple_query::QueryResponse;
pub use stream::{LogicalStream, StreamEvent};
