//! Logical streaming on a [`ReplicationConnection`]: `START_REPLICATION SLOT …
//! LOGICAL` with pgoutput options, the CopyBoth messages of the streaming
//! replication protocol (XLogData `w` and primary keepalive `k` from the
//! server, standby status update `r` to it), and leaving CopyBoth so the
//! connection can run commands again (`DROP_REPLICATION_SLOT`).
//!
//! [`LogicalStream`] borrows the connection while it streams. The command
//! text and the CopyData formats are pure functions
//! ([`start_logical_replication_command`], [`parse_copy_data`],
//! [`encode_standby_status`]) with unit tests here; decoding the pgoutput
//! payloads is `super::pgoutput`'s job.
//!
//! A streaming loop answers the server's reply requests and reports progress
//! on a timer, which works because [`LogicalStream::next_event`] is
//! cancel-safe:
//!
//! ```no_run
//! # async fn run(conn: &mut pgkeep::replication::ReplicationConnection, start: pgkeep::repo::layout::Lsn) -> pgkeep::Result<()> {
//! use pgkeep::replication::StreamEvent;
//! use pgkeep::replication::pgoutput::{self, PgOutputMessage};
//!
//! let mut stream = conn.start_logical_replication("pgkeep_stream", start, &["pgkeep"], true).await?;
//! let mut status_timer = tokio::time::interval(std::time::Duration::from_secs(10));
//! let mut stored = start;
//! loop {
//!     tokio::select! {
//!         event = stream.next_event() => match event? {
//!             StreamEvent::XLogData { data, .. } => {
//!                 let message = pgoutput::decode_shared(&data)
//!                     .map_err(|e| pgkeep::Error::internal(e.to_string()))?;
//!                 if let PgOutputMessage::Commit(commit) = message {
//!                     // ... once the transaction is stored durably:
//!                     stored = commit.end_lsn;
//!                 }
//!             }
//!             StreamEvent::Keepalive { reply_requested: true, .. } => {
//!                 stream.send_status(stored, stored, stored, false).await?;
//!             }
//!             StreamEvent::Keepalive { .. } => {}
//!             StreamEvent::End => break,
//!         },
//!         _ = status_timer.tick() => stream.send_status(stored, stored, stored, false).await?,
//!     }
//! }
//! stream.finish().await?;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;

use super::commands::{quote_identifier, validate_slot_name};
use super::conn::ReplicationConnection;
use super::errors::{ServerError, io_error, protocol_error, server_error};
use super::pgoutput::PgTimestamp;
use super::wire::BackendMessage;
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::pg::errors::{Phase, target_label};

#[cfg(test)]
mod tests;

/// The pgoutput protocol version pgkeep asks for.
pub const PGOUTPUT_PROTO_VERSION: u32 = 1;

/// The first `server_version_num` whose pgoutput has the `messages` option
/// (PostgreSQL 14): `pg_logical_emit_message` messages in the stream.
pub const MESSAGES_MIN_SERVER_VERSION: u32 = 140_000;

/// Whether a server of `server_version_num` can stream logical decoding
/// messages, i.e. whether `messages` may be passed to
/// [`ReplicationConnection::start_logical_replication`].
pub fn supports_messages(server_version_num: u32) -> bool {
    server_version_num >= MESSAGES_MIN_SERVER_VERSION
}

/// Length of an XLogData header: `w`, WAL start, WAL end, server time.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Length of a primary keepalive: `k`, WAL end, server time, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Length of a standby status update.
pub const STANDBY_STATUS_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// What the server sent on a logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// XLogData: one pgoutput message (`data`, see `pgoutput::decode_shared`).
    XLogData {
        /// The WAL position of the change the data belongs to.
        wal_start: Lsn,
        /// The end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock when it sent this.
        server_time: PgTimestamp,
        /// The payload.
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// The end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock when it sent this.
        server_time: PgTimestamp,
        /// The server wants a status update now, or it will end the
        /// connection after `wal_sender_timeout`.
        reply_requested: bool,
    },
    /// The server left CopyBoth (CopyDone). Call [`LogicalStream::finish`].
    End,
}

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// In CopyBoth.
    Streaming,
    /// The server sent CopyDone; status updates may still be sent.
    ServerDone,
    /// The server sent an ErrorResponse and left CopyBoth; ReadyForQuery follows.
    ServerFailed,
    /// An I/O or protocol failure: the connection cannot be used again.
    Broken,
}

