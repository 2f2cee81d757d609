//! Opening a regular (non-replication) connection with the configured TLS mode,
//! connect timeout, and one-line errors that name the server.
//!
//! TODO(helper): implement.

use crate::config::DbSettings;
use crate::error::Result;

/// An open connection: the client, plus the task driving the socket.
pub struct Connection {
    /// The client.
    pub client: tokio_postgres::Client,
    /// Background task that drives the connection; ends when the client is dropped.
    pub driver: tokio::task::JoinHandle<()>,
}

/// Connect to `db`.
pub async fn connect(db: &DbSettings) -> Result<Connection> {
    let _ = db;
    todo!()
}
