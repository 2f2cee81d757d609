//! Expiry, the capability behind `pgkeep expire [--dry-run]`: remove backups older than the retention of
//! each repository (`local_retention_days` for local repositories,
//! `retention_days` for S3 ones), chain-aware and never below `keep_full`
//! full backups per database, plus leftovers of interrupted runs.
//!
//! The decision is the pure [`plan_expire`]; [`run_with`] applies it per
//! repository under an exclusive repository lock (docs/FORMAT.md §6), so it
//! never deletes objects of a running backup. Rules, in order:
//!
//! 1. A backup whose manifest and copy are both damaged is never deleted; it
//!    is reported.
//! 2. Per database, the newest `max(keep_full, 1)` backups of kind `full` are
//!    kept. Pre-restore backups are restorable, but they are safety copies
//!    taken automatically, so they neither count toward `keep_full` nor are
//!    protected by it: they follow the age rule only.
//! 3. Any other backup is kept while `started_at` is within the retention.
//! 4. Every ancestor (`parent` chain) of a kept backup is kept.
//! 5. The rest is deleted: manifest and copy first (the backup vanishes from
//!    `list` and `restore` at once), then its data and schema objects. An
//!    interrupted expire leaves an incomplete folder, removed by a later run.
//!
//! 6. On S3 with object lock (`S3_OBJECT_LOCK_MODE`/`_DAYS`), a backup whose
//!    objects are still under retention (last write + the lock days) is not
//!    touched: it is kept, reported as locked until that date. A deletion
//!    the store refuses with AccessDenied (a bucket default retention, a
//!    longer lock from an earlier configuration) keeps the backup the same
//!    way instead of failing the run.
//!
//! 7. Change segments (`changes/`) that no kept backup of the repository
//!    replays are removed last ([`changes`]):
//!    per cluster, those ending at or before the oldest point a kept backup
//!    replays from; never the newest segment of a stream, never one under
//!    object lock, and none of a cluster with no such backup here.
//!
//! 8. Per-run log files (`logs/`) older than `log_retention_days` and audit
//!    records (`audit/`) older than `audit_retention_days` are removed
//!    ([`records`]); 0 days keeps them forever;
//!    none under object lock.

pub(crate) mod changes;
pub(crate) mod records; // log files and audit records

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupId, BackupKind, COPY_SUFFIX};
use crate::repo::lock::{self, LockMode, LockOptions};
use crate::repo::manifest::BackupManifest;
use crate::repo::meta;
use crate::storage::s3::ObjectLock;
use crate::storage::{self, Storage, StorageKind};

/// Incomplete backup folders and temp files younger than this are left alone:
/// they may belong to a run still in progress.
pub const INCOMPLETE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Options of an expire run.
#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// Print the plan only: no lock, no deletion.
    pub dry_run: bool,
    /// Full backups always kept per database, whatever their age (at least 1).
    pub keep_full: usize,
}

impl Default for ExpireOptions {
    fn default() -> Self {
        ExpireOptions { dry_run: false, keep_full: 1 }
    }
}

/// What the plan needs to know about one backup.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpireInput {
    /// A backup with a valid manifest.
    Valid {
        /// Its id.
        id: BackupId,
        /// Full, incremental or pre-restore.
        kind: BackupKind,
        /// The backup it builds on.
        parent: Option<BackupId>,
        /// The database backed up.
        database: String,
        /// When it started.
        started_at: DateTime<Utc>,
    },
    /// A backup whose manifest and copy are both unusable.
    Invalid {
        /// Its id.
        id: BackupId,
        /// Why.
        problem: String,
    },
}

impl ExpireInput {
    /// The plan input of a manifest.
    pub fn of(m: &BackupManifest) -> ExpireInput {
        ExpireInput::Valid { id: m.backup_id.clone(), kind: m.kind, parent: m.parent.clone(), database: m.database.clone(), started_at: m.started_at }
    }

