//! The pgoutput decoder: one XLogData payload in, one [`PgOutputMessage`]
//! or a [`DecodeError`] out. Every read checks the length first, so no input
//! makes it panic, and counts never size an allocation beyond what the
//! payload could hold.

use std::fmt;

use bytes::Bytes;

use super::{
    Begin, Column, Commit, DataType, Delete, Insert, LogicalMessage, OldTuple, Origin, PgOutputMessage, PgTimestamp, Relation, ReplicaIdentity, Truncate,
    TupleValue, Update,
};
use crate::lsn::Lsn;

/// Why a payload is not a valid protocol-version-1 pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is empty.
    Empty,
    /// The payload ends before the message does.
    Truncated {
        /// The message being decoded.
        message: &'static str,
        /// Where the field that does not fit starts.
        offset: usize,
    },
    /// Bytes follow the end of the message.
    TrailingBytes {
        /// The message decoded.
        message: &'static str,
        /// How many bytes are left over.
        count: usize,
    },
    /// The first byte is no pgoutput message.
    UnknownTag(u8),
    /// A message of a newer protocol version than the 1 pgkeep asks for.
    Unsupported {
        /// Its tag.
        tag: u8,
        /// Its name.
        message: &'static str,
        /// The protocol version that introduced it.
        version: u8,
    },
    /// A field has a value the protocol does not allow.
    Invalid {
        /// The message being decoded.
        message: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty pgoutput message"),
            DecodeError::Truncated { message, offset } => {
                write!(f, "pgoutput {message} message ends inside the field at byte {offset}")
            }
            DecodeError::TrailingBytes { message, count } => {
                write!(f, "pgoutput {message} message has {count} trailing bytes")
            }
            DecodeError::UnknownTag(tag) => {
                write!(f, "unknown pgoutput message tag {}", show_byte(*tag))
            }
            DecodeError::Unsupported { tag, message, version } => write!(
                f,
                "pgoutput {message} message ({}) belongs to protocol version {version}; \
                 pgkeep asks for version 1",
                show_byte(*tag)
            ),
            DecodeError::Invalid { message, problem } => {
                write!(f, "invalid pgoutput {message} message: {problem}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// `'x'` for printable ASCII, `0x07` otherwise.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() { format!("'{}'", char::from(byte)) } else { format!("0x{byte:02x}") }
}

/// Decode one pgoutput message (an XLogData payload), copying column values
/// and message content out of `payload`.
pub fn decode(payload: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    decode_with(payload, None)
}

/// Decode one pgoutput message; column values and message content are
/// slices of `payload`, not copies.
pub fn decode_shared(payload: &Bytes) -> Result<PgOutputMessage, DecodeError> {
    decode_with(payload, Some(payload))
}

/// The name of the message with `tag`, or why it cannot be decoded.
fn message_name(tag: u8) -> Result<&'static str, DecodeError> {
    let unsupported = |message, version| Err(DecodeError::Unsupported { tag, message, version });
    Ok(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => return unsupported("Stream Start", 2),
        b'E' => return unsupported("Stream Stop", 2),
        b'c' => return unsupported("Stream Commit", 2),
        b'A' => return unsupported("Stream Abort", 2),
        b'b' => return unsupported("Begin Prepare", 3),
        b'P' => return unsupported("Prepare", 3),
        b'K' => return unsupported("Commit Prepared", 3),
        b'r' => return unsupported("Rollback Prepared", 3),
        b'p' => return unsupported("Stream Prepare", 3),
        _ => return Err(DecodeError::UnknownTag(tag)),
    })
}

