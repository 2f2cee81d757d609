//! Opening a regular (non-replication) connection with the configured TLS mode,
//! connect timeout, and one-line errors that name the server.
//!
//! [`connect`] builds a `tokio_postgres::Config` from [`DbSettings`], bounds the
//! whole attempt (DNS, TCP, TLS, authentication) by `connect_timeout`, and
//! spawns the task that drives the socket. [`classify_pg_error`] turns a
//! `tokio_postgres::Error` into pgkeep's [`Error`] with the right kind; it is
//! shared with the query code. Messages name host, port, database and user
//! and never the password.

use std::io;
use std::time::Duration;

use tokio_postgres::Socket;
use tokio_postgres::error::DbError;
use tokio_postgres::tls::{MakeTlsConnect, NoTls};

use super::errors::{
    Client, HINT_ADDRESS, HINT_PASSWORD, Phase, certificate_error, classify_server_error, closed_during_startup, is_unix_socket, server_error_text,
    server_label, sqlstate_kind, timed_out, timeout_error, unreachable_reason,
};
use super::tls::RustlsConnector;
use crate::config::{DbSettings, SslMode};
use crate::error::{Error, ErrorKind, Result};

/// The `application_name` pgkeep reports to the server.
pub const APPLICATION_NAME: &str = "pgkeep";

/// An open connection: the client, plus the task driving the socket.
pub struct Connection {
    /// The client.
    pub client: tokio_postgres::Client,
    /// Background task that drives the connection; ends when the client is dropped.
    pub driver: tokio::task::JoinHandle<()>,
}

/// Connect to `db`.
pub async fn connect(db: &DbSettings) -> Result<Connection> {
    let config = pg_config(db);
    let attempt = async {
        if uses_tls(db) {
            let tls = RustlsConnector::new(db)?;
            start(&config, tls, db).await
        } else {
            start(&config, NoTls, db).await
        }
    };
    // tokio-postgres bounds only the TCP connect; this bounds everything,
    // including a server that accepts the connection and never answers.
    match tokio::time::timeout(db.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(timeout_error(db)),
    }
}

/// Connect with one TLS implementation and spawn the connection driver.
async fn start<T>(config: &tokio_postgres::Config, tls: T, db: &DbSettings) -> Result<Connection>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(|e| classify(e, db, Phase::Connect))?;
    let target = db.display_target();
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target = %target, error = %e, "PostgreSQL connection ended with an error");
        }
    });
    Ok(Connection { client, driver })
}

/// Whether this connection negotiates TLS at all: never over a Unix socket
/// (PostgreSQL does not offer it there; libpq ignores sslmode too).
fn uses_tls(db: &DbSettings) -> bool {
    db.sslmode != SslMode::Disable && !is_unix_socket(db)
}

