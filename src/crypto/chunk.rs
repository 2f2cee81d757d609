//! The sealed-chunk format (docs/FORMAT.md §8.3): one compressed chunk or
//! segment payload encrypted as a single XChaCha20-Poly1305 message.
//!
//! ```text
//! 0x01                 format version, 1 byte
//! nonce                24 random bytes
//! ciphertext           as long as the plaintext
//! tag                  16 bytes (Poly1305)
//! ```
//!
//! The key is the data key's HKDF-derived cipher key. The associated data
//! names the context (a backup chunk, or a segment with its metadata line),
//! so a sealed payload cannot be moved into another context unnoticed.
//! Random 192-bit nonces make collisions negligible for any number of
//! chunks one key will ever seal. [`DataCipher::open`] is pure and never
//! panics on any input.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use super::data_key::{DataKey, INFO_CIPHER, INFO_MANIFEST_MAC, KEY_LEN};
use crate::error::{Error, Result};

/// The version byte of a sealed chunk.
pub const SEALED_VERSION: u8 = 1;
/// Random nonce length.
pub const NONCE_LEN: usize = 24;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed chunk adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Name of this format in manifests.
pub const CHUNK_FORMAT: &str = "pgkeep-aead-v1: 0x01, 24-byte random nonce, XChaCha20-Poly1305 ciphertext, 16-byte tag";

/// Associated data of a backup chunk (schema or table data).
pub const AAD_BACKUP_CHUNK: &[u8] = b"pgkeep backup chunk v1";

/// The keys of one data key, ready to use: the chunk cipher and the MAC key.
pub struct DataCipher {
    aead: XChaCha20Poly1305,
    mac_key: zeroize::Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for DataCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataCipher(********)")
    }
}

impl DataCipher {
    /// Derive the cipher and MAC keys of `key`.
    pub fn new(key: &DataKey) -> DataCipher {
        let k = key.derive(INFO_CIPHER);
        DataCipher { aead: XChaCha20Poly1305::new(Key::from_slice(&k[..])), mac_key: key.derive(INFO_MANIFEST_MAC) }
    }

    /// The manifest MAC key.
    pub(crate) fn mac_key(&self) -> &[u8] {
        &self.mac_key[..]
    }

    /// Encrypt `plaintext` under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[1 + NONCE_LEN..])
            .map_err(|_| Error::internal("chunk encryption failed"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypt and authenticate a sealed chunk. `what` names it in errors.
    /// Any change to the bytes, the key or the context is `Corrupt`.
    pub fn open(&self, sealed: &[u8], aad: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::corrupt(format!("{what} is too short to be an encrypted chunk")));
        }
        if sealed[0] != SEALED_VERSION {
            return Err(Error::corrupt(format!("{what} has unknown encryption format {}", sealed[0])));
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let (body, tag) = sealed[1 + NONCE_LEN..].split_at(sealed.len() - OVERHEAD);
        let mut out = body.to_vec();
        self.aead
            .decrypt_in_place_detached(nonce, aad, &mut out, Tag::from_slice(tag))
            .map_err(|_| Error::corrupt(format!("{what} fails authentication: damaged, modified, or sealed with another key")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_change_is_rejected() {
        let c = DataCipher::new(&DataKey::generate());
        let plain = b"1\talpha\n2\tbeta\n".repeat(50);
        let sealed = c.seal(&plain, AAD_BACKUP_CHUNK).unwrap();
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert_eq!(c.open(&sealed, AAD_BACKUP_CHUNK, "chunk").unwrap(), plain);
        // Two seals of the same bytes differ (fresh nonce).
        assert_ne!(c.seal(&plain, AAD_BACKUP_CHUNK).unwrap(), sealed);
        for i in (0..sealed.len()).step_by(13) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            let e = c.open(&bad, AAD_BACKUP_CHUNK, "chunk data/w01-000001.pack@0").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
            assert!(e.user_line().contains("data/w01-000001.pack@0"));
        }
        assert!(c.open(&sealed, b"other context", "c").is_err());
        assert!(DataCipher::new(&DataKey::generate()).open(&sealed, AAD_BACKUP_CHUNK, "c").is_err());
        for n in 0..OVERHEAD + 2 {
            assert!(c.open(&sealed[..n], AAD_BACKUP_CHUNK, "c").is_err() || n == OVERHEAD && plain.is_empty());
        }
        let empty = c.seal(b"", AAD_BACKUP_CHUNK).unwrap();
        assert_eq!(c.open(&empty, AAD_BACKUP_CHUNK, "c").unwrap(), b"");
    }
}
