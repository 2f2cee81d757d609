//! Key rotation of one backup's manifest (`pgkeep key rotate`,
//! docs/FORMAT.md §8.6): the data key re-wrapped, the `encryption` object
//! replaced and the manifest MAC recomputed; no chunk is touched.
//!
//! A rotation runs in two rounds over the whole repository
//! ([`Round::Union`], then [`Round::Final`]); see
//! [`crate::crypto::rewrap::plan_phases`]. Within a round, a manifest is
//! written main object first, then its `.copy`, each an atomic put, so at
//! every instant both objects are wrapped to the old recipients or to the
//! union (first round), or to the union or the new ones (second round).

use bytes::Bytes;

use super::layout::COPY_SUFFIX;
use super::manifest::{self, BackupManifest};
use crate::crypto::Keyring;
use crate::crypto::rewrap::{self, RecipientChange};
use crate::error::{Error, Result};
use crate::storage::{PutOptions, Storage};

/// Which round of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Old ∪ added recipients, for envelopes that both gain and lose recipients.
    Union,
    /// The final recipients.
    Final,
}

impl Round {
    /// `union` or `final`, for failpoints and logs.
    pub fn name(self) -> &'static str {
        match self {
            Round::Union => "union",
            Round::Final => "final",
        }
    }
}

/// What one round did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrap {
    /// Not encrypted: nothing to rotate.
    NotEncrypted,
    /// Already wrapped to the requested recipients (or nothing to do this round).
    Unchanged,
    /// Re-wrapped to these recipients (in a dry run: would be).
    Written(Vec<String>),
}

/// The recipients `round` writes for an envelope whose plan is `phases`, if any.
pub fn round_target(phases: &[Vec<String>], round: Round, subject: &str) -> Result<Option<Vec<String>>> {
    match (round, phases) {
        (_, []) => Ok(None),
        (Round::Union, [union, _]) => Ok(Some(union.clone())),
        (Round::Union, [_]) => Ok(None),
        (Round::Final, [last]) => Ok(Some(last.clone())),
        (Round::Final, _) => Err(Error::internal(format!("{subject}: the first round of the rotation did not reach it"))),
        (Round::Union, _) => Err(Error::internal(format!("{subject}: unexpected rotation plan"))),
    }
}

/// One round of the rotation of backup `m` in `storage`, opening its data key with `keys`.
pub async fn rewrap_backup(storage: &dyn Storage, m: &BackupManifest, keys: &Keyring, change: &RecipientChange, round: Round, dry_run: bool) -> Result<Rewrap> {
    let Some(info) = &m.encryption else { return Ok(Rewrap::NotEncrypted) };
    let subject = format!("backup {}", m.backup_id);
    let envelope = crate::repo::manifest_mac::envelope(info);
    let phases = rewrap::plan_phases(&envelope, change, &subject)?;
    if dry_run {
        return Ok(phases.last().map_or(Rewrap::Unchanged, |t| Rewrap::Written(t.clone())));
    }
    let Some(target) = round_target(&phases, round, &subject)? else { return Ok(Rewrap::Unchanged) };
    let key = keys.data_key(&envelope, &subject)?;
    let new_envelope = rewrap::rewrap(&key, &target)?;
    let rotated = reseal_manifest(m, &new_envelope, &key)?;
    let bytes = Bytes::from(manifest::encode(&rotated)?);
    let main = m.backup_id.manifest_key();
    let opts = PutOptions { metadata: vec![("pgkeep-kind".into(), m.kind.to_string())] };
    storage.put(&main, bytes.clone(), opts.clone()).await?;
    crate::failpoint::hit(&format!("key_rotate.{}.after_main", round.name()));
    storage.put(&format!("{main}{COPY_SUFFIX}"), bytes, opts).await?;
    tracing::info!(backup_id = %m.backup_id, round = round.name(), recipients = target.len(), "backup data key re-wrapped");
    Ok(Rewrap::Written(target))
}

/// `m` with `envelope` recorded and its MAC recomputed with the (unchanged) data key.
pub fn reseal_manifest(m: &BackupManifest, envelope: &crate::crypto::KeyEnvelope, key: &crate::crypto::data_key::DataKey) -> Result<BackupManifest> {
    let mut out = m.clone();
    let Some(info) = out.encryption.as_mut() else {
        return Err(Error::internal(format!("backup {} is not encrypted", m.backup_id)));
    };
    info.scheme = envelope.scheme.clone();
    info.mode = envelope.mode;
    info.recipients = envelope.recipients.clone();
    info.wrapped_key = envelope.wrapped_key.clone();
    super::manifest_mac::resign(&crate::crypto::DataCipher::new(key), &mut out)?;
    Ok(out)
}
