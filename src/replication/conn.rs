//! [`ReplicationConnection`]: one walsender connection (`replication=database`)
//! — startup, simple queries, `IDENTIFY_SYSTEM`, creating and dropping logical
//! slots, cancelling a running command, and closing.
//!
//! Every command goes the same way: encode it into the stream's write buffer,
//! flush, then read messages until ReadyForQuery, handing notices and
//! parameter changes to the connection and everything else to the flow's
//! collector. A command whose future is dropped (or whose I/O fails) leaves
//! the connection marked busy, and later commands refuse to run on it.

use std::collections::BTreeMap;

use postgres_protocol::message::backend::{Message, NoticeResponseBody, ParameterStatusBody};
use postgres_protocol::message::frontend;

use super::auth::{self, AuthMethod};
use super::commands::{CreatedSlot, SystemIdentity, create_logical_slot_command_with, drop_slot_command, parse_server_version};
use super::errors::{ServerError, io_error, protocol_error, server_error, slot_creation_error};
use super::simple_query::{QueryCollector, QueryResponse, Step, Violation};
use super::transport::{self, Transport};
use super::wire::{BackendMessage, MessageStream};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::connect::APPLICATION_NAME;
use crate::pg::errors::{Phase, server_label, timeout_error};

/// What is needed to cancel a command running on a connection from elsewhere.
#[derive(Clone)]
pub struct CancelInfo {
    /// The server's host (or Unix socket directory).
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The backend (walsender) process id.
    pub process_id: i32,
    secret_key: i32,
}

impl std::fmt::Debug for CancelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("process_id", &self.process_id)
            .field("secret_key", &crate::config::secret::REDACTED)
            .finish()
    }
}

/// A replication-protocol connection to one database.
pub struct ReplicationConnection {
    stream: MessageStream<Transport>,
    db: DbSettings,
    parameters: BTreeMap<String, String>,
    server_version_num: u32,
    process_id: i32,
    secret_key: i32,
    auth_method: AuthMethod,
    /// A walsender (`replication=database`), not a regular backend.
    replication: bool,
    /// A command was sent and its response not read to ReadyForQuery (the
    /// future was dropped, or I/O failed): the connection cannot be used.
    busy: bool,
}

/// Settings for the walsender's output functions, as PostgreSQL's own
/// logical replication worker sends them: values arrive in unambiguous
/// formats (ISO dates, exact floats) whatever the server's defaults, so
/// replay parses them back exactly.
pub(crate) const OUTPUT_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3";

/// The startup parameters of a logical replication connection.
pub(crate) fn startup_parameters(db: &DbSettings) -> [(&str, &str); 6] {
    [
        ("user", db.user.as_str()),
        ("database", db.dbname.as_str()),
        ("replication", "database"),
        ("application_name", APPLICATION_NAME),
        ("client_encoding", "UTF8"),
        ("options", OUTPUT_OPTIONS),
    ]
}

/// The startup parameters of a regular (non-replication) connection: the
/// caller sets its session (`SESSION_SETUP`) with a query.
pub(crate) fn regular_startup_parameters(db: &DbSettings) -> [(&str, &str); 4] {
    [("user", db.user.as_str()), ("database", db.dbname.as_str()), ("application_name", APPLICATION_NAME), ("client_encoding", "UTF8")]
}