    fn id(&self) -> &BackupId {
        match self {
            ExpireInput::Valid { id, .. } | ExpireInput::Invalid { id, .. } => id,
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum KeepReason {
    /// One of the newest `keep_full` full backups of its database (n-th newest, from 1).
    NewestFull(usize),
    /// Started within the retention.
    WithinRetention,
    /// An ancestor of a kept backup.
    NeededBy(BackupId),
    /// A table image newer than a kept full backup of its database, which
    /// a point-in-time restore may replay through it.
    ImageAfter(BackupId),
    /// Its manifest is damaged: never deleted automatically.
    InvalidManifest(String),
    /// Expired, but its objects are under S3 object lock until this time.
    ObjectLock(DateTime<Utc>),
    /// Expired, but the store refused to delete it (AccessDenied).
    DeletionRefused(String),
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::NewestFull(1) => write!(f, "newest full backup"),
            KeepReason::NewestFull(n) => write!(f, "full backup #{n} of the newest kept"),
            KeepReason::WithinRetention => write!(f, "within retention"),
            KeepReason::NeededBy(id) => write!(f, "needed by {id}"),
            KeepReason::ImageAfter(id) => write!(f, "table image after kept full backup {id}"),
            KeepReason::InvalidManifest(p) => write!(f, "damaged manifest, not deleted automatically: {p}"),
            KeepReason::ObjectLock(until) => write!(f, "expired, but locked by S3 object lock until {}", until.format("%Y-%m-%d %H:%M:%S UTC")),
            KeepReason::DeletionRefused(why) => write!(f, "expired, but the store refused the deletion (object lock?): {why}"),
        }
    }
}

/// Why a backup is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum DeleteReason {
    /// Started more than the retention ago (age in whole days).
    OlderThanRetention(i64),
}

impl std::fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeleteReason::OlderThanRetention(days) => write!(f, "older than retention ({days} days old)"),
        }
    }
}

/// The outcome of [`plan_expire`], oldest first in both lists.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpirePlan {
    /// Backups kept, with the first reason found.
    pub keep: Vec<(BackupId, KeepReason)>,
    /// Backups to delete.
    pub delete: Vec<(BackupId, DeleteReason)>,
    /// Broken chains and similar findings; they change nothing.
    pub problems: Vec<String>,
}

/// Decide which backups to keep and delete. Pure; see the module docs for the rules.
pub fn plan_expire(backups: &[ExpireInput], now: DateTime<Utc>, retention: chrono::Duration, keep_full: usize) -> ExpirePlan {
    let mut keep: BTreeMap<BackupId, KeepReason> = BTreeMap::new();
    let mut plan = ExpirePlan::default();
    let mut by_id: HashMap<&BackupId, &ExpireInput> = HashMap::new();
    for b in backups {
        by_id.insert(b.id(), b);
    }

    // 1. Damaged manifests; 2. newest full backups per database; 3. retention.
    let mut fulls: BTreeMap<&str, Vec<(DateTime<Utc>, &BackupId)>> = BTreeMap::new();
    for b in backups {
        match b {
            ExpireInput::Invalid { id, problem } => {
                keep.insert(id.clone(), KeepReason::InvalidManifest(problem.clone()));
            }
            ExpireInput::Valid { id, kind: BackupKind::Full, database, started_at, .. } => {
                fulls.entry(database).or_default().push((*started_at, id));
            }
            ExpireInput::Valid { .. } => {}
        }
    }
    for list in fulls.values_mut() {
        list.sort_by(|a, b| b.cmp(a));
        for (n, (_, id)) in list.iter().take(keep_full.max(1)).enumerate() {
            keep.entry((*id).clone()).or_insert(KeepReason::NewestFull(n + 1));
        }
    }
    for b in backups {
        if let ExpireInput::Valid { id, started_at, .. } = b
            && now - *started_at <= retention
        {
            keep.entry(id.clone()).or_insert(KeepReason::WithinRetention);
        }
    }

    // 4. Walk the parent chain of every kept backup.
    let roots: Vec<BackupId> = keep.keys().cloned().collect();
    for root in roots {
        let mut seen = BTreeSet::from([root.clone()]);
        let mut child = root;
        while let Some(ExpireInput::Valid { parent: Some(parent), .. }) = by_id.get(&child) {
            if !seen.insert(parent.clone()) {
                plan.problems.push(format!("backup {child} has a parent cycle through {parent}"));
                break;
            }
            if !by_id.contains_key(parent) {
                plan.problems.push(format!("backup {child} needs {parent}, which is not in this repository"));
                break;
            }
            keep.entry(parent.clone()).or_insert_with(|| KeepReason::NeededBy(child.clone()));
            child = parent.clone();
        }
    }

    // 4a. Table images after the oldest kept full backup of their database:
    //     replays from it go through them.
    for b in backups {
        if let ExpireInput::Valid { id, kind: BackupKind::TableImage, database, started_at, .. } = b
            && let Some((_, base)) = fulls
                .get(database.as_str())
                .and_then(|list| list.iter().filter(|(at, full)| at <= started_at && keep.contains_key(*full)).min_by_key(|(at, _)| *at))
        {
            keep.entry(id.clone()).or_insert_with(|| KeepReason::ImageAfter((*base).clone()));
        }
    }

    // 5. The rest goes.
    for b in backups {
        let id = b.id();
        if let Some(reason) = keep.get(id) {
            plan.keep.push((id.clone(), reason.clone()));
        } else if let ExpireInput::Valid { started_at, .. } = b {
            plan.delete.push((id.clone(), DeleteReason::OlderThanRetention((now - *started_at).num_days())));
        }
    }
    plan
}

