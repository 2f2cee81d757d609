//! The [`ChangeSegment`] format (docs/FORMAT.md §5): pure encode and decode
//! of one archived piece of a logical replication stream.
//!
//! ```text
//! PGKSEG1\n                      magic, 8 bytes
//! {json metadata}\n              SegmentMeta, one line
//! u64 stored payload length      big-endian
//! payload                        per `compression`, see below
//! SHA-256                        32 bytes over everything before it
//! ```
//!
//! The raw payload is a sequence of records, each `u32 len` + body; a body
//! is a sequence of pgoutput messages, each `u32 len` + bytes exactly as
//! the server sent them. Record 0 is the *schema record*: the Type and
//! Relation messages of every relation the segment's transactions touch, so
//! a segment can be replayed without earlier ones. Every further record is
//! one committed transaction, Begin … Commit.
//!
//! [`encode`] stores the raw payload with the [`columnar`] transform
//! (compression `pgk-col1+zstd`: split into streams, each zstd-compressed);
//! [`decode`] also reads the earlier `zstd` (one zstd frame of the raw
//! payload) and `none`. The compression name, not the format version,
//! selects the transform.
//!
//! A transaction too large for `stream`'s memory spans several objects: its
//! messages between Begin and the last ones are stored first as
//! [`part`]s, and the segment that ends with its Commit (format version 3)
//! says in `parts` how many precede the rest of its last transaction.
//!
//! An encrypted segment (format version 2) has the same layout; its
//! metadata line (still plaintext, so chains can be checked without a key)
//! also carries `encryption`, the stream run's wrapped data key, and its
//! stored payload is sealed with that key (`crypto::chunk`), the
//! magic and metadata line as associated data, so the metadata cannot be
//! edited either. [`encode_sealed`] writes it, [`decode_with`] reads it with
//! a [`Keyring`]; [`decode`] reads unencrypted segments only, and
//! [`decode_meta`] checks the trailer and reads the metadata of either.
//!
//! [`decode`] takes `&[u8]`, never panics and never allocates more than the
//! input and the declared (bounded) payload size justify (a columnar
//! payload's streams add at most twice that size); it verifies the
//! trailer, the payload size, the record framing, and that every
//! transaction runs from Begin to Commit with commit end LSNs strictly
//! increasing inside `(start_lsn, end_lsn]`, the last one equal to `end_lsn`.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{KeyEnvelope, Keyring, Sealer};
use crate::error::{Error, Result};
use crate::replication::pgoutput::{self, PgOutputMessage};
use crate::repo::layout::Lsn;

pub mod columnar;
pub mod part;
pub mod rekey; // key rotation: a sealed segment under a new envelope

/// The first 8 bytes of every segment.
pub const MAGIC: &[u8; 8] = b"PGKSEG1\n";
/// The format version written in the metadata.
pub const FORMAT_VERSION: u32 = 1;
/// The format version of an encrypted segment.
pub const SEALED_FORMAT_VERSION: u32 = 2;
/// The format version of a segment whose last transaction continues parts
/// stored before it (`parts` > 0), encrypted or not.
pub const CONTINUED_FORMAT_VERSION: u32 = 3;
/// Associated-data label of a sealed segment payload (followed by the magic and metadata line).
const AAD_SEGMENT: &[u8] = b"pgkeep segment payload v2\n";
/// Largest raw payload a segment may declare (decode refuses more).
pub const MAX_RAW_PAYLOAD: u64 = 1 << 30;
const TRAILER_LEN: usize = 32;

