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
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::tls::{MakeTlsConnect, NoTls};

use super::tls::RustlsConnector;
use crate::config::{DbSettings, SslMode};
use crate::error::{Error, ErrorKind, Result};

/// The `application_name` pgkeep reports to the server.
pub const APPLICATION_NAME: &str = "pgkeep";

const HINT_PASSWORD: &str = "check DB_PASSWORD, PGPASSWORD or ~/.pgpass";
const HINT_ADDRESS: &str =
    "check DB_HOST and DB_PORT (or PGHOST/PGPORT, --db) and that PostgreSQL is running";
const HINT_SSLMODE: &str =
    "set sslmode=require or verify-full (DB_SSLMODE, PGSSLMODE or ?sslmode= in --db)";

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
        Err(_) => Err(Error::new(
            ErrorKind::Connect,
            format!(
                "cannot connect to PostgreSQL at {}: timed out (no answer within {})",
                server_label(db),
                humantime::format_duration(db.connect_timeout)
            ),
        )
        .with_hint(HINT_ADDRESS)),
    }
}

/// Connect with one TLS implementation and spawn the connection driver.
async fn start<T>(config: &tokio_postgres::Config, tls: T, db: &DbSettings) -> Result<Connection>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| classify(e, db, Phase::Connect))?;
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

fn is_unix_socket(db: &DbSettings) -> bool {
    db.host.starts_with('/')
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
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(password) = &db.password {
        config.password(password.expose());
    }
    config
}

/// `host:port`, or the socket path for a Unix socket directory.
fn server_label(db: &DbSettings) -> String {
    if is_unix_socket(db) {
        format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port)
    } else if db.host.contains(':') {
        format!("[{}]:{}", db.host, db.port)
    } else {
        format!("{}:{}", db.host, db.port)
    }
}

/// Turn an error from a query on `db` into pgkeep's [`Error`].
///
/// `what` names the operation so it reads after "cannot", e.g. `"list
/// tables"` gives "cannot list tables on host:5432/app: ERROR: …". Failures
/// that only happen while connecting (refused, authentication, TLS) get the
/// same messages as from [`connect`].
pub fn classify_pg_error(err: tokio_postgres::Error, db: &DbSettings, what: &str) -> Error {
    classify(err, db, Phase::Query(what))
}

/// Where an error happened, for the message prefix.
#[derive(Clone, Copy)]
enum Phase<'a> {
    Connect,
    Query(&'a str),
}

impl Phase<'_> {
    /// "cannot connect to PostgreSQL at h:p" or "cannot list tables on h:p/db".
    fn prefix(self, db: &DbSettings) -> String {
        match self {
            Phase::Connect => format!("cannot connect to PostgreSQL at {}", server_label(db)),
            Phase::Query(what) => format!("cannot {what} on {}", target_label(db)),
        }
    }
}

/// `host:port/dbname` with the Unix-socket form of the server.
fn target_label(db: &DbSettings) -> String {
    format!("{}/{}", server_label(db), db.dbname)
}

fn classify(err: tokio_postgres::Error, db: &DbSettings, phase: Phase<'_>) -> Error {
    if let Some(db_error) = err.as_db_error() {
        return classify_db_error(db_error, db, phase);
    }
    if let Some(tls) = find_rustls_error(&err) {
        return certificate_error(tls, db);
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
                Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
                Some(io::ErrorKind::TimedOut) => format!(
                    "timed out (no answer within {})",
                    humantime::format_duration(db.connect_timeout)
                ),
                Some(io::ErrorKind::NotFound) if is_unix_socket(db) => "no such socket".to_string(),
                _ if cause.contains("lookup address") || cause.contains("resolve") => {
                    format!("cannot resolve host name {}", db.host)
                }
                _ => cause,
            };
            Error::new(
                ErrorKind::Connect,
                format!("{}: {reason}", phase.prefix(db)),
            )
            .with_hint(HINT_ADDRESS)
        }
        "error performing TLS handshake" if cause.contains("does not support TLS") => Error::new(
            ErrorKind::Tls,
            format!(
                "server {server} does not support TLS but sslmode={}",
                db.sslmode.as_str()
            ),
        )
        .with_hint("enable ssl on the server, or set sslmode=prefer or disable"),
        "error performing TLS handshake" => Error::new(
            ErrorKind::Tls,
            format!("TLS handshake with {server} failed: {cause}"),
        ),
        "invalid configuration" if cause.contains("password missing") => Error::new(
            ErrorKind::Auth,
            format!(
                "server {server} asks for a password for user {} but none is set",
                db.user
            ),
        )
        .with_hint(HINT_PASSWORD),
        "authentication error" => Error::new(
            ErrorKind::Auth,
            format!(
                "authentication failed for user {} at {server}: {cause}",
                db.user
            ),
        ),
        _ if matches!(phase, Phase::Connect) || err.is_closed() || io_kind.is_some() => {
            let message = match phase {
                Phase::Connect => {
                    format!("connection to PostgreSQL at {server} failed during startup")
                }
                Phase::Query(_) => format!("{}: lost connection to the server", phase.prefix(db)),
            };
            Error::new(ErrorKind::Connect, message).with_source(err)
        }
        _ => Error::new(ErrorKind::Database, phase.prefix(db)).with_source(err),
    }
}

