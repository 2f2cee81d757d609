//! The messages of `pgoutput`, the logical decoding plugin behind PostgreSQL's
//! built-in logical replication: types, a pure decoder and an encoder for
//! protocol version 1.
//!
//! Each XLogData payload of a `START_REPLICATION … LOGICAL` stream holds
//! exactly one message. [`decode`] takes that payload as `&[u8]` and returns a
//! [`PgOutputMessage`]; [`decode_shared`] does the same on a `Bytes` without
//! copying column values. Neither panics nor does I/O, whatever the input.
//!
//! Because a payload is always one whole message, short input is an error
//! ([`DecodeError::Truncated`]), never a request for more bytes, and so are
//! bytes left over after the message. Counts read from the input never size
//! an allocation beyond what the input could hold.
//!
//! Column values stay bytes as the server sent them: text (`t`) in the
//! client encoding (pgkeep asks for UTF8), or binary (`b`). An unchanged
//! TOASTed column (`u`, an UPDATE that did not touch a large value stored out
//! of line) is [`TupleValue::UnchangedToast`], never confused with NULL.
//!
//! Streaming (`proto_version` 2) and two-phase (3) messages are rejected with
//! [`DecodeError::Unsupported`]: pgkeep asks for version 1, under which the
//! server never sends them, and in those versions the data messages of a
//! streamed transaction carry an extra xid that only a decoder tracking
//! Stream Start / Stop could tell apart.
//!
//! [`encode`] writes a message back into a `BytesMut`, byte for byte as the
//! server would; the fuzz target checks `encode(decode(x)) == x`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use crate::repo::layout::Lsn;

#[cfg(test)]
mod tests;

/// A PostgreSQL object id (relation, type).
pub type Oid = u32;

/// Microseconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00 UTC.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL `timestamptz` on the wire: microseconds since 2000-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// As a UTC date-time; `None` for `±infinity` and other values chrono
    /// cannot represent.
    pub fn to_utc(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0.checked_add(PG_EPOCH_UNIX_MICROS)?)
    }

    /// `time` in microseconds since 2000-01-01.
    pub fn from_utc(time: DateTime<Utc>) -> PgTimestamp {
        PgTimestamp(time.timestamp_micros().saturating_sub(PG_EPOCH_UNIX_MICROS))
    }

    /// The current time.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_utc(Utc::now())
    }
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: a transaction starts; its changes follow.
    Begin(Begin),
    /// `C`: the transaction started by the last Begin committed.
    Commit(Commit),
    /// `O`: the transaction came from another node (replication origin).
    Origin(Origin),
    /// `R`: the layout of a relation, sent before its first change in a
    /// session and again after it changed.
    Relation(Relation),
    /// `Y`: a non-built-in column type, sent before a Relation using it.
    Type(DataType),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: relations were truncated.
    Truncate(Truncate),
    /// `M`: a message from `pg_logical_emit_message` (only with `messages 'true'`).
    Message(LogicalMessage),
}

/// Begin (`B`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// Its transaction id.
    pub xid: u32,
}

/// Commit (`C`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by the server so far (0).
    pub flags: u8,
    /// The LSN of the commit record (the Begin's `final_lsn`).
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the
    /// transaction is stored, so that the slot does not send it again.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// Origin (`O`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// Relation (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid, which the data messages refer to.
    pub id: Oid,
    /// Its schema; empty for `pg_catalog`.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Which old values UPDATE and DELETE carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in order.
    pub columns: Vec<Column>,
}

/// `relreplident`: what identifies a row in UPDATE and DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns (the old row comes whole, as `O`).
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }

    fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit flags; [`Column::FLAG_KEY`] marks a replica-identity column.
    pub flags: u8,
    /// The column's name.
    pub name: String,
    /// The oid of its type.
    pub type_oid: Oid,
    /// Its type modifier (`atttypmod`, -1 for none).
    pub type_modifier: i32,
}

impl Column {
    /// The flag of a column that is part of the replica identity (the key).
    pub const FLAG_KEY: u8 = 1;

    /// Whether the column is part of the replica identity.
    pub fn is_key(&self) -> bool {
        self.flags & Column::FLAG_KEY != 0
    }
}

/// Type (`Y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataType {
    /// The type's oid.
    pub id: Oid,
    /// Its schema; empty for `pg_catalog`.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Insert (`I`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation, as in its [`Relation`] message.
    pub relation_id: Oid,
    /// The new row, one value per column.
    pub new_tuple: Vec<TupleValue>,
}

/// Update (`U`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation, as in its [`Relation`] message.
    pub relation_id: Oid,
    /// The old key or row: present when the key changed (`K`) or the
    /// relation has `REPLICA IDENTITY FULL` (`O`).
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`TupleValue::UnchangedToast`].
    pub new_tuple: Vec<TupleValue>,
}

/// Delete (`D`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation, as in its [`Relation`] message.
    pub relation_id: Oid,
    /// The deleted row's key or whole old row.
    pub old: OldTuple,
}