/// The metadata line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Start of the covered WAL range (inclusive): the previous segment's end.
    pub start_lsn: Lsn,
    /// End of the covered range (exclusive): the last Commit's `end_lsn`.
    pub end_lsn: Lsn,
    /// Commit record LSN of the first transaction.
    pub first_commit_lsn: Lsn,
    /// Commit record LSN of the last transaction.
    pub last_commit_lsn: Lsn,
    /// Commit time of the first transaction (`None` if not representable).
    pub first_commit_time: Option<DateTime<Utc>>,
    /// Commit time of the last transaction.
    pub last_commit_time: Option<DateTime<Utc>>,
    /// Number of transactions.
    pub transactions: u64,
    /// Number of row messages (Insert, Update, Delete).
    pub changes: u64,
    /// How the raw payload is stored: [`columnar::COMPRESSION`] (written
    /// today), `zstd` (one zstd frame; earlier segments) or `none`.
    pub compression: String,
    /// Size of the raw (uncompressed) payload.
    pub raw_size: u64,
    /// Sequence values sampled when the segment was sealed (after its last
    /// commit was received): at least every value its transactions used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceSample>,
    /// Tables the archive cannot reproduce from a transaction of this
    /// segment on (docs/FORMAT.md §5): replay refuses to cross them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inexact: Vec<super::inexact::InexactMark>,
    /// Heartbeat segments: the server's clock when its WAL ended at
    /// `end_lsn` (the keepalive's send time). A point-in-time restore
    /// reaches a target time only up to this or the last commit time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<DateTime<Utc>>,
    /// How many [`part`]s hold the messages of the last transaction
    /// between its Begin and the messages in this segment (0: none;
    /// otherwise format version [`CONTINUED_FORMAT_VERSION`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One sequence's state, sampled when a segment is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceSample {
    /// Schema of the sequence.
    pub schema: String,
    /// Name of the sequence.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
}

/// One committed transaction: its raw pgoutput messages, Begin … Commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTransaction {
    /// The messages in stream order.
    pub messages: Vec<Bytes>,
}

/// A decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSegment {
    /// The metadata line.
    pub meta: SegmentMeta,
    /// Type and Relation messages needed to replay the transactions.
    pub schema: Vec<Bytes>,
    /// The transactions in commit order.
    pub transactions: Vec<SegmentTransaction>,
}

/// Append one record (`u32 len` + messages, each `u32 len` + bytes).
pub fn put_record(out: &mut BytesMut, messages: &[Bytes]) -> Result<()> {
    let body: usize = messages.iter().map(|m| 4 + m.len()).sum();
    out.put_u32(u32::try_from(body).map_err(|_| too_large("record"))?);
    for m in messages {
        out.put_u32(u32::try_from(m.len()).map_err(|_| too_large("message"))?);
        out.put_slice(m);
    }
    Ok(())
}

fn too_large(what: &str) -> Error {
    Error::internal(format!("cannot encode a change segment: a {what} exceeds 4 GiB"))
}

/// The metadata line of an encrypted segment.
#[derive(Serialize)]
struct SealedMetaOut<'a> {
    #[serde(flatten)]
    meta: &'a SegmentMeta,
    encryption: &'a KeyEnvelope,
}

/// The `encryption` field of a metadata line, if any.
#[derive(Deserialize)]
struct EncryptionField {
    #[serde(default)]
    encryption: Option<KeyEnvelope>,
}

/// Encode `segment` with the [`columnar`] transform. `meta.raw_size` and
/// `meta.compression` are filled in here; the other fields are written as given.
pub fn encode(segment: &ChangeSegment) -> Result<Vec<u8>> {
    encode_sealed(segment, None)
}

