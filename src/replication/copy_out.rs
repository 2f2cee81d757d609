//! `COPY … TO STDOUT` read in pieces: CopyData payload bytes are handed out
//! as they arrive from the socket, never as whole messages, so a row of
//! any size (up to PostgreSQL's 1 GiB message limit) costs one socket read
//! of memory here. tokio-postgres buffers each CopyData message whole, which
//! for COPY means each whole row.
//!
//! [`CopyOutFramer`] is pure: it takes bytes off the front of a read buffer
//! and returns `Ok(None)` while more are needed. Inside a CopyData message
//! it yields every buffered payload byte at once; any other message is left
//! whole to `wire::parse_backend_message`. [`CopyOutReader`] drives it on a
//! [`ReplicationConnection`] (normally one opened with
//! [`ReplicationConnection::connect_regular`]) between the query and its
//! ReadyForQuery; an ErrorResponse mid-copy is read through to ReadyForQuery
//! and returned with its SQLSTATE, leaving the connection usable.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conn::{ReplicationConnection, log_notice};
use super::errors::{ServerError, io_error, protocol_error, server_error};
use super::wire::{BackendMessage, MAX_MESSAGE_LEN, parse_backend_message};
use crate::error::{Error, Result};
use crate::pg::errors::Phase;

/// Tag of CopyData.
const COPY_DATA_TAG: u8 = b'd';

/// One step of the COPY OUT framing.
pub enum CopyOutItem {
    /// Payload bytes of a CopyData message (a piece of it, cut anywhere).
    Data(Bytes),
    /// Any other whole message.
    Message(BackendMessage),
}

/// Splits a backend byte stream during COPY OUT into CopyData payload
/// pieces and other whole messages. Pure; keeps only the count of payload
/// bytes of the current CopyData message not yet handed out.
#[derive(Debug, Default)]
pub struct CopyOutFramer {
    payload_left: usize,
}

/// What [`CopyOutFramer::drain_into`] stopped at.
pub enum Drained {
    /// `buf` holds no complete item: read more.
    NeedMore,
    /// `out` holds at least the bytes asked for.
    Full,
    /// A message other than CopyData, taken off `buf`.
    Message(BackendMessage),
}

impl CopyOutFramer {
    /// Append the payload of every CopyData message at the front of `buf`
    /// to `out`, across message boundaries, until `out` holds `want` bytes
    /// (never more),
    /// `buf` runs out, or another message comes. One copy per payload byte
    /// and no allocation per message: the bulk path of COPY OUT. Pure;
    /// never panics; an error when the stream is not valid protocol.
    pub fn drain_into(&mut self, buf: &mut BytesMut, out: &mut BytesMut, want: usize) -> io::Result<Drained> {
        // Walk `buf` with a cursor and advance it once: one bookkeeping
        // step per call, not two per message (a message is often one row).
        let mut pos = 0;
        let result = loop {
            if out.len() >= want {
                break Ok(Drained::Full);
            }
            let rest = &buf[pos..];
            if self.payload_left > 0 {
                if rest.is_empty() {
                    break Ok(Drained::NeedMore);
                }
                let n = rest.len().min(self.payload_left).min(want - out.len());
                out.extend_from_slice(&rest[..n]);
                pos += n;
                self.payload_left -= n;
                continue;
            }
            if rest.first() != Some(&COPY_DATA_TAG) {
                buf.advance(pos);
                return Ok(match parse_backend_message(buf)? {
                    Some(m) => Drained::Message(m),
                    None => Drained::NeedMore,
                });
            }
            match copy_data_payload(rest) {
                Ok(Some(payload)) => self.payload_left = payload,
                Ok(None) => break Ok(Drained::NeedMore),
                Err(e) => break Err(e),
            }
            pos += 5;
        };
        buf.advance(pos);
        result
    }

    /// Whether the framer is inside a CopyData message.
    pub fn in_copy_data(&self) -> bool {
        self.payload_left > 0
    }

