//! One-line connection and server errors shared by regular connections
//! (`crate::pg::connect`) and the replication client (`crate::replication`).
//!
//! Both name the server the same way ([`server_label`], [`target_label`],
//! [`Phase::prefix`]), give the same hints, classify the server's
//! ErrorResponse by SQLSTATE ([`classify_server_error`], [`sqlstate_kind`],
//! [`server_error_text`]), keep that SQLSTATE on the [`Error`] so callers
//! decide on it ([`keep_sqlstate`]), map rustls certificate failures
//! ([`certificate_error`]) and explain unreachable servers and timeouts
//! ([`unreachable_reason`], [`timeout_error`]). What differs between the two
//! clients is chosen by [`Client`]; replication-only cases (walsender
//! privilege, `wal_level`, slot limits) live in `crate::replication`.
//! Messages name host, port, database and user, never the password.

use std::io;

use crate::config::{DbSettings, SslMode};
use crate::error::{Error, ErrorKind};

pub(crate) const HINT_PASSWORD: &str = "check DB_PASSWORD, PGPASSWORD or ~/.pgpass";
/// The hint for a rejected password: where the password came from, so the
/// user knows which one to fix (never the password itself).
pub(crate) fn password_hint(db: &DbSettings) -> String {
    match db.password.as_ref().and_then(|p| p.origin()) {
        Some(origin) => format!("the password came from {origin}: check it there (other sources: DATABASE_URL, --db, DB_PASSWORD, PGPASSWORD, ~/.pgpass)"),
        None => HINT_PASSWORD.to_string(),
    }
}

/// The server closed the connection during startup, before answering as
/// PostgreSQL: said in words, with the likely causes, instead of the codec's
/// "bytes remaining on stream" or "unexpected end of file".
pub(crate) fn closed_during_startup(db: &DbSettings) -> Error {
    let tls = if db.sslmode == SslMode::Disable {
        "the server requires TLS and sslmode=disable (set DB_SSLMODE or PGSSLMODE to require)"
    } else {
        "the server requires a TLS setting it did not get (check sslmode)"
    };
    Error::new(ErrorKind::Connect, format!("server {} closed the connection during startup without answering as PostgreSQL", server_label(db))).with_hint(
        format!(
            "likely causes: {tls}; a wrong port (DB_PORT or PGPORT) that reaches another service; \
         or not a PostgreSQL server (a proxy or pooler refusing the connection)"
        ),
    )
}

pub(crate) const HINT_ADDRESS: &str = "check DB_HOST and DB_PORT (or PGHOST/PGPORT, --db) and that PostgreSQL is running";
pub(crate) const HINT_SSLMODE: &str = "set sslmode=require or verify-full (DB_SSLMODE, PGSSLMODE or ?sslmode= in --db)";
pub(crate) const NAME_HINT: &str = "connect using a name the certificate lists, or use sslmode=verify-ca to skip the host-name check";

/// Which client the error comes from, where the wording differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// A regular connection (tokio-postgres).
    Regular,
    /// pgkeep's own replication connection.
    Replication,
}

/// Where a failure happened, for the message prefix.
#[derive(Clone, Copy)]
pub(crate) enum Phase<'a> {
    /// Opening the connection (TCP, TLS, startup, authentication).
    Connect,
    /// A query or command; reads after "cannot", e.g. "list tables".
    Command(&'a str),
}

impl Phase<'_> {
    /// "cannot connect to PostgreSQL at h:p" or "cannot list tables on h:p/db".
    pub(crate) fn prefix(self, db: &DbSettings) -> String {
        match self {
            Phase::Connect => format!("cannot connect to PostgreSQL at {}", server_label(db)),
            Phase::Command(what) => format!("cannot {what} on {}", target_label(db)),
        }
    }
}

/// A host starting with `/` is a Unix socket directory.
pub(crate) fn is_unix_socket(db: &DbSettings) -> bool {
    db.host.starts_with('/')
}

