//! Transaction parts (docs/FORMAT.md §5.2): pure encode and decode of the
//! objects that hold a transaction too large for `stream`'s memory.
//!
//! `stream` keeps at most its transaction memory of an open transaction;
//! beyond it, the messages received so far (after the Begin) go into a
//! [`TransactionPart`] stored in every repository under
//! `changes/<stream>/<commit LSN>.txn/<index>.part`. The segment that ends
//! with the transaction's Commit says how many parts precede the rest of its
//! last transaction (`parts` in its metadata, format version 3), so the
//! transaction reads back Begin, part 1 … part N, the rest, Commit. A part
//! no segment refers to (a crash before the Commit was archived) is never
//! read, and is removed when `stream` resumes.
//!
//! ```text
//! PGKPART1\n                     magic, 8 bytes
//! {json PartMeta}\n              one line
//! u64 stored payload length      big-endian
//! payload                        the columnar transform of one record
//! SHA-256                        32 bytes over everything before it
//! ```
//!
//! The raw payload is one record (`u32 len` + messages, each `u32 len` +
//! bytes), stored like a segment payload ([`super::columnar`]) and, with
//! encryption, sealed with the run's data key, the magic and metadata line
//! as associated data. [`decode_with`] takes `&[u8]`, never panics, allocates
//! at most what the bounded declared size allows, and checks that no message
//! is a Begin or Commit (those stay in the segment).

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{MAX_RAW_PAYLOAD, columnar, put_record, split};
use crate::crypto::{KeyEnvelope, Keyring, Sealer};
use crate::error::{Error, Result};
use crate::repo::layout::Lsn;

/// The first 8 bytes of every part.
pub const PART_MAGIC: &[u8; 8] = b"PGKPART1";
/// The format version written in a part's metadata.
pub const PART_FORMAT_VERSION: u32 = 1;
/// Associated-data label of a sealed part payload.
const AAD_PART: &[u8] = b"pgkeep transaction part v1\n";
const TRAILER_LEN: usize = 32;

/// The metadata line of a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    /// [`PART_FORMAT_VERSION`].
    pub version: u32,
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Commit record LSN of the transaction (from its Begin).
    pub commit_lsn: Lsn,
    /// Its transaction id.
    pub xid: u32,
    /// Position among the transaction's parts, from 1.
    pub index: u32,
    /// Number of row messages (Insert, Update, Delete) in this part.
    pub changes: u64,
    /// [`columnar::COMPRESSION`].
    pub compression: String,
    /// Size of the raw (uncompressed) payload.
    pub raw_size: u64,
    /// The run's wrapped data key, when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<KeyEnvelope>,
}

/// A piece of one transaction's messages, between its Begin and its Commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionPart {
    /// The metadata line.
    pub meta: PartMeta,
    /// The messages in stream order.
    pub messages: Vec<Bytes>,
}

