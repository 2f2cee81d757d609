//! `pgkeep key rotate --add-recipient … --remove-recipient …`: re-wrap the
//! data key of every encrypted backup and change segment in every
//! repository for a new set of age recipients, without re-encrypting data
//! (docs/FORMAT.md §8.6).
//!
//! Crash safety. Adding and removing at once runs in two rounds over the
//! whole repository: first every envelope is wrapped to old ∪ added, then to
//! the final set. Each object is replaced by one atomic put (a manifest:
//! main object, then its `.copy`), so a `kill -9` at any moment leaves every
//! backup readable with the old key (crash in round 1) or with the new one
//! (crash in round 2). Running the same command again finishes the job: it
//! reads each envelope and does only what is left.
//!
//! Object lock. A rewrite is a new object version; S3 object lock keeps the
//! earlier versions (wrapped to the removed recipients) until their
//! retention ends, and nothing can remove them sooner. The report says so
//! for every repository under object lock, and a rewrite the store refuses
//! is reported by backup or segment, never skipped silently.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{RepoSpec, Settings};
use crate::crypto::rewrap::{self, RecipientChange};
use crate::crypto::{KeyEnvelope, Keyring};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{CHANGES_PREFIX, parse_segment_key};
use crate::repo::lock::{self, LockMode, LockOptions};
use crate::repo::rekey::{self, Rewrap, Round};
use crate::storage::{PutOptions, Storage};
use crate::stream::segment::rekey as segment_rekey;

/// Options of a rotation.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Recipients to add and remove.
    pub change: RecipientChange,
    /// Report what would change; write nothing.
    pub dry_run: bool,
}

/// What a rotation did in one repository.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoRotateReport {
    /// `/path` or `s3://bucket/prefix`.
    pub location: String,
    /// Backups now wrapped to the new recipients (in a dry run: that would be).
    pub backups_rewrapped: Vec<String>,
    /// Encrypted backups already wrapped to them.
    pub backups_unchanged: usize,
    /// Change segments re-wrapped.
    pub segments_rewrapped: usize,
    /// Encrypted segments already wrapped to them.
    pub segments_unchanged: usize,
    /// Backups and segments that are not encrypted (nothing to rotate).
    pub not_encrypted: usize,
    /// What object lock keeps of the old wrapping, if the repository uses it.
    pub object_lock: Option<String>,
    /// Backups and segments that could not be rotated, each named with the reason.
    pub problems: Vec<String>,
    /// Why this repository could not be rotated at all, if so.
    pub error: Option<String>,
}

/// What `key rotate` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotateReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Recipients added.
    pub added: Vec<String>,
    /// Recipients removed.
    pub removed: Vec<String>,
    /// One entry per repository.
    pub repositories: Vec<RepoRotateReport>,
}

impl RotateReport {
    /// Whether every backup and segment of every repository was rotated. The CLI exits 1 otherwise.
    pub fn is_complete(&self) -> bool {
        self.repositories.iter().all(|r| r.error.is_none() && r.problems.is_empty())
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would re-wrap" } else { "re-wrapped" };
        let mut out = String::new();
        for r in &self.repositories {
            out.push_str(&format!("{}{}\n", r.location, if self.dry_run { " (dry run)" } else { "" }));
            if let Some(e) = &r.error {
                out.push_str(&format!("  error: {e}\n"));
            }
            for id in &r.backups_rewrapped {
                out.push_str(&format!("  {verb} backup {id}\n"));
            }
            out.push_str(&format!(
                "  {verb} {} segment(s); {} backup(s) and {} segment(s) already done; {} not encrypted\n",
                r.segments_rewrapped, r.backups_unchanged, r.segments_unchanged, r.not_encrypted
            ));
            if let Some(l) = &r.object_lock {
                out.push_str(&format!("  object lock: {l}\n"));
            }
            for p in &r.problems {
                out.push_str(&format!("  problem: {p}\n"));
            }
        }
        out
    }
}

/// Rotate every repository; per-repository failures are recorded in its
/// report. Recorded in the audit trail unless a dry run.
pub async fn run(settings: &Settings, opts: &RotateOptions) -> Result<RotateReport> {
    let result = rotate(settings, opts).await;
    if !opts.dry_run {
        crate::commands::restore::audit(settings, "key-rotate", &result).await;
    }
    result
}

async fn rotate(settings: &Settings, opts: &RotateOptions) -> Result<RotateReport> {
    // 1. A change to make, with recipients that parse.
    let change = &opts.change;
    if change.add.is_empty() && change.remove.is_empty() {
        return Err(Error::config("nothing to rotate: give --add-recipient and/or --remove-recipient"));
    }
    crate::crypto::sealer::parse_recipients(&change.add, "--add-recipient")?;
    if settings.repos.is_empty() {
        return Err(Error::config("no repository configured").with_hint("set BACKUP_DIR, S3_BUCKET or --repo"));
    }
    let keys = Keyring::from_settings(&settings.encryption);
    if !keys.is_configured() {
        return Err(Error::config("key rotate needs the current key to open the data keys")
            .with_hint("set PGKEEP_IDENTITY_FILE (--identity-file) or PGKEEP_PASSPHRASE"));
    }
    let mut report = RotateReport { dry_run: opts.dry_run, added: change.add.clone(), removed: change.remove.clone(), repositories: Vec::new() };

    // 2. Per repository, under an exclusive lock: the union round, then the final round.
    for spec in &settings.repos {
        let mut r = RepoRotateReport { location: spec.display(), ..RepoRotateReport::default() };
        let outcome = async {
            let storage = crate::repo::meta::open(spec, crate::repo::meta::Access::Read).await?;
            let held = match opts.dry_run {
                true => None,
                false => Some(lock::RepoLock::acquire(storage.clone(), "key-rotate", LockMode::Exclusive, &LockOptions::default()).await?),
            };
            let result = rotate_repository(storage.as_ref(), &keys, opts, &mut r).await;
            if let Some(l) = held {
                l.release().await?;
            }
            result
        }
        .await;
        if let Err(e) = outcome {
            r.error = Some(e.user_line());
        }
        // 3. What object lock keeps of the old wrapping.
        if let RepoSpec::S3(s3) = spec
            && let Some(lock) = s3.security.object_lock
            && !change.remove.is_empty()
        {
            r.object_lock = Some(format!(
                "the bucket keeps earlier versions of rewritten objects, wrapped to the removed recipient(s), for up to {} days after they were written; rotation cannot revoke them sooner",
                lock.days
            ));
        }
        report.repositories.push(r);
    }
    Ok(report)
}

