//! Per-chunk work done on the rayon pool, off the async runtime, in this
//! order: count rows, fingerprint them, XXH3-128 the raw bytes, compress,
//! encrypt (when the backup has a [`Sealer`]), SHA-256 the stored bytes —
//! so `stored_sha256` covers exactly what is stored, ciphertext included.
//!
//! The table fingerprint is order-independent: the wrapping sum (mod 2^128)
//! of XXH3-128 over each row's COPY text without its trailing newline. Equal
//! multisets of rows give equal fingerprints whatever order a restore loads
//! them in; duplicates count (a sum, not a xor).
//!
//! A row larger than a chunk spans chunks (`CutChunk::continues`). The pool
//! fingerprints the rows that lie wholly inside each chunk
//! ([`interior_rows`]); the worker feeds every chunk, in order, to a
//! [`SpanningRow`], which hashes the spanning row piece by piece with a
//! streaming XXH3-128 — the same hash as over the whole row at once. The
//! verify read-back does both on arbitrary pieces ([`RowFingerprinter`]).

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::compress::Compression;
use crate::crypto::Sealer;
use crate::error::{Error, Result};

/// Order-independent fingerprint of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFingerprint {
    /// Rows seen.
    pub rows: u64,
    /// Wrapping sum of per-row XXH3-128 hashes.
    pub sum: u128,
}

impl TableFingerprint {
    /// Fingerprint every row of a buffer of complete COPY text rows.
    pub fn of_rows(buf: &[u8]) -> TableFingerprint {
        let mut fp = TableFingerprint::default();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf) {
            fp.add_row(&buf[start..end]);
            start = end + 1;
        }
        fp
    }

    /// Add one row (without its newline).
    pub fn add_row(&mut self, row: &[u8]) {
        self.add_hash(xxhash_rust::xxh3::xxh3_128(row));
    }

    /// Add one row by its XXH3-128.
    pub fn add_hash(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// Combine two fingerprints of disjoint row sets.
    pub fn merge(&mut self, other: TableFingerprint) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// The manifest form: `xxh3sum128:<32 hex digits>`.
    pub fn to_hex(self) -> String {
        format!("xxh3sum128:{:032x}", self.sum)
    }
}

/// The fingerprint of the rows that both start and end in `raw`: when
/// `starts_inside_row`, the bytes up to the first newline finish a row begun
/// in an earlier chunk and are left to [`SpanningRow`]; bytes after the last
/// newline begin a row that ends later and are left out too.
pub fn interior_rows(raw: &[u8], starts_inside_row: bool) -> TableFingerprint {
    let start = if starts_inside_row { memchr::memchr(b'\n', raw).map(|i| i + 1).unwrap_or(raw.len()) } else { 0 };
    TableFingerprint::of_rows(&raw[start..])
}

/// The one row that spans chunks, hashed piece by piece as chunks arrive in
/// order. Pure: bytes in, a fingerprint of at most one finished row out.
#[derive(Default)]
pub struct SpanningRow {
    open: Option<Box<xxhash_rust::xxh3::Xxh3>>,
}

impl SpanningRow {
    /// Whether a row is open: the last chunk fed ended inside it.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Feed the next chunk of the stream. Hashes its head when a row is
    /// open (up to the first newline, or all of it), and opens a row with
    /// its tail after the last newline when `continues`. Returns the row
    /// finished in this chunk, if any.
    pub fn feed(&mut self, raw: &[u8], continues: bool) -> TableFingerprint {
        let mut done = TableFingerprint::default();
        if let Some(mut hasher) = self.open.take() {
            match memchr::memchr(b'\n', raw) {
                Some(end) => {
                    hasher.update(&raw[..end]);
                    done.add_hash(hasher.digest128());
                }
                None => {
                    hasher.update(raw);
                    self.open = Some(hasher);
                    return done;
                }
            }
        }
        if continues {
            let mut hasher = Box::new(xxhash_rust::xxh3::Xxh3::new());
            hasher.update(&raw[super::chunker::complete_rows_len(raw)..]);
            self.open = Some(hasher);
        }
        done
    }
}

/// The fingerprint of COPY text arriving in pieces cut anywhere (the verify
/// read-back): memory is one piece, whatever the row sizes.
#[derive(Default)]
pub struct RowFingerprinter {
    fingerprint: TableFingerprint,
    span: SpanningRow,
}