/// A backup and the reason for what happens to it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedBackup {
    /// Backup id.
    pub backup_id: String,
    /// Why it is kept or deleted.
    pub reason: String,
}

/// What expire did (or would do) in one repository.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepoExpireReport {
    /// `/path` or `s3://bucket/prefix`.
    pub location: String,
    /// The retention applied, in days.
    pub retention_days: u32,
    /// Backups kept.
    pub kept: Vec<PlannedBackup>,
    /// Backups deleted (in a dry run: that would be deleted).
    pub deleted: Vec<PlannedBackup>,
    /// Incomplete backup folders removed (or that would be).
    pub incomplete_removed: Vec<String>,
    /// Temp files and unfinished multipart uploads removed.
    pub temp_removed: usize,
    /// Change segments removed (or that would be): no kept backup here replays them.
    pub segments_removed: usize,
    /// The retention of per-run log files, in days (0: forever).
    pub log_retention_days: u32,
    /// The retention of audit records, in days (0: forever).
    pub audit_retention_days: u32,
    /// Log files removed (or that would be).
    pub logs_removed: usize,
    /// Audit records removed (or that would be).
    pub audit_removed: usize,
    /// Findings that need a human: damaged manifests, broken chains, failed deletions.
    pub problems: Vec<String>,
    /// Why this repository could not be expired (locked, unreachable), if so.
    pub error: Option<String>,
}

/// What an expire run reports.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ExpireReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// One entry per configured repository.
    pub repositories: Vec<RepoExpireReport>,
}

impl ExpireReport {
    /// Whether every repository was processed without error. The CLI exits 1 otherwise.
    pub fn is_complete(&self) -> bool {
        self.repositories.iter().all(|r| r.error.is_none())
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let (del, inc) = if self.dry_run { ("would delete", "would remove") } else { ("deleted", "removed") };
        let mut out = String::new();
        for r in &self.repositories {
            out.push_str(&format!("{} (retention {} days){}\n", r.location, r.retention_days, if self.dry_run { ", dry run" } else { "" }));
            if let Some(e) = &r.error {
                out.push_str(&format!("  error: {e}\n"));
            }
            for b in &r.kept {
                out.push_str(&format!("  keep         {}  {}\n", b.backup_id, b.reason));
            }
            for b in &r.deleted {
                out.push_str(&format!("  {del:<12} {}  {}\n", b.backup_id, b.reason));
            }
            for id in &r.incomplete_removed {
                out.push_str(&format!("  {inc:<12} {id}  incomplete (no manifest)\n"));
            }
            if r.temp_removed > 0 {
                out.push_str(&format!("  {inc:<12} {} temporary upload(s)\n", r.temp_removed));
            }
            if r.segments_removed > 0 {
                out.push_str(&format!("  {inc:<12} {} change segment(s) older than every kept backup\n", r.segments_removed));
            }
            if r.logs_removed > 0 {
                out.push_str(&format!("  {inc:<12} {} log file(s) older than {} days\n", r.logs_removed, r.log_retention_days));
            }
            if r.audit_removed > 0 {
                out.push_str(&format!("  {inc:<12} {} audit record(s) older than {} days\n", r.audit_removed, r.audit_retention_days));
            }
            for p in &r.problems {
                out.push_str(&format!("  problem: {p}\n"));
            }
        }
        out
    }
}