    /// Take the next item off the front of `buf`: `Ok(None)` when more
    /// bytes are needed (then `buf` is untouched); an error when the stream
    /// is not valid protocol. Never panics.
    pub fn next(&mut self, buf: &mut BytesMut) -> io::Result<Option<CopyOutItem>> {
        loop {
            if self.payload_left > 0 {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(self.payload_left);
                self.payload_left -= n;
                return Ok(Some(CopyOutItem::Data(buf.split_to(n).freeze())));
            }
            if buf.first() != Some(&COPY_DATA_TAG) {
                return Ok(parse_backend_message(buf)?.map(CopyOutItem::Message));
            }
            let Some(payload) = copy_data_payload(buf)? else { return Ok(None) };
            buf.advance(5);
            // An empty CopyData carries nothing: go on to the next message.
            self.payload_left = payload;
        }
    }
}

/// The payload length of the CopyData message whose header starts `buf`
/// (its tag checked by the caller): `None` until the 5 header bytes are
/// there, an error for a length no message may have.
fn copy_data_payload(buf: &[u8]) -> io::Result<Option<usize>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len + 1 > MAX_MESSAGE_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("CopyData has invalid length {len}")));
    }
    Ok(Some(len - 4))
}

/// Bytes asked of the socket per read while copying.
const READ_SIZE: usize = 256 * 1024;
/// How long [`CopyOutReader::read_into`] lets the socket fill after a read
/// that found little (a quarter of [`READ_SIZE`]).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(1);

/// A running `COPY … TO STDOUT` on a borrowed connection.
pub struct CopyOutReader<'a> {
    conn: &'a mut ReplicationConnection,
    framer: CopyOutFramer,
    what: String,
    done: bool,
    /// The last socket read found little.
    sparse: bool,
}

impl ReplicationConnection {
    /// Run `sql` (a `COPY … TO STDOUT`) and read its output in pieces with
    /// the returned reader. `what` names the operation in errors ("cannot
    /// {what} on host:port/db"); the SQL text is never put into errors.
    pub async fn copy_out(&mut self, sql: &str, what: &str) -> Result<CopyOutReader<'_>> {
        self.ensure_usable()?;
        frontend::query(sql, self.message_stream().write_buf()).map_err(|_| Error::config(format!("cannot {what}: the command contains a NUL byte")))?;
        self.set_busy(true);
        let db = self.settings().clone();
        self.message_stream().flush().await.map_err(|e| io_error(e, &db, Phase::Command(what)))?;
        let mut reader = CopyOutReader { conn: self, framer: CopyOutFramer::default(), what: what.to_string(), done: false, sparse: false };
        match reader.next_message().await? {
            BackendMessage::Protocol(Message::CopyOutResponse(_)) => Ok(reader),
            BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                let e = ServerError::parse(body.fields()).map_err(|e| io_error(e, &db, Phase::Command(what)))?;
                Err(reader.fail(e).await)
            }
            other => Err(protocol_error(&db, &format!("the server answered {} to COPY TO STDOUT", other.name()))),
        }
    }
}

