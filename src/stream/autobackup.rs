//! Full backups that `pgkeep stream` takes by itself, so that the change
//! archive always has a base backup to replay from.
//!
//! A backup is asked for when:
//! - at start, no full backup of this database (same cluster, snapshot
//!   method `replication_slot`) has a `consistent_lsn` at or after the
//!   start of the stream's segment chain: nothing covers the archive yet
//!   ([`AutoBackup::check_coverage`]);
//! - a table's definition changed without a captured DDL statement, or a
//!   table was added to a publication late (its earlier changes are not
//!   archived): replay cannot cross that point from an older backup;
//! - a change the archive cannot reproduce was marked
//!   ([`super::inexact`]): from this backup's consistent point on, targets
//!   are exact again;
//! - `--full-backup-every` has passed since the newest such backup.
//!
//! One worker task runs [`crate::commands::backup::run`] with the default
//! options, at most one at a time; requests that come in meanwhile become
//! one more backup after it (unless it already covers them). A failed
//! backup never fails the stream: it is logged and notified like a failed
//! `pgkeep backup`. After a backup that succeeded, the worker runs the
//! caller's [`AfterBackup`] step (the CLI passes retention, `expire`, when
//! `expire_after_backup` is on; this module never imports commands). On shutdown a backup in progress is abandoned: it has
//! no manifest, so it is invisible, and `pgkeep expire` removes its objects
//! after 24 hours. One that had written its manifest when it was abandoned
//! is complete: the repositories are checked, and it counts as taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::commands::backup::{self, BackupOptions};
use crate::config::Settings;
use crate::notify::{Event, Notifier, Operation};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupKind, Lsn};
use crate::repo::manifest::{BackupManifest, SnapshotMethod};
use crate::storage::Storage;

/// When `pgkeep stream` takes a full backup by itself.
#[derive(Debug, Clone, Default)]
pub struct AutoBackupOptions {
    /// At start, when no full backup covers the archive.
    pub when_uncovered: bool,
    /// After a schema change without captured DDL, or a table added late.
    pub on_schema_change: bool,
    /// This long after the newest full backup.
    pub every: Option<Duration>,
    /// Run after each automatic backup that succeeded (retention); its
    /// outcome is the step's own business and never fails the stream.
    pub after_backup: Option<AfterBackup>,
}

/// A step run after each successful automatic full backup, given the
/// stream's settings. The caller decides what it is (the CLI: `expire`
/// when `expire_after_backup` is on), so this capability stays below commands.
#[derive(Clone)]
pub struct AfterBackup(Arc<dyn Fn(Settings) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>);

impl AfterBackup {
    /// Wrap `step`; it logs and notifies its own outcome.
    pub fn new<F>(step: impl Fn(Settings) -> F + Send + Sync + 'static) -> AfterBackup
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AfterBackup(Arc::new(move |s| Box::pin(step(s))))
    }
}

impl std::fmt::Debug for AfterBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterBackup")
    }
}

impl AutoBackupOptions {
    /// What `pgkeep stream` does unless told otherwise: a backup when
    /// nothing covers the archive and after uncaptured schema changes.
    pub fn enabled() -> AutoBackupOptions {
        AutoBackupOptions { when_uncovered: true, on_schema_change: true, every: None, after_backup: None }
    }

    fn any(&self) -> bool {
        self.when_uncovered || self.on_schema_change || self.every.is_some()
    }
}

/// Why a full backup is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupReason {
    /// No full backup covers the segment chain, which starts here.
    NotCovered {
        /// Start of the stream's segment chain.
        chain_start: Lsn,
    },
    /// A table's definition changed without captured DDL.
    SchemaChange {
        /// The table.
        table: String,
        /// Commit LSN of the transaction that first used the new definition.
        lsn: Lsn,
    },
    /// A table was added to a publication after it existed.
    LateTable {
        /// The table.
        table: String,
    },
    /// `--full-backup-every` passed.
    Scheduled,
    /// A change the archive cannot reproduce (src/stream/inexact.rs).
    Inexact {
        /// The table.
        table: String,
        /// Why.
        reason: String,
        /// Commit LSN of the transaction that made it.
        lsn: Lsn,
    },
}