impl ReplicationConnection {
    /// Connect to `db` as a regular backend (no `replication` parameter),
    /// with the same transport, TLS and authentication as
    /// [`connect`](Self::connect). For `COPY … TO STDOUT` read in pieces
    /// ([`copy_out`](Self::copy_out)), which tokio-postgres cannot do;
    /// walsender commands fail on it.
    pub async fn connect_regular(db: &DbSettings) -> Result<Self> {
        match tokio::time::timeout(db.connect_timeout, Self::start(db, false)).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(db)),
        }
    }

    /// Connect to `db` in logical replication mode.
    ///
    /// Startup sends `replication=database`, `database`, `user`,
    /// `application_name=pgkeep` and `client_encoding=UTF8`. TLS follows
    /// `db.sslmode`: an SSLRequest first unless `disable`; `prefer` stays
    /// plain if the server says no, `require` and `verify-*` fail with
    /// `ErrorKind::Tls`. Unix-socket hosts (starting with `/`) connect to
    /// `<dir>/.s.PGSQL.<port>` without TLS. Then authentication (password,
    /// MD5, SCRAM-SHA-256, or SCRAM-SHA-256-PLUS on TLS) and the wait for
    /// ReadyForQuery. The whole attempt is bounded by `db.connect_timeout`.
    pub async fn connect(db: &DbSettings) -> Result<Self> {
        match tokio::time::timeout(db.connect_timeout, Self::start(db, true)).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(db)),
        }
    }

    async fn start(db: &DbSettings, replication: bool) -> Result<Self> {
        // 1. Socket and TLS.
        let transport = Transport::open(db).await?;
        let binding = transport.tls_server_end_point();
        let tls = transport.is_tls();
        let mut stream = MessageStream::new(transport);

        // 2. Startup message.
        let parameters: Vec<(&str, &str)> = if replication { startup_parameters(db).to_vec() } else { regular_startup_parameters(db).to_vec() };
        frontend::startup_message(parameters, stream.write_buf())
            .map_err(|_| Error::config(format!("the user or database name for {} contains a NUL byte", server_label(db))))?;
        stream.flush().await.map_err(|e| io_error(e, db, Phase::Connect))?;

        // 3. Authentication.
        let auth_method = auth::authenticate(&mut stream, db, binding).await?;

        // 4. Backend key, parameters, ReadyForQuery.
        let mut conn = ReplicationConnection {
            stream,
            db: db.clone(),
            parameters: BTreeMap::new(),
            server_version_num: 0,
            process_id: 0,
            secret_key: 0,
            auth_method,
            replication,
            busy: true,
        };
        conn.finish_startup().await?;
        tracing::debug!(
            server = %server_label(db),
            database = %db.dbname,
            user = %db.user,
            tls,
            auth = auth_method.as_str(),
            server_version_num = conn.server_version_num,
            backend_pid = conn.process_id,
            "replication connection open"
        );
        Ok(conn)
    }

    /// Read BackendKeyData and ParameterStatus messages up to ReadyForQuery.
    async fn finish_startup(&mut self) -> Result<()> {
        loop {
            match self.next_message(Phase::Connect).await? {
                BackendMessage::Protocol(Message::BackendKeyData(key)) => {
                    self.process_id = key.process_id();
                    self.secret_key = key.secret_key();
                }
                BackendMessage::Protocol(Message::ReadyForQuery(_)) => break,
                BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                    let e = ServerError::parse(body.fields()).map_err(|e| io_error(e, &self.db, Phase::Connect))?;
                    // A regular backend's refusal (no CONNECT privilege) is
                    // not about replication rights: no replication hint.
                    let phase = if self.replication { Phase::Connect } else { Phase::Command("open a connection") };
                    return Err(server_error(e, &self.db, phase));
                }
                BackendMessage::NegotiateProtocolVersion { unrecognized_options, .. } => {
                    tracing::debug!(?unrecognized_options, "server negotiated the protocol version down");
                }
                other => {
                    return Err(protocol_error(&self.db, &format!("unexpected {} during startup", other.name())));
                }
            }
        }
        self.server_version_num = self
            .parameters
            .get("server_version")
            .and_then(|v| parse_server_version(v))
            .ok_or_else(|| protocol_error(&self.db, "the server did not report a valid server_version"))?;
        self.busy = false;
        Ok(())
    }

    /// The next message that is not a notice or a parameter change; those
    /// are logged or stored here.
    pub(super) async fn next_message(&mut self, phase: Phase<'_>) -> Result<BackendMessage> {
        loop {
            let msg = self.stream.read_message().await.map_err(|e| io_error(e, &self.db, phase))?;
            match msg {
                BackendMessage::Protocol(Message::NoticeResponse(body)) => log_notice(&body),
                BackendMessage::Protocol(Message::ParameterStatus(body)) => self.store_parameter(&body),
                BackendMessage::Protocol(Message::NotificationResponse(_)) => {}
                other => return Ok(other),
            }
        }
    }

    pub(super) fn store_parameter(&mut self, body: &ParameterStatusBody) {
        if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
            if name == "server_version"
                && let Some(num) = parse_server_version(value)
            {
                self.server_version_num = num;
            }
            self.parameters.insert(name.to_string(), value.to_string());
        }
    }

    /// Run `sql` with the simple-query protocol and return its rows as text
    /// (`None` for NULL).
    ///
    /// An ErrorResponse becomes `ErrorKind::Database` with the server's
    /// message and SQLSTATE; the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(self.query_response(sql).await?.rows)
    }

    /// Like [`simple_query`](Self::simple_query), with column names and command tags.
    pub async fn query_response(&mut self, sql: &str) -> Result<QueryResponse> {
        self.run(sql, "run a query").await
    }

    /// Send one query and collect its response. `what` names the operation
    /// for errors ("cannot {what} on host:port/db"); the SQL text is never
    /// put into errors (it may hold secrets).
    async fn run(&mut self, sql: &str, what: &str) -> Result<QueryResponse> {
        self.ensure_usable()?;
        frontend::query(sql, self.stream.write_buf()).map_err(|_| Error::config(format!("cannot {what}: the command contains a NUL byte")))?;
        self.busy = true;
        self.stream.flush().await.map_err(|e| io_error(e, &self.db, Phase::Command(what)))?;
        let mut collector = QueryCollector::default();
        loop {
            let msg = self.next_message(Phase::Command(what)).await?;
            match collector.accept(msg) {
                Ok(Step::More) => {}
                Ok(Step::Done) => break,
                Err(Violation::Unexpected(name)) => {
                    return Err(protocol_error(&self.db, &format!("the server answered {name} to a simple query")));
                }
                Err(Violation::Malformed(text)) => return Err(protocol_error(&self.db, &text)),
            }
        }
        self.busy = false;
        collector.finish().map_err(|e| server_error(e, &self.db, Phase::Command(what)))
    }

    pub(super) fn ensure_usable(&self) -> Result<()> {
        if self.busy {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("the replication connection to {} is unusable: an earlier command was interrupted or failed", server_label(&self.db)),
            )
            .with_hint("open a new replication connection"));
        }
        Ok(())
    }

    /// `IDENTIFY_SYSTEM`: system identifier, timeline, WAL position, database.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let what = "identify the system";
        let response = self.run("IDENTIFY_SYSTEM", what).await?;
        SystemIdentity::from_response(&response).map_err(|text| protocol_error(&self.db, &text))
    }

    /// Create a logical replication slot `name` with the `pgoutput` plugin,
    /// exporting a snapshot when `export_snapshot`.
    ///
    /// The name must be 1 to 63 lower-case letters, digits and underscores;
    /// anything else is an `ErrorKind::Config` error and nothing is sent.
    /// A temporary slot is dropped when the connection ends. The exported
    /// snapshot can be imported (`SET TRANSACTION SNAPSHOT`) only until the
    /// next command on this connection or until it closes.
    ///
    /// The server first waits for every running transaction that has an
    /// xid to finish, which can take long. To give up, either drop this
    /// future (the connection is then unusable: close or drop it), or call
    /// [`cancel`](Self::cancel) with [`cancel_token`](Self::cancel_token)
    /// from elsewhere, which makes this return a `57014` error and leaves the
    /// connection usable.
    pub async fn create_logical_slot(&mut self, name: &str, temporary: bool, export_snapshot: bool) -> Result<CreatedSlot> {
        self.create_logical_slot_with(name, temporary, export_snapshot, false).await
    }

    /// [`create_logical_slot`](Self::create_logical_slot), as a failover
    /// slot when `failover` and the server has them (17+, permanent slots).
    pub async fn create_logical_slot_with(&mut self, name: &str, temporary: bool, export_snapshot: bool, failover: bool) -> Result<CreatedSlot> {
        let command = create_logical_slot_command_with(name, temporary, export_snapshot, failover, self.server_version_num)?;
        let what = format!("create logical replication slot {name}");
        let response = self.run(&command, &what).await.map_err(slot_creation_error)?;
        let slot = CreatedSlot::from_response(&response).map_err(|text| protocol_error(&self.db, &text))?;
        tracing::info!(
            slot = %slot.slot_name,
            temporary,
            failover = failover && !temporary && self.server_version_num >= super::commands::FAILOVER_MIN_SERVER_VERSION,
            consistent_point = %slot.consistent_point,
            snapshot_exported = slot.snapshot_name.is_some(),
            "created logical replication slot"
        );
        Ok(slot)
    }

    /// Drop slot `name`; with `wait`, wait until another connection using it
    /// lets go instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let command = drop_slot_command(name, wait)?;
        let what = format!("drop replication slot {name}");
        self.run(&command, &what).await?;
        tracing::info!(slot = name, "dropped replication slot");
        Ok(())
    }

    /// The server's version as `server_version_num` (150004 for 15.4).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// The process id of the walsender serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.process_id
    }

    /// A run-time parameter the server reported (`server_version`,
    /// `server_encoding`, `integer_datetimes`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// How the server authenticated this connection.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth_method
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.get_ref().is_tls()
    }

    /// What [`cancel`](Self::cancel) needs to interrupt this connection's
    /// running command from another task.
    pub fn cancel_token(&self) -> CancelInfo {
        CancelInfo { host: self.db.host.clone(), port: self.db.port, process_id: self.process_id, secret_key: self.secret_key }
    }

    /// Ask the server to cancel the command running on the connection
    /// `info` came from. Opens a new connection (TLS per `db.sslmode`) to
    /// `info.host:info.port`, bounded by `db.connect_timeout`. The cancel is
    /// a request: the command ends with SQLSTATE 57014 if it was still
    /// running, and nothing happens if it was not.
    pub async fn cancel(info: &CancelInfo, db: &DbSettings) -> Result<()> {
        let target = DbSettings { host: info.host.clone(), port: info.port, ..db.clone() };
        let attempt = transport::send_cancel_request(&target, info.process_id, info.secret_key);
        match tokio::time::timeout(target.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(&target).context("cannot send the cancel request")),
        }?;
        tracing::debug!(backend_pid = info.process_id, "sent cancel request");
        Ok(())
    }

    /// Send Terminate and close the socket. Temporary slots go with the
    /// connection (the server drops them as the walsender exits).
    pub async fn close(mut self) -> Result<()> {
        if !self.busy {
            frontend::terminate(self.stream.write_buf());
            self.stream.flush().await.map_err(|e| io_error(e, &self.db, Phase::Command("close the replication connection")))?;
        }
        // The server may already have closed its end; nothing is lost then.
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// For CopyBoth streaming (`super::stream`), which drives the message stream
/// itself between a command and its ReadyForQuery.
impl ReplicationConnection {
    pub(super) fn message_stream(&mut self) -> &mut MessageStream<Transport> {
        &mut self.stream
    }

    pub(super) fn settings(&self) -> &DbSettings {
        &self.db
    }

    /// Mark a command as sent (`true`) or answered up to ReadyForQuery (`false`).
    pub(super) fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }
}

