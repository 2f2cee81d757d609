//! Failures on a replication connection as pgkeep [`Error`]s.
//!
//! [`ServerError`] is the server's ErrorResponse (severity, SQLSTATE, message,
//! detail, hint). [`server_error`], [`io_error`] and [`tls_error`] give the
//! same one-line messages, kinds and hints as `crate::pg::connect` does for
//! regular connections (Auth for a bad password or unknown role, Connect for
//! refused or timed-out connections, Tls, Database for SQLSTATE errors), plus
//! the replication-specific cases: a role without REPLICATION and a server
//! whose `wal_level` is too low for logical slots. Messages name `host:port`,
//! user and database, never the password.

use std::fmt;
use std::io;

use postgres_protocol::message::backend::ErrorFields;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::config::{DbSettings, SslMode};
use crate::error::{Error, ErrorKind};

pub(crate) const HINT_PASSWORD: &str = "check DB_PASSWORD, PGPASSWORD or ~/.pgpass";
pub(crate) const HINT_ADDRESS: &str =
    "check DB_HOST and DB_PORT (or PGHOST/PGPORT, --db) and that PostgreSQL is running";
const HINT_SSLMODE: &str =
    "set sslmode=require or verify-full (DB_SSLMODE, PGSSLMODE or ?sslmode= in --db)";
const HINT_WAL_LEVEL: &str =
    "set wal_level = logical in postgresql.conf or with ALTER SYSTEM, then restart PostgreSQL";
const HINT_SLOTS: &str = "drop unused slots (see pg_replication_slots) or raise max_replication_slots and restart PostgreSQL";
const NAME_HINT: &str = "connect using a name the certificate lists, or use sslmode=verify-ca to skip the host-name check";

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl ServerError {
    /// Collect the fields of an ErrorResponse or NoticeResponse.
    pub fn parse(mut fields: ErrorFields<'_>) -> io::Result<ServerError> {
        let mut severity = None;
        let mut localized_severity = None;
        let mut code = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => severity = Some(value),
                b'S' => localized_severity = Some(value),
                b'C' => code = Some(value),
                b'M' => message = Some(value),
                b'D' => detail = Some(value),
                b'H' => hint = Some(value),
                _ => {}
            }
        }
        Ok(ServerError {
            severity: severity
                .or(localized_severity)
                .unwrap_or_else(|| "ERROR".into()),
            code: code.unwrap_or_else(|| "XX000".into()),
            message: message.unwrap_or_default(),
            detail,
            hint,
        })
    }

    /// `ERROR`, `FATAL`, `WARNING`, `NOTICE`, …
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The SQLSTATE, e.g. `57014`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The primary message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The server's hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

/// "ERROR: message (SQLSTATE 42P01): detail", on one line.
impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        );
        if let Some(detail) = &self.detail {
            text.push_str(": ");
            text.push_str(detail);
        }
        f.write_str(&text.replace(['\n', '\r'], " "))
    }
}

impl std::error::Error for ServerError {}

/// Where a failure happened, for the message prefix.
#[derive(Clone, Copy)]
pub(crate) enum Phase<'a> {
    /// Opening the connection (TCP, TLS, startup, authentication).
    Connect,
    /// A command; reads after "cannot", e.g. "create logical replication slot x".
    Command(&'a str),
}

impl Phase<'_> {
    fn prefix(self, db: &DbSettings) -> String {
        match self {
            Phase::Connect => format!("cannot connect to PostgreSQL at {}", server_label(db)),
            Phase::Command(what) => format!("cannot {what} on {}", target_label(db)),
        }
    }
}

pub(crate) fn is_unix_socket(db: &DbSettings) -> bool {
    db.host.starts_with('/')
}

/// `host:port`, or the socket path for a Unix socket directory.
pub(crate) fn server_label(db: &DbSettings) -> String {
    if is_unix_socket(db) {
        format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port)
    } else if db.host.contains(':') && !db.host.starts_with('[') {
        format!("[{}]:{}", db.host, db.port)
    } else {
        format!("{}:{}", db.host, db.port)
    }
}

/// `host:port/dbname`.
pub(crate) fn target_label(db: &DbSettings) -> String {
    format!("{}/{}", server_label(db), db.dbname)
}

