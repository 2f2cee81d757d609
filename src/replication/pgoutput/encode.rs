//! The pgoutput encoder: a [`PgOutputMessage`] appended to a `BytesMut`
//! exactly as the server writes it (tests and the fuzz target's round trip).

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::{OldTuple, PgOutputMessage, TupleValue};

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