impl RowFingerprinter {
    /// Add the next piece of the stream.
    pub fn push(&mut self, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        self.fingerprint.merge(interior_rows(piece, self.span.is_open()));
        self.fingerprint.merge(self.span.feed(piece, !piece.ends_with(b"\n")));
    }

    /// The fingerprint, or `None` when the stream ended inside a row.
    pub fn finish(self) -> Option<TableFingerprint> {
        if self.span.is_open() { None } else { Some(self.fingerprint) }
    }
}

/// A chunk ready to store.
#[derive(Debug, Clone)]
pub struct ProcessedChunk {
    /// The bytes to store (compressed).
    pub stored: Bytes,
    /// Raw length.
    pub raw_size: u64,
    /// XXH3-128 of raw bytes, 32 hex digits.
    pub raw_xxh3: String,
    /// SHA-256 of stored bytes, hex.
    pub stored_sha256: String,
    /// Rows and fingerprint (zero for non-row data). For COPY data: the rows
    /// wholly inside the chunk; the worker adds a row that spans chunks.
    pub fingerprint: TableFingerprint,
    /// The chunk ends inside a row that the next chunk continues.
    pub continues: bool,
}

/// The raw-bytes checksum: XXH3-128 as 32 hex digits. A fast
/// non-cryptographic hash is enough here: it detects a wrong decompression or
/// decryption, while the stored bytes carry SHA-256 (and, encrypted, an AEAD tag).
pub fn raw_checksum(raw: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(raw))
}

/// Do the per-chunk work synchronously. `rows`: whether `raw` is COPY text.
pub fn process_chunk(raw: &[u8], compression: Compression, rows: bool) -> Result<ProcessedChunk> {
    process_chunk_sealed(raw, compression, rows, None)
}

/// [`process_chunk`], encrypting the compressed bytes with `sealer` when given.
pub fn process_chunk_sealed(raw: &[u8], compression: Compression, rows: bool, sealer: Option<&Sealer>) -> Result<ProcessedChunk> {
    let fingerprint = if rows { TableFingerprint::of_rows(raw) } else { TableFingerprint::default() };
    process_with(raw, fingerprint, false, compression, sealer)
}

fn process_with(raw: &[u8], fingerprint: TableFingerprint, continues: bool, compression: Compression, sealer: Option<&Sealer>) -> Result<ProcessedChunk> {
    let raw_xxh3 = raw_checksum(raw);
    let compressed = compression.compress(raw)?;
    let stored = match sealer {
        Some(s) => s.seal_chunk(&compressed)?,
        None => compressed,
    };
    let stored_sha256 = hex::encode(Sha256::digest(&stored));
    Ok(ProcessedChunk { stored: Bytes::from(stored), raw_size: raw.len() as u64, raw_xxh3, stored_sha256, fingerprint, continues })
}

/// Process a chunk of COPY rows cut by the chunker on the rayon pool:
/// fingerprint its interior rows ([`interior_rows`]), then as
/// [`process_chunk_sealed`]. `starts_inside_row`: the previous chunk continued.
pub fn spawn_process_rows(
    cut: super::chunker::CutChunk,
    starts_inside_row: bool,
    compression: Compression,
    sealer: Option<Arc<Sealer>>,
) -> oneshot::Receiver<Result<ProcessedChunk>> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let fingerprint = interior_rows(&cut.raw, starts_inside_row);
        let _ = tx.send(process_with(&cut.raw, fingerprint, cut.continues, compression, sealer.as_deref()));
    });
    rx
}

/// Run [`process_chunk`] on the rayon pool; await the receiver for the result.
pub fn spawn_process(raw: Bytes, compression: Compression, rows: bool) -> oneshot::Receiver<Result<ProcessedChunk>> {
    spawn_process_sealed(raw, compression, rows, None)
}

/// Run [`process_chunk_sealed`] on the rayon pool.
pub fn spawn_process_sealed(raw: Bytes, compression: Compression, rows: bool, sealer: Option<Arc<Sealer>>) -> oneshot::Receiver<Result<ProcessedChunk>> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(process_chunk_sealed(&raw, compression, rows, sealer.as_deref()));
    });
    rx
}

