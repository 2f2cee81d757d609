//! [`EncryptionSettings`]: who backups are encrypted to and where the keys
//! that decrypt them come from. Resolved by `config` (flag > env > file).

use std::path::PathBuf;

use crate::secret::Secret;

/// Encryption on write and keys on read. Keys never go into a repository.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    /// age X25519 recipients (`age1…`) backups and segments are encrypted to.
    pub recipients: Vec<String>,
    /// Where the recipients came from, for messages.
    pub recipients_origin: Option<String>,
    /// An age identity file (`AGE-SECRET-KEY-1…` lines) to decrypt with.
    pub identity_file: Option<PathBuf>,
    /// Where the identity file setting came from.
    pub identity_origin: Option<String>,
    /// The passphrase to encrypt (when no recipients) and decrypt with.
    pub passphrase: Option<Secret>,
    /// Where the passphrase came from (`PGKEEP_PASSPHRASE`, a file), never its value.
    pub passphrase_origin: Option<String>,
}

impl EncryptionSettings {
    /// Whether new backups and segments are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase.is_some()
    }
}