/// Encode `part`, encrypting the payload with `sealer` when given.
/// `raw_size`, `compression` and `encryption` are filled in here.
///
/// The part is consumed so that each stage's buffer is freed before the
/// next is built: a part is as large as the transaction memory budget, and
/// the stream's peak memory is a small multiple of it only if the
/// messages, the raw record and the columnar streams never all coexist.
pub fn encode(part: TransactionPart, sealer: Option<&Sealer>) -> Result<Vec<u8>> {
    let TransactionPart { meta: part_meta, messages } = part;
    let mut raw = BytesMut::with_capacity(4 + messages.iter().map(|m| 4 + m.len()).sum::<usize>());
    put_record(&mut raw, &messages)?;
    drop(messages);
    if raw.len() as u64 > MAX_RAW_PAYLOAD {
        return Err(Error::internal(format!(
            "part {} of the transaction committed at {} would hold {} bytes, above the {} byte limit of one object \
             (a single row change larger than that)",
            part_meta.index,
            part_meta.commit_lsn,
            raw.len(),
            MAX_RAW_PAYLOAD
        ))
        .with_hint(
            "the slot keeps this transaction's WAL until it is archived: stop archiving with `pgkeep stream --remove`, \
             then start `pgkeep stream` again and take a new full backup (point-in-time restore starts from it)",
        ));
    }
    let mut meta = part_meta;
    meta.version = PART_FORMAT_VERSION;
    meta.raw_size = raw.len() as u64;
    meta.compression = columnar::COMPRESSION.to_string();
    meta.encryption = sealer.map(|s| s.envelope().clone());
    let stored = columnar::pack_owned(raw.into());
    let json = serde_json::to_vec(&meta).map_err(|e| Error::internal(format!("cannot encode part metadata: {e}")))?;
    let mut out = Vec::with_capacity(PART_MAGIC.len() + json.len() + 9 + stored.len() + TRAILER_LEN + 64);
    out.extend_from_slice(PART_MAGIC);
    out.extend_from_slice(&json);
    out.push(b'\n');
    let stored = match sealer {
        None => stored,
        Some(s) => s.cipher().seal(&stored, &[AAD_PART, &out[..]].concat())?,
    };
    out.extend_from_slice(&(stored.len() as u64).to_be_bytes());
    out.extend_from_slice(&stored);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Check the trailer and read the metadata line of a part, encrypted or
/// not, without opening the payload.
pub fn decode_meta(data: &[u8], what: &str) -> Result<PartMeta> {
    let bad = |why: &str| Error::corrupt(format!("transaction part {what} is damaged: {why}"));
    let body_len = data.len().checked_sub(TRAILER_LEN).ok_or_else(|| bad("too short"))?;
    let (body, trailer) = data.split_at(body_len);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad("SHA-256 trailer does not match"));
    }
    let rest = body.strip_prefix(PART_MAGIC.as_slice()).ok_or_else(|| bad("not a pgkeep transaction part (magic)"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| bad("no metadata line"))?;
    serde_json::from_slice(&rest[..nl]).map_err(|e| bad(&format!("metadata: {e}")))
}

