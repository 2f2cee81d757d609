//! Failures on a replication connection as pgkeep [`Error`]s.
//!
//! [`ServerError`] is the server's ErrorResponse (severity, SQLSTATE, message,
//! detail, hint). [`server_error`] and [`io_error`] give the same one-line
//! messages, kinds and hints as `crate::pg::connect` does for regular
//! connections (Auth for a bad password or unknown role, Connect for refused
//! or timed-out connections, Tls, Database for SQLSTATE errors), through the
//! shared `crate::pg::errors`, plus the replication-specific case checked
//! first: a role without REPLICATION. Every error built from an
//! ErrorResponse carries its SQLSTATE ([`Error::sqlstate`]).
//! [`slot_creation_error`] adds what to change when a logical slot cannot be
//! created (`wal_level` too low, no free replication slot), by SQLSTATE.
//! Messages name `host:port`, user and database, never the password.

use std::fmt;
use std::io;

use postgres_protocol::message::backend::ErrorFields;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind};
use crate::pg::errors::{
    Client, HINT_ADDRESS, Phase, certificate_error, classify_server_error, one_line, server_error_text, server_label, sqlstate_kind, unreachable_reason,
};

const HINT_WAL_LEVEL: &str = "logical slots need wal_level = logical and max_replication_slots above 0: \
     set them in postgresql.conf or with ALTER SYSTEM, then restart PostgreSQL";
const HINT_SLOTS: &str = "drop unused slots (see pg_replication_slots) or raise max_replication_slots and restart PostgreSQL";

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
            severity: severity.or(localized_severity).unwrap_or_else(|| "ERROR".into()),
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
        f.write_str(&server_error_text(&self.severity, &self.message, &self.code, self.detail()))
    }
}

impl std::error::Error for ServerError {}

/// `name` as it would be typed in SQL: bare when it is a plain lower-case
/// identifier, double-quoted otherwise.
pub(crate) fn sql_identifier(name: &str) -> String {
    let plain =
        name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// An ErrorResponse, carrying its SQLSTATE: the replication-only cases
/// first, then by SQLSTATE as on regular connections.
pub(crate) fn server_error(e: ServerError, db: &DbSettings, phase: Phase<'_>) -> Error {
    let code = e.code().to_string();
    classify(e, db, phase).with_sqlstate(code)
}

/// A failed `CREATE_REPLICATION_SLOT … LOGICAL`, with what to change, by
/// SQLSTATE: `55000` (object_not_in_prerequisite_state: `wal_level` below
/// logical, or `max_replication_slots` = 0) and `53400`
/// (configuration_limit_exceeded: every replication slot is in use). The
/// server's own text stays in the message; it is never matched.
pub(crate) fn slot_creation_error(e: Error) -> Error {
    match e.sqlstate() {
        Some("55000") => e.with_hint(HINT_WAL_LEVEL),
        Some("53400") => e.with_hint(HINT_SLOTS),
        _ => e,
    }
}

fn classify(e: ServerError, db: &DbSettings, phase: Phase<'_>) -> Error {
    let user = &db.user;
    let dbname = &db.dbname;
    match e.code() {
        // "must be superuser or replication role to start walsender" (up to
        // 15), "permission denied to start WAL sender" (16 and later).
        "42501" if matches!(phase, Phase::Connect) => {
            let text = one_line(e.message());
            return Error::new(
                ErrorKind::Auth,
                format!(
                    "user {user} may not open a replication connection to database {dbname} \
                     on {}: {text}",
                    server_label(db)
                ),
            )
            .with_hint(format!("grant the role replication rights: ALTER ROLE {} REPLICATION", sql_identifier(user)));
        }
        _ => {}
    }
    if let Some(error) = classify_server_error(e.code(), e.message(), db, phase, Client::Replication) {
        return error;
    }
    let kind = sqlstate_kind(e.code());
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

/// An I/O failure on the socket: refused, timed out, unknown host, lost connection.
pub(crate) fn io_error(e: io::Error, db: &DbSettings, phase: Phase<'_>) -> Error {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return certificate_error(tls, db, Client::Replication);
    }
    let text = e.to_string();
    let reason = match e.kind() {
        io::ErrorKind::TimedOut => "timed out".to_string(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            return protocol_error(db, &text);
        }
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            if matches!(phase, Phase::Connect) {
                tracing::debug!(error = %text, "connection closed during startup");
                return crate::pg::errors::closed_during_startup(db);
            }
            return Error::new(ErrorKind::Connect, format!("{}: lost connection to the server", phase.prefix(db))).with_source(e);
        }
        kind => unreachable_reason(Some(kind), &text, db).unwrap_or_else(|| one_line(&text)),
    };
    let error = Error::new(ErrorKind::Connect, format!("{}: {reason}", phase.prefix(db)));
    if matches!(phase, Phase::Connect) { error.with_hint(HINT_ADDRESS) } else { error }
}