/// A `START_REPLICATION … LOGICAL` stream on a borrowed connection.
///
/// Dropping it without [`finish`](Self::finish) leaves the connection in
/// CopyBoth, so its later commands refuse to run (close it instead).
pub struct LogicalStream<'a> {
    conn: &'a mut ReplicationConnection,
    state: StreamState,
    /// "stream changes from replication slot x", for errors.
    what: String,
}

impl ReplicationConnection {
    /// Start streaming the changes of logical slot `slot` from `start_lsn`
    /// (the slot's confirmed position is used when it is later), decoded by
    /// pgoutput protocol version 1 for the publications
    /// `publication_names`, with `pg_logical_emit_message` messages when
    /// `messages` (PostgreSQL 14 and later).
    ///
    /// Sends `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1',
    /// publication_names '"a","b"', messages 'true')` and waits for
    /// CopyBothResponse. A server error (an unknown or busy slot) is
    /// `ErrorKind::Database` and leaves the connection usable. Publications
    /// are only looked up when the first change is decoded, so a missing
    /// one shows up as an error from [`LogicalStream::next_event`].
    pub async fn start_logical_replication(&mut self, slot: &str, start_lsn: Lsn, publication_names: &[&str], messages: bool) -> Result<LogicalStream<'_>> {
        let command = start_logical_replication_command(slot, start_lsn, publication_names, messages, self.server_version_num())?;
        self.ensure_usable()?;
        let what = format!("stream changes from replication slot {slot}");
        frontend::query(&command, self.message_stream().write_buf()).map_err(|_| Error::config(format!("cannot {what}: the command contains a NUL byte")))?;
        self.set_busy(true);
        self.message_stream().flush().await.map_err(|e| io_error(e, self.settings(), Phase::Command(&what)))?;
        match self.next_message(Phase::Command(&what)).await? {
            BackendMessage::CopyBothResponse { .. } => {}
            BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                let error = parse_error(self, &body, &what)?;
                // The command is over; the server says ReadyForQuery next.
                read_to_ready(self, &what).await?;
                self.set_busy(false);
                return Err(server_error(error, self.settings(), Phase::Command(&what)));
            }
            other => {
                return Err(protocol_error(self.settings(), &format!("the server answered {} to START_REPLICATION", other.name())));
            }
        }
        tracing::info!(
            slot,
            start_lsn = %start_lsn,
            publications = publication_names.len(),
            messages,
            "started logical replication"
        );
        Ok(LogicalStream { conn: self, state: StreamState::Streaming, what })
    }
}