impl std::fmt::Display for BackupReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupReason::NotCovered { chain_start } => {
                write!(f, "no full backup covers the change archive from {chain_start}")
            }
            BackupReason::SchemaChange { table, lsn } => {
                write!(f, "table {table} changed without captured DDL at {lsn}")
            }
            BackupReason::LateTable { table } => write!(f, "table {table} joined a publication late"),
            BackupReason::Scheduled => f.write_str("--full-backup-every"),
            BackupReason::Inexact { table, reason, lsn } => write!(f, "table {table} cannot be replayed exactly past {lsn}: {reason}"),
        }
    }
}

impl BackupReason {
    /// Whether a backup consistent at `lsn` already takes care of this.
    fn covered_by(&self, lsn: Lsn) -> bool {
        match self {
            BackupReason::NotCovered { chain_start } => lsn >= *chain_start,
            BackupReason::SchemaChange { lsn: at, .. } => lsn >= *at,
            BackupReason::Inexact { lsn: at, .. } => lsn > *at,
            BackupReason::LateTable { .. } | BackupReason::Scheduled => false,
        }
    }
}

/// What the automatic backups of a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AutoBackupTotals {
    /// Ids of the backups taken.
    pub taken: Vec<String>,
    /// Backups that failed.
    pub failed: u64,
}

enum Command {
    Backup(BackupReason),
    /// The newest full backup that counts finished then (for `every`).
    NewestFull(DateTime<Utc>),
}

#[derive(Default)]
struct Shared {
    /// When the backup in progress started (none running: `None`).
    running_since: Mutex<Option<DateTime<Utc>>>,
    failed: AtomicU64,
    taken: Mutex<Vec<String>>,
}