async fn rotate_repository(storage: &dyn Storage, keys: &Keyring, opts: &RotateOptions, r: &mut RepoRotateReport) -> Result<()> {
    for round in [Round::Union, Round::Final] {
        // A dry run plans in one pass; the counts are taken in the last pass.
        let last = round == Round::Final || opts.dry_run;
        // Backups: manifests re-read each round (the first round changed them).
        for entry in catalog::list_backups(storage).await? {
            match entry {
                CatalogEntry::Valid(m) => match rekey::rewrap_backup(storage, &m, keys, &opts.change, round, opts.dry_run).await {
                    Ok(Rewrap::Written(_)) if last || opts.dry_run => push_once(&mut r.backups_rewrapped, m.backup_id.to_string()),
                    Ok(Rewrap::Written(_)) => {}
                    Ok(Rewrap::Unchanged) if last && !r.backups_rewrapped.contains(&m.backup_id.to_string()) => r.backups_unchanged += 1,
                    Ok(Rewrap::Unchanged) => {}
                    Ok(Rewrap::NotEncrypted) if last => r.not_encrypted += 1,
                    Ok(Rewrap::NotEncrypted) => {}
                    Err(e) => problem(r, &e, format!("backup {}", m.backup_id)),
                },
                CatalogEntry::Invalid(id, e) if last => r.problems.push(format!("backup {id}: damaged manifest, not rotated: {}", e.user_line())),
                CatalogEntry::Invalid(..) => {}
            }
        }
        // Change segments: one new envelope per stream run's data key.
        let mut new_envelopes: HashMap<(String, Vec<String>), KeyEnvelope> = HashMap::new();
        for o in storage.list(CHANGES_PREFIX).await? {
            if parse_segment_key(&o.key).is_none() {
                continue;
            }
            match rewrap_segment(storage, &o.key, keys, opts, round, &mut new_envelopes).await {
                Ok(Rewrap::Written(_)) if last => r.segments_rewrapped += 1,
                Ok(Rewrap::Unchanged) if last => r.segments_unchanged += 1,
                Ok(Rewrap::NotEncrypted) if last => r.not_encrypted += 1,
                Ok(_) => {}
                Err(e) => problem(r, &e, format!("change segment {}", o.key)),
            }
        }
        if opts.dry_run {
            break;
        }
    }
    Ok(())
}

fn push_once(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

fn problem(r: &mut RepoRotateReport, e: &Error, what: String) {
    let line = match e.kind() {
        ErrorKind::AccessDenied => format!("{what}: the store refused the rewrite (object lock?): {}", e.user_line()),
        _ => format!("{what}: {}", e.user_line()),
    };
    if !r.problems.contains(&line) {
        r.problems.push(line);
    }
}

/// One round of the rotation of one segment: read, re-seal under the new envelope, replace (one atomic put).
async fn rewrap_segment(
    storage: &dyn Storage,
    key: &str,
    keys: &Keyring,
    opts: &RotateOptions,
    round: Round,
    new_envelopes: &mut HashMap<(String, Vec<String>), KeyEnvelope>,
) -> Result<Rewrap> {
    let data = storage.get(key, None).await?;
    let Some(envelope) = segment_rekey::envelope_of(&data, key)? else { return Ok(Rewrap::NotEncrypted) };
    let subject = format!("change segment {key}");
    let phases = rewrap::plan_phases(&envelope, &opts.change, &subject)?;
    if opts.dry_run {
        return Ok(phases.last().map_or(Rewrap::Unchanged, |t| Rewrap::Written(t.clone())));
    }
    let Some(target) = rekey::round_target(&phases, round, &subject)? else { return Ok(Rewrap::Unchanged) };
    let cipher: Arc<crate::crypto::DataCipher> = keys.cipher(&envelope, &subject)?;
    let new = match new_envelopes.get(&(envelope.wrapped_key.clone(), target.clone())) {
        Some(e) => e.clone(),
        None => {
            let e = rewrap::rewrap(&keys.data_key(&envelope, &subject)?, &target)?;
            new_envelopes.insert((envelope.wrapped_key.clone(), target.clone()), e.clone());
            e
        }
    };
    let bytes = segment_rekey::rewrap_sealed(&data, key, &cipher, &new)?;
    storage.put(key, bytes::Bytes::from(bytes), PutOptions::default()).await?;
    crate::failpoint::hit(&format!("key_rotate.{}.after_segment", round.name()));
    Ok(Rewrap::Written(target))
}