/// `name` as it would be typed in SQL: bare when it is a plain lower-case
/// identifier, double-quoted otherwise.
pub(crate) fn sql_identifier(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// An ErrorResponse, by SQLSTATE.
pub(crate) fn server_error(e: ServerError, db: &DbSettings, phase: Phase<'_>) -> Error {
    let server = server_label(db);
    let user = &db.user;
    let dbname = &db.dbname;
    let connecting = matches!(phase, Phase::Connect);
    match e.code() {
        // The server also answers this for unknown roles, so as not to reveal them.
        "28P01" => {
            return Error::new(
                ErrorKind::Auth,
                format!("password authentication failed for user {user} at {server}"),
            )
            .with_hint(HINT_PASSWORD);
        }
        "28000" => {
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
                        "server {server} does not allow user {user} to open a replication connection \
                         to database {dbname} from this host (no pg_hba.conf entry)"
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
        "3D000" => {
            return Error::new(
                ErrorKind::Database,
                format!("database {dbname} does not exist on {server}"),
            )
            .with_hint("check DB_NAME, PGDATABASE or the database in --db");
        }
        // "must be superuser or replication role to start walsender" (up to
        // 15), "permission denied to start WAL sender" (16 and later).
        "42501" if connecting => {
            let text = one_line(e.message());
            return Error::new(
                ErrorKind::Auth,
                format!(
                    "user {user} may not open a replication connection to database {dbname} \
                     on {server}: {text}"
                ),
            )
            .with_hint(format!(
                "grant the role replication rights: ALTER ROLE {} REPLICATION",
                sql_identifier(user)
            ));
        }
        "55000" if e.message().contains("wal_level") => {
            return Error::new(
                ErrorKind::Database,
                format!(
                    "{}: the server's wal_level is below logical ({})",
                    phase.prefix(db),
                    one_line(e.message())
                ),
            )
            .with_hint(HINT_WAL_LEVEL);
        }
        "53400" if e.message().contains("replication slots") => {
            return Error::new(ErrorKind::Database, format!("{}: {}", phase.prefix(db), e))
                .with_hint(HINT_SLOTS);
        }
        _ => {}
    }
    let code = e.code();
    let unavailable = ["57P03", "53300", "57P01", "57P02"];
    let kind = if unavailable.contains(&code) || code.starts_with("08") {
        ErrorKind::Connect
    } else {
        ErrorKind::Database
    };
    let hint = e.hint().map(one_line);
    let prefix = match phase {
        Phase::Connect => format!("{} as user {user} to database {dbname}", phase.prefix(db)),
        Phase::Command(_) => phase.prefix(db),
    };
    let mut error = Error::new(kind, format!("{prefix}: {e}")).with_source(e);
    if let Some(hint) = hint {
        error = error.with_hint(hint);
    }
    error
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// An I/O failure on the socket: refused, timed out, unknown host, lost connection.
pub(crate) fn io_error(e: io::Error, db: &DbSettings, phase: Phase<'_>) -> Error {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_error(tls, db);
    }
    let text = e.to_string();
    let reason = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut => "timed out".to_string(),
        io::ErrorKind::NotFound if is_unix_socket(db) => "no such socket".to_string(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            return protocol_error(db, &text);
        }
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => {
            return Error::new(
                ErrorKind::Connect,
                format!("{}: lost connection to the server", phase.prefix(db)),
            )
            .with_source(e);
        }
        _ if text.contains("lookup address") || text.contains("resolve") => {
            format!("cannot resolve host name {}", db.host)
        }
        _ => one_line(&text),
    };
    let error = Error::new(
        ErrorKind::Connect,
        format!("{}: {reason}", phase.prefix(db)),
    );
    if matches!(phase, Phase::Connect) {
        error.with_hint(HINT_ADDRESS)
    } else {
        error
    }
}

/// The server broke the protocol (or pgkeep did).
pub(crate) fn protocol_error(db: &DbSettings, what: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "protocol error on the replication connection to {}: {what}",
            server_label(db)
        ),
    )
}

/// The whole connect attempt took longer than `connect_timeout`.
pub(crate) fn timeout_error(db: &DbSettings) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!(
            "cannot connect to PostgreSQL at {}: timed out (no answer within {})",
            server_label(db),
            humantime::format_duration(db.connect_timeout)
        ),
    )
    .with_hint(HINT_ADDRESS)
}