/// Errors the server sent (ErrorResponse), by SQLSTATE.
fn classify_db_error(e: &DbError, db: &DbSettings, phase: Phase<'_>) -> Error {
    let server = server_label(db);
    let user = &db.user;
    let dbname = &db.dbname;
    let code = e.code();
    let connecting = matches!(phase, Phase::Connect);
    if *code == SqlState::INVALID_PASSWORD {
        // The server also answers this for unknown roles, so as not to reveal them.
        return Error::new(
            ErrorKind::Auth,
            format!("password authentication failed for user {user} at {server}"),
        )
        .with_hint(HINT_PASSWORD);
    }
    if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        let msg = e.message();
        if msg.contains("no pg_hba.conf entry") {
            if msg.contains("no encryption") && db.sslmode == SslMode::Disable {
                return Error::new(
                    ErrorKind::Tls,
                    format!(
                        "server {server} does not accept unencrypted connections for user {user} \
                         to database {dbname}, and sslmode=disable"
                    ),
                )
                .with_hint(HINT_SSLMODE);
            }
            return Error::new(
                ErrorKind::Auth,
                format!(
                    "server {server} does not allow user {user} to connect to database {dbname} \
                     from this host (no pg_hba.conf entry)"
                ),
            )
            .with_hint("ask the database administrator to add a pg_hba.conf entry");
        }
        if msg.starts_with("role") && msg.ends_with("does not exist") {
            return Error::new(
                ErrorKind::Auth,
                format!("role {user} does not exist on {server}"),
            )
            .with_hint("check DB_USER, PGUSER or the user in --db");
        }
        return Error::new(
            ErrorKind::Auth,
            format!("server {server} refused user {user}: {msg}"),
        );
    }
    if *code == SqlState::INVALID_CATALOG_NAME {
        return Error::new(
            ErrorKind::Database,
            format!("database {dbname} does not exist on {server}"),
        )
        .with_hint("check DB_NAME, PGDATABASE or the database in --db");
    }
    if connecting && *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return Error::new(
            ErrorKind::Auth,
            format!(
                "user {user} may not connect to database {dbname} on {server}: {}",
                e.message()
            ),
        );
    }
    let unavailable = [
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
    ];
    let kind = if unavailable.contains(code) || code.code().starts_with("08") {
        ErrorKind::Connect
    } else {
        ErrorKind::Database
    };
    let mut error = Error::new(kind, format!("{}: {}", phase.prefix(db), db_error_text(e)));
    if let Some(hint) = e.hint() {
        error = error.with_hint(hint);
    }
    error
}

/// "ERROR: message (SQLSTATE 42P01): detail", on one line.
fn db_error_text(e: &DbError) -> String {
    let mut text = format!(
        "{}: {} (SQLSTATE {})",
        e.severity(),
        e.message(),
        e.code().code()
    );
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    text.replace(['\n', '\r'], " ")
}