/// Await a chunk spawned with [`spawn_process`].
pub async fn join(rx: oneshot::Receiver<Result<ProcessedChunk>>) -> Result<ProcessedChunk> {
    rx.await.map_err(|_| Error::internal("chunk worker vanished"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_order_independent_but_content_sensitive() {
        let a = TableFingerprint::of_rows(b"1\ta\n2\tb\n3\tc\n");
        let b = TableFingerprint::of_rows(b"3\tc\n1\ta\n2\tb\n");
        assert_eq!(a, b);
        assert_eq!(a.rows, 3);
        let c = TableFingerprint::of_rows(b"1\ta\n2\tb\n3\td\n");
        assert_ne!(a, c);
        let dup = TableFingerprint::of_rows(b"1\ta\n1\ta\n");
        assert_ne!(dup, TableFingerprint::default());
        let mut m = TableFingerprint::of_rows(b"1\ta\n");
        m.merge(TableFingerprint::of_rows(b"2\tb\n3\tc\n"));
        assert_eq!(m, a);
    }

    /// Rows of random sizes (some far larger than a chunk), cut by the
    /// chunker and fed in pieces: interior rows plus the spanning row give
    /// the fingerprint of the whole, and so does the piecewise fingerprinter.
    #[test]
    fn spanning_rows_fingerprint_like_whole_rows() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20 {
            let mut all = Vec::new();
            for i in 0..(next() % 30) {
                let len = match next() % 4 {
                    0 => next() % 5000,
                    _ => next() % 40,
                } as usize;
                all.extend((0..len).map(|j| b'a' + ((i as usize + j) % 26) as u8));
                all.push(b'\n');
            }
            let whole = TableFingerprint::of_rows(&all);
            let piece = 1 + (next() % 700) as usize;
            let mut chunker = super::super::chunker::Chunker::new(1 + (next() % 300) as usize);
            let (mut fp, mut span, mut inside) = (TableFingerprint::default(), SpanningRow::default(), false);
            let mut piecewise = RowFingerprinter::default();
            let mut cuts = Vec::new();
            for p in all.chunks(piece) {
                piecewise.push(p);
                cuts.extend(chunker.push(p));
            }
            cuts.extend(chunker.finish().unwrap());
            for c in cuts {
                fp.merge(interior_rows(&c.raw, inside));
                fp.merge(span.feed(&c.raw, c.continues));
                inside = c.continues;
            }
            assert!(!span.is_open());
            assert_eq!(fp, whole, "round {round}");
            assert_eq!(piecewise.finish().unwrap(), whole, "round {round}");
        }
        let mut torn = RowFingerprinter::default();
        torn.push(b"1\ta\n2\tb");
        assert!(torn.finish().is_none());
        // The streaming hash equals the one-shot hash of the row.
        let row = vec![7u8; 100_000];
        let mut span = SpanningRow::default();
        assert_eq!(span.feed(&row[..33_333], true).rows, 0);
        assert_eq!(span.feed(&row[33_333..], true).rows, 0);
        let done = span.feed(b"\n", false);
        assert_eq!(done, TableFingerprint::of_rows(&[&row[..], b"\n"].concat()));
    }

    #[tokio::test]
    async fn processes_off_runtime() {
        let raw = Bytes::from_static(b"1\tx\n2\ty\n");
        let c = join(spawn_process(raw.clone(), Compression::Zstd(3), true)).await.unwrap();
        assert_eq!(c.raw_size, raw.len() as u64);
        assert_eq!(c.fingerprint.rows, 2);
        assert_eq!(c.raw_xxh3, raw_checksum(&raw));
        assert_eq!(c.stored_sha256, hex::encode(Sha256::digest(&c.stored)));
        assert_eq!(Compression::Zstd(3).decompress(&c.stored, raw.len(), "c").unwrap(), raw.to_vec());
    }

    #[tokio::test]
    async fn encrypts_after_compression_and_checksums_the_ciphertext() {
        let id = age::x25519::Identity::generate();
        let settings = crate::config::EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() };
        let sealer = Arc::new(Sealer::from_settings(&settings).unwrap().unwrap());
        let raw = Bytes::from(b"1\tsecret value\n".repeat(1000));
        let c = join(spawn_process_sealed(raw.clone(), Compression::Zstd(3), true, Some(sealer.clone()))).await.unwrap();
        assert_eq!(c.stored_sha256, hex::encode(Sha256::digest(&c.stored)));
        assert_eq!(c.raw_xxh3, raw_checksum(&raw));
        assert!(!c.stored.windows(12).any(|w| w == b"secret value"));
        let compressed = sealer.cipher().open(&c.stored, crate::crypto::chunk::AAD_BACKUP_CHUNK, "c").unwrap();
        assert_eq!(Compression::Zstd(3).decompress(&compressed, raw.len(), "c").unwrap(), raw.to_vec());
        assert!(c.stored.len() < raw.len() / 10, "compressed before encryption");
    }
}