fn decode_with(payload: &[u8], shared: Option<&Bytes>) -> Result<PgOutputMessage, DecodeError> {
    let (&tag, _) = payload.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader { buf: payload, pos: 1, message: message_name(tag)?, shared };
    let message = match tag {
        b'B' => PgOutputMessage::Begin(Begin { final_lsn: r.lsn()?, commit_time: r.timestamp()?, xid: r.u32()? }),
        b'C' => PgOutputMessage::Commit(Commit { flags: r.u8()?, commit_lsn: r.lsn()?, end_lsn: r.lsn()?, commit_time: r.timestamp()? }),
        b'O' => PgOutputMessage::Origin(Origin { commit_lsn: r.lsn()?, name: r.string("origin name")? }),
        b'R' => PgOutputMessage::Relation(r.relation()?),
        b'Y' => PgOutputMessage::Type(DataType { id: r.u32()?, namespace: r.string("namespace")?, name: r.string("type name")? }),
        b'I' => {
            let relation_id = r.u32()?;
            r.expect_new_tuple_marker()?;
            PgOutputMessage::Insert(Insert { relation_id, new_tuple: r.tuple()? })
        }
        b'U' => PgOutputMessage::Update(r.update()?),
        b'D' => {
            let relation_id = r.u32()?;
            let marker = r.u8()?;
            let old = r.old_tuple(marker)?.ok_or_else(|| r.invalid(format!("expected 'K' or 'O', found {}", show_byte(marker))))?;
            PgOutputMessage::Delete(Delete { relation_id, old })
        }
        b'T' => PgOutputMessage::Truncate(r.truncate()?),
        b'M' => PgOutputMessage::Message(r.logical_message()?),
        _ => return Err(DecodeError::UnknownTag(tag)),
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over one payload. Every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
    shared: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    /// The payload ends inside the field starting at the current position.
    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated { message: self.message, offset: self.pos }
    }

    fn invalid(&self, problem: String) -> DecodeError {
        DecodeError::Invalid { message: self.message, problem }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let taken = self.rest().get(..n).ok_or_else(|| self.truncated())?;
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let taken = self.take(N)?;
        <[u8; N]>::try_from(taken).map_err(|_| self.truncated())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    fn timestamp(&mut self) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp(i64::from_be_bytes(self.array()?)))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = self.rest();
        let end = memchr::memchr(0, rest).ok_or_else(|| self.truncated())?;
        let bytes = rest.get(..end).unwrap_or_default();
        let text = std::str::from_utf8(bytes).map_err(|_| self.invalid(format!("the {what} is not valid UTF-8")))?;
        self.pos += end + 1;
        Ok(text.to_string())
    }

    /// `n` bytes as `Bytes`: a slice of the shared payload, or a copy.
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let taken = self.take(n)?;
        Ok(match self.shared {
            Some(shared) => shared.slice_ref(taken),
            None => Bytes::copy_from_slice(taken),
        })
    }

    /// An Int32 length, then that many bytes.
    fn counted_bytes(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| self.invalid(format!("negative {what} length {len}")))?;
        self.bytes(len)
    }

    /// A count that must not be negative.
    fn count(&mut self, raw: i64, what: &str) -> Result<usize, DecodeError> {
        usize::try_from(raw).map_err(|_| self.invalid(format!("negative {what} count {raw}")))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.rest().len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { message: self.message, count }),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32()?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let identity = self.u8()?;
        let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| self.invalid(format!("unknown replica identity {}", show_byte(identity))))?;
        let raw = self.i16()?;
        let count = self.count(raw.into(), "column")?;
        // A column takes at least 10 bytes (flags, empty name, oid, modifier).
        let mut columns = Vec::with_capacity(count.min(self.rest().len() / 10));
        for _ in 0..count {
            columns.push(Column { flags: self.u8()?, name: self.string("column name")?, type_oid: self.u32()?, type_modifier: self.i32()? });
        }
        Ok(Relation { id, namespace, name, replica_identity, columns })
    }

    /// TupleData: Int16 column count, then one kind byte (and maybe a
    /// length and bytes) per column.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let raw = self.i16()?;
        let count = self.count(raw.into(), "column")?;
        let mut values = Vec::with_capacity(count.min(self.rest().len()));
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => TupleValue::Text(self.counted_bytes("text value")?),
                b'b' => TupleValue::Binary(self.counted_bytes("binary value")?),
                kind => {
                    return Err(self.invalid(format!("unknown column kind {}", show_byte(kind))));
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// The tuple after a `K` or `O` marker; `None` for any other marker.
    fn old_tuple(&mut self, marker: u8) -> Result<Option<OldTuple>, DecodeError> {
        Ok(match marker {
            b'K' => Some(OldTuple::Key(self.tuple()?)),
            b'O' => Some(OldTuple::Full(self.tuple()?)),
            _ => None,
        })
    }

    fn expect_new_tuple_marker(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            b'N' => Ok(()),
            other => Err(self.invalid(format!("expected 'N', found {}", show_byte(other)))),
        }
    }

    fn update(&mut self) -> Result<Update, DecodeError> {
        let relation_id = self.u32()?;
        let marker = self.u8()?;
        let old = self.old_tuple(marker)?;
        match (&old, marker) {
            (None, b'N') => {}
            (None, other) => {
                return Err(self.invalid(format!("expected 'K', 'O' or 'N', found {}", show_byte(other))));
            }
            (Some(_), _) => self.expect_new_tuple_marker()?,
        }
        Ok(Update { relation_id, old, new_tuple: self.tuple()? })
    }

    fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let raw = self.i32()?;
        let count = self.count(raw.into(), "relation")?;
        let options = self.u8()?;
        let mut relation_ids = Vec::with_capacity(count.min(self.rest().len() / 4));
        for _ in 0..count {
            relation_ids.push(self.u32()?);
        }
        Ok(Truncate { options, relation_ids })
    }

    fn logical_message(&mut self) -> Result<LogicalMessage, DecodeError> {
        let transactional = match self.u8()? {
            0 => false,
            1 => true,
            other => return Err(self.invalid(format!("unknown flags {other}"))),
        };
        Ok(LogicalMessage { transactional, lsn: self.lsn()?, prefix: self.string("prefix")?, content: self.counted_bytes("content")? })
    }
}