/// `host:port`, `[v6]:port`, or the socket path for a Unix socket directory.
pub(crate) fn server_label(db: &DbSettings) -> String {
    if is_unix_socket(db) {
        format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port)
    } else if db.host.contains(':') && !db.host.starts_with('[') {
        format!("[{}]:{}", db.host, db.port)
    } else {
        format!("{}:{}", db.host, db.port)
    }
}

/// `host:port/dbname` with the Unix-socket form of the server.
pub(crate) fn target_label(db: &DbSettings) -> String {
    format!("{}/{}", server_label(db), db.dbname)
}

/// `text` with line breaks turned into spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// "ERROR: message (SQLSTATE 42P01): detail", on one line.
pub(crate) fn server_error_text(severity: &str, message: &str, code: &str, detail: Option<&str>) -> String {
    let mut text = format!("{severity}: {message} (SQLSTATE {code})");
    if let Some(detail) = detail {
        text.push_str(": ");
        text.push_str(detail);
    }
    one_line(&text)
}

/// `error` carrying the SQLSTATE of `e` when the server answered with an
/// error; unchanged for client-side failures (I/O, TLS, closed connection).
pub(crate) fn keep_sqlstate(error: Error, e: &tokio_postgres::Error) -> Error {
    match e.code() {
        Some(code) => error.with_sqlstate(code.code()),
        None => error,
    }
}

/// The errors both clients word the same way, by SQLSTATE `code`, with the
/// server's primary `message`: bad password, pg_hba rejections, unknown role
/// or database, and (while connecting) missing CONNECT privilege. `None` for
/// anything else; the caller words that with [`sqlstate_kind`]. The caller
/// attaches `code` to the result.
///
/// The code alone decides; the server's text only picks a more precise
/// wording within `28000` (pg_hba entry, unknown role), which the server
/// sends in its own `lc_messages` language before any session setting
/// applies. A server speaking another language gets the generic `28000`
/// wording with its own text (the exit code is the same).
pub(crate) fn classify_server_error(code: &str, message: &str, db: &DbSettings, phase: Phase<'_>, client: Client) -> Option<Error> {
    let server = server_label(db);
    let user = &db.user;
    let dbname = &db.dbname;
    let error = match code {
        // The server also answers this for unknown roles, so as not to reveal them.
        "28P01" => Error::new(ErrorKind::Auth, format!("password authentication failed for user {user} at {server}")).with_hint(password_hint(db)),
        "28000" if message.contains("no pg_hba.conf entry") => {
            if message.contains("no encryption") && db.sslmode == SslMode::Disable {
                Error::new(
                    ErrorKind::Tls,
                    format!(
                        "server {server} does not accept unencrypted connections for user {user} \
                         to database {dbname}, and sslmode=disable"
                    ),
                )
                .with_hint(HINT_SSLMODE)
            } else {
                let action = match client {
                    Client::Regular => "connect",
                    Client::Replication => "open a replication connection",
                };
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "server {server} does not allow user {user} to {action} to database \
                         {dbname} from this host (no pg_hba.conf entry)"
                    ),
                )
                .with_hint("ask the database administrator to add a pg_hba.conf entry")
            }
        }
        "28000" if message.starts_with("role") && message.ends_with("does not exist") => {
            Error::new(ErrorKind::Auth, format!("role {user} does not exist on {server}")).with_hint("check DB_USER, PGUSER or the user in --db")
        }
        "28000" => Error::new(ErrorKind::Auth, format!("server {server} refused user {user}: {message}")),
        "3D000" => Error::new(ErrorKind::Database, format!("database {dbname} does not exist on {server}"))
            .with_hint("check DB_NAME, PGDATABASE or the database in --db"),
        "42501" if matches!(phase, Phase::Connect) => {
            Error::new(ErrorKind::Auth, format!("user {user} may not connect to database {dbname} on {server}: {message}"))
        }
        _ => return None,
    };
    Some(error)
}