/// The automatic full backups of one `pgkeep stream` run.
pub struct AutoBackup {
    opts: AutoBackupOptions,
    settings: Settings,
    tx: Option<mpsc::UnboundedSender<Command>>,
    task: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl AutoBackup {
    /// Start the worker (none when every kind of automatic backup is off).
    pub fn start(settings: &Settings, opts: AutoBackupOptions) -> AutoBackup {
        let shared = Arc::new(Shared::default());
        let (tx, task) = if opts.any() {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = tracing::info_span!("auto_backup");
            let task = tokio::spawn(worker(settings.clone(), opts.every, opts.after_backup.clone(), rx, shared.clone()).instrument(span));
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        AutoBackup { opts, settings: settings.clone(), tx, task, shared }
    }

    /// Ask for a full backup; ignored (and said so) when that kind is off.
    pub fn request(&self, reason: BackupReason) {
        let wanted = match reason {
            BackupReason::NotCovered { .. } => self.opts.when_uncovered,
            BackupReason::SchemaChange { .. } | BackupReason::LateTable { .. } | BackupReason::Inexact { .. } => self.opts.on_schema_change,
            BackupReason::Scheduled => self.opts.every.is_some(),
        };
        match &self.tx {
            Some(tx) if wanted => {
                tracing::info!(reason = %reason, "a new full backup is needed; taking one");
                let _ = tx.send(Command::Backup(reason));
            }
            _ => tracing::warn!(reason = %reason, "a new full backup is needed; automatic full backups are off: run `pgkeep backup`"),
        }
    }

    /// At start: whether a full backup of `database` on this cluster
    /// (`system_identifier`) covers the chain starting at `chain_start`;
    /// asks for one if not. Also seeds the `every` schedule.
    pub async fn check_coverage(&self, repos: &[Arc<dyn Storage>], system_identifier: &str, database: &str, chain_start: Lsn) {
        let mut manifests = Vec::new();
        for repo in repos {
            match catalog::list_backups(repo.as_ref()).await {
                Ok(entries) => manifests.extend(entries.into_iter().filter_map(|e| match e {
                    CatalogEntry::Valid(m) => Some(*m),
                    CatalogEntry::Invalid(..) => None,
                })),
                Err(e) => tracing::warn!(repository = %repo.location(), error = %e.user_line(), "cannot list backups"),
            }
        }
        let (covering, newest) = coverage(&manifests, system_identifier, database, chain_start);
        match covering {
            Some(id) => tracing::info!(backup_id = %id, chain_start = %chain_start, "the change archive is covered by a full backup"),
            None => self.request(BackupReason::NotCovered { chain_start }),
        }
        if let (Some(tx), Some(at)) = (&self.tx, newest) {
            let _ = tx.send(Command::NewestFull(at));
        }
    }

    /// Stop the worker, abandoning a backup in progress; what was done.
    pub async fn stop(mut self) -> AutoBackupTotals {
        self.tx = None;
        let mut abandoned = None;
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
            // Set while `backup::run` runs, cleared where its outcome is recorded (no await between).
            abandoned = self.shared.running_since.lock().ok().and_then(|s| *s);
        }
        let mut taken = self.shared.taken.lock().map(|t| t.clone()).unwrap_or_default();
        if let Some(since) = abandoned {
            // The abort may have come after its manifest was written: then it is complete.
            let finished = finished_since(&self.settings, since, &taken).await;
            if finished.is_empty() {
                tracing::warn!(
                    "stream stopping: the automatic full backup in progress is abandoned \
                     (it stays invisible; `pgkeep expire` removes its objects after 24 hours)"
                );
            }
            for id in finished {
                tracing::info!(backup_id = %id, "stream stopping: the automatic full backup in progress had finished");
                taken.push(id);
            }
        }
        AutoBackupTotals { taken, failed: self.shared.failed.load(Ordering::SeqCst) }
    }
}

/// Full backups of the stream's database, taken on this host, started at or
/// after `since` and valid in a repository, that are not in `taken`: the
/// one abandoned at stop, if it had written its manifest.
async fn finished_since(settings: &Settings, since: DateTime<Utc>, taken: &[String]) -> Vec<String> {
    let repos = match crate::restore::source::open_repositories(settings).await {
        Ok(repos) => repos,
        Err(e) => {
            tracing::warn!(error = %e.user_line(), "cannot check whether the abandoned automatic full backup finished");
            return Vec::new();
        }
    };
    let host = crate::repo::manifest::RunInfo::current().host;
    let mut found: Vec<String> = Vec::new();
    for repo in &repos {
        let Ok(entries) = catalog::list_backups(repo.as_ref()).await else { continue };
        for m in entries.into_iter().filter_map(|e| match e {
            CatalogEntry::Valid(m) => Some(m),
            CatalogEntry::Invalid(..) => None,
        }) {
            let id = m.backup_id.to_string();
            if m.kind == BackupKind::Full
                && m.database == settings.db.dbname
                && m.started_at >= since
                && m.started_by.host == host
                && !taken.contains(&id)
                && !found.contains(&id)
            {
                found.push(id);
            }
        }
    }
    found
}

/// The id of a backup covering the chain from `chain_start`, and when the
/// newest backup that counts finished (pure).
fn coverage(manifests: &[BackupManifest], system_identifier: &str, database: &str, chain_start: Lsn) -> (Option<String>, Option<DateTime<Utc>>) {
    let counts = |m: &&BackupManifest| {
        m.kind == BackupKind::Full
            && m.database == database
            && m.server.system_identifier == system_identifier
            && m.snapshot.method == SnapshotMethod::ReplicationSlot
    };
    let covering = manifests
        .iter()
        .filter(counts)
        .filter(|m| m.snapshot.consistent_lsn >= chain_start)
        .max_by_key(|m| m.finished_at)
        .map(|m| m.backup_id.to_string());
    let newest = manifests.iter().filter(counts).map(|m| m.finished_at).max();
    (covering, newest)
}

/// Runs backups one at a time as requests and the schedule ask.
async fn worker(settings: Settings, every: Option<Duration>, after_backup: Option<AfterBackup>, mut rx: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let notifier = Notifier::from_settings(&settings);
    let mut next_due = every.map(|e| tokio::time::Instant::now() + e);
    let mut pending: Option<BackupReason> = None;
    let mut open = true;
    loop {
        let Some(reason) = pending.take() else {
            if !open {
                return;
            }
            let timer = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Backup(reason)) => pending = Some(reason),
                    Some(Command::NewestFull(at)) => next_due = every.map(|e| due_after(at, e)),
                    None => open = false,
                },
                _ = timer => pending = Some(BackupReason::Scheduled),
            }
            continue;
        };
        if let Ok(mut since) = shared.running_since.lock() {
            *since = Some(Utc::now());
        }
        let opts = BackupOptions::default();
        let run = backup::run(&settings, &opts);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                command = rx.recv(), if open => match command {
                    Some(Command::Backup(next)) => {
                        tracing::info!(reason = %next, "a full backup is running; another one follows it");
                        pending.get_or_insert(next);
                    }
                    Some(Command::NewestFull(_)) => {}
                    None => open = false,
                },
            }
        };
        if let Ok(mut since) = shared.running_since.lock() {
            *since = None;
        }
        next_due = every.map(|e| tokio::time::Instant::now() + e);
        match result {
            Ok(report) => {
                let lsn = report.manifest.snapshot.consistent_lsn;
                tracing::info!(backup_id = %report.manifest.backup_id, consistent_lsn = %lsn, reason = %reason, "automatic full backup done");
                if let Ok(mut taken) = shared.taken.lock() {
                    taken.push(report.manifest.backup_id.to_string());
                }
                if report.manifest.snapshot.method != SnapshotMethod::ReplicationSlot {
                    tracing::warn!(backup_id = %report.manifest.backup_id, "the automatic full backup has no replication-slot snapshot: the change archive cannot continue it");
                } else if pending.as_ref().is_some_and(|p| p.covered_by(lsn)) {
                    pending = None;
                }
                let event = Event::backup_succeeded(&report).with_summary(format!("{} (automatic: {reason})", report.summary_line()));
                let _ = notifier.send(&event).await;
                // Retention, like after `pgkeep backup`: the step logs and notifies its own outcome.
                if let Some(step) = &after_backup {
                    (step.0)(settings.clone()).await;
                }
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(error = %e.user_line(), reason = %reason, "automatic full backup failed; the stream goes on (run `pgkeep backup`)");
                let event = Event::failure(Operation::Backup, &e)
                    .with_database(&settings.db.dbname)
                    .with_summary(format!("automatic full backup by pgkeep stream ({reason}) failed"));
                let _ = notifier.send(&event).await;
            }
        }
    }
}

/// When `every` after `finished_at` is, on the tokio clock.
fn due_after(finished_at: DateTime<Utc>, every: Duration) -> tokio::time::Instant {
    let age = (Utc::now() - finished_at).to_std().unwrap_or_default();
    tokio::time::Instant::now() + every.saturating_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_sentences_and_know_what_covers_them() {
        let r = BackupReason::SchemaChange { table: r#""public"."t""#.into(), lsn: Lsn(0x10) };
        assert_eq!(r.to_string(), r#"table "public"."t" changed without captured DDL at 0/10"#);
        assert!(r.covered_by(Lsn(0x10)) && !r.covered_by(Lsn(0xF)));
        assert!(!BackupReason::LateTable { table: "t".into() }.covered_by(Lsn(u64::MAX)));
        assert!(BackupReason::NotCovered { chain_start: Lsn(5) }.covered_by(Lsn(5)));
    }

    #[test]
    fn options_default_to_off() {
        assert!(!AutoBackupOptions::default().any());
        assert!(AutoBackupOptions::enabled().any());
    }
}