/// Expire every configured repository as of `now`, taking each one's lock
/// with `lock_opts`. Per-repository failures (a lock held by a running
/// backup, an unreachable store) are recorded in that repository's report
/// and do not stop the others; see [`ExpireReport::is_complete`].
pub async fn run_with(settings: &Settings, opts: &ExpireOptions, now: DateTime<Utc>, lock_opts: &LockOptions) -> Result<ExpireReport> {
    if settings.repos.is_empty() {
        return Err(Error::config("no repository configured").with_hint("set BACKUP_DIR, S3_BUCKET or --repo"));
    }
    let mut report = ExpireReport { dry_run: opts.dry_run, repositories: Vec::new() };
    for spec in &settings.repos {
        let mut r = RepoExpireReport {
            location: spec.display(),
            log_retention_days: settings.log_retention_days,
            audit_retention_days: settings.audit_retention_days,
            ..RepoExpireReport::default()
        };
        let span = tracing::info_span!("expire", repo = %r.location, dry_run = opts.dry_run);
        let outcome = tracing::Instrument::instrument(
            async {
                let storage = storage::open(spec).await?;
                r.retention_days = match storage.kind() {
                    StorageKind::Local => settings.local_retention_days,
                    StorageKind::S3 => settings.retention_days,
                };
                let object_lock = match spec {
                    crate::config::RepoSpec::S3(s3) => s3.security.object_lock,
                    crate::config::RepoSpec::Local(_) => None,
                };
                expire_repository(storage, opts, now, lock_opts, object_lock, &mut r).await
            },
            span,
        )
        .await;
        if let Err(e) = outcome {
            tracing::error!(repo = %r.location, error = %e.user_line(), "expire failed");
            r.error = Some(e.user_line());
        }
        report.repositories.push(r);
    }
    Ok(report)
}

async fn expire_repository(
    storage: Arc<dyn Storage>,
    opts: &ExpireOptions,
    now: DateTime<Utc>,
    lock_opts: &LockOptions,
    object_lock: Option<ObjectLock>,
    r: &mut RepoExpireReport,
) -> Result<()> {
    // 1. Only a pgkeep repository of a format we know is touched.
    if meta::load(storage.as_ref()).await?.is_none() {
        r.problems.push("no pgkeep repository here yet; nothing to expire".into());
        return Ok(());
    }

    // 2. Exclusive lock: no backup runs here until we are done. A dry run deletes nothing and takes none.
    let held = if opts.dry_run { None } else { Some(lock::RepoLock::acquire(storage.clone(), "expire", LockMode::Exclusive, lock_opts).await?) };
    let result = apply(storage.as_ref(), opts, now, object_lock, r).await;
    if let Some(l) = held {
        l.release().await?;
    }
    result
}

/// When the newest object under `prefix` leaves its object-lock retention,
/// if that is after `now`. Objects are locked for `days` from their write,
/// which the store reports as their modification time; an hour of margin
/// covers clock differences.
async fn locked_until(storage: &dyn Storage, prefix: &str, lock: Option<ObjectLock>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let Some(lock) = lock else { return Ok(None) };
    let newest = storage.list(prefix).await?.iter().filter_map(|o| o.modified).max();
    Ok(newest.map(|t| lock.retain_until(t) + chrono::Duration::hours(1)).filter(|until| *until > now))
}

