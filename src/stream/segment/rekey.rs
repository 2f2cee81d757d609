//! Re-wrapping the data key of an encrypted change segment (`key rotate`,
//! docs/FORMAT.md §8.6). The envelope lives in the metadata line, which is
//! the associated data of the sealed payload, so a new envelope means a new
//! object: the payload is opened and sealed again with the *same* data key
//! (fresh nonce) under the new metadata line, and the trailer recomputed.
//! The caller replaces the stored object with one atomic put.

use sha2::{Digest, Sha256};

use super::{EncryptionField, MAGIC, SEALED_FORMAT_VERSION, SealedMetaOut, SegmentMeta, TRAILER_LEN, segment_aad};
use crate::crypto::{DataCipher, KeyEnvelope};
use crate::error::{Error, Result};

/// The envelope of a stored segment, `None` when it is not encrypted.
/// Checks the trailer. `what` names it in errors (its key).
pub fn envelope_of(data: &[u8], what: &str) -> Result<Option<KeyEnvelope>> {
    let (_, json, _) = split(data, what)?;
    let bad = |why: String| Error::corrupt(format!("change segment {what} is damaged: {why}"));
    Ok(serde_json::from_slice::<EncryptionField>(json).map_err(|e| bad(format!("metadata: {e}")))?.encryption)
}

/// Header (magic + metadata line + newline), metadata JSON and stored payload of a segment.
fn split<'a>(data: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8], &'a [u8])> {
    let bad = |why: &str| Error::corrupt(format!("change segment {what} is damaged: {why}"));
    let body_len = data.len().checked_sub(TRAILER_LEN).ok_or_else(|| bad("too short"))?;
    let (body, trailer) = data.split_at(body_len);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad("SHA-256 trailer does not match"));
    }
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a pgkeep segment (magic)"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| bad("no metadata line"))?;
    let header = &body[..MAGIC.len() + nl + 1];
    let after = &rest[nl + 1..];
    let len = u64::from_be_bytes(after.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("truncated"))?);
    let stored = &after[8..];
    if stored.len() as u64 != len {
        return Err(bad("payload length does not match"));
    }
    Ok((header, &rest[..nl], stored))
}

/// The segment `data` with its envelope replaced by `new`: payload opened
/// with `cipher` (its data key) and sealed again with it under the new
/// metadata line. Refuses an unencrypted segment.
pub fn rewrap_sealed(data: &[u8], what: &str, cipher: &DataCipher, new: &KeyEnvelope) -> Result<Vec<u8>> {
    let (header, json, stored) = split(data, what)?;
    let bad = |why: String| Error::corrupt(format!("change segment {what} is damaged: {why}"));
    let meta: SegmentMeta = serde_json::from_slice(json).map_err(|e| bad(format!("metadata: {e}")))?;
    if meta.version != SEALED_FORMAT_VERSION {
        return Err(Error::internal(format!("change segment {what} is not encrypted")));
    }
    let payload = cipher.open(stored, &segment_aad(header), &format!("change segment {what}"))?;
    let json =
        serde_json::to_vec(&SealedMetaOut { meta: &meta, encryption: new }).map_err(|e| Error::internal(format!("cannot encode segment metadata: {e}")))?;
    let mut out = Vec::with_capacity(data.len() + 256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&json);
    out.push(b'\n');
    let sealed = cipher.seal(&payload, &segment_aad(&out))?;
    out.extend_from_slice(&(sealed.len() as u64).to_be_bytes());
    out.extend_from_slice(&sealed);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EncryptionSettings;
    use crate::crypto::{Keyring, Sealer};
    use crate::stream::segment::{decode_with, encode, encode_sealed, tests::sample};

    #[test]
    fn a_rewrapped_segment_opens_with_the_new_key_only_and_keeps_its_changes() {
        let (a, b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let settings = EncryptionSettings { recipients: vec![a.to_public().to_string()], ..Default::default() };
        let sealer = Sealer::from_settings(&settings).unwrap().unwrap();
        let old = encode_sealed(&sample(), Some(&sealer)).unwrap();
        let keys_a = Keyring::with_identities(vec![a.clone()], "a");
        let key = keys_a.data_key(envelope_of(&old, "s").unwrap().as_ref().unwrap(), "s").unwrap();
        let new_env = crate::crypto::rewrap::rewrap(&key, &[b.to_public().to_string()]).unwrap();
        let new = rewrap_sealed(&old, "s", sealer.cipher(), &new_env).unwrap();
        assert_eq!(envelope_of(&new, "s").unwrap(), Some(new_env));
        let back = decode_with(&new, "s", &Keyring::with_identities(vec![b], "b")).unwrap();
        assert_eq!(back.transactions.len(), sample().transactions.len());
        assert_eq!(back.meta.end_lsn, sample().meta.end_lsn);
        assert!(decode_with(&new, "s", &Keyring::with_identities(vec![a], "a")).is_err());
        // Unencrypted segments have no envelope and are refused.
        let plain = encode(&sample()).unwrap();
        assert_eq!(envelope_of(&plain, "p").unwrap(), None);
        assert!(rewrap_sealed(&plain, "p", sealer.cipher(), &envelope_of(&new, "s").unwrap().unwrap()).is_err());
    }
}
