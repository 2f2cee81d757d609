//! The reader's side of encryption: a [`Keyring`] holds where the keys
//! come from (an age identity file, a passphrase) and opens
//! [`KeyEnvelope`]s into [`DataCipher`]s.
//!
//! The identity file is read on first use, so commands that meet no
//! encrypted data never need it. Opened keys are cached by envelope, so the
//! many segments of one `stream` run (one data key) cost one unwrap — one
//! scrypt for a passphrase — not one each. Every failure is one line that
//! names what could not be decrypted and the key source tried, never a key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::chunk::DataCipher;
use super::data_key::{self, UnwrapError};
use super::settings::EncryptionSettings;
use super::{EncryptionMode, KeyEnvelope, SCHEME};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Decryption keys: an identity file and/or a passphrase, and the data keys opened so far.
pub struct Keyring {
    identity_file: Option<(PathBuf, String)>,
    passphrase: Option<(Secret, String)>,
    identities: OnceLock<std::result::Result<Identities, String>>,
    opened: Mutex<HashMap<[u8; 32], Arc<DataCipher>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("sources", &self.sources()).finish()
    }
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring::none()
    }
}

impl Keyring {
    /// No keys: encrypted data cannot be read.
    pub fn none() -> Keyring {
        Keyring { identity_file: None, passphrase: None, identities: OnceLock::new(), opened: Mutex::new(HashMap::new()) }
    }

    /// The identity file and passphrase of the configuration.
    pub fn from_settings(s: &EncryptionSettings) -> Keyring {
        let origin = |o: &Option<String>, d: &str| o.clone().unwrap_or_else(|| d.to_string());
        Keyring {
            identity_file: s.identity_file.clone().map(|p| (p, origin(&s.identity_origin, "identity_file"))),
            passphrase: s.passphrase.clone().map(|p| (p, origin(&s.passphrase_origin, "passphrase"))),
            ..Keyring::none()
        }
    }

    /// A keyring with parsed identities (tests, tools).
    pub fn with_identities(identities: Vec<age::x25519::Identity>, label: &str) -> Keyring {
        let k = Keyring { identity_file: Some((PathBuf::from(label), "given".into())), ..Keyring::none() };
        let ids: Identities = identities.into_iter().map(|i| Box::new(i) as Box<dyn age::Identity + Send + Sync>).collect();
        let _ = k.identities.set(Ok(ids));
        k
    }

    /// Whether any key source is configured.
    pub fn is_configured(&self) -> bool {
        self.identity_file.is_some() || self.passphrase.is_some()
    }

    /// The configured key sources, for messages: `identity file /k (from PGKEEP_IDENTITY_FILE)`.
    pub fn sources(&self) -> String {
        let mut out = Vec::new();
        if let Some((p, o)) = &self.identity_file {
            out.push(format!("identity file {} (from {o})", p.display()));
        }
        if let Some((_, o)) = &self.passphrase {
            out.push(format!("the passphrase from {o}"));
        }
        if out.is_empty() { "no key".to_string() } else { out.join(" and ") }
    }

    fn identities(&self) -> Result<&Identities> {
        let loaded = self.identities.get_or_init(|| {
            let Some((path, origin)) = &self.identity_file else { return Ok(Vec::new()) };
            let file = age::IdentityFile::from_file(path.display().to_string())
                .map_err(|e| format!("cannot read identity file {} (from {origin}): {e}", path.display()))?;
            file.into_identities().map_err(|e| format!("identity file {} (from {origin}) is not usable: {e}", path.display()))
        });
        loaded.as_ref().map_err(|why| Error::config(why.clone()).with_hint("the file must hold AGE-SECRET-KEY-1… lines, as age-keygen writes them"))
    }

    /// Open `envelope` for `subject` (e.g. `backup full_backup_…`): the
    /// cipher of its data key, or a one-line error naming `subject` and the
    /// key source (`Config` for a missing or wrong key, `Corrupt` for a
    /// damaged envelope).
    pub fn cipher(&self, envelope: &KeyEnvelope, subject: &str) -> Result<Arc<DataCipher>> {
        if envelope.scheme != SCHEME {
            return Err(
                Error::corrupt(format!("{subject} uses unknown encryption scheme `{}`", envelope.scheme)).with_hint("use a pgkeep release that supports it")
            );
        }
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(&envelope.wrapped_key)
            .map_err(|_| Error::corrupt(format!("{subject}: its wrapped data key is not valid base64")))?;
        let id: [u8; 32] = Sha256::digest(&wrapped).into();
        if let Some(c) = self.opened.lock().expect("keyring lock").get(&id) {
            return Ok(c.clone());
        }
        let key = self.data_key(envelope, subject)?;
        let cipher = Arc::new(DataCipher::new(&key));
        self.opened.lock().expect("keyring lock").insert(id, cipher.clone());
        Ok(cipher)
    }