async fn apply(storage: &dyn Storage, opts: &ExpireOptions, now: DateTime<Utc>, object_lock: Option<ObjectLock>, r: &mut RepoExpireReport) -> Result<()> {
    // 3. Plan from the catalog.
    let inputs: Vec<ExpireInput> = catalog::list_backups(storage)
        .await?
        .iter()
        .map(|e| match e {
            CatalogEntry::Valid(m) => ExpireInput::of(m),
            CatalogEntry::Invalid(id, err) => ExpireInput::Invalid { id: id.clone(), problem: err.user_line() },
        })
        .collect();
    let plan = plan_expire(&inputs, now, chrono::Duration::days(r.retention_days.into()), opts.keep_full);
    for (id, reason) in &plan.keep {
        if let KeepReason::InvalidManifest(_) = reason {
            r.problems.push(format!("backup {id}: {reason}"));
        }
        r.kept.push(PlannedBackup { backup_id: id.to_string(), reason: reason.to_string() });
    }
    r.problems.extend(plan.problems.iter().cloned());

    // 4. Delete expired backups, newest first (children before parents), manifest first;
    //    never one still under object lock.
    for (id, reason) in plan.delete.iter().rev() {
        if let Some(until) = locked_until(storage, &id.prefix(), object_lock, now).await? {
            tracing::info!(backup_id = %id, until = %until, "expired backup kept: under object lock");
            r.kept.push(PlannedBackup { backup_id: id.to_string(), reason: KeepReason::ObjectLock(until).to_string() });
            continue;
        }
        if !opts.dry_run {
            tracing::info!(backup_id = %id, %reason, "deleting backup");
            match delete_backup(storage, id).await {
                Ok(()) => {}
                Err(DeleteFailure::Refused(e)) => {
                    tracing::warn!(backup_id = %id, error = %e.user_line(), "expired backup kept: deletion refused");
                    r.kept.push(PlannedBackup { backup_id: id.to_string(), reason: KeepReason::DeletionRefused(e.user_line()).to_string() });
                    continue;
                }
                Err(DeleteFailure::Partial(e)) => {
                    r.problems.push(format!("backup {id} not fully deleted: {}", e.user_line()));
                    continue;
                }
            }
        }
        r.deleted.push(PlannedBackup { backup_id: id.to_string(), reason: reason.to_string() });
    }

    // 5. Leftovers of interrupted runs: folders without manifest, temp files, multipart uploads.
    let cutoff = now - chrono::Duration::from_std(INCOMPLETE_GRACE).expect("constant");
    for id in catalog::incomplete_backups(storage).await? {
        let objects = storage.list(&id.prefix()).await?;
        let last_write = objects.iter().filter_map(|o| o.modified).max().unwrap_or(id.timestamp()).max(id.timestamp());
        if last_write >= cutoff || locked_until(storage, &id.prefix(), object_lock, now).await?.is_some() {
            continue;
        }
        if !opts.dry_run {
            tracing::info!(backup_id = %id, objects = objects.len(), "removing incomplete backup");
            for o in &objects {
                storage.delete(&o.key).await?;
            }
        }
        r.incomplete_removed.push(id.to_string());
    }
    if !opts.dry_run {
        r.temp_removed = storage.clean_incomplete("", INCOMPLETE_GRACE).await?;
    }

    // 6. Change segments no kept backup of this repository replays (never the newest of a
    //    stream, never one under object lock).
    let gone: BTreeSet<&str> = r.deleted.iter().map(|b| b.backup_id.as_str()).collect();
    let kept: Vec<CatalogEntry> =
        catalog::list_backups(storage).await?.into_iter().filter(|e| !matches!(e, CatalogEntry::Valid(m) if gone.contains(m.backup_id.as_str()))).collect();
    let needed = changes::oldest_needed(&kept);
    let objects = storage.list(crate::repo::layout::CHANGES_PREFIX).await?;
    let segments: Vec<_> = objects.iter().filter_map(changes::SegmentObject::from_meta).collect();
    for seg in changes::plan(&segments, &needed) {
        if let (Some(lock), Some(at)) = (object_lock, seg.modified)
            && lock.retain_until(at) + chrono::Duration::hours(1) > now
        {
            continue;
        }
        if !opts.dry_run {
            storage.delete(&seg.key).await?;
        }
        r.segments_removed += 1;
    }
    // Parts of large transactions no kept backup replays.
    let mut parts_removed = 0u64;
    for part in changes::stale_parts(&objects, &needed) {
        if let (Some(lock), Some(at)) = (object_lock, part.modified)
            && lock.retain_until(at) + chrono::Duration::hours(1) > now
        {
            continue;
        }
        if !opts.dry_run {
            storage.delete(&part.key).await?;
        }
        parts_removed += 1;
    }
    if parts_removed > 0 {
        tracing::info!(parts = parts_removed, dry_run = opts.dry_run, "transaction parts older than every kept backup removed");
    }
    if r.segments_removed > 0 {
        tracing::info!(segments = r.segments_removed, dry_run = opts.dry_run, "change segments older than every kept backup removed");
    }

    // 7. Log files and audit records past their own retention (never one under object lock).
    for (prefix, days) in [(records::LOGS_PREFIX, r.log_retention_days), (crate::repo::layout::AUDIT_PREFIX, r.audit_retention_days)] {
        let objects = storage.list(prefix).await?;
        let mut removed = 0;
        for key in records::plan(&objects, now, days) {
            let modified = objects.iter().find(|o| o.key == key).and_then(|o| o.modified);
            if let (Some(lock), Some(at)) = (object_lock, modified)
                && lock.retain_until(at) + chrono::Duration::hours(1) > now
            {
                continue;
            }
            if !opts.dry_run {
                storage.delete(&key).await?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(prefix, removed, days, dry_run = opts.dry_run, "records older than their retention removed");
        }
        match prefix {
            crate::repo::layout::AUDIT_PREFIX => r.audit_removed = removed,
            _ => r.logs_removed = removed,
        }
    }
    Ok(())
}

/// Why a backup could not be deleted.
#[derive(Debug)]
pub enum DeleteFailure {
    /// The store refused to delete its manifest (AccessDenied): nothing was deleted.
    Refused(Error),
    /// Something failed after the deletion started.
    Partial(Error),
}

/// Delete one backup: manifest and copy first, so it disappears from the
/// catalog at once, then every remaining object of its folder.
pub async fn delete_backup(storage: &dyn Storage, id: &BackupId) -> std::result::Result<(), DeleteFailure> {
    let manifest = id.manifest_key();
    storage.delete(&manifest).await.map_err(|e| match e.kind() {
        ErrorKind::AccessDenied => DeleteFailure::Refused(e),
        _ => DeleteFailure::Partial(e),
    })?;
    let rest = async {
        storage.delete(&format!("{manifest}{COPY_SUFFIX}")).await?;
        crate::failpoint::hit("expire.after_manifest_delete");
        for o in storage.list(&id.prefix()).await? {
            storage.delete(&o.key).await?;
        }
        Ok::<(), Error>(())
    };
    rest.await.map_err(DeleteFailure::Partial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap() + chrono::Duration::days(d)
    }

    fn b(kind: BackupKind, d: i64, parent: Option<&ExpireInput>) -> ExpireInput {
        b_db(kind, d, parent, "app")
    }

    fn b_db(kind: BackupKind, d: i64, parent: Option<&ExpireInput>, db: &str) -> ExpireInput {
        ExpireInput::Valid {
            id: BackupId::new(kind, day(d), if db == "app" { 0 } else { 1 }),
            kind,
            parent: parent.map(|p| p.id().clone()),
            database: db.into(),
            started_at: day(d),
        }
    }

    fn plan(inputs: &[ExpireInput], now: i64, days: i64, keep_full: usize) -> ExpirePlan {
        plan_expire(inputs, day(now), chrono::Duration::days(days), keep_full)
    }

    fn deleted(p: &ExpirePlan) -> Vec<&BackupId> {
        p.delete.iter().map(|(id, _)| id).collect()
    }

    fn reason<'a>(p: &'a ExpirePlan, x: &ExpireInput) -> &'a KeepReason {
        &p.keep.iter().find(|(id, _)| id == x.id()).unwrap_or_else(|| panic!("{} not kept", x.id())).1
    }

    use BackupKind::{Full, Incremental, PreRestore};

    #[test]
    fn old_backups_go_recent_stay_and_every_backup_is_classified_once() {
        let all = [b(Full, 0, None), b(Full, 10, None), b(Full, 25, None), b(Full, 28, None)];
        let p = plan(&all, 30, 7, 1);
        assert_eq!(deleted(&p), vec![all[0].id(), all[1].id()]);
        assert_eq!(p.delete[0].1, DeleteReason::OlderThanRetention(30));
        assert_eq!(reason(&p, &all[2]), &KeepReason::WithinRetention);
        assert_eq!(reason(&p, &all[3]), &KeepReason::NewestFull(1));
        assert_eq!(p.keep.len() + p.delete.len(), all.len());
        assert!(p.problems.is_empty());
    }

    #[test]
    fn the_boundary_of_the_retention_is_kept() {
        let all = [b(Full, 0, None), b(Full, 23, None), b(Full, 30, None)];
        let p = plan(&all, 30, 7, 1);
        assert_eq!(deleted(&p), vec![all[0].id()]);
    }

    #[test]
    fn newest_full_is_kept_however_old() {
        let all = [b(Full, 0, None), b(Full, 1, None)];
        let p = plan(&all, 400, 7, 0); // keep_full 0 still keeps one
        assert_eq!(deleted(&p), vec![all[0].id()]);
        assert_eq!(reason(&p, &all[1]), &KeepReason::NewestFull(1));
    }

    #[test]
    fn table_images_after_a_kept_full_backup_stay() {
        use BackupKind::TableImage;
        let all = [b(TableImage, 0, None), b(Full, 1, None), b(TableImage, 2, None), b(TableImage, 3, None), b_db(TableImage, 4, None, "other")];
        let p = plan(&all, 100, 7, 1);
        assert_eq!(deleted(&p), vec![all[0].id(), all[4].id()], "before the oldest kept full backup, or of a database without one");
        assert_eq!(reason(&p, &all[2]), &KeepReason::ImageAfter(all[1].id().clone()));
        assert_eq!(reason(&p, &all[3]), &KeepReason::ImageAfter(all[1].id().clone()));
    }

    #[test]
    fn keep_full_keeps_that_many_fulls() {
        let all = [b(Full, 0, None), b(Full, 1, None), b(Full, 2, None), b(Full, 3, None)];
        let p = plan(&all, 100, 7, 3);
        assert_eq!(deleted(&p), vec![all[0].id()]);
        assert_eq!(reason(&p, &all[1]), &KeepReason::NewestFull(3));
        let p = plan(&all, 100, 7, 10);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn pre_restore_backups_follow_age_only_and_do_not_count_toward_keep_full() {
        let all = [b(Full, 0, None), b(PreRestore, 50, None), b(PreRestore, 98, None)];
        let p = plan(&all, 100, 7, 1);
        // The old full stays (a newer pre-restore backup does not replace it); the old pre-restore goes.
        assert_eq!(reason(&p, &all[0]), &KeepReason::NewestFull(1));
        assert_eq!(deleted(&p), vec![all[1].id()]);
        assert_eq!(reason(&p, &all[2]), &KeepReason::WithinRetention);
        // With only pre-restore backups, all old ones go.
        let only = [b(PreRestore, 0, None)];
        assert_eq!(deleted(&plan(&only, 100, 7, 1)), vec![only[0].id()]);
    }

    #[test]
    fn kept_incrementals_keep_their_whole_chain() {
        let f0 = b(Full, 0, None);
        let i1 = b(Incremental, 1, Some(&f0));
        let i2 = b(Incremental, 2, Some(&i1));
        let i3 = b(Incremental, 29, Some(&i2));
        let f_new = b(Full, 30, None);
        let all = [f0.clone(), i1.clone(), i2.clone(), i3.clone(), f_new.clone()];
        let p = plan(&all, 30, 7, 1);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(reason(&p, &i3), &KeepReason::WithinRetention);
        assert_eq!(reason(&p, &i2), &KeepReason::NeededBy(i3.id().clone()));
        assert_eq!(reason(&p, &i1), &KeepReason::NeededBy(i2.id().clone()));
        assert_eq!(reason(&p, &f0), &KeepReason::NeededBy(i1.id().clone()));
        // Once the newest incremental is old too, the whole old chain goes, newest full stays.
        let p = plan(&all, 60, 7, 1);
        assert_eq!(deleted(&p), vec![f0.id(), i1.id(), i2.id(), i3.id()]);
    }

    #[test]
    fn expired_incrementals_do_not_pin_their_parents_but_newest_full_chain_stays() {
        let f0 = b(Full, 0, None);
        let i1 = b(Incremental, 1, Some(&f0));
        let all = [f0.clone(), i1.clone()];
        let p = plan(&all, 100, 7, 1);
        // f0 is the newest full: kept; its old incremental goes.
        assert_eq!(deleted(&p), vec![i1.id()]);
    }

    #[test]
    fn damaged_manifests_are_never_deleted() {
        let bad = ExpireInput::Invalid { id: BackupId::new(Full, day(0), 0), problem: "fails its checksum".into() };
        let all = [bad.clone(), b(Full, 1, None), b(Full, 2, None)];
        let p = plan(&all, 100, 7, 1);
        assert!(matches!(reason(&p, &bad), KeepReason::InvalidManifest(m) if m.contains("checksum")));
        assert_eq!(deleted(&p), vec![all[1].id()]);
    }

    #[test]
    fn a_chain_through_a_damaged_or_missing_parent_is_kept_and_reported() {
        let bad = ExpireInput::Invalid { id: BackupId::new(Full, day(0), 0), problem: "damaged".into() };
        let i1 = b(Incremental, 99, Some(&bad));
        let ghost = b(Full, 5, None);
        let i2 = b(Incremental, 98, Some(&ghost));
        let all = [bad.clone(), i2.clone(), i1.clone()];
        let p = plan(&all, 100, 7, 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(p.problems[0].contains(ghost.id().as_str()));
    }

    #[test]
    fn newest_full_is_per_database() {
        let a = [b_db(Full, 0, None, "app"), b_db(Full, 1, None, "app")];
        let o = [b_db(Full, 0, None, "other")];
        let all = [a[0].clone(), o[0].clone(), a[1].clone()];
        let p = plan(&all, 100, 7, 1);
        assert_eq!(deleted(&p), vec![a[0].id()]);
        assert_eq!(reason(&p, &o[0]), &KeepReason::NewestFull(1));
    }

    #[test]
    fn future_backups_and_cycles_are_handled() {
        let future = b(Full, 200, None);
        let p = plan(&[b(Full, 0, None), future.clone()], 100, 7, 1);
        assert_eq!(reason(&p, &future), &KeepReason::NewestFull(1));
        // A parent cycle (impossible in practice) terminates and is reported.
        let x = BackupId::new(Incremental, day(1), 0);
        let y = BackupId::new(Incremental, day(2), 0);
        let mk = |id: &BackupId, parent: &BackupId, d| ExpireInput::Valid {
            id: id.clone(),
            kind: Incremental,
            parent: Some(parent.clone()),
            database: "app".into(),
            started_at: day(d),
        };
        let p = plan(&[mk(&x, &y, 99), mk(&y, &x, 99)], 100, 7, 1);
        assert!(p.delete.is_empty());
        assert!(p.problems.iter().any(|m| m.contains("cycle")));
    }
}