/// The old values an UPDATE or DELETE carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica-identity columns; the others are NULL.
    Key(Vec<TupleValue>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Vec<TupleValue>),
}

/// Truncate (`T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit flags: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated relations (cascaded ones included).
    pub relation_ids: Vec<Oid>,
}

impl Truncate {
    /// `TRUNCATE … CASCADE`.
    pub const CASCADE: u8 = 1;
    /// `TRUNCATE … RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// Whether the truncate cascaded.
    pub fn cascade(&self) -> bool {
        self.options & Truncate::CASCADE != 0
    }

    /// Whether identity sequences were restarted.
    pub fn restart_identity(&self) -> bool {
        self.options & Truncate::RESTART_IDENTITY != 0
    }
}

/// Message (`M`): emitted by `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Part of a transaction (between Begin and Commit), or sent at once.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix it was emitted with.
    pub prefix: String,
    /// Its content.
    pub content: Bytes,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: NULL.
    Null,
    /// `u`: a TOASTed value the UPDATE did not change; not sent, not NULL.
    UnchangedToast,
    /// `t`: the value in text format.
    Text(Bytes),
    /// `b`: the value in binary format.
    Binary(Bytes),
}

impl PgOutputMessage {
    /// The protocol's name for this message, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin(_) => "Begin",
            PgOutputMessage::Commit(_) => "Commit",
            PgOutputMessage::Origin(_) => "Origin",
            PgOutputMessage::Relation(_) => "Relation",
            PgOutputMessage::Type(_) => "Type",
            PgOutputMessage::Insert(_) => "Insert",
            PgOutputMessage::Update(_) => "Update",
            PgOutputMessage::Delete(_) => "Delete",
            PgOutputMessage::Truncate(_) => "Truncate",
            PgOutputMessage::Message(_) => "Message",
        }
    }
}

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
            DecodeError::Unsupported {
                tag,
                message,
                version,
            } => write!(
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
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        format!("0x{byte:02x}")
    }
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
    let unsupported = |message, version| {
        Err(DecodeError::Unsupported {
            tag,
            message,
            version,
        })
    };
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
    let mut r = Reader {
        buf: payload,
        pos: 1,
        message: message_name(tag)?,
        shared,
    };
    let message = match tag {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_time: r.timestamp()?,
            xid: r.u32()?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.timestamp()?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            commit_lsn: r.lsn()?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutputMessage::Relation(r.relation()?),
        b'Y' => PgOutputMessage::Type(DataType {
            id: r.u32()?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32()?;
            r.expect_new_tuple_marker()?;
            PgOutputMessage::Insert(Insert {
                relation_id,
                new_tuple: r.tuple()?,
            })
        }
        b'U' => PgOutputMessage::Update(r.update()?),
        b'D' => {
            let relation_id = r.u32()?;
            let marker = r.u8()?;
            let old = r
                .old_tuple(marker)?
                .ok_or_else(|| r.invalid(format!("expected 'K' or 'O', found {}", show_byte(marker))))?;
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
        DecodeError::Truncated {
            message: self.message,
            offset: self.pos,
        }
    }

    fn invalid(&self, problem: String) -> DecodeError {
        DecodeError::Invalid {
            message: self.message,
            problem,
        }
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
        let text = std::str::from_utf8(bytes)
            .map_err(|_| self.invalid(format!("the {what} is not valid UTF-8")))?;
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
        let len = usize::try_from(len)
            .map_err(|_| self.invalid(format!("negative {what} length {len}")))?;
        self.bytes(len)
    }

    /// A count that must not be negative.
    fn count(&mut self, raw: i64, what: &str) -> Result<usize, DecodeError> {
        usize::try_from(raw).map_err(|_| self.invalid(format!("negative {what} count {raw}")))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.rest().len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32()?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let identity = self.u8()?;
        let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| {
            self.invalid(format!("unknown replica identity {}", show_byte(identity)))
        })?;
        let raw = self.i16()?;
        let count = self.count(raw.into(), "column")?;
        // A column takes at least 10 bytes (flags, empty name, oid, modifier).
        let mut columns = Vec::with_capacity(count.min(self.rest().len() / 10));
        for _ in 0..count {
            columns.push(Column {
                flags: self.u8()?,
                name: self.string("column name")?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
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
                return Err(self.invalid(format!(
                    "expected 'K', 'O' or 'N', found {}",
                    show_byte(other)
                )));
            }
            (Some(_), _) => self.expect_new_tuple_marker()?,
        }
        Ok(Update {
            relation_id,
            old,
            new_tuple: self.tuple()?,
        })
    }

    fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let raw = self.i32()?;
        let count = self.count(raw.into(), "relation")?;
        let options = self.u8()?;
        let mut relation_ids = Vec::with_capacity(count.min(self.rest().len() / 4));
        for _ in 0..count {
            relation_ids.push(self.u32()?);
        }
        Ok(Truncate {
            options,
            relation_ids,
        })
    }

    fn logical_message(&mut self) -> Result<LogicalMessage, DecodeError> {
        let transactional = match self.u8()? {
            0 => false,
            1 => true,
            other => return Err(self.invalid(format!("unknown flags {other}"))),
        };
        Ok(LogicalMessage {
            transactional,
            lsn: self.lsn()?,
            prefix: self.string("prefix")?,
            content: self.counted_bytes("content")?,
        })
    }
}