/// A certificate or handshake failure reported by rustls.
pub(crate) fn tls_error(e: &rustls::Error, db: &DbSettings) -> Error {
    use rustls::CertificateError as C;
    let server = server_label(db);
    let roots = match &db.sslrootcert {
        Some(path) if path.as_os_str() != "system" => format!("sslrootcert {}", path.display()),
        _ => "the system roots".to_string(),
    };
    let (reason, hint) = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => (
            format!("certificate is not signed by a CA in {roots}"),
            Some("point sslrootcert at the CA that signed the server certificate"),
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => (
            format!("certificate is not valid for host name {}", db.host),
            Some(NAME_HINT),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;
    use crate::replication::wire::{BackendMessage, parse_backend_message, test_messages};
    use bytes::BytesMut;
    use postgres_protocol::message::backend::Message;

    fn settings() -> DbSettings {
        DbSettings {
            host: "db.example.com".into(),
            port: 6543,
            user: "alice".into(),
            password: Some(Secret::new("s3cret-pw")),
            dbname: "app".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(7),
        }
    }

    fn parsed(code: &str, message: &str, hint: Option<&str>) -> ServerError {
        let bytes = test_messages::error_response(b'E', "FATAL", code, message, hint);
        let mut buf = BytesMut::from(&bytes[..]);
        match parse_backend_message(&mut buf).unwrap().unwrap() {
            BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                ServerError::parse(body.fields()).unwrap()
            }
            other => panic!("got {}", other.name()),
        }
    }

    #[test]
    fn error_fields_are_collected() {
        let e = parsed("42P01", "relation \"x\" does not exist", Some("create it"));
        assert_eq!(e.code(), "42P01");
        assert_eq!(e.severity(), "FATAL");
        assert_eq!(e.hint(), Some("create it"));
        assert_eq!(
            e.to_string(),
            "FATAL: relation \"x\" does not exist (SQLSTATE 42P01)"
        );
    }

    #[test]
    fn missing_replication_attribute_is_auth_with_alter_role_hint() {
        let e = parsed(
            "42501",
            "must be superuser or replication role to start walsender",
            None,
        );
        let err = server_error(e, &settings(), Phase::Connect);
        assert_eq!(err.kind(), ErrorKind::Auth);
        let line = err.user_line();
        assert!(line.contains("alice"), "{line}");
        assert!(line.contains("db.example.com:6543"), "{line}");
        assert!(line.contains("ALTER ROLE alice REPLICATION"), "{line}");
        assert!(!line.contains("s3cret-pw"), "{line}");
    }

    #[test]
    fn low_wal_level_names_the_setting() {
        let e = parsed(
            "55000",
            "logical decoding requires wal_level >= logical",
            None,
        );
        let err = server_error(
            e,
            &settings(),
            Phase::Command("create logical replication slot s"),
        );
        assert_eq!(err.kind(), ErrorKind::Database);
        assert!(err.message().contains("wal_level"), "{}", err.message());
        assert!(err.hint().unwrap().contains("wal_level = logical"));
        assert!(
            err.message()
                .starts_with("cannot create logical replication slot s on db.example.com:6543/app"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn password_and_unknown_database_follow_regular_connections() {
        let err = server_error(
            parsed(
                "28P01",
                "password authentication failed for user \"alice\"",
                None,
            ),
            &settings(),
            Phase::Connect,
        );
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert_eq!(
            err.message(),
            "password authentication failed for user alice at db.example.com:6543"
        );
        let err = server_error(
            parsed("3D000", "database \"app\" does not exist", None),
            &settings(),
            Phase::Connect,
        );
        assert_eq!(err.kind(), ErrorKind::Database);
        assert!(err.message().contains("database app does not exist"));
    }

    #[test]
    fn generic_errors_keep_sqlstate_and_server_hint() {
        let err = server_error(
            parsed(
                "57014",
                "canceling statement due to user request",
                Some("try again"),
            ),
            &settings(),
            Phase::Command("create logical replication slot s"),
        );
        assert_eq!(err.kind(), ErrorKind::Database);
        assert!(
            err.message().contains("SQLSTATE 57014"),
            "{}",
            err.message()
        );
        assert_eq!(err.hint(), Some("try again"));
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(
            source.downcast_ref::<ServerError>().unwrap().code(),
            "57014"
        );
        let err = server_error(
            parsed(
                "57P01",
                "terminating connection due to administrator command",
                None,
            ),
            &settings(),
            Phase::Command("x"),
        );
        assert_eq!(err.kind(), ErrorKind::Connect);
        let err = server_error(
            parsed("53300", "sorry, too many clients already", None),
            &settings(),
            Phase::Connect,
        );
        assert_eq!(err.kind(), ErrorKind::Connect);
        assert_eq!(
            err.message(),
            "cannot connect to PostgreSQL at db.example.com:6543 as user alice to database app: \
             FATAL: sorry, too many clients already (SQLSTATE 53300)"
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let db = settings();
        let refused = io_error(io::ErrorKind::ConnectionRefused.into(), &db, Phase::Connect);
        assert_eq!(refused.kind(), ErrorKind::Connect);
        assert_eq!(
            refused.message(),
            "cannot connect to PostgreSQL at db.example.com:6543: connection refused"
        );
        let lost = io_error(
            io::ErrorKind::UnexpectedEof.into(),
            &db,
            Phase::Command("run a query"),
        );
        assert!(
            lost.message().contains("lost connection"),
            "{}",
            lost.message()
        );
        let bad = io_error(
            io::Error::new(io::ErrorKind::InvalidData, "bad tag"),
            &db,
            Phase::Connect,
        );
        assert_eq!(bad.kind(), ErrorKind::Internal);
        let mut unix = settings();
        unix.host = "/run/postgresql/".into();
        assert_eq!(server_label(&unix), "/run/postgresql/.s.PGSQL.6543");
        let missing = io_error(io::ErrorKind::NotFound.into(), &unix, Phase::Connect);
        assert!(
            missing.message().ends_with("no such socket"),
            "{}",
            missing.message()
        );
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(sql_identifier("alice"), "alice");
        assert_eq!(sql_identifier("Alice"), "\"Alice\"");
        assert_eq!(sql_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(sql_identifier("1x"), "\"1x\"");
    }
}