    /// The data key of `envelope` itself, for re-wrapping it (`key rotate`).
    /// Same errors as [`Keyring::cipher`]; not cached.
    pub fn data_key(&self, envelope: &KeyEnvelope, subject: &str) -> Result<data_key::DataKey> {
        if envelope.scheme != SCHEME {
            return Err(
                Error::corrupt(format!("{subject} uses unknown encryption scheme `{}`", envelope.scheme)).with_hint("use a pgkeep release that supports it")
            );
        }
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(&envelope.wrapped_key)
            .map_err(|_| Error::corrupt(format!("{subject}: its wrapped data key is not valid base64")))?;
        let missing = |what: &str, hint: &str| {
            Error::new(ErrorKind::Config, format!("{subject} is encrypted with {}; {what}", envelope.describe())).with_hint(hint.to_string())
        };
        let key = match envelope.mode {
            EncryptionMode::Recipients => {
                if self.identity_file.is_none() {
                    return Err(missing(
                        "no identity file is configured",
                        "set PGKEEP_IDENTITY_FILE or --identity-file to the age identity file of one of those recipients",
                    ));
                }
                data_key::unwrap(&wrapped, self.identities()?, None)
            }
            EncryptionMode::Passphrase => {
                let Some((p, _)) = &self.passphrase else {
                    return Err(missing(
                        "no passphrase is configured",
                        "set PGKEEP_PASSPHRASE (or encryption.passphrase_file) to the passphrase it was written with",
                    ));
                };
                data_key::unwrap(&wrapped, &[], Some(p.expose()))
            }
        };
        let key = key.map_err(|e| match e {
            UnwrapError::NoMatchingKey | UnwrapError::WrongKind { .. } => {
                Error::new(ErrorKind::Config, format!("cannot decrypt {subject} with {}: it is encrypted with {}", self.sources(), envelope.describe()))
                    .with_hint(match envelope.mode {
                        EncryptionMode::Recipients => "use the identity file of one of those recipients",
                        EncryptionMode::Passphrase => "use the passphrase the backup was written with",
                    })
            }
            UnwrapError::Damaged(why) => Error::corrupt(format!("{subject}: its wrapped data key is damaged: {why}")),
        })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Sealer;

    fn recipients_settings(id: &age::x25519::Identity) -> EncryptionSettings {
        EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() }
    }

    #[test]
    fn opens_with_the_right_identity_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let sealer = Sealer::from_settings(&recipients_settings(&id)).unwrap().unwrap();
        let sealed = sealer.seal_chunk(b"secret rows").unwrap();

        let none = Keyring::none().cipher(sealer.envelope(), "backup full_backup_20260101_000000").unwrap_err();
        assert_eq!(none.kind(), ErrorKind::Config);
        assert!(none.user_line().contains("full_backup_20260101_000000") && none.user_line().contains("no identity file"), "{}", none.user_line());

        let good = dir.path().join("good.txt");
        std::fs::write(&good, format!("# key\n{}\n", age::secrecy::ExposeSecret::expose_secret(&id.to_string()))).unwrap();
        let settings = EncryptionSettings { identity_file: Some(good), identity_origin: Some("--identity-file".into()), ..Default::default() };
        let k = Keyring::from_settings(&settings);
        let c = k.cipher(sealer.envelope(), "backup b").unwrap();
        assert_eq!(c.open(&sealed, crate::crypto::chunk::AAD_BACKUP_CHUNK, "c").unwrap(), b"secret rows");
        assert!(Arc::ptr_eq(&c, &k.cipher(sealer.envelope(), "backup b").unwrap()), "cached");

        let wrong = dir.path().join("wrong.txt");
        let other = age::x25519::Identity::generate();
        std::fs::write(&wrong, format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&other.to_string()))).unwrap();
        let settings = EncryptionSettings { identity_file: Some(wrong.clone()), identity_origin: Some("PGKEEP_IDENTITY_FILE".into()), ..Default::default() };
        let e = Keyring::from_settings(&settings).cipher(sealer.envelope(), "backup full_backup_x").unwrap_err();
        let line = e.user_line();
        assert!(line.contains("full_backup_x") && line.contains(&wrong.display().to_string()) && line.contains("PGKEEP_IDENTITY_FILE"), "{line}");
        assert!(!line.contains("AGE-SECRET-KEY"), "{line}");

        let missing = EncryptionSettings { identity_file: Some(dir.path().join("nope")), ..Default::default() };
        let e = Keyring::from_settings(&missing).cipher(sealer.envelope(), "backup b").unwrap_err();
        assert!(e.user_line().contains("cannot read identity file"), "{}", e.user_line());
    }

    #[test]
    fn passphrase_errors_name_the_source_not_the_secret() {
        let s = EncryptionSettings { passphrase: Some(Secret::new("right one")), ..Default::default() };
        let sealer = Sealer::from_settings(&s).unwrap().unwrap();
        let e = Keyring::none().cipher(sealer.envelope(), "backup b").unwrap_err();
        assert!(e.user_line().contains("no passphrase"), "{}", e.user_line());
        let wrong =
            EncryptionSettings { passphrase: Some(Secret::new("wrong one")), passphrase_origin: Some("PGKEEP_PASSPHRASE".into()), ..Default::default() };
        let e = Keyring::from_settings(&wrong).cipher(sealer.envelope(), "backup b").unwrap_err();
        assert!(e.user_line().contains("PGKEEP_PASSPHRASE") && !e.user_line().contains("wrong one"), "{}", e.user_line());
        assert!(Keyring::from_settings(&s).cipher(sealer.envelope(), "backup b").is_ok());
    }
}