/// The kind of any other server error: Connect when the server is
/// unavailable (starting up, too many clients, shutting down, class 08),
/// Database otherwise.
pub(crate) fn sqlstate_kind(code: &str) -> ErrorKind {
    // cannot_connect_now, too_many_connections, admin_shutdown, crash_shutdown.
    let unavailable = ["57P03", "53300", "57P01", "57P02"];
    if unavailable.contains(&code) || code.starts_with("08") { ErrorKind::Connect } else { ErrorKind::Database }
}

/// "timed out (no answer within 7s)".
pub(crate) fn timed_out(db: &DbSettings) -> String {
    format!("timed out (no answer within {})", humantime::format_duration(db.connect_timeout))
}

/// The whole connect attempt took longer than `connect_timeout`.
pub(crate) fn timeout_error(db: &DbSettings) -> Error {
    Error::new(ErrorKind::Connect, format!("{}: {}", Phase::Connect.prefix(db), timed_out(db))).with_hint(HINT_ADDRESS)
}

/// Why the server could not be reached, for the cases both clients word the
/// same: refused, no such socket, unknown host (from the error `text`).
/// `None` for anything else.
pub(crate) fn unreachable_reason(kind: Option<io::ErrorKind>, text: &str, db: &DbSettings) -> Option<String> {
    match kind {
        Some(io::ErrorKind::ConnectionRefused) => Some("connection refused".to_string()),
        Some(io::ErrorKind::NotFound) if is_unix_socket(db) => Some("no such socket".to_string()),
        _ if text.contains("lookup address") || text.contains("resolve") => Some(format!("cannot resolve host name {}", db.host)),
        _ => None,
    }
}

/// A certificate or handshake failure reported by rustls. For a name
/// mismatch, regular connections also list the names the certificate gives.
pub(crate) fn certificate_error(e: &rustls::Error, db: &DbSettings, client: Client) -> Error {
    use rustls::CertificateError as C;
    let server = server_label(db);
    let roots = match &db.sslrootcert {
        Some(path) if path.as_os_str() != "system" => format!("sslrootcert {}", path.display()),
        _ => "the system roots".to_string(),
    };
    let (reason, hint) = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            (format!("certificate is not signed by a CA in {roots}"), Some("point sslrootcert at the CA that signed the server certificate"))
        }
        rustls::Error::InvalidCertificate(C::NotValidForNameContext { presented, .. }) if client == Client::Regular => (
            format!(
                "certificate is not valid for host name {} (it names {})",
                db.host,
                presented.iter().map(|n| presented_name(n)).collect::<Vec<_>>().join(", ")
            ),
            Some(NAME_HINT),
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            (format!("certificate is not valid for host name {}", db.host), Some(NAME_HINT))
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => ("certificate has expired".to_string(), None),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => ("certificate is not valid yet".to_string(), None),
        other => (other.to_string(), None),
    };
    let error = Error::new(ErrorKind::Tls, format!("TLS verification of server {server} failed: {reason}"));
    match hint {
        Some(hint) => error.with_hint(hint),
        None => error,
    }
}