/// The tokio-postgres configuration for `db`. verify-ca and verify-full map
/// to `Require`: our connector does the verification.
fn pg_config(db: &DbSettings) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    if is_unix_socket(db) {
        config.host_path(&db.host);
    } else {
        config.host(&db.host);
    }
    config
        .port(db.port)
        .user(&db.user)
        .dbname(&db.dbname)
        .application_name(APPLICATION_NAME)
        .connect_timeout(db.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60))
        .ssl_mode(match db.sslmode {
            _ if !uses_tls(db) => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    if let Some(password) = &db.password {
        config.password(password.expose());
    }
    config
}

/// Turn an error from a query on `db` into pgkeep's [`Error`].
///
/// `what` names the operation so it reads after "cannot", e.g. `"list
/// tables"` gives "cannot list tables on host:5432/app: ERROR: …". Failures
/// that only happen while connecting (refused, authentication, TLS) get the
/// same messages as from [`connect`].
pub fn classify_pg_error(err: tokio_postgres::Error, db: &DbSettings, what: &str) -> Error {
    classify(err, db, Phase::Command(what))
}

fn classify(err: tokio_postgres::Error, db: &DbSettings, phase: Phase<'_>) -> Error {
    if let Some(db_error) = err.as_db_error() {
        return classify_db_error(db_error, db, phase);
    }
    if let Some(tls) = find_rustls_error(&err) {
        return certificate_error(tls, db, Client::Regular);
    }
    let server = server_label(db);
    // tokio-postgres does not expose its error kinds; its top-level text and
    // the text of a few string causes are the stable part of its API we match.
    let top = err.to_string();
    let cause = err.source_text();
    let io_kind = find_io_error(&err).map(io::Error::kind);
    match top.as_str() {
        "error connecting to server" => {
            let reason = match io_kind {
                Some(io::ErrorKind::TimedOut) => timed_out(db),
                _ => unreachable_reason(io_kind, &cause, db).unwrap_or(cause),
            };
            Error::new(ErrorKind::Connect, format!("{}: {reason}", phase.prefix(db))).with_hint(HINT_ADDRESS)
        }
        "error performing TLS handshake" if cause.contains("does not support TLS") => {
            Error::new(ErrorKind::Tls, format!("server {server} does not support TLS but sslmode={}", db.sslmode.as_str()))
                .with_hint("enable ssl on the server, or set sslmode=prefer or disable")
        }
        "error performing TLS handshake" => Error::new(ErrorKind::Tls, format!("TLS handshake with {server} failed: {cause}")),
        "invalid configuration" if cause.contains("password missing") => {
            Error::new(ErrorKind::Auth, format!("server {server} asks for a password for user {} but none is set", db.user)).with_hint(HINT_PASSWORD)
        }
        "authentication error" => Error::new(ErrorKind::Auth, format!("authentication failed for user {} at {server}: {cause}", db.user)),
        _ if matches!(phase, Phase::Connect) || err.is_closed() || io_kind.is_some() => {
            // The server hung up (or sent something that is not the protocol and then
            // hung up: the codec's "bytes remaining on stream"): say so in words.
            let closed = err.is_closed()
                || matches!(
                    io_kind,
                    Some(io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
                )
                || cause.contains("bytes remaining on stream")
                || top.starts_with("unexpected message from server");
            let message = match phase {
                Phase::Connect if closed => {
                    tracing::debug!(error = %cause, server = %server, "connection closed during startup");
                    return closed_during_startup(db);
                }
                Phase::Connect => {
                    format!("connection to PostgreSQL at {server} failed during startup")
                }
                Phase::Command(_) => format!("{}: lost connection to the server", phase.prefix(db)),
            };
            Error::new(ErrorKind::Connect, message).with_source(err)
        }
        _ => Error::new(ErrorKind::Database, phase.prefix(db)).with_source(err),
    }
}

/// Errors the server sent (ErrorResponse), by SQLSTATE.
fn classify_db_error(e: &DbError, db: &DbSettings, phase: Phase<'_>) -> Error {
    let code = e.code().code();
    if let Some(error) = classify_server_error(code, e.message(), db, phase, Client::Regular) {
        return error.with_sqlstate(code);
    }
    let text = server_error_text(e.severity(), e.message(), code, e.detail());
    let mut error = Error::new(sqlstate_kind(code), format!("{}: {text}", phase.prefix(db))).with_sqlstate(code);
    if let Some(hint) = e.hint() {
        error = error.with_hint(hint);
    }
    error
}

/// Walk the source chain, looking inside `io::Error`s too (their `source()`
/// skips the wrapped error).
fn chain(err: &tokio_postgres::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        out.push(e);
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

fn find_io_error(err: &tokio_postgres::Error) -> Option<&io::Error> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<io::Error>())
}

fn find_rustls_error(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// The text of the deepest cause, for messages.
trait SourceText {
    fn source_text(&self) -> String;
}

impl SourceText for tokio_postgres::Error {
    fn source_text(&self) -> String {
        chain(self).last().map(|e| e.to_string()).unwrap_or_default().replace(['\n', '\r'], " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::errors::tests::settings;

    #[test]
    fn config_maps_settings() {
        let c = pg_config(&settings("db.example.com", SslMode::VerifyFull));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"s3cret-pw"[..]));
        assert_eq!(c.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert!(c.get_keepalives());
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert!(matches!(&c.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "db.example.com"));

        let c = pg_config(&settings("db", SslMode::Prefer));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let c = pg_config(&settings("db", SslMode::Disable));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn unix_socket_hosts_never_use_tls() {
        let db = settings("/var/run/postgresql", SslMode::VerifyFull);
        let c = pg_config(&db);
        assert!(matches!(&c.get_hosts()[0], tokio_postgres::config::Host::Unix(p) if p.as_os_str() == "/var/run/postgresql"));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert!(!uses_tls(&db));
        assert_eq!(server_label(&db), "/var/run/postgresql/.s.PGSQL.6543");
    }
}