/// [`encode`], encrypting the payload with `sealer` when given (format
/// version 2; the metadata stays readable and is authenticated).
pub fn encode_sealed(segment: &ChangeSegment, sealer: Option<&Sealer>) -> Result<Vec<u8>> {
    let mut raw = BytesMut::new();
    put_record(&mut raw, &segment.schema)?;
    for txn in &segment.transactions {
        put_record(&mut raw, &txn.messages)?;
    }
    // Never write a segment that decode would refuse. Large transactions go
    // to parts, so only limits set far above the defaults get here.
    if raw.len() as u64 > MAX_RAW_PAYLOAD {
        return Err(Error::new(
            crate::error::ErrorKind::Config,
            format!(
                "a change segment of stream {} would hold {} bytes, above the {} byte limit of one object",
                segment.meta.stream_id,
                raw.len(),
                MAX_RAW_PAYLOAD
            ),
        )
        .with_hint("restart `pgkeep stream` with smaller --segment-bytes and --transaction-memory (defaults 16MiB)"));
    }
    let stored = columnar::pack(&raw);
    let mut meta = segment.meta.clone();
    meta.raw_size = raw.len() as u64;
    meta.compression = columnar::COMPRESSION.to_string();
    meta.version = if meta.parts > 0 { CONTINUED_FORMAT_VERSION } else { FORMAT_VERSION };
    let json = match sealer {
        None => serde_json::to_vec(&meta),
        Some(s) => {
            if meta.parts == 0 {
                meta.version = SEALED_FORMAT_VERSION;
            }
            serde_json::to_vec(&SealedMetaOut { meta: &meta, encryption: s.envelope() })
        }
    }
    .map_err(|e| Error::internal(format!("cannot encode segment metadata: {e}")))?;
    let mut out = Vec::with_capacity(MAGIC.len() + json.len() + 9 + stored.len() + TRAILER_LEN + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&json);
    out.push(b'\n');
    let stored = match sealer {
        None => stored,
        Some(s) => s.cipher().seal(&stored, &segment_aad(&out))?,
    };
    out.extend_from_slice(&(stored.len() as u64).to_be_bytes());
    out.extend_from_slice(&stored);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// The associated data of a sealed payload: a label, the magic and the metadata line.
fn segment_aad(header: &[u8]) -> Vec<u8> {
    [AAD_SEGMENT, header].concat()
}

/// Decode and verify an unencrypted stored segment. `what` names it in
/// errors (its key). An encrypted segment is refused: use [`decode_with`].
pub fn decode(data: &[u8], what: &str) -> Result<ChangeSegment> {
    decode_with(data, what, &Keyring::none())
}

/// Check the trailer and read the metadata line of a segment, encrypted
/// or not, without decrypting or checking the payload.
pub fn decode_meta(data: &[u8], what: &str) -> Result<SegmentMeta> {
    let bad = |why: &str| Error::corrupt(format!("change segment {what} is damaged: {why}"));
    let body_len = data.len().checked_sub(TRAILER_LEN).ok_or_else(|| bad("too short"))?;
    let (body, trailer) = data.split_at(body_len);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad("SHA-256 trailer does not match"));
    }
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a pgkeep segment (magic)"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| bad("no metadata line"))?;
    serde_json::from_slice(&rest[..nl]).map_err(|e| bad(&format!("metadata: {e}")))
}