/// `localhost` out of rustls's `DnsName("localhost")`; other text unchanged.
fn presented_name(name: &str) -> &str {
    match (name.find('('), name.strip_suffix(')')) {
        (Some(open), Some(inner)) => inner[open + 1..].trim_matches('"'),
        _ => name,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;

    /// Settings for unit tests here, in `pg::connect` and in `replication`:
    /// alice (password `s3cret-pw`) on `host`:6543/app, 7 s connect timeout.
    pub(crate) fn settings(host: &str, sslmode: SslMode) -> DbSettings {
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
    fn pg_hba_wording_follows_the_client() {
        let db = settings("db", SslMode::Prefer);
        let msg = "no pg_hba.conf entry for host \"10.0.0.1\", user \"alice\", database \"app\"";
        let regular = classify_server_error("28000", msg, &db, Phase::Connect, Client::Regular).unwrap();
        assert_eq!(
            regular.message(),
            "server db:6543 does not allow user alice to connect to database app \
             from this host (no pg_hba.conf entry)"
        );
        let replication = classify_server_error("28000", msg, &db, Phase::Connect, Client::Replication).unwrap();
        assert_eq!(
            replication.message(),
            "server db:6543 does not allow user alice to open a replication connection \
             to database app from this host (no pg_hba.conf entry)"
        );
        assert!(classify_server_error("42P01", "x", &db, Phase::Connect, Client::Regular).is_none());
        assert!(classify_server_error("42501", "x", &db, Phase::Command("q"), Client::Regular).is_none());
    }

    #[test]
    fn unavailable_servers_are_connect_errors() {
        for code in ["57P03", "53300", "57P01", "57P02", "08006"] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Connect, "{code}");
        }
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::Database);
    }

    #[test]
    fn timeouts_and_unreachable_servers() {
        let db = settings("db", SslMode::Prefer);
        assert_eq!(timeout_error(&db).message(), "cannot connect to PostgreSQL at db:6543: timed out (no answer within 7s)");
        assert_eq!(unreachable_reason(Some(io::ErrorKind::ConnectionRefused), "", &db).as_deref(), Some("connection refused"));
        assert_eq!(unreachable_reason(None, "failed to lookup address information", &db).as_deref(), Some("cannot resolve host name db"));
        assert_eq!(unreachable_reason(Some(io::ErrorKind::NotFound), "", &db), None);
        assert_eq!(server_label(&settings("[::1]", SslMode::Prefer)), "[::1]:6543");
    }

    #[test]
    fn replication_name_mismatch_omits_the_presented_names() {
        let db = settings("127.0.0.1", SslMode::VerifyFull);
        let mismatch = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"localhost\")".to_string()],
        });
        let regular = certificate_error(&mismatch, &db, Client::Regular);
        assert_eq!(
            regular.message(),
            "TLS verification of server 127.0.0.1:6543 failed: \
             certificate is not valid for host name 127.0.0.1 (it names localhost)"
        );
        let replication = certificate_error(&mismatch, &db, Client::Replication);
        assert_eq!(
            replication.message(),
            "TLS verification of server 127.0.0.1:6543 failed: \
             certificate is not valid for host name 127.0.0.1"
        );
        assert_eq!(replication.hint(), Some(NAME_HINT));
    }

    #[test]
    fn labels_name_the_server() {
        assert_eq!(server_label(&settings("db", SslMode::Prefer)), "db:6543");
        assert_eq!(server_label(&settings("::1", SslMode::Prefer)), "[::1]:6543");
        assert_eq!(target_label(&settings("db", SslMode::Prefer)), "db:6543/app");
        let db = settings("db", SslMode::Prefer);
        assert_eq!(Phase::Command("list tables").prefix(&db), "cannot list tables on db:6543/app");
        assert_eq!(Phase::Connect.prefix(&db), "cannot connect to PostgreSQL at db:6543");
    }

    #[test]
    fn certificate_errors_name_host_and_reason() {
        let mut db = settings("db.example.com", SslMode::VerifyFull);
        db.sslrootcert = Some("/etc/pgkeep/ca.pem".into());
        let e = certificate_error(&rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), &db, Client::Regular);
        assert_eq!(e.kind(), ErrorKind::Tls);
        assert!(e.message().contains("db.example.com:6543"), "{}", e.message());
        assert!(e.message().contains("/etc/pgkeep/ca.pem"), "{}", e.message());
        let e = certificate_error(&rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName), &db, Client::Regular);
        assert!(e.message().contains("not valid for host name db.example.com"), "{}", e.message());
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("plain"), "plain");
        assert!(!e.user_line().contains("s3cret-pw"));
    }
}
