//! Message framing for the PostgreSQL wire protocol over any byte stream.
//!
//! [`parse_backend_message`] is pure: it takes whole messages off the front of
//! a buffer, returns `Ok(None)` while a message is still incomplete, and never
//! panics or does I/O. It hands everything postgres-protocol knows to
//! `postgres_protocol::message::backend::Message::parse` and decodes the two
//! messages that crate lacks itself: CopyBothResponse (the answer to
//! `START_REPLICATION`) and NegotiateProtocolVersion.
//!
//! [`MessageStream`] wraps an `AsyncRead + AsyncWrite` stream (TCP, Unix
//! socket, TLS, or an in-memory pipe in tests) with a read buffer and a write
//! buffer. Frontend messages are encoded with
//! `postgres_protocol::message::frontend::*` into [`MessageStream::write_buf`]
//! and sent by [`MessageStream::flush`]. Both directions are resumable:
//! dropping a read or a flush part-way loses no bytes, which is what CopyBoth
//! streaming will need.

use std::io;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest backend message accepted, tag and length word included.
/// PostgreSQL never sends more than 1 GiB of data in one message.
pub const MAX_MESSAGE_LEN: usize = (1 << 30) + 1024;

/// Tag of CopyBothResponse, which postgres-protocol does not parse.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
/// Tag of NegotiateProtocolVersion, which postgres-protocol does not parse.
const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// One whole message from the server.
pub enum BackendMessage {
    /// A message postgres-protocol parses.
    Protocol(Message),
    /// CopyBothResponse: the server starts CopyBoth mode (`START_REPLICATION`).
    CopyBothResponse {
        /// 0 = text, 1 = binary.
        format: u8,
        /// The format code of each column.
        column_formats: Vec<i16>,
    },
    /// NegotiateProtocolVersion: the server does not support everything asked
    /// for in the startup message.
    NegotiateProtocolVersion {
        /// The newest minor protocol version the server supports.
        newest_minor: i32,
        /// Startup options (`_pq_.*`) the server did not recognise.
        unrecognized_options: Vec<String>,
    },
}

impl BackendMessage {
    /// The protocol name of this message, for error messages and logs.
    pub fn name(&self) -> &'static str {
        let msg = match self {
            BackendMessage::CopyBothResponse { .. } => return "CopyBothResponse",
            BackendMessage::NegotiateProtocolVersion { .. } => return "NegotiateProtocolVersion",
            BackendMessage::Protocol(msg) => msg,
        };
        match msg {
            Message::AuthenticationCleartextPassword
            | Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationMd5Password(_)
            | Message::AuthenticationOk
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSasl(_)
            | Message::AuthenticationSaslContinue(_)
            | Message::AuthenticationSaslFinal(_) => "Authentication",
            Message::BackendKeyData(_) => "BackendKeyData",
            Message::BindComplete => "BindComplete",
            Message::CloseComplete => "CloseComplete",
            Message::CommandComplete(_) => "CommandComplete",
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::DataRow(_) => "DataRow",
            Message::EmptyQueryResponse => "EmptyQueryResponse",
            Message::ErrorResponse(_) => "ErrorResponse",
            Message::NoData => "NoData",
            Message::NoticeResponse(_) => "NoticeResponse",
            Message::NotificationResponse(_) => "NotificationResponse",
            Message::ParameterDescription(_) => "ParameterDescription",
            Message::ParameterStatus(_) => "ParameterStatus",
            Message::ParseComplete => "ParseComplete",
            Message::PortalSuspended => "PortalSuspended",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::RowDescription(_) => "RowDescription",
            _ => "unknown message",
        }
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Take one whole backend message off the front of `buf`.
///
/// `Ok(None)` means the message is not complete yet and `buf` is untouched.
/// An error means the stream is not valid protocol and cannot be resumed.
pub fn parse_backend_message(buf: &mut BytesMut) -> io::Result<Option<BackendMessage>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(invalid(format!("message {:?} has invalid length {len}", char::from(tag))));
    }
    if len + 1 > MAX_MESSAGE_LEN {
        return Err(invalid(format!("message {:?} is too long ({len} bytes)", char::from(tag))));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    match tag {
        COPY_BOTH_RESPONSE_TAG => {
            let mut body = buf.split_to(len + 1).split_off(5);
            parse_copy_both_response(&mut body).map(Some)
        }
        NEGOTIATE_PROTOCOL_VERSION_TAG => {
            let mut body = buf.split_to(len + 1).split_off(5);
            parse_negotiate_protocol_version(&mut body).map(Some)
        }
        _ => match Message::parse(buf)? {
            Some(msg) => Ok(Some(BackendMessage::Protocol(msg))),
            // The whole message is buffered, so this cannot happen.
            None => Err(invalid("incomplete message after length check")),
        },
    }
}