/// Why a message cannot be encoded: a count or length beyond the
/// protocol's fields, or a name with a NUL byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode pgoutput message: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

/// Append `message` to `out` as the server sends it. On error `out` may
/// hold part of the message.
pub fn encode(message: &PgOutputMessage, out: &mut BytesMut) -> Result<(), EncodeError> {
    match message {
        PgOutputMessage::Begin(m) => {
            out.put_u8(b'B');
            out.put_u64(m.final_lsn.0);
            out.put_i64(m.commit_time.0);
            out.put_u32(m.xid);
        }
        PgOutputMessage::Commit(m) => {
            out.put_u8(b'C');
            out.put_u8(m.flags);
            out.put_u64(m.commit_lsn.0);
            out.put_u64(m.end_lsn.0);
            out.put_i64(m.commit_time.0);
        }
        PgOutputMessage::Origin(m) => {
            out.put_u8(b'O');
            out.put_u64(m.commit_lsn.0);
            put_string(out, &m.name)?;
        }
        PgOutputMessage::Relation(m) => {
            out.put_u8(b'R');
            out.put_u32(m.id);
            put_string(out, &m.namespace)?;
            put_string(out, &m.name)?;
            out.put_u8(m.replica_identity.as_byte());
            out.put_i16(put_len(m.columns.len(), "columns")?);
            for column in &m.columns {
                out.put_u8(column.flags);
                put_string(out, &column.name)?;
                out.put_u32(column.type_oid);
                out.put_i32(column.type_modifier);
            }
        }
        PgOutputMessage::Type(m) => {
            out.put_u8(b'Y');
            out.put_u32(m.id);
            put_string(out, &m.namespace)?;
            put_string(out, &m.name)?;
        }
        PgOutputMessage::Insert(m) => {
            out.put_u8(b'I');
            out.put_u32(m.relation_id);
            out.put_u8(b'N');
            put_tuple(out, &m.new_tuple)?;
        }
        PgOutputMessage::Update(m) => {
            out.put_u8(b'U');
            out.put_u32(m.relation_id);
            if let Some(old) = &m.old {
                put_old_tuple(out, old)?;
            }
            out.put_u8(b'N');
            put_tuple(out, &m.new_tuple)?;
        }
        PgOutputMessage::Delete(m) => {
            out.put_u8(b'D');
            out.put_u32(m.relation_id);
            put_old_tuple(out, &m.old)?;
        }
        PgOutputMessage::Truncate(m) => {
            out.put_u8(b'T');
            out.put_i32(put_len(m.relation_ids.len(), "relations")?);
            out.put_u8(m.options);
            for id in &m.relation_ids {
                out.put_u32(*id);
            }
        }
        PgOutputMessage::Message(m) => {
            out.put_u8(b'M');
            out.put_u8(u8::from(m.transactional));
            out.put_u64(m.lsn.0);
            put_string(out, &m.prefix)?;
            out.put_i32(put_len(m.content.len(), "content bytes")?);
            out.put_slice(&m.content);
        }
    }
    Ok(())
}

/// `len` as the protocol's count type, or an error naming `what`.
fn put_len<T: TryFrom<usize>>(len: usize, what: &str) -> Result<T, EncodeError> {
    T::try_from(len).map_err(|_| EncodeError(format!("{len} {what} do not fit the protocol")))
}

fn put_string(out: &mut BytesMut, text: &str) -> Result<(), EncodeError> {
    if text.contains('\0') {
        return Err(EncodeError(format!("{text:?} contains a NUL byte")));
    }
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    Ok(())
}

fn put_old_tuple(out: &mut BytesMut, old: &OldTuple) -> Result<(), EncodeError> {
    let (marker, values) = match old {
        OldTuple::Key(values) => (b'K', values),
        OldTuple::Full(values) => (b'O', values),
    };
    out.put_u8(marker);
    put_tuple(out, values)
}

fn put_tuple(out: &mut BytesMut, values: &[TupleValue]) -> Result<(), EncodeError> {
    out.put_i16(put_len(values.len(), "columns")?);
    for value in values {
        let (kind, bytes) = match value {
            TupleValue::Null => (b'n', None),
            TupleValue::UnchangedToast => (b'u', None),
            TupleValue::Text(bytes) => (b't', Some(bytes)),
            TupleValue::Binary(bytes) => (b'b', Some(bytes)),
        };
        out.put_u8(kind);
        if let Some(bytes) = bytes {
            out.put_i32(put_len(bytes.len(), "value bytes")?);
            out.put_slice(bytes);
        }
    }
    Ok(())
}