/// Decode and verify a stored part; `keys` open an encrypted one. `what`
/// names it in errors (its key).
pub fn decode_with(data: &[u8], what: &str, keys: &Keyring) -> Result<TransactionPart> {
    let bad = |why: &str| Error::corrupt(format!("transaction part {what} is damaged: {why}"));
    // 1. Trailer, magic, metadata line.
    let body_len = data.len().checked_sub(TRAILER_LEN).ok_or_else(|| bad("too short"))?;
    let (body, trailer) = data.split_at(body_len);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad("SHA-256 trailer does not match"));
    }
    let rest = body.strip_prefix(PART_MAGIC.as_slice()).ok_or_else(|| bad("not a pgkeep transaction part (magic)"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| bad("no metadata line"))?;
    let meta: PartMeta = serde_json::from_slice(&rest[..nl]).map_err(|e| bad(&format!("metadata: {e}")))?;
    if meta.version != PART_FORMAT_VERSION {
        return Err(bad(&format!("unsupported part format version {}", meta.version)));
    }
    if meta.raw_size > MAX_RAW_PAYLOAD {
        return Err(bad("declared payload size too large"));
    }
    if meta.compression != columnar::COMPRESSION {
        return Err(bad(&format!("unknown compression `{}`", meta.compression)));
    }
    // 2. Stored payload, opened.
    let header_len = PART_MAGIC.len() + nl + 1;
    let rest = &rest[nl + 1..];
    let len_bytes: [u8; 8] = rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("truncated"))?;
    let stored = &rest[8..];
    if stored.len() as u64 != u64::from_be_bytes(len_bytes) {
        return Err(bad("payload length does not match"));
    }
    let opened;
    let stored = match &meta.encryption {
        None => stored,
        Some(env) => {
            let cipher = keys.cipher(env, &format!("transaction part {what}"))?;
            opened = cipher.open(stored, &[AAD_PART, &body[..header_len]].concat(), &format!("transaction part {what}"))?;
            &opened[..]
        }
    };
    let raw = columnar::unpack(stored, meta.raw_size).map_err(|e| bad(e.message()))?;
    if raw.len() as u64 != meta.raw_size {
        return Err(bad("payload size does not match the metadata"));
    }
    // 3. One record of messages, none a Begin or Commit.
    let records = split(&raw, 0).ok_or_else(|| bad("record framing"))?;
    let [record] = records.as_slice() else {
        return Err(bad("not exactly one record"));
    };
    let inner = &raw[record.clone()];
    let ranges = split(inner, 0).ok_or_else(|| bad("message framing"))?;
    let mut messages = Vec::with_capacity(ranges.len());
    for r in ranges {
        let m = &inner[r];
        if matches!(m.first(), None | Some(b'B' | b'C')) {
            return Err(bad("a part holds an empty message, a Begin or a Commit"));
        }
        messages.push(Bytes::copy_from_slice(m));
    }
    Ok(TransactionPart { meta, messages })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{self, Insert, PgOutputMessage, TupleValue};

    pub(crate) fn sample() -> TransactionPart {
        let insert = |v: &'static [u8]| {
            let mut out = BytesMut::new();
            pgoutput::encode(&PgOutputMessage::Insert(Insert { relation_id: 16384, new_tuple: vec![TupleValue::Text(Bytes::from_static(v))] }), &mut out)
                .unwrap();
            out.freeze()
        };
        TransactionPart {
            meta: PartMeta {
                version: PART_FORMAT_VERSION,
                stream_id: "7-s".into(),
                commit_lsn: Lsn(0x2f0),
                xid: 9,
                index: 1,
                changes: 2,
                compression: String::new(),
                raw_size: 0,
                encryption: None,
            },
            messages: vec![insert(b"41"), insert(b"42")],
        }
    }

    #[test]
    fn round_trip_and_every_damage_is_rejected() {
        let part = sample();
        let bytes = encode(part.clone(), None).unwrap();
        let back = decode_with(&bytes, "k", &Keyring::none()).unwrap();
        assert_eq!(back.messages, part.messages);
        assert_eq!((back.meta.commit_lsn, back.meta.index, back.meta.xid), (Lsn(0x2f0), 1, 9));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode_with(&bad, "k", &Keyring::none()).is_err(), "flip at {i}");
            assert!(decode_with(&bytes[..i], "k", &Keyring::none()).is_err(), "truncated at {i}");
        }
    }

    #[test]
    fn begin_or_commit_inside_a_part_is_refused() {
        let mut part = sample();
        part.messages.push(Bytes::from_static(b"Cxxxx"));
        let e = decode_with(&encode(part.clone(), None).unwrap(), "p1", &Keyring::none()).unwrap_err();
        assert!(e.user_line().contains("p1"), "{}", e.user_line());
    }

    #[test]
    fn encrypted_parts_need_the_key() {
        let id = age::x25519::Identity::generate();
        let settings = crate::config::EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() };
        let sealer = Sealer::from_settings(&settings).unwrap().unwrap();
        let keys = Keyring::with_identities(vec![id], "test");
        let bytes = encode(sample(), Some(&sealer)).unwrap();
        assert_eq!(decode_with(&bytes, "k", &keys).unwrap().messages, sample().messages);
        assert!(decode_with(&bytes, "k", &Keyring::none()).is_err());
    }

    /// With `PGKEEP_WRITE_FUZZ_SEEDS=1`, write the seeds of the `part_decode` fuzz target.
    #[test]
    fn write_fuzz_seeds() {
        if std::env::var("PGKEEP_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/part_decode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("two-inserts.part"), encode(sample(), None).unwrap()).unwrap();
    }
}