impl LogicalStream<'_> {
    /// The next XLogData or keepalive, or [`StreamEvent::End`] once the
    /// server has left CopyBoth (and on every call after that).
    ///
    /// Cancel-safe: dropping the future (a `select!` branch that lost to a
    /// timer) loses nothing; bytes already read stay buffered for the next
    /// call. So a caller can `select!` on this and a timer, send status
    /// updates in between with [`send_status`](Self::send_status), and
    /// answer keepalives that have `reply_requested` at once.
    ///
    /// A server error (a publication that does not exist, the slot dropped
    /// under it) ends the stream with `ErrorKind::Database`;
    /// [`finish`](Self::finish) then makes the connection usable again.
    pub async fn next_event(&mut self) -> Result<StreamEvent> {
        match self.state {
            StreamState::Streaming => {}
            StreamState::ServerDone => return Ok(StreamEvent::End),
            StreamState::ServerFailed | StreamState::Broken => return Err(self.ended_error()),
        }
        let message = match self.conn.next_message(Phase::Command(&self.what)).await {
            Ok(message) => message,
            Err(e) => {
                self.state = StreamState::Broken;
                return Err(e);
            }
        };
        match message {
            BackendMessage::Protocol(Message::CopyData(body)) => parse_copy_data(body.into_bytes()).map_err(|problem| {
                self.state = StreamState::Broken;
                protocol_error(self.conn.settings(), &problem)
            }),
            // A server shutting down may end the command without a CopyDone first.
            BackendMessage::Protocol(Message::CopyDone | Message::CommandComplete(_)) => {
                self.state = StreamState::ServerDone;
                Ok(StreamEvent::End)
            }
            BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                self.state = StreamState::ServerFailed;
                let error = parse_error(self.conn, &body, &self.what).inspect_err(|_| {
                    self.state = StreamState::Broken;
                })?;
                Err(server_error(error, self.conn.settings(), Phase::Command(&self.what)))
            }
            other => {
                self.state = StreamState::Broken;
                Err(protocol_error(self.conn.settings(), &format!("unexpected {} while streaming", other.name())))
            }
        }
    }

    /// Send a standby status update: everything before `written` is
    /// received, before `flushed` stored durably (the slot's
    /// `confirmed_flush_lsn` becomes this; the server may remove WAL before
    /// it), before `applied` applied. Pass a Commit's `end_lsn`, so that the
    /// transaction is not sent again. Sets `reply_requested` to ask the
    /// server for a keepalive back. The time field is now.
    ///
    /// Dropping the future part-way loses nothing: unsent bytes stay
    /// buffered and go out with the next status update or [`finish`](Self::finish).
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply_requested: bool) -> Result<()> {
        match self.state {
            StreamState::Streaming | StreamState::ServerDone => {}
            StreamState::ServerFailed | StreamState::Broken => return Err(self.ended_error()),
        }
        let update = encode_standby_status(written, flushed, applied, PgTimestamp::now(), reply_requested);
        frontend::CopyData::new(&update[..])
            .map_err(|e| Error::internal(format!("cannot encode a status update: {e}")))?
            .write(self.conn.message_stream().write_buf());
        if let Err(e) = self.conn.message_stream().flush().await {
            self.state = StreamState::Broken;
            return Err(io_error(e, self.conn.settings(), Phase::Command(&self.what)));
        }
        tracing::trace!(
            written = %written,
            flushed = %flushed,
            applied = %applied,
            reply_requested,
            "sent standby status update"
        );
        Ok(())
    }

    /// Leave CopyBoth: send CopyDone and read up to ReadyForQuery, so the
    /// connection can run commands again (`DROP_REPLICATION_SLOT`).
    ///
    /// XLogData still in flight is discarded; the slot sends it again from
    /// its confirmed position next time. After a server error from
    /// [`next_event`](Self::next_event) this only reads to ReadyForQuery. If
    /// this future is dropped, the connection stays unusable.
    pub async fn finish(self) -> Result<()> {
        let LogicalStream { conn, state, what } = self;
        match state {
            StreamState::Streaming | StreamState::ServerDone => {
                frontend::copy_done(conn.message_stream().write_buf());
                conn.message_stream().flush().await.map_err(|e| io_error(e, conn.settings(), Phase::Command(&what)))?;
            }
            StreamState::ServerFailed => {}
            StreamState::Broken => {
                return Err(ended_error(conn, &what));
            }
        }
        let error = read_to_ready(conn, &what).await?;
        conn.set_busy(false);
        tracing::debug!(command = %what, "left logical replication");
        match error {
            // A failure the server reported while winding down; the
            // connection is usable all the same.
            Some(error) => Err(server_error(error, conn.settings(), Phase::Command(&what))),
            None => Ok(()),
        }
    }

    fn ended_error(&self) -> Error {
        ended_error(self.conn, &self.what)
    }
}

/// The stream already failed; `next_event` and `send_status` cannot go on.
fn ended_error(conn: &ReplicationConnection, what: &str) -> Error {
    Error::new(ErrorKind::Internal, format!("cannot {what} on {}: the stream already ended with an error", target_label(conn.settings())))
        .with_hint("call finish() after a server error, or open a new replication connection")
}

fn parse_error(conn: &ReplicationConnection, body: &ErrorResponseBody, what: &str) -> Result<ServerError> {
    ServerError::parse(body.fields()).map_err(|e| io_error(e, conn.settings(), Phase::Command(what)))
}

/// Read to ReadyForQuery, discarding what is left of the copy, and return
/// the first server error on the way.
async fn read_to_ready(conn: &mut ReplicationConnection, what: &str) -> Result<Option<ServerError>> {
    let mut error = None;
    let mut discarded = 0u64;
    loop {
        match conn.next_message(Phase::Command(what)).await? {
            BackendMessage::Protocol(Message::CopyData(_)) => discarded += 1,
            BackendMessage::Protocol(Message::CopyDone | Message::CommandComplete(_)) => {}
            BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                let e = parse_error(conn, &body, what)?;
                error.get_or_insert(e);
            }
            BackendMessage::Protocol(Message::ReadyForQuery(_)) => break,
            other => {
                return Err(protocol_error(conn.settings(), &format!("unexpected {} while leaving CopyBoth", other.name())));
            }
        }
    }
    if discarded > 0 {
        tracing::debug!(discarded, "discarded CopyData in flight when the stream ended");
    }
    Ok(error)
}

