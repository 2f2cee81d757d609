//! Tamper evidence for encrypted manifests (docs/FORMAT.md §8.4).
//!
//! The envelope's SHA-256 catches accidents, but anyone who can write the
//! repository can recompute it. An encrypted manifest therefore also
//! carries `encryption.manifest_mac`: HMAC-SHA-256, keyed with a key
//! derived from the backup's data key, over the canonical body (the
//! manifest serialized as pgkeep writes it, with `manifest_mac` empty).
//! Only holders of the data key — the identity or passphrase holders, and
//! the backup run that made it — can produce it. The MAC covers every
//! chunk's `stored_sha256`, so it also binds every stored byte.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::manifest::{BackupManifest, EncryptionInfo};
use crate::crypto::chunk::{CHUNK_FORMAT, DataCipher};
use crate::crypto::{KeyEnvelope, Sealer};
use crate::error::{Error, Result};

/// Prefix of the MAC's text form.
pub const MAC_PREFIX: &str = "hmac-sha256:";
/// Domain separation of the MAC input.
const DOMAIN: &[u8] = b"pgkeep manifest v2\n";

/// Record the sealer's encryption in `m` and sign it: call last, when the
/// manifest is otherwise complete.
pub fn seal(sealer: &Sealer, m: &mut BackupManifest) -> Result<()> {
    let e = sealer.envelope();
    m.encryption = Some(EncryptionInfo {
        scheme: e.scheme.clone(),
        mode: e.mode,
        recipients: e.recipients.clone(),
        wrapped_key: e.wrapped_key.clone(),
        chunk_format: CHUNK_FORMAT.to_string(),
        manifest_mac: String::new(),
    });
    let mac = compute(sealer.cipher(), m)?;
    if let Some(info) = m.encryption.as_mut() {
        info.manifest_mac = mac;
    }
    Ok(())
}

/// Recompute the MAC of an encrypted manifest whose `encryption` object
/// changed (a re-wrapped data key, `key rotate`), with its data key's cipher.
pub fn resign(cipher: &DataCipher, m: &mut BackupManifest) -> Result<()> {
    let mac = compute(cipher, m)?;
    match m.encryption.as_mut() {
        Some(info) => info.manifest_mac = mac,
        None => return Err(Error::internal(format!("backup {} is not encrypted", m.backup_id))),
    }
    Ok(())
}

/// The key envelope of an encrypted manifest.
pub fn envelope(info: &EncryptionInfo) -> KeyEnvelope {
    KeyEnvelope { scheme: info.scheme.clone(), mode: info.mode, recipients: info.recipients.clone(), wrapped_key: info.wrapped_key.clone() }
}

fn compute(cipher: &DataCipher, m: &BackupManifest) -> Result<String> {
    Ok(format!("{MAC_PREFIX}{}", hex::encode(mac_of(cipher, m)?.finalize().into_bytes())))
}

/// The MAC over `m` as written, its own MAC field left empty.
fn mac_of(cipher: &DataCipher, m: &BackupManifest) -> Result<Hmac<Sha256>> {
    let mut canonical = m.clone();
    if let Some(info) = canonical.encryption.as_mut() {
        info.manifest_mac.clear();
    }
    let body = serde_json::to_vec(&canonical).map_err(|e| Error::internal(format!("cannot serialize manifest: {e}")))?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(cipher.mac_key()).map_err(|_| Error::internal("MAC key"))?;
    mac.update(DOMAIN);
    mac.update(&body);
    Ok(mac)
}

/// Check the MAC of an encrypted manifest with its data key's cipher.
/// `Corrupt`, naming the backup, when it does not match (constant-time).
pub fn check(cipher: &DataCipher, m: &BackupManifest) -> Result<()> {
    let Some(info) = &m.encryption else { return Ok(()) };
    let tampered = || {
        Error::corrupt(format!("manifest of backup {} fails its authentication code: it was modified after pgkeep wrote it", m.backup_id))
            .with_hint("do not restore it; compare with the manifest in another repository")
    };
    let Some(stored) = info.manifest_mac.strip_prefix(MAC_PREFIX).and_then(|h| hex::decode(h).ok()) else {
        return Err(tampered());
    };
    mac_of(cipher, m)?.verify_slice(&stored).map_err(|_| tampered())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;
    use crate::crypto::settings::EncryptionSettings;
    use crate::repo::manifest::{self, tests::sample};

    #[test]
    fn sealed_manifests_round_trip_and_any_edit_fails_the_mac() {
        let id = age::x25519::Identity::generate();
        let s = EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() };
        let sealer = Sealer::from_settings(&s).unwrap().unwrap();
        let mut m = sample();
        seal(&sealer, &mut m).unwrap();
        let bytes = manifest::encode(&m).unwrap();
        assert!(std::str::from_utf8(&bytes).unwrap().contains("\"version\":2"));
        let back = manifest::decode(&bytes, "k").unwrap();
        let keys = Keyring::with_identities(vec![id], "test");
        let cipher = keys.cipher(&envelope(back.encryption.as_ref().unwrap()), "backup x").unwrap();
        check(&cipher, &back).unwrap();

        // An edit with a recomputed SHA-256 passes the envelope, not the MAC.
        let mut edited = back.clone();
        edited.tables[0].rows += 1;
        let e = check(&cipher, &manifest::decode(&manifest::encode(&edited).unwrap(), "k").unwrap()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.user_line().contains(&back.backup_id.to_string()), "{}", e.user_line());
        // Stripping or replacing the MAC fails too.
        let mut stripped = back.clone();
        stripped.encryption.as_mut().unwrap().manifest_mac = "hmac-sha256:00".into();
        assert!(check(&cipher, &stripped).is_err());
        // A MAC from another data key fails.
        let other = Sealer::from_settings(&s).unwrap().unwrap();
        assert!(check(other.cipher(), &back).is_err());
    }
}
