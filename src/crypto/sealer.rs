//! The writer's side of encryption: a [`Sealer`] holds one fresh data key,
//! the cipher derived from it, and the [`KeyEnvelope`] (the key wrapped with
//! age) that goes into the manifest or segment metadata. It is built from
//! the configured recipients or passphrase; with neither, nothing is
//! encrypted.

use base64::Engine;

use super::chunk::{AAD_BACKUP_CHUNK, DataCipher};
use super::data_key::{self, DataKey, Wrapping};
use super::settings::EncryptionSettings;
use super::{EncryptionMode, KeyEnvelope, SCHEME};
use crate::error::{Error, Result};

/// Encrypts the chunks of one backup, or the segments of one `stream` run.
#[derive(Debug)]
pub struct Sealer {
    cipher: DataCipher,
    envelope: KeyEnvelope,
}

impl Sealer {
    /// A sealer with a fresh data key for the configured recipients or
    /// passphrase; `None` when encryption is not configured. A passphrase
    /// costs one scrypt here (about a second), not per chunk.
    pub fn from_settings(s: &EncryptionSettings) -> Result<Option<Sealer>> {
        match (&s.recipients[..], &s.passphrase) {
            ([], None) => Ok(None),
            ([_, ..], Some(_)) => Err(Error::config(format!(
                "both encryption recipients ({}) and a passphrase ({}) are configured; age cannot combine them",
                s.recipients_origin.as_deref().unwrap_or("recipients"),
                s.passphrase_origin.as_deref().unwrap_or("passphrase")
            ))
            .with_hint("encrypt to recipients (restore with an identity file) or with a passphrase, not both")),
            (rs, None) => {
                let parsed = parse_recipients(rs, s.recipients_origin.as_deref().unwrap_or("recipients"))?;
                Sealer::new(Wrapping::Recipients(&parsed), EncryptionMode::Recipients, rs.to_vec()).map(Some)
            }
            ([], Some(p)) => Sealer::new(Wrapping::Passphrase(p.expose()), EncryptionMode::Passphrase, Vec::new()).map(Some),
        }
    }

    fn new(wrapping: Wrapping<'_>, mode: EncryptionMode, recipients: Vec<String>) -> Result<Sealer> {
        let key = DataKey::generate();
        let wrapped = data_key::wrap(&key, wrapping)?;
        Ok(Sealer {
            cipher: DataCipher::new(&key),
            envelope: KeyEnvelope { scheme: SCHEME.to_string(), mode, recipients, wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped) },
        })
    }

    /// The wrapped key and how it is wrapped, for the manifest or segment.
    pub fn envelope(&self) -> &KeyEnvelope {
        &self.envelope
    }

    /// The cipher of this sealer's data key.
    pub fn cipher(&self) -> &DataCipher {
        &self.cipher
    }

    /// Encrypt one compressed backup chunk (schema or table data).
    pub fn seal_chunk(&self, compressed: &[u8]) -> Result<Vec<u8>> {
        self.cipher.seal(compressed, AAD_BACKUP_CHUNK)
    }
}

/// Parse `age1…` X25519 recipients; the error names `origin` and the value
/// (public keys are not secret).
pub fn parse_recipients(values: &[String], origin: &str) -> Result<Vec<age::x25519::Recipient>> {
    values
        .iter()
        .map(|v| {
            v.parse::<age::x25519::Recipient>().map_err(|_| {
                Error::config(format!("invalid age recipient `{v}` in {origin}"))
                    .with_hint("expected an X25519 public key starting with age1 (age-keygen prints it as `public key: age1…`)")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn modes_from_settings() {
        assert!(Sealer::from_settings(&EncryptionSettings::default()).unwrap().is_none());
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        let s = EncryptionSettings { recipients: vec![r.clone()], ..Default::default() };
        let sealer = Sealer::from_settings(&s).unwrap().unwrap();
        assert_eq!(sealer.envelope().mode, EncryptionMode::Recipients);
        assert_eq!(sealer.envelope().recipients, vec![r.clone()]);
        let both = EncryptionSettings { recipients: vec![r], passphrase: Some(Secret::new("p")), ..Default::default() };
        assert_eq!(Sealer::from_settings(&both).unwrap_err().kind(), crate::ErrorKind::Config);
        let bad = EncryptionSettings { recipients: vec!["age1nope".into()], recipients_origin: Some("PGKEEP_ENCRYPT_RECIPIENTS".into()), ..Default::default() };
        let e = Sealer::from_settings(&bad).unwrap_err();
        assert!(e.user_line().contains("PGKEEP_ENCRYPT_RECIPIENTS"), "{}", e.user_line());
    }
}