/// `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1',
/// publication_names '"a","b"'[, messages 'true'])`.
///
/// Publication names are double-quoted identifiers inside a string literal
/// (quotes doubled at both levels). The slot name must pass
/// [`validate_slot_name`]; an empty list, an empty or NUL-containing
/// publication name, or `messages` on a server before 14 is an
/// `ErrorKind::Config` error.
pub fn start_logical_replication_command(slot: &str, start_lsn: Lsn, publication_names: &[&str], messages: bool, server_version_num: u32) -> Result<String> {
    validate_slot_name(slot)?;
    if publication_names.is_empty() {
        return Err(Error::config(format!("cannot stream from replication slot {slot}: no publication given"))
            .with_hint("name a publication, e.g. one made with CREATE PUBLICATION … FOR ALL TABLES"));
    }
    if let Some(bad) = publication_names.iter().find(|name| name.is_empty() || name.contains('\0')) {
        return Err(Error::config(format!("publication name {bad:?} is empty or contains a NUL byte")));
    }
    if messages && !supports_messages(server_version_num) {
        return Err(Error::config(format!(
            "cannot stream logical decoding messages from replication slot {slot}: \
             PostgreSQL {} has no pgoutput messages option (needs 14 or later)",
            server_version_num / 10_000
        )));
    }
    let list = publication_names.iter().map(|name| quote_identifier(name)).collect::<Vec<_>>().join(",");
    let mut options = vec![format!("proto_version '{PGOUTPUT_PROTO_VERSION}'"), format!("publication_names '{}'", list.replace('\'', "''"))];
    if messages {
        options.push("messages 'true'".to_string());
    }
    Ok(format!("START_REPLICATION SLOT {} LOGICAL {start_lsn} ({})", quote_identifier(slot), options.join(", ")))
}

/// The big-endian u64 at `at`, if `buf` holds it.
fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A CopyData payload from the server: XLogData (`w`) or keepalive (`k`).
/// `Err` says what is wrong with it.
pub fn parse_copy_data(data: Bytes) -> std::result::Result<StreamEvent, String> {
    match data.first() {
        Some(b'w') => parse_xlog_data(data),
        Some(b'k') => parse_keepalive(&data),
        Some(&tag) => Err(format!("unknown CopyData message type 0x{tag:02x} from the server")),
        None => Err("empty CopyData message from the server".to_string()),
    }
}

/// XLogData: `w`, Int64 WAL start, Int64 WAL end, Int64 server time, then
/// the payload (copied into its own allocation, see below).
pub fn parse_xlog_data(data: Bytes) -> std::result::Result<StreamEvent, String> {
    if data.first() != Some(&b'w') {
        return Err("not an XLogData message".to_string());
    }
    let short = || format!("XLogData message of {} bytes is shorter than its {XLOG_DATA_HEADER_LEN}-byte header", data.len());
    let wal_start = read_u64(&data, 1).ok_or_else(short)?;
    let wal_end = read_u64(&data, 9).ok_or_else(short)?;
    let server_time = read_u64(&data, 17).ok_or_else(short)?;
    Ok(StreamEvent::XLogData {
        wal_start: Lsn(wal_start),
        wal_end: Lsn(wal_end),
        server_time: PgTimestamp(server_time as i64),
        // A copy, not a slice: a slice would keep the whole read buffer it
        // came from alive (8 KiB or more for a message of a few hundred
        // bytes) for as long as the message waits in an open segment.
        data: Bytes::copy_from_slice(&data[XLOG_DATA_HEADER_LEN..]),
    })
}

/// Primary keepalive: `k`, Int64 WAL end, Int64 server time, Byte1 reply
/// requested. Bytes after those are ignored.
pub fn parse_keepalive(data: &[u8]) -> std::result::Result<StreamEvent, String> {
    if data.first() != Some(&b'k') {
        return Err("not a keepalive message".to_string());
    }
    let short = || format!("keepalive message of {} bytes is shorter than {KEEPALIVE_LEN}", data.len());
    let wal_end = read_u64(data, 1).ok_or_else(short)?;
    let server_time = read_u64(data, 9).ok_or_else(short)?;
    let reply = *data.get(17).ok_or_else(short)?;
    Ok(StreamEvent::Keepalive { wal_end: Lsn(wal_end), server_time: PgTimestamp(server_time as i64), reply_requested: reply != 0 })
}

/// Standby status update: `r`, Int64 written, Int64 flushed, Int64 applied,
/// Int64 client time (microseconds since 2000-01-01), Byte1 reply requested.
pub fn encode_standby_status(written: Lsn, flushed: Lsn, applied: Lsn, now: PgTimestamp, reply_requested: bool) -> [u8; STANDBY_STATUS_LEN] {
    let mut out = [0u8; STANDBY_STATUS_LEN];
    out[0] = b'r';
    let fields = [written.0, flushed.0, applied.0, now.0 as u64];
    for (slot, value) in out[1..33].chunks_exact_mut(8).zip(fields) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
    out[33] = u8::from(reply_requested);
    out
}