/// Decode and verify a stored segment, decrypting it with `keys` when it is
/// encrypted. `what` names it in errors (its key).
pub fn decode_with(data: &[u8], what: &str, keys: &Keyring) -> Result<ChangeSegment> {
    let bad = |why: &str| Error::corrupt(format!("change segment {what} is damaged: {why}"));
    // 1. Trailer.
    let body_len = data.len().checked_sub(TRAILER_LEN).ok_or_else(|| bad("too short"))?;
    let (body, trailer) = data.split_at(body_len);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad("SHA-256 trailer does not match"));
    }
    // 2. Magic and metadata line.
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a pgkeep segment (magic)"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| bad("no metadata line"))?;
    let meta: SegmentMeta = serde_json::from_slice(&rest[..nl]).map_err(|e| bad(&format!("metadata: {e}")))?;
    let envelope = serde_json::from_slice::<EncryptionField>(&rest[..nl]).map_err(|e| bad(&format!("metadata: {e}")))?.encryption;
    match (meta.version, &envelope) {
        (FORMAT_VERSION, None) | (SEALED_FORMAT_VERSION, Some(_)) if meta.parts == 0 => {}
        (CONTINUED_FORMAT_VERSION, _) if meta.parts > 0 => {}
        (FORMAT_VERSION | SEALED_FORMAT_VERSION | CONTINUED_FORMAT_VERSION, _) => {
            return Err(bad("format version, parts and encryption section disagree"));
        }
        (v, _) => return Err(bad(&format!("unsupported segment format version {v}"))),
    }
    let header_len = MAGIC.len() + nl + 1;
    if meta.raw_size > MAX_RAW_PAYLOAD {
        return Err(bad("declared payload size too large"));
    }
    // 3. Stored payload.
    let rest = &rest[nl + 1..];
    let len_bytes: [u8; 8] = rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("truncated"))?;
    let stored_len = u64::from_be_bytes(len_bytes);
    let stored = &rest[8..];
    if stored.len() as u64 != stored_len {
        return Err(bad("payload length does not match"));
    }
    let opened;
    let stored = match &envelope {
        None => stored,
        Some(env) => {
            let cipher = keys.cipher(env, &format!("change segment {what}"))?;
            opened = cipher.open(stored, &segment_aad(&body[..header_len]), &format!("change segment {what}"))?;
            &opened[..]
        }
    };
    let raw = match meta.compression.as_str() {
        "zstd" => {
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(stored).map_err(|e| bad(&format!("zstd: {e}")))?;
            decoder.take(meta.raw_size + 1).read_to_end(&mut out).map_err(|e| bad(&format!("zstd: {e}")))?;
            out
        }
        columnar::COMPRESSION => columnar::unpack(stored, meta.raw_size).map_err(|e| bad(e.message()))?,
        "none" => stored.to_vec(),
        other => return Err(bad(&format!("unknown compression `{other}`"))),
    };
    if raw.len() as u64 != meta.raw_size {
        return Err(bad("payload size does not match the metadata"));
    }
    // 4. Records.
    let mut records = split(&raw, 0).ok_or_else(|| bad("record framing"))?.into_iter();
    let schema_record = records.next().ok_or_else(|| bad("no schema record"))?;
    let schema = split_messages(&raw, schema_record).ok_or_else(|| bad("schema record framing"))?;
    let mut transactions = Vec::new();
    for record in records {
        let messages = split_messages(&raw, record).ok_or_else(|| bad("transaction framing"))?;
        transactions.push(SegmentTransaction { messages });
    }
    if transactions.len() as u64 != meta.transactions {
        return Err(bad("transaction count does not match the metadata"));
    }
    check_transactions(&meta, &transactions).map_err(|why| bad(&why))?;
    Ok(ChangeSegment { meta, schema, transactions })
}

/// Split `buf[from..]` into `u32 len` framed ranges, or `None` if they do
/// not tile it exactly.
fn split(buf: &[u8], from: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let mut at = from;
    let mut out = Vec::new();
    while at < buf.len() {
        let len = u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        out.push(start..end);
        at = end;
    }
    Some(out)
}

/// The messages inside one record.
fn split_messages(raw: &[u8], record: std::ops::Range<usize>) -> Option<Vec<Bytes>> {
    let body = raw.get(record)?;
    Some(split(body, 0)?.into_iter().map(|r| Bytes::copy_from_slice(&body[r])).collect())
}

