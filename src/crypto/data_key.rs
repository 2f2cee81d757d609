//! The data key of one backup (or one `stream` run) and the keys derived
//! from it, and wrapping it with age for the recipients or the passphrase.
//!
//! A [`DataKey`] is 32 random bytes. It never leaves the process in the
//! clear: the repository holds it only as an age file (`wrapped_key`),
//! encrypted to the X25519 recipients or under an scrypt passphrase.
//! Purpose keys are derived with HKDF-SHA-256 (no salt, `info` naming the
//! purpose), so the chunk cipher key and the manifest MAC key are
//! independent.

use std::io::{Read, Write};

use age::secrecy::SecretString;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Length of a data key and of every derived key.
pub const KEY_LEN: usize = 32;

/// HKDF `info` of the chunk and segment-payload cipher key.
pub(crate) const INFO_CIPHER: &[u8] = b"pgkeep v1 xchacha20poly1305 data";
/// HKDF `info` of the manifest MAC key.
pub(crate) const INFO_MANIFEST_MAC: &[u8] = b"pgkeep v1 hmac-sha256 manifest";

/// 32 secret bytes, zeroed on drop, never printed.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(********)")
    }
}

impl DataKey {
    /// A fresh random key (the thread RNG: ChaCha seeded from the OS).
    pub fn generate() -> DataKey {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut k[..]);
        DataKey(k)
    }

    /// A key from its bytes (tests, unwrapping).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// The key derived for `info` (HKDF-SHA-256, no salt).
    pub(crate) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0[..]);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(info, &mut out[..]).expect("32 bytes is a valid HKDF-SHA-256 output length");
        out
    }
}

/// How a data key is wrapped: to age X25519 recipients, or under a passphrase.
pub enum Wrapping<'a> {
    /// `age1…` public keys, parsed.
    Recipients(&'a [age::x25519::Recipient]),
    /// An scrypt passphrase.
    Passphrase(&'a str),
}

/// Encrypt `key` as an age file for `wrapping`.
pub fn wrap(key: &DataKey, wrapping: Wrapping<'_>) -> Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| Error::internal(format!("cannot wrap the data key with age: {e}"));
    let encryptor = match wrapping {
        Wrapping::Recipients(rs) => age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient)).map_err(|e| fail(&e))?,
        Wrapping::Passphrase(p) => age::Encryptor::with_user_passphrase(SecretString::from(p.to_owned())),
    };
    let mut out = Vec::with_capacity(256);
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| fail(&e))?;
    w.write_all(&key.0[..]).map_err(|e| fail(&e))?;
    w.finish().map_err(|e| fail(&e))?;
    Ok(out)
}

/// Why an age file could not be opened.
#[derive(Debug)]
pub enum UnwrapError {
    /// None of the identities (or not the passphrase) opens it.
    NoMatchingKey,
    /// The file is wrapped under a passphrase but identities were offered, or the reverse.
    WrongKind {
        /// Whether the file needs a passphrase.
        needs_passphrase: bool,
    },
    /// Damaged, or not a data key.
    Damaged(String),
}

/// Open a wrapped data key with identities, or with a passphrase when the
/// file is passphrase-wrapped.
pub fn unwrap(wrapped: &[u8], identities: &[Box<dyn age::Identity + Send + Sync>], passphrase: Option<&str>) -> std::result::Result<DataKey, UnwrapError> {
    let decryptor = age::Decryptor::new(wrapped).map_err(|e| UnwrapError::Damaged(e.to_string()))?;
    let reader = if decryptor.is_scrypt() {
        let Some(p) = passphrase else {
            return Err(UnwrapError::WrongKind { needs_passphrase: true });
        };
        let identity = age::scrypt::Identity::new(SecretString::from(p.to_owned()));
        decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity))
    } else {
        if identities.is_empty() {
            return Err(UnwrapError::WrongKind { needs_passphrase: false });
        }
        decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
    };
    let mut reader = reader.map_err(|e| match e {
        age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => UnwrapError::NoMatchingKey,
        other => UnwrapError::Damaged(other.to_string()),
    })?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN));
    reader.read_to_end(&mut bytes).map_err(|e| UnwrapError::Damaged(e.to_string()))?;
    let key: [u8; KEY_LEN] = bytes[..].try_into().map_err(|_| UnwrapError::Damaged(format!("{} bytes instead of {KEY_LEN}", bytes.len())))?;
    let out = DataKey::from_bytes(key);
    let mut key = key;
    key.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_to_recipients_and_passphrase() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let key = DataKey::generate();
        let wrapped = wrap(&key, Wrapping::Recipients(&[id.to_public()])).unwrap();
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];
        let back = unwrap(&wrapped, &ids, None).unwrap();
        assert_eq!(back.0[..], key.0[..]);
        let wrong: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(other)];
        assert!(matches!(unwrap(&wrapped, &wrong, None), Err(UnwrapError::NoMatchingKey)));
        assert!(matches!(unwrap(&wrapped, &[], Some("x")), Err(UnwrapError::WrongKind { needs_passphrase: false })));
        assert!(matches!(unwrap(b"garbage", &ids, None), Err(UnwrapError::Damaged(_))));
        assert_ne!(key.derive(INFO_CIPHER)[..], key.derive(INFO_MANIFEST_MAC)[..]);
        assert_eq!(format!("{key:?}"), "DataKey(********)");
    }

    #[test]
    fn passphrase_wrapping() {
        let key = DataKey::generate();
        let wrapped = wrap(&key, Wrapping::Passphrase("correct horse")).unwrap();
        assert_eq!(unwrap(&wrapped, &[], Some("correct horse")).unwrap().0[..], key.0[..]);
        assert!(matches!(unwrap(&wrapped, &[], Some("wrong horse")), Err(UnwrapError::NoMatchingKey)));
        assert!(matches!(unwrap(&wrapped, &[], None), Err(UnwrapError::WrongKind { needs_passphrase: true })));
    }
}
