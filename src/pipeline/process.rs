//! Per-chunk work done on the rayon pool, off the async runtime, in this
//! order: count rows, fingerprint them, XXH3-128 the raw bytes, compress,
//! encrypt (when the backup has a [`Sealer`]), SHA-256 the stored bytes —
//! so `stored_sha256` covers exactly what is stored, ciphertext included.
//!
//! The table fingerprint is order-independent: the wrapping sum (mod 2^128)
//! of XXH3-128 over each row's COPY text without its trailing newline. Equal
//! multisets of rows give equal fingerprints whatever order a restore loads
//! them in; duplicates count (a sum, not a xor).

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
        self.rows += 1;
        self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(row));
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
    /// Rows and fingerprint (zero for non-row data).
    pub fingerprint: TableFingerprint,
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
    let raw_xxh3 = raw_checksum(raw);
    let compressed = compression.compress(raw)?;
    let stored = match sealer {
        Some(s) => s.seal_chunk(&compressed)?,
        None => compressed,
    };
    let stored_sha256 = hex::encode(Sha256::digest(&stored));
    Ok(ProcessedChunk {
        stored: Bytes::from(stored),
        raw_size: raw.len() as u64,
        raw_xxh3,
        stored_sha256,
        fingerprint,
    })
}

/// Run [`process_chunk`] on the rayon pool; await the receiver for the result.
pub fn spawn_process(raw: Bytes, compression: Compression, rows: bool) -> oneshot::Receiver<Result<ProcessedChunk>> {
    spawn_process_sealed(raw, compression, rows, None)
}

/// Run [`process_chunk_sealed`] on the rayon pool.
pub fn spawn_process_sealed(
    raw: Bytes,
    compression: Compression,
    rows: bool,
    sealer: Option<Arc<Sealer>>,
) -> oneshot::Receiver<Result<ProcessedChunk>> {
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