/// Begin … Commit per transaction; commit end LSNs strictly increasing in
/// `(start, end]`, the last equal to `end`.
fn check_transactions(meta: &SegmentMeta, txns: &[SegmentTransaction]) -> std::result::Result<(), String> {
    if txns.is_empty() {
        // A heartbeat segment: no transaction committed in its range that the
        // publication covers; it only moves the archive (and the slot) forward.
        return if meta.end_lsn > meta.start_lsn && meta.changes == 0 && meta.parts == 0 {
            Ok(())
        } else {
            Err("an empty segment must cover a non-empty range and hold no changes".to_string())
        };
    }
    let mut previous = meta.start_lsn;
    for (i, txn) in txns.iter().enumerate() {
        let first = txn.messages.first().map(|m| pgoutput::decode(m));
        let last = txn.messages.last().map(|m| pgoutput::decode(m));
        let (Some(Ok(PgOutputMessage::Begin(_))), Some(Ok(PgOutputMessage::Commit(commit)))) = (first, last) else {
            return Err(format!("transaction {i} does not run from Begin to Commit"));
        };
        if commit.end_lsn <= previous || commit.end_lsn > meta.end_lsn {
            return Err(format!("transaction {i} ends at {} outside the segment's range", commit.end_lsn));
        }
        previous = commit.end_lsn;
    }
    if previous != meta.end_lsn || txns.is_empty() {
        return Err("the last transaction does not end at the segment's end".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{Begin, Commit, Insert, PgTimestamp, TupleValue};

    fn msg(m: PgOutputMessage) -> Bytes {
        let mut out = BytesMut::new();
        pgoutput::encode(&m, &mut out).unwrap();
        out.freeze()
    }

    fn txn(xid: u32, commit: u64, end: u64) -> SegmentTransaction {
        SegmentTransaction {
            messages: vec![
                msg(PgOutputMessage::Begin(Begin { final_lsn: Lsn(commit), commit_time: PgTimestamp(1), xid })),
                msg(PgOutputMessage::Insert(Insert { relation_id: 16384, new_tuple: vec![TupleValue::Text(Bytes::from_static(b"42"))] })),
                msg(PgOutputMessage::Commit(Commit { flags: 0, commit_lsn: Lsn(commit), end_lsn: Lsn(end), commit_time: PgTimestamp(1) })),
            ],
        }
    }

    /// A valid two-transaction segment over [0x100, 0x300).
    pub(crate) fn sample() -> ChangeSegment {
        ChangeSegment {
            meta: SegmentMeta {
                version: FORMAT_VERSION,
                stream_id: "7-s".into(),
                start_lsn: Lsn(0x100),
                end_lsn: Lsn(0x300),
                first_commit_lsn: Lsn(0x1f0),
                last_commit_lsn: Lsn(0x2f0),
                first_commit_time: None,
                last_commit_time: None,
                transactions: 2,
                changes: 2,
                compression: "zstd".into(),
                raw_size: 0,
                sequences: Vec::new(),
                inexact: Vec::new(),
                server_time: None,
                parts: 0,
            },
            schema: vec![Bytes::from_static(b"R-not-decoded")],
            transactions: vec![txn(1, 0x1f0, 0x200), txn(2, 0x2f0, 0x300)],
        }
    }

    #[test]
    fn round_trip() {
        let segment = sample();
        let bytes = encode(&segment).unwrap();
        assert!(bytes.starts_with(MAGIC));
        let back = decode(&bytes, "k").unwrap();
        assert_eq!(back.schema, segment.schema);
        assert_eq!(back.transactions, segment.transactions);
        assert!(back.meta.raw_size > 0);
        assert_eq!(back.meta.stream_id, "7-s");
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_rejected() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad, "k").is_err(), "flip at {i}");
            assert!(decode(&bytes[..i], "k").is_err(), "truncated at {i}");
        }
    }

    /// Re-seal a tampered body with a valid trailer, so the checks behind
    /// the checksum are exercised.
    fn reseal(meta: &SegmentMeta, raw: &[u8]) -> Vec<u8> {
        let stored = match meta.compression.as_str() {
            "zstd" => zstd::bulk::compress(raw, 1).unwrap(),
            columnar::COMPRESSION => columnar::pack(raw),
            _ => raw.to_vec(),
        };
        let mut out = MAGIC.to_vec();
        out.extend(serde_json::to_vec(meta).unwrap());
        out.push(b'\n');
        out.extend((stored.len() as u64).to_be_bytes());
        out.extend(stored);
        let d = Sha256::digest(&out);
        out.extend_from_slice(&d);
        out
    }

    #[test]
    fn consistent_checksum_but_bad_content_is_rejected() {
        let seg = sample();
        let mut raw = BytesMut::new();
        put_record(&mut raw, &seg.schema).unwrap();
        put_record(&mut raw, &seg.transactions[0].messages).unwrap();
        put_record(&mut raw, &seg.transactions[1].messages).unwrap();
        for compression in [columnar::COMPRESSION, "zstd", "none"] {
            let mut meta = seg.meta.clone();
            meta.raw_size = raw.len() as u64;
            meta.compression = compression.into();
            rejects_bad_content(&seg, &meta, &raw);
        }
        let mut meta = seg.meta.clone();
        meta.raw_size = raw.len() as u64;
        meta.compression = "lz4".into();
        assert!(decode(&reseal(&meta, &raw), "k").is_err());
    }

    fn rejects_bad_content(seg: &ChangeSegment, meta: &SegmentMeta, raw: &[u8]) {
        assert!(decode(&reseal(meta, raw), "k").is_ok(), "{}", meta.compression);
        // Wrong count, wrong end, wrong raw size, lying huge size, framing.
        let mut m = meta.clone();
        m.transactions = 3;
        assert!(decode(&reseal(&m, raw), "k").is_err());
        let mut m = meta.clone();
        m.end_lsn = Lsn(0x400);
        assert!(decode(&reseal(&m, raw), "k").is_err());
        let mut m = meta.clone();
        m.raw_size -= 1;
        assert!(decode(&reseal(&m, raw), "k").is_err());
        let mut m = meta.clone();
        m.raw_size = u64::MAX;
        assert!(decode(&reseal(&m, raw), "k").is_err());
        let mut short = raw.to_vec();
        short.pop();
        let mut m = meta.clone();
        m.raw_size = short.len() as u64;
        assert!(decode(&reseal(&m, &short), "k").is_err());
        // Transactions out of order.
        let mut swapped = BytesMut::new();
        put_record(&mut swapped, &seg.schema).unwrap();
        put_record(&mut swapped, &seg.transactions[1].messages).unwrap();
        put_record(&mut swapped, &seg.transactions[0].messages).unwrap();
        assert!(decode(&reseal(meta, &swapped), "k").is_err());
    }

    #[test]
    fn new_segments_are_columnar_and_old_zstd_ones_still_decode() {
        let segment = sample();
        let bytes = encode(&segment).unwrap();
        let back = decode(&bytes, "k").unwrap();
        assert_eq!(back.meta.compression, columnar::COMPRESSION);
        assert_eq!(back.meta.version, FORMAT_VERSION);
        // A segment as pgkeep wrote it before the columnar transform.
        let mut raw = BytesMut::new();
        put_record(&mut raw, &segment.schema).unwrap();
        for txn in &segment.transactions {
            put_record(&mut raw, &txn.messages).unwrap();
        }
        let mut meta = segment.meta.clone();
        meta.raw_size = raw.len() as u64;
        meta.compression = "zstd".into();
        let old = decode(&reseal(&meta, &raw), "k").unwrap();
        assert_eq!(old.meta.compression, "zstd");
        assert_eq!((old.schema, old.transactions), (back.schema, back.transactions));
        // The seeds of the segment_decode fuzz target written before it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/segment_decode");
        let seed = std::fs::read(dir.join("two-transactions.seg")).unwrap();
        assert_eq!(decode(&seed, "seed").unwrap().meta.compression, "zstd");
    }

    /// With `PGKEEP_WRITE_FUZZ_SEEDS=1`, write the seeds of the
    /// `segment_decode` fuzz target (`col1-*`; the other seeds are `zstd`
    /// segments written before the columnar transform, kept as they are).
    #[test]
    fn write_fuzz_seeds() {
        if std::env::var("PGKEEP_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/segment_decode");
        std::fs::create_dir_all(&dir).unwrap();
        let mut one = sample();
        one.schema.clear();
        one.transactions.truncate(1);
        one.meta.end_lsn = Lsn(0x200);
        one.meta.transactions = 1;
        let mut continued = sample();
        continued.meta.parts = 2;
        for (name, seg) in [("col1-two-transactions.seg", sample()), ("col1-one-transaction-no-schema.seg", one), ("v3-continued-two-parts.seg", continued)] {
            let bytes = encode(&seg).unwrap();
            decode(&bytes, name).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn encrypted_segments_need_the_key_and_authenticate_their_metadata() {
        let id = age::x25519::Identity::generate();
        let settings = crate::config::EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() };
        let sealer = Sealer::from_settings(&settings).unwrap().unwrap();
        let keys = Keyring::with_identities(vec![id], "test");
        let bytes = encode_sealed(&sample(), Some(&sealer)).unwrap();
        let back = decode_with(&bytes, "k", &keys).unwrap();
        assert_eq!(back.transactions, sample().transactions);
        assert_eq!(back.meta.version, SEALED_FORMAT_VERSION);
        // Continuing parts, encrypted: version 3 with the encryption section.
        let mut continued = sample();
        continued.meta.parts = 2;
        let sealed = encode_sealed(&continued, Some(&sealer)).unwrap();
        let back = decode_with(&sealed, "k", &keys).unwrap();
        assert_eq!((back.meta.version, back.meta.parts), (CONTINUED_FORMAT_VERSION, 2));
        assert!(decode(&sealed, "k").is_err(), "needs the key");
        // Without a key: one line naming the segment; the metadata stays readable.
        let e = decode(&bytes, "changes/7-s/x.seg").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.user_line().contains("changes/7-s/x.seg"), "{}", e.user_line());
        assert_eq!(decode_meta(&bytes, "k").unwrap().end_lsn, Lsn(0x300));
        // The payload is not readable: no pgoutput bytes in the clear.
        let plain = encode(&sample()).unwrap();
        assert!(decode_with(&plain, "k", &keys).is_ok(), "unencrypted segments decode with keys too");
        for i in (0..bytes.len()).step_by(5) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode_with(&bad, "k", &keys).is_err(), "flip at {i}");
        }
        // Editing the metadata and re-sealing the trailer fails authentication.
        let text = bytes.clone();
        let nl = MAGIC.len() + text[MAGIC.len()..].iter().position(|b| *b == b'\n').unwrap();
        let line = String::from_utf8(text[MAGIC.len()..nl].to_vec()).unwrap();
        let edited = line.replace("\"changes\":2", "\"changes\":3");
        assert_ne!(edited, line);
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(edited.as_bytes());
        forged.extend_from_slice(&text[nl..text.len() - TRAILER_LEN]);
        let d = Sha256::digest(&forged);
        forged.extend_from_slice(&d);
        let e = decode_with(&forged, "k", &keys).unwrap_err();
        assert!(e.user_line().contains("fails authentication"), "{}", e.user_line());
    }

    #[test]
    fn a_segment_with_parts_is_version_3_and_its_version_must_agree() {
        let mut seg = sample();
        seg.meta.parts = 4;
        let bytes = encode(&seg).unwrap();
        let back = decode(&bytes, "k").unwrap();
        assert_eq!((back.meta.version, back.meta.parts), (CONTINUED_FORMAT_VERSION, 4));
        assert_eq!(back.transactions, seg.transactions);
        // Without parts it stays version 1, readable by earlier pgkeep.
        assert_eq!(decode(&encode(&sample()).unwrap(), "k").unwrap().meta.version, FORMAT_VERSION);
        // A version 1 segment claiming parts, or a version 3 one without, is refused.
        let mut raw = BytesMut::new();
        put_record(&mut raw, &seg.schema).unwrap();
        for t in &seg.transactions {
            put_record(&mut raw, &t.messages).unwrap();
        }
        let mut meta = seg.meta.clone();
        meta.raw_size = raw.len() as u64;
        meta.compression = "none".into();
        meta.version = FORMAT_VERSION;
        assert!(decode(&reseal(&meta, &raw), "k").is_err());
        meta.version = CONTINUED_FORMAT_VERSION;
        assert!(decode(&reseal(&meta, &raw), "k").is_ok());
        meta.parts = 0;
        assert!(decode(&reseal(&meta, &raw), "k").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for input in [&b""[..], b"PGKSEG1\n", &[0u8; 40], &[0xff; 100]] {
            assert!(decode(input, "k").is_err());
        }
    }
}
