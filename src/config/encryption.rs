//! Encryption settings: who backups are encrypted to, and where the keys
//! that decrypt them come from. Resolved from the same layers as everything
//! else (flag > env > file); the passphrase is a [`Secret`] and is only ever
//! shown as `********`.
//!
//! | setting | flag | environment | file key |
//! |---|---|---|---|
//! | recipients (`age1…`, public) | `--encrypt-recipient` (repeatable) | `PGKEEP_ENCRYPT_RECIPIENTS` (comma separated) | `encryption.recipients` (list or comma separated) |
//! | identity file (for reading) | `--identity-file` | `PGKEEP_IDENTITY_FILE` | `encryption.identity_file` |
//! | passphrase (secret) | — (never on the command line) | `PGKEEP_PASSPHRASE` | `encryption.passphrase` |
//! | passphrase file | `--passphrase-file` | `PGKEEP_PASSPHRASE_FILE` | `encryption.passphrase_file` |

use std::path::PathBuf;

use super::layers::{Layers, Source};
use super::secret::{self, Secret};
use crate::error::{Error, Result};

pub use crate::crypto::settings::EncryptionSettings; // the type lives in crypto

/// Resolve the encryption settings and record their provenance.
pub(super) fn resolve(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<EncryptionSettings> {
    let mut out = EncryptionSettings::default();
    let recipients = match layers.get("encryption.recipients", &["PGKEEP_ENCRYPT_RECIPIENTS"]) {
        Some(r) => Some((
            r.value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            r.source.clone(),
            r.origin("encryption.recipients"),
        )),
        None => layers.file_list("encryption.recipients").map(|(l, src)| {
            let origin = match &src {
                Source::File(p) => format!("encryption.recipients in {}", p.display()),
                other => other.to_string(),
            };
            (l, src, origin)
        }),
    };
    if let Some((list, source, origin)) = recipients {
        crate::crypto::sealer::parse_recipients(&list, &origin)?;
        record("encryption.recipients", list.join(", "), source);
        out.recipients = list;
        out.recipients_origin = Some(origin);
    }
    if let Some(r) = layers.get("encryption.identity_file", &["PGKEEP_IDENTITY_FILE"]) {
        record("encryption.identity_file", r.value.clone(), r.source.clone());
        out.identity_origin = Some(r.origin("encryption.identity_file"));
        out.identity_file = Some(PathBuf::from(r.value));
    }
    let passphrase = layers.get("encryption.passphrase", &["PGKEEP_PASSPHRASE"]);
    let passphrase_file = layers.get("encryption.passphrase_file", &["PGKEEP_PASSPHRASE_FILE"]);
    match (passphrase, passphrase_file) {
        (Some(p), Some(f)) => {
            return Err(Error::config(format!("both {} and {} set a passphrase", p.origin("encryption.passphrase"), f.origin("encryption.passphrase_file")))
                .with_hint("set one of them"));
        }
        (Some(p), None) => {
            record("encryption.passphrase", secret::REDACTED.into(), p.source.clone());
            out.passphrase_origin = Some(p.origin("encryption.passphrase"));
            out.passphrase = Some(Secret::new(p.value));
        }
        (None, Some(f)) => {
            let origin = f.origin("encryption.passphrase_file");
            let text = std::fs::read_to_string(&f.value)
                .map_err(|e| Error::config(format!("cannot read passphrase file {} (from {origin})", f.value)).with_source(e))?;
            let pass = text.trim_end_matches(['\n', '\r']).to_string();
            if pass.is_empty() {
                return Err(Error::config(format!("passphrase file {} (from {origin}) is empty", f.value)));
            }
            record("encryption.passphrase_file", f.value.clone(), f.source.clone());
            out.passphrase_origin = Some(format!("passphrase file {} (from {origin})", f.value));
            out.passphrase = Some(Secret::new(pass));
        }
        (None, None) => {}
    }
    Ok(out)
}
