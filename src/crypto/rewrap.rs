//! Key rotation's cryptography (`pgkeep key rotate`, docs/FORMAT.md §8.6):
//! the same data key, wrapped again for another set of recipients. No chunk
//! is re-encrypted: only the envelope (and what authenticates it) changes.
//!
//! - [`plan_phases`]: from an envelope's recipients and the requested
//!   changes, the recipient sets to write in order. Adding and removing at
//!   once takes two phases, old ∪ added first, then the final set, so every
//!   object is readable by the old key or by the new one at every instant.
//! - [`rewrap`]: the new envelope of a data key.

use base64::Engine;

use super::data_key::{self, DataKey, Wrapping};
use super::sealer::parse_recipients;
use super::{EncryptionMode, KeyEnvelope, SCHEME};
use crate::error::{Error, Result};

/// The requested change of recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientChange {
    /// `age1…` recipients to add.
    pub add: Vec<String>,
    /// `age1…` recipients to remove.
    pub remove: Vec<String>,
}

/// The recipient sets to wrap `current`'s data key to, in order; empty when
/// nothing changes. A passphrase envelope goes straight to the added
/// recipients (age cannot mix a passphrase with recipients). Fails when no
/// recipient would be left.
pub fn plan_phases(current: &KeyEnvelope, change: &RecipientChange, subject: &str) -> Result<Vec<Vec<String>>> {
    let have: Vec<String> = match current.mode {
        EncryptionMode::Recipients => current.recipients.clone(),
        EncryptionMode::Passphrase => Vec::new(),
    };
    let mut union = have.clone();
    for a in &change.add {
        if !union.contains(a) {
            union.push(a.clone());
        }
    }
    let target: Vec<String> = union.iter().filter(|r| !change.remove.contains(r)).cloned().collect();
    if target.is_empty() {
        return Err(Error::config(format!("{subject} would have no recipient left after removing {}", change.remove.join(", ")))
            .with_hint("add the new recipient with --add-recipient in the same run"));
    }
    let same = |a: &[String], b: &[String]| a.len() == b.len() && a.iter().all(|x| b.contains(x));
    if current.mode == EncryptionMode::Recipients && same(&have, &target) {
        return Ok(Vec::new());
    }
    let mut phases = Vec::new();
    if current.mode == EncryptionMode::Recipients && !same(&union, &have) && !same(&union, &target) {
        phases.push(union);
    }
    phases.push(target);
    Ok(phases)
}

/// The envelope of `key` wrapped to `recipients`.
pub fn rewrap(key: &DataKey, recipients: &[String]) -> Result<KeyEnvelope> {
    let parsed = parse_recipients(recipients, "--add-recipient")?;
    let wrapped = data_key::wrap(key, Wrapping::Recipients(&parsed))?;
    Ok(KeyEnvelope {
        scheme: SCHEME.to_string(),
        mode: EncryptionMode::Recipients,
        recipients: recipients.to_vec(),
        wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(mode: EncryptionMode, r: &[&str]) -> KeyEnvelope {
        KeyEnvelope { scheme: SCHEME.into(), mode, recipients: r.iter().map(|s| s.to_string()).collect(), wrapped_key: String::new() }
    }

    fn change(add: &[&str], remove: &[&str]) -> RecipientChange {
        RecipientChange { add: add.iter().map(|s| s.to_string()).collect(), remove: remove.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn add_and_remove_goes_through_the_union() {
        let e = env(EncryptionMode::Recipients, &["A"]);
        assert_eq!(plan_phases(&e, &change(&["B"], &["A"]), "b").unwrap(), vec![vec!["A", "B"], vec!["B"]]);
        assert_eq!(plan_phases(&e, &change(&["B"], &[]), "b").unwrap(), vec![vec!["A", "B"]]);
        // Resuming after the union phase: one phase left; after the end: nothing.
        let union = env(EncryptionMode::Recipients, &["A", "B"]);
        assert_eq!(plan_phases(&union, &change(&["B"], &["A"]), "b").unwrap(), vec![vec!["B"]]);
        let done = env(EncryptionMode::Recipients, &["B"]);
        assert!(plan_phases(&done, &change(&["B"], &["A"]), "b").unwrap().is_empty());
        assert!(plan_phases(&e, &change(&[], &["A"]), "backup x").unwrap_err().user_line().contains("backup x would have no recipient"));
        // Passphrase to recipients: one phase.
        let p = env(EncryptionMode::Passphrase, &[]);
        assert_eq!(plan_phases(&p, &change(&["B"], &[]), "b").unwrap(), vec![vec!["B"]]);
        assert!(plan_phases(&p, &change(&[], &[]), "b").is_err());
    }

    #[test]
    fn rewrapped_key_opens_with_the_new_identity_only() {
        let (a, b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let key = DataKey::generate();
        let e = rewrap(&key, &[b.to_public().to_string()]).unwrap();
        let wrapped = base64::engine::general_purpose::STANDARD.decode(&e.wrapped_key).unwrap();
        let ids = |i: age::x25519::Identity| vec![Box::new(i) as Box<dyn age::Identity + Send + Sync>];
        assert!(data_key::unwrap(&wrapped, &ids(b), None).is_ok());
        assert!(data_key::unwrap(&wrapped, &ids(a), None).is_err());
    }
}
