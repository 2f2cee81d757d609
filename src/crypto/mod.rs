//! Client-side encryption (docs/FORMAT.md §8): what the repository stores is
//! unreadable without a key that never enters it.
//!
//! - [`data_key`]: one random data key per backup (and per `stream` run),
//!   wrapped with age to X25519 recipients (`age1…`) or an scrypt passphrase;
//!   HKDF-derived purpose keys.
//! - [`chunk`]: the sealed-chunk format, XChaCha20-Poly1305 per compressed
//!   chunk or segment payload, and [`DataCipher`].
//! - [`sealer`]: the writer's side — a fresh data key and its [`KeyEnvelope`].
//! - [`keyring`]: the reader's side — identity file or passphrase, opening
//!   envelopes (cached), with one-line errors naming the backup and key source.
//! - [`rewrap`]: key rotation, the same data key wrapped for other recipients.
//!
//! What reads or writes a manifest (its MAC, its resealing after a key
//! rotation) lives with the manifest in `repo` (`repo::manifest_mac`,
//! `repo::rekey`): crypto knows nothing of the repository format.
//! - [`settings`]: [`settings::EncryptionSettings`], resolved by `config`.
//!
//! Why not age for every chunk: age derives a fresh file key per file, so a
//! passphrase would cost one scrypt (about a second) per chunk on both ends,
//! and its API cannot reuse one file key for many chunks. age therefore wraps
//! one data key, and chunks are sealed with the AEAD age itself uses for its
//! payload (ChaCha20-Poly1305, here with 192-bit random nonces).

pub mod chunk;
pub mod data_key;
pub mod keyring;
pub mod rewrap; // key rotation: re-wrap a data key
pub mod sealer;
pub mod settings; // EncryptionSettings

use serde::{Deserialize, Serialize};

pub use chunk::DataCipher;
pub use keyring::Keyring;
pub use sealer::Sealer;

/// The scheme name written to manifests and segment metadata.
pub const SCHEME: &str = "age+xchacha20poly1305";

/// How the data key is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// age X25519 recipients; readers need an identity file.
    Recipients,
    /// age scrypt passphrase; readers need the passphrase.
    Passphrase,
}

/// Everything a reader needs to recover a data key, except the key itself:
/// how it is wrapped, the public recipients, and the age file (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEnvelope {
    /// [`SCHEME`].
    pub scheme: String,
    /// Recipients or passphrase.
    pub mode: EncryptionMode,
    /// The public `age1…` recipients (empty for a passphrase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The data key as an age file, standard base64. Only the recipients'
    /// identities, or the passphrase, open it.
    pub wrapped_key: String,
}

impl KeyEnvelope {
    /// `age recipient(s) age1…, age1…` or `a passphrase`, for messages.
    pub fn describe(&self) -> String {
        match self.mode {
            EncryptionMode::Recipients => format!("age recipient(s) {}", self.recipients.join(", ")),
            EncryptionMode::Passphrase => "a passphrase".to_string(),
        }
    }
}
