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
//! Protocol 1 is the same on PostgreSQL 10 to 18: newer servers send more
//! only under protocol versions or options pgkeep does not ask for
//! (streaming, two-phase, origin filtering; on 18, generated column values
//! for a publication with `publish_generated_columns`, which pgkeep's
//! publications leave off), and `messages 'true'` exists from 14 on.
//! `tests/it/pg_matrix.rs` decodes a real workload on 14 to 18.
//!
//! [`encode`] writes a message back into a `BytesMut`, byte for byte as the
//! server would; the fuzz target checks `encode(decode(x)) == x`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::lsn::Lsn;

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, decode, decode_shared};
pub use encode::{EncodeError, encode};

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