/// A certificate or handshake failure reported by rustls.
fn certificate_error(e: &rustls::Error, db: &DbSettings) -> Error {
    use rustls::CertificateError as C;
    let server = server_label(db);
    let roots = match &db.sslrootcert {
        Some(path) if path.as_os_str() != "system" => format!("sslrootcert {}", path.display()),
        _ => "the system roots".to_string(),
    };
    let (reason, hint) = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => (
            format!("certificate is not signed by a CA in {roots}"),
            Some("point sslrootcert at the CA that signed the server certificate".to_string()),
        ),
        rustls::Error::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => (
            format!(
                "certificate is not valid for host name {} (it names {})",
                db.host,
                presented
                    .iter()
                    .map(|n| presented_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(NAME_HINT.to_string()),
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName) => (
            format!("certificate is not valid for host name {}", db.host),
            Some(NAME_HINT.to_string()),
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            ("certificate has expired".to_string(), None)
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            ("certificate is not valid yet".to_string(), None)
        }
        other => (other.to_string(), None),
    };
    let error = Error::new(
        ErrorKind::Tls,
        format!("TLS verification of server {server} failed: {reason}"),
    );
    match hint {
        Some(hint) => error.with_hint(hint),
        None => error,
    }
}

const NAME_HINT: &str = "connect using a name the certificate lists, or use sslmode=verify-ca to skip the host-name check";

/// `localhost` out of rustls's `DnsName("localhost")`; other text unchanged.
fn presented_name(name: &str) -> &str {
    match (name.find('('), name.strip_suffix(')')) {
        (Some(open), Some(inner)) => inner[open + 1..].trim_matches('"'),
        _ => name,
    }
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
    chain(err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<io::Error>())
}

fn find_rustls_error(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    chain(err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// The text of the deepest cause, for messages.
trait SourceText {
    fn source_text(&self) -> String;
}

impl SourceText for tokio_postgres::Error {
    fn source_text(&self) -> String {
        chain(self)
            .last()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .replace(['\n', '\r'], " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(host: &str, sslmode: SslMode) -> DbSettings {
        DbSettings {
            host: host.into(),
            port: 6543,
            user: "alice".into(),
            password: Some(Secret::new("s3cret-pw")),
            dbname: "app".into(),
            sslmode,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(7),
        }
    }

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
        assert!(
            matches!(&c.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "db.example.com")
        );

        let c = pg_config(&settings("db", SslMode::Prefer));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let c = pg_config(&settings("db", SslMode::Disable));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn unix_socket_hosts_never_use_tls() {
        let db = settings("/var/run/postgresql", SslMode::VerifyFull);
        let c = pg_config(&db);
        assert!(
            matches!(&c.get_hosts()[0], tokio_postgres::config::Host::Unix(p) if p.as_os_str() == "/var/run/postgresql")
        );
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert!(!uses_tls(&db));
        assert_eq!(server_label(&db), "/var/run/postgresql/.s.PGSQL.6543");
    }

    #[test]
    fn labels_name_the_server() {
        assert_eq!(server_label(&settings("db", SslMode::Prefer)), "db:6543");
        assert_eq!(
            server_label(&settings("::1", SslMode::Prefer)),
            "[::1]:6543"
        );
        assert_eq!(
            target_label(&settings("db", SslMode::Prefer)),
            "db:6543/app"
        );
        let db = settings("db", SslMode::Prefer);
        assert_eq!(
            Phase::Query("list tables").prefix(&db),
            "cannot list tables on db:6543/app"
        );
        assert_eq!(
            Phase::Connect.prefix(&db),
            "cannot connect to PostgreSQL at db:6543"
        );
    }

    #[test]
    fn certificate_errors_name_host_and_reason() {
        let mut db = settings("db.example.com", SslMode::VerifyFull);
        db.sslrootcert = Some("/etc/pgkeep/ca.pem".into());
        let e = certificate_error(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            &db,
        );
        assert_eq!(e.kind(), ErrorKind::Tls);
        assert!(
            e.message().contains("db.example.com:6543"),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("/etc/pgkeep/ca.pem"),
            "{}",
            e.message()
        );
        let e = certificate_error(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            &db,
        );
        assert!(
            e.message()
                .contains("not valid for host name db.example.com"),
            "{}",
            e.message()
        );
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("plain"), "plain");
        assert!(!e.user_line().contains("s3cret-pw"));
    }
}