/// Log a NoticeResponse (severity, SQLSTATE, message) at debug level.
pub(super) fn log_notice(body: &NoticeResponseBody) {
    match ServerError::parse(body.fields()) {
        Ok(notice) => {
            tracing::debug!(severity = notice.severity(), code = notice.code(), message = notice.message(), "server notice on replication connection")
        }
        Err(e) => tracing::debug!(error = %e, "malformed server notice on replication connection"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Secret, SslMode};

    #[test]
    fn startup_asks_for_logical_replication_as_pgkeep() {
        let db = DbSettings {
            host: "db".into(),
            port: 5432,
            user: "alice".into(),
            password: Some(Secret::new("pw")),
            dbname: "app".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(1),
        };
        let params = startup_parameters(&db);
        assert!(params.contains(&("replication", "database")));
        assert!(params.contains(&("database", "app")));
        assert!(params.contains(&("user", "alice")));
        assert!(params.contains(&("options", OUTPUT_OPTIONS)));
        assert!(params.contains(&("application_name", "pgkeep")));
        assert!(params.iter().all(|(_, v)| *v != "pw"));
    }

    #[test]
    fn cancel_info_hides_the_secret_key() {
        let info = CancelInfo { host: "db".into(), port: 5432, process_id: 42, secret_key: 987_654_321 };
        let shown = format!("{info:?}");
        assert!(shown.contains("42"), "{shown}");
        assert!(!shown.contains("987654321"), "{shown}");
    }
}