/// CopyBothResponse body: Int8 format, Int16 column count, Int16 per column.
fn parse_copy_both_response(body: &mut BytesMut) -> io::Result<BackendMessage> {
    let short = || invalid("CopyBothResponse is truncated");
    if body.remaining() < 3 {
        return Err(short());
    }
    let format = body.get_u8();
    let columns = body.get_i16();
    let columns = usize::try_from(columns).map_err(|_| invalid("CopyBothResponse has a negative column count"))?;
    if body.remaining() != columns * 2 {
        return Err(short());
    }
    let column_formats = (0..columns).map(|_| body.get_i16()).collect();
    Ok(BackendMessage::CopyBothResponse { format, column_formats })
}

/// NegotiateProtocolVersion body: Int32 newest minor version, Int32 count,
/// that many NUL-terminated option names.
fn parse_negotiate_protocol_version(body: &mut BytesMut) -> io::Result<BackendMessage> {
    let short = || invalid("NegotiateProtocolVersion is truncated");
    if body.remaining() < 8 {
        return Err(short());
    }
    let newest_minor = body.get_i32();
    let count = body.get_i32();
    let count = usize::try_from(count).map_err(|_| invalid("NegotiateProtocolVersion has a negative option count"))?;
    let mut unrecognized_options = Vec::new();
    for _ in 0..count {
        let end = body.iter().position(|&b| b == 0).ok_or_else(short)?;
        let name = body.split_to(end);
        body.advance(1);
        unrecognized_options.push(String::from_utf8_lossy(&name).into_owned());
    }
    if body.has_remaining() {
        return Err(invalid("NegotiateProtocolVersion has trailing bytes"));
    }
    Ok(BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized_options })
}

/// A byte stream framed into protocol messages.
pub struct MessageStream<S> {
    io: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl<S> MessageStream<S> {
    /// Frame `io`.
    pub fn new(io: S) -> MessageStream<S> {
        MessageStream { io, read_buf: BytesMut::with_capacity(8 * 1024), write_buf: BytesMut::with_capacity(1024) }
    }

    /// The buffer frontend messages are encoded into; [`flush`](Self::flush) sends it.
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably (bytes already buffered stay here).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MessageStream<S> {
    /// Send everything in the write buffer and flush the stream.
    ///
    /// Resumable: when the future is dropped part-way, the unsent rest stays
    /// in the buffer for the next call.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.write_buf.has_remaining() {
            let n = self.io.write_buf(&mut self.write_buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the server stopped accepting data"));
            }
        }
        self.io.flush().await
    }

    /// The next whole message from the server.
    ///
    /// Cancel-safe: bytes read before the future is dropped stay buffered.
    /// The end of the stream is an `UnexpectedEof` error.
    pub async fn read_message(&mut self) -> io::Result<BackendMessage> {
        loop {
            if let Some(msg) = parse_backend_message(&mut self.read_buf)? {
                return Ok(msg);
            }
            self.read_buf.reserve(8 * 1024);
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
        }
    }

    /// The read buffer, for readers that frame some messages themselves
    /// (`super::copy_out` hands out CopyData payload in pieces).
    pub fn read_buf_mut(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Read at most about `max` more bytes into the read buffer.
    /// Cancel-safe; the end of the stream is an `UnexpectedEof` error.
    pub async fn fill(&mut self, max: usize) -> io::Result<()> {
        self.read_buf.reserve(max);
        let mut limited = (&mut self.io).take(max as u64);
        if limited.read_buf(&mut self.read_buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(())
    }

    /// Shut down the write side of the stream (after Terminate).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

/// Encoders for backend messages, for unit tests of the readers.
#[cfg(test)]
pub(crate) mod test_messages {
    use bytes::{BufMut, BytesMut};

    /// A message with `tag` and `body`, length word filled in.
    pub(crate) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
        out.to_vec()
    }

    fn cstr(out: &mut BytesMut, s: &str) {
        out.put_slice(s.as_bytes());
        out.put_u8(0);
    }

    /// RowDescription with text columns named `names`.
    pub(crate) fn row_description(names: &[&str]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(names.len() as i16);
        for name in names {
            cstr(&mut body, name);
            body.put_i32(0); // table oid
            body.put_i16(0); // column number
            body.put_i32(25); // type oid: text
            body.put_i16(-1); // type size
            body.put_i32(-1); // type modifier
            body.put_i16(0); // format: text
        }
        frame(b'T', &body)
    }

    /// DataRow with text values, `None` = NULL.
    pub(crate) fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v.as_bytes());
                }
                None => body.put_i32(-1),
            }
        }
        frame(b'D', &body)
    }

    /// CommandComplete with `tag`.
    pub(crate) fn command_complete(tag: &str) -> Vec<u8> {
        let mut body = BytesMut::new();
        cstr(&mut body, tag);
        frame(b'C', &body)
    }

    /// ReadyForQuery, idle.
    pub(crate) fn ready_for_query() -> Vec<u8> {
        frame(b'Z', b"I")
    }

    /// ErrorResponse (or NoticeResponse with tag `N`) with the usual fields.
    pub(crate) fn error_response(tag: u8, severity: &str, code: &str, message: &str, hint: Option<&str>) -> Vec<u8> {
        let mut body = BytesMut::new();
        for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
            body.put_u8(field);
            cstr(&mut body, value);
        }
        if let Some(hint) = hint {
            body.put_u8(b'H');
            cstr(&mut body, hint);
        }
        body.put_u8(0);
        frame(tag, &body)
    }

    /// ParameterStatus `name` = `value`.
    pub(crate) fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        let mut body = BytesMut::new();
        cstr(&mut body, name);
        cstr(&mut body, value);
        frame(b'S', &body)
    }
}