/// The server broke the protocol (or pgkeep did).
pub(crate) fn protocol_error(db: &DbSettings, what: &str) -> Error {
    Error::new(ErrorKind::Internal, format!("protocol error on the replication connection to {}: {what}", server_label(db)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SslMode;
    use crate::replication::wire::{BackendMessage, parse_backend_message, test_messages};
    use bytes::BytesMut;
    use postgres_protocol::message::backend::Message;

    fn settings() -> DbSettings {
        crate::pg::errors::tests::settings("db.example.com", SslMode::Prefer)
    }

    fn parsed(code: &str, message: &str, hint: Option<&str>) -> ServerError {
        let bytes = test_messages::error_response(b'E', "FATAL", code, message, hint);
        let mut buf = BytesMut::from(&bytes[..]);
        match parse_backend_message(&mut buf).unwrap().unwrap() {
            BackendMessage::Protocol(Message::ErrorResponse(body)) => ServerError::parse(body.fields()).unwrap(),
            other => panic!("got {}", other.name()),
        }
    }

    #[test]
    fn error_fields_are_collected() {
        let e = parsed("42P01", "relation \"x\" does not exist", Some("create it"));
        assert_eq!(e.code(), "42P01");
        assert_eq!(e.severity(), "FATAL");
        assert_eq!(e.hint(), Some("create it"));
        assert_eq!(e.to_string(), "FATAL: relation \"x\" does not exist (SQLSTATE 42P01)");
    }

    #[test]
    fn missing_replication_attribute_is_auth_with_alter_role_hint() {
        let e = parsed("42501", "must be superuser or replication role to start walsender", None);
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
        let e = parsed("55000", "logical decoding requires wal_level >= logical", None);
        let err = slot_creation_error(server_error(e, &settings(), Phase::Command("create logical replication slot s")));
        assert_eq!(err.kind(), ErrorKind::Database);
        assert_eq!(err.sqlstate(), Some("55000"));
        assert!(err.message().contains("wal_level"), "{}", err.message());
        assert!(err.hint().unwrap().contains("wal_level = logical"));
        assert!(err.message().starts_with("cannot create logical replication slot s on db.example.com:6543/app"), "{}", err.message());
    }

    #[test]
    fn password_and_unknown_database_follow_regular_connections() {
        let err = server_error(parsed("28P01", "password authentication failed for user \"alice\"", None), &settings(), Phase::Connect);
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert_eq!(err.message(), "password authentication failed for user alice at db.example.com:6543");
        let err = server_error(parsed("3D000", "database \"app\" does not exist", None), &settings(), Phase::Connect);
        assert_eq!(err.kind(), ErrorKind::Database);
        assert!(err.message().contains("database app does not exist"));
    }

    #[test]
    fn generic_errors_keep_sqlstate_and_server_hint() {
        let err = server_error(
            parsed("57014", "canceling statement due to user request", Some("try again")),
            &settings(),
            Phase::Command("create logical replication slot s"),
        );
        assert_eq!(err.kind(), ErrorKind::Database);
        assert!(err.message().contains("SQLSTATE 57014"), "{}", err.message());
        assert_eq!(err.hint(), Some("try again"));
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(source.downcast_ref::<ServerError>().unwrap().code(), "57014");
        let err = server_error(parsed("57P01", "terminating connection due to administrator command", None), &settings(), Phase::Command("x"));
        assert_eq!(err.kind(), ErrorKind::Connect);
        let err = server_error(parsed("53300", "sorry, too many clients already", None), &settings(), Phase::Connect);
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
        assert_eq!(refused.message(), "cannot connect to PostgreSQL at db.example.com:6543: connection refused");
        let lost = io_error(io::ErrorKind::UnexpectedEof.into(), &db, Phase::Command("run a query"));
        assert!(lost.message().contains("lost connection"), "{}", lost.message());
        let bad = io_error(io::Error::new(io::ErrorKind::InvalidData, "bad tag"), &db, Phase::Connect);
        assert_eq!(bad.kind(), ErrorKind::Internal);
        let mut unix = settings();
        unix.host = "/run/postgresql/".into();
        assert_eq!(server_label(&unix), "/run/postgresql/.s.PGSQL.6543");
        let missing = io_error(io::ErrorKind::NotFound.into(), &unix, Phase::Connect);
        assert!(missing.message().ends_with("no such socket"), "{}", missing.message());
    }

    #[test]
    fn every_server_error_carries_its_sqlstate() {
        let db = settings();
        for (code, phase) in [
            ("42501", Phase::Connect),
            ("28P01", Phase::Connect),
            ("3D000", Phase::Connect),
            ("55006", Phase::Command("stream changes from replication slot s")),
            ("42704", Phase::Command("stream changes from replication slot s")),
        ] {
            let err = server_error(parsed(code, "irrelevant", None), &db, phase);
            assert_eq!(err.sqlstate(), Some(code), "{}", err.message());
        }
    }

    #[test]
    fn slot_creation_hints_follow_the_code_in_any_language() {
        let db = settings();
        let phase = Phase::Command("create logical replication slot s");
        // The German server's words; the code decides.
        let full = slot_creation_error(server_error(parsed("53400", "alle Replikations-Slots sind in Benutzung", None), &db, phase));
        assert_eq!(full.hint(), Some(HINT_SLOTS));
        let low = slot_creation_error(server_error(parsed("55000", "logische Dekodierung erfordert wal_level >= logical", None), &db, phase));
        assert_eq!(low.hint(), Some(HINT_WAL_LEVEL));
        // English text under another code gets no such hint.
        let other = slot_creation_error(server_error(parsed("42710", "all replication slots are in use; wal_level", None), &db, phase));
        assert_eq!(other.hint(), None);
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(sql_identifier("alice"), "alice");
        assert_eq!(sql_identifier("Alice"), "\"Alice\"");
        assert_eq!(sql_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(sql_identifier("1x"), "\"1x\"");
    }
}