impl CopyOutReader<'_> {
    /// Append COPY data to `out` until it holds `want` bytes (never more)
    /// or the COPY ends. Returns
    /// `Ok(false)` once the COPY has completed (the connection is then
    /// ready for the next command); `out` may have received bytes in that
    /// call too. Rows are cut anywhere. Not cancel-safe.
    pub async fn read_into(&mut self, out: &mut BytesMut, want: usize) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        loop {
            let drained = self.framer.drain_into(self.conn.message_stream().read_buf_mut(), out, want);
            let msg = match drained {
                Ok(Drained::Full) => return Ok(true),
                Ok(Drained::Message(msg)) => msg,
                Ok(Drained::NeedMore) => {
                    // The server sends in 8 KiB pieces; a reader faster than
                    // the server would wake for each. After a sparse read,
                    // let the socket collect a millisecond's worth first.
                    if self.sparse {
                        tokio::time::sleep(COALESCE).await;
                    }
                    let before = self.conn.message_stream().read_buf_mut().len();
                    if let Err(e) = self.conn.message_stream().fill(READ_SIZE).await {
                        return Err(io_error(e, self.conn.settings(), Phase::Command(&self.what)));
                    }
                    self.sparse = self.conn.message_stream().read_buf_mut().len() - before < READ_SIZE / 4;
                    continue;
                }
                Err(e) => return Err(io_error(e, self.conn.settings(), Phase::Command(&self.what))),
            };
            let Some(msg) = self.absorb(msg) else { continue };
            match msg {
                BackendMessage::Protocol(Message::CopyDone | Message::CommandComplete(_)) => {}
                BackendMessage::Protocol(Message::ReadyForQuery(_)) => {
                    self.done = true;
                    self.conn.set_busy(false);
                    return Ok(false);
                }
                BackendMessage::Protocol(Message::ErrorResponse(body)) => {
                    let db = self.conn.settings().clone();
                    let e = ServerError::parse(body.fields()).map_err(|e| io_error(e, &db, Phase::Command(&self.what)))?;
                    return Err(self.fail(e).await);
                }
                other => {
                    let text = format!("unexpected {} during COPY TO STDOUT", other.name());
                    return Err(protocol_error(self.conn.settings(), &text));
                }
            }
        }
    }

    /// After an ErrorResponse: read up to ReadyForQuery so the connection
    /// stays usable, and return the server's error.
    async fn fail(&mut self, e: ServerError) -> Error {
        let db = self.conn.settings().clone();
        loop {
            match self.next_item().await {
                Ok(CopyOutItem::Message(BackendMessage::Protocol(Message::ReadyForQuery(_)))) => {
                    self.conn.set_busy(false);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.done = true;
        server_error(e, &db, Phase::Command(&self.what))
    }

    /// The next message outside CopyData (for the CopyOutResponse).
    async fn next_message(&mut self) -> Result<BackendMessage> {
        match self.next_item().await? {
            CopyOutItem::Message(msg) => Ok(msg),
            CopyOutItem::Data(_) => Err(protocol_error(self.conn.settings(), "CopyData before CopyOutResponse")),
        }
    }

    /// The next framed item; notices and parameter changes are handled here.
    async fn next_item(&mut self) -> Result<CopyOutItem> {
        loop {
            let framed = self.framer.next(self.conn.message_stream().read_buf_mut());
            let item = match framed {
                Ok(Some(item)) => item,
                Ok(None) => {
                    let filled = self.conn.message_stream().fill(READ_SIZE).await;
                    match filled {
                        Ok(()) => continue,
                        Err(e) => return Err(io_error(e, self.conn.settings(), Phase::Command(&self.what))),
                    }
                }
                Err(e) => return Err(io_error(e, self.conn.settings(), Phase::Command(&self.what))),
            };
            match item {
                CopyOutItem::Message(msg) => {
                    if let Some(msg) = self.absorb(msg) {
                        return Ok(CopyOutItem::Message(msg));
                    }
                }
                data => return Ok(data),
            }
        }
    }

    /// Messages the server may send at any time: notices are logged,
    /// parameter changes stored, notifications dropped (`None`); any other
    /// message is handed back.
    fn absorb(&mut self, msg: BackendMessage) -> Option<BackendMessage> {
        match msg {
            BackendMessage::Protocol(Message::NoticeResponse(body)) => log_notice(&body),
            BackendMessage::Protocol(Message::ParameterStatus(body)) => self.conn.store_parameter(&body),
            BackendMessage::Protocol(Message::NotificationResponse(_)) => {}
            other => return Some(other),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::test_messages::*;
    use super::*;

    fn stream() -> Vec<u8> {
        [
            frame(b'H', &[0, 0, 1, 0, 0]),
            frame(b'd', b"1\thello\n2\t"),
            frame(b'd', b""),
            error_response(b'N', "NOTICE", "00000", "n", None),
            frame(b'd', &[b'x'; 1000]),
            frame(b'd', b"\n"),
            frame(b'c', b""),
            command_complete("COPY 2"),
            ready_for_query(),
        ]
        .concat()
    }

    /// Feed `input` in pieces of `piece` bytes; returns the payload and the message names.
    fn run(input: &[u8], piece: usize) -> io::Result<(Vec<u8>, Vec<&'static str>)> {
        let mut framer = CopyOutFramer::default();
        let mut buf = BytesMut::new();
        let (mut data, mut names) = (Vec::new(), Vec::new());
        for p in input.chunks(piece) {
            buf.extend_from_slice(p);
            while let Some(item) = framer.next(&mut buf)? {
                match item {
                    CopyOutItem::Data(d) => {
                        assert!(!d.is_empty() && d.len() <= piece.max(buf.len() + d.len()));
                        data.extend_from_slice(&d);
                    }
                    CopyOutItem::Message(m) => names.push(m.name()),
                }
            }
        }
        Ok((data, names))
    }

    #[test]
    fn payload_comes_in_pieces_and_messages_whole() {
        let mut expected = b"1\thello\n2\t".to_vec();
        expected.extend_from_slice(&[b'x'; 1000]);
        expected.push(b'\n');
        for piece in [1, 2, 5, 7, 64, 100_000] {
            let (data, names) = run(&stream(), piece).unwrap();
            assert_eq!(data, expected, "piece {piece}");
            assert_eq!(names, ["CopyOutResponse", "NoticeResponse", "CopyDone", "CommandComplete", "ReadyForQuery"]);
        }
    }

    /// The bulk path yields the same bytes and messages as the piecewise one,
    /// whatever the read sizes and however little is asked at a time.
    #[test]
    fn drained_payload_equals_the_pieces() {
        let (expected, expected_names) = run(&stream(), 100_000).unwrap();
        for piece in [1, 2, 5, 7, 64, 100_000] {
            for want in [1, 3, 100, 1 << 20] {
                let mut framer = CopyOutFramer::default();
                let (mut buf, mut out, mut names) = (BytesMut::new(), BytesMut::new(), Vec::new());
                let mut data = Vec::new();
                for p in stream().chunks(piece) {
                    buf.extend_from_slice(p);
                    loop {
                        match framer.drain_into(&mut buf, &mut out, want).unwrap() {
                            Drained::NeedMore => break,
                            Drained::Full => data.extend_from_slice(&out.split()),
                            Drained::Message(m) => names.push(m.name()),
                        }
                    }
                }
                data.extend_from_slice(&out);
                assert_eq!((data, names), (expected.clone(), expected_names.clone()), "piece {piece}, want {want}");
            }
        }
        let mut framer = CopyOutFramer::default();
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(framer.drain_into(&mut b, &mut BytesMut::new(), 10).is_err());
    }

    #[test]
    fn short_input_is_left_alone_and_bad_lengths_are_errors() {
        let mut framer = CopyOutFramer::default();
        let mut b = BytesMut::from(&b"d\0\0"[..]);
        assert!(framer.next(&mut b).unwrap().is_none());
        assert_eq!(b.len(), 3);
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(framer.next(&mut b).is_err());
        let mut b = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(framer.next(&mut b).is_err());
        // A CopyData whose payload is still to come: the framer waits for it.
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 10, b'a'][..]);
        match framer.next(&mut b).unwrap() {
            Some(CopyOutItem::Data(d)) => assert_eq!(&d[..], b"a"),
            _ => panic!("expected payload"),
        }
        assert!(framer.in_copy_data());
        assert!(framer.next(&mut b).unwrap().is_none());
    }
}