#[cfg(test)]
mod tests {
    use super::test_messages::*;
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn buf(parts: &[Vec<u8>]) -> BytesMut {
        let mut out = BytesMut::new();
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn incomplete_input_is_left_alone() {
        let whole = command_complete("SELECT 1");
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert!(parse_backend_message(&mut b).unwrap().is_none(), "cut at {cut}");
            assert_eq!(&b[..], &whole[..cut]);
        }
        let mut b = BytesMut::from(&whole[..]);
        let msg = parse_backend_message(&mut b).unwrap().unwrap();
        assert_eq!(msg.name(), "CommandComplete");
        assert!(b.is_empty());
    }

    #[test]
    fn messages_are_taken_one_at_a_time() {
        let mut b = buf(&[parameter_status("server_version", "15.4"), ready_for_query()]);
        let first = parse_backend_message(&mut b).unwrap().unwrap();
        match first {
            BackendMessage::Protocol(Message::ParameterStatus(p)) => {
                assert_eq!(p.name().unwrap(), "server_version");
                assert_eq!(p.value().unwrap(), "15.4");
            }
            other => panic!("got {}", other.name()),
        }
        let second = parse_backend_message(&mut b).unwrap().unwrap();
        assert_eq!(second.name(), "ReadyForQuery");
        assert!(parse_backend_message(&mut b).unwrap().is_none());
    }

    #[test]
    fn copy_both_response_is_parsed() {
        let mut b = BytesMut::from(&frame(b'W', &[0, 0, 2, 0, 0, 0, 1])[..]);
        match parse_backend_message(&mut b).unwrap().unwrap() {
            BackendMessage::CopyBothResponse { format, column_formats } => {
                assert_eq!(format, 0);
                assert_eq!(column_formats, vec![0, 1]);
            }
            other => panic!("got {}", other.name()),
        }
        let mut short = BytesMut::from(&frame(b'W', &[0, 0, 2, 0, 0])[..]);
        assert!(parse_backend_message(&mut short).is_err());
    }

    #[test]
    fn negotiate_protocol_version_is_parsed() {
        let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1];
        body.extend_from_slice(b"_pq_.x\0");
        let mut b = BytesMut::from(&frame(b'v', &body)[..]);
        match parse_backend_message(&mut b).unwrap().unwrap() {
            BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized_options } => {
                assert_eq!(newest_minor, 0);
                assert_eq!(unrecognized_options, vec!["_pq_.x".to_string()]);
            }
            other => panic!("got {}", other.name()),
        }
        // The count says two names, only one is there.
        let mut body = vec![0, 0, 0, 0, 0, 0, 0, 2];
        body.extend_from_slice(b"_pq_.x\0");
        let mut b = BytesMut::from(&frame(b'v', &body)[..]);
        assert!(parse_backend_message(&mut b).is_err());
    }

    #[test]
    fn bad_lengths_and_tags_are_errors_not_panics() {
        let mut b = BytesMut::from(&[b'Z', 0, 0, 0, 3][..]);
        assert!(parse_backend_message(&mut b).is_err());
        let mut b = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(parse_backend_message(&mut b).is_err());
        let mut b = BytesMut::from(&frame(b'?', b"")[..]);
        assert!(parse_backend_message(&mut b).is_err());
        // DataRow claiming more columns than it holds.
        let mut b = BytesMut::from(&frame(b'D', &[0, 2, 0, 0, 0, 1, b'x'])[..]);
        if let Ok(Some(BackendMessage::Protocol(Message::DataRow(row)))) = parse_backend_message(&mut b) {
            use tokio_postgres::fallible_iterator::FallibleIterator;
            assert!(row.ranges().collect::<Vec<_>>().is_err());
        }
    }

    #[tokio::test]
    async fn stream_reassembles_messages_split_across_reads() {
        let (client, mut server) = tokio::io::duplex(64);
        let bytes = buf(&[row_description(&["a"]), data_row(&[Some("hello"), None]), command_complete("SELECT 1"), ready_for_query()]);
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                server.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let mut stream = MessageStream::new(client);
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(stream.read_message().await.unwrap().name());
        }
        assert_eq!(names, ["RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]);
        drop(writer.await.unwrap());
        let eof = stream.read_message().await.err().unwrap();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn flush_sends_encoded_frontend_messages() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut stream = MessageStream::new(client);
        postgres_protocol::message::frontend::query("SELECT 1", stream.write_buf()).unwrap();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 14];
            server.read_exact(&mut got).await.unwrap();
            got
        });
        stream.flush().await.unwrap();
        assert!(stream.write_buf().is_empty());
        assert_eq!(reader.await.unwrap(), b"Q\0\0\0\x0dSELECT 1\0");
    }
}
