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
//! Where the archive cannot reproduce one table (an inexact mark naming
//! it, its definition changed without captured DDL, or it joined the
//! publications late), the worker takes a *table image* instead: the same
//! backup engine restricted to that table ([`BackupKind::TableImage`]),
//! so the cost scales with the table, not the database. An image that
//! fails is followed by a full backup, which covers the change too.
//!
//! The queue of table images is kept in every repository
//! ([`ImageJournal`], `stream-state/<system_identifier>-<slot>.images-pending.json`)
//! until each is taken: a stream killed before an image finished asks for
//! it again when it starts (the transaction that needed it may be archived
//! already, so the server would not send it again).
//!
//! One worker task runs [`crate::backup::run`] with the default
//! options, at most one at a time, full backups first; requests that come
//! in meanwhile become one more backup after it (unless it already covers
//! them). A failed
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

use crate::backup::{self, BackupOptions};
use crate::config::Settings;
use crate::notify::{Event, Notifier, Operation};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupKind, Lsn};
use crate::repo::manifest::{BackupManifest, ImageCover, ImageInfo, SnapshotMethod};
use crate::storage::Storage;

/// The table images asked for and not taken yet, kept in every repository.
#[derive(Clone)]
pub struct ImageJournal {
    repos: Vec<Arc<dyn Storage>>,
    key: String,
}

impl ImageJournal {
    /// The journal of the stream `base` (`<system_identifier>-<slot>`, the
    /// same for every epoch) in `repos`.
    pub fn new(repos: &[Arc<dyn Storage>], base: &str) -> ImageJournal {
        ImageJournal { repos: repos.to_vec(), key: format!("{}{base}.images-pending.json", crate::repo::layout::STREAM_STATE_PREFIX) }
    }

    /// The images still to take: from the first repository with a
    /// readable journal (none: nothing pending).
    async fn load(&self) -> Vec<ImageInfo> {
        for repo in &self.repos {
            match repo.get(&self.key, None).await {
                Ok(bytes) => match serde_json::from_slice::<Vec<ImageInfo>>(&bytes) {
                    Ok(images) => return images,
                    Err(e) => tracing::warn!(key = %self.key, repository = %repo.location(), error = %e, "unreadable list of pending table images; ignored"),
                },
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(key = %self.key, repository = %repo.location(), error = %e.user_line(), "cannot read the pending table images"),
            }
        }
        Vec::new()
    }

    /// Record `images` as pending in every repository (none: remove the
    /// journal). A failure is a warning: the images are still taken.
    async fn save(&self, images: &[ImageInfo]) {
        let body = match serde_json::to_vec(images) {
            Ok(b) => bytes::Bytes::from(b),
            Err(_) => return,
        };
        for repo in &self.repos {
            let done = if images.is_empty() {
                match repo.delete(&self.key).await {
                    Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            } else {
                repo.put(&self.key, body.clone(), crate::storage::PutOptions::default()).await.map(|_| ())
            };
            if let Err(e) = done {
                tracing::warn!(key = %self.key, repository = %repo.location(), error = %e.user_line(), "cannot record the pending table images");
            }
        }
    }
}

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
    /// Where pending table images are recorded (none: only in memory).
    pub journal: Option<ImageJournal>,
    /// What `--metrics-addr` serves (backups and images taken or failed).
    pub metrics: Option<Arc<super::metrics::StreamMetrics>>,
}

/// A step run after each successful automatic full backup, given the
/// stream's settings. The caller decides what it is (the CLI: `expire`
/// when `expire_after_backup` is on), so this capability stays below commands.
#[derive(Clone)]
pub struct AfterBackup(Arc<AfterBackupFn>);

/// The step of [`AfterBackup`]: settings in, a future that runs it.
type AfterBackupFn = dyn Fn(Settings) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync;

impl AfterBackup {
    /// Wrap `step`; it logs and notifies its own outcome.
    pub fn new<F>(step: impl Fn(Settings) -> F + Send + Sync + 'static) -> AfterBackup
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AfterBackup(Arc::new(move |s| Box::pin(step(s))))
    }
}

impl std::fmt::Debug for ImageJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageJournal({})", self.key)
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
        AutoBackupOptions { when_uncovered: true, on_schema_change: true, every: None, after_backup: None, journal: None, metrics: None }
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
        /// The server's WAL position before the previous publication check
        /// (it was created after that); 0/0 when unknown.
        since: Lsn,
        /// The server's clock then.
        time: Option<DateTime<Utc>>,
    },
    /// A table's definition changed in the catalog with no captured DDL and
    /// nothing in the archive showing it (src/stream/catalog_watch.rs).
    UnseenChange {
        /// The table.
        table: String,
        /// The server's WAL position before the check before (it changed after).
        since: Lsn,
        /// The server's clock then.
        time: Option<DateTime<Utc>>,
    },
    /// A table without a replica identity changed by UPDATE or DELETE,
    /// which the archive does not hold (src/stream/write_watch.rs).
    UntrackedWrites {
        /// The table.
        table: String,
        /// Its changes may be missing from here on.
        since: Lsn,
        /// The server's clock then.
        time: Option<DateTime<Utc>>,
    },
    /// `--full-backup-every` passed.
    Scheduled,
    /// A change the archive cannot reproduce (src/stream/inexact.rs).
    Inexact {
        /// The table (`*`: unknown).
        table: String,
        /// Why.
        reason: String,
        /// Commit LSN of the transaction that made it.
        lsn: Lsn,
        /// Its commit time.
        time: Option<DateTime<Utc>>,
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
            BackupReason::LateTable { table, .. } => write!(f, "table {table} joined a publication late"),
            BackupReason::UnseenChange { table, since, .. } => write!(f, "table {table} changed without captured DDL after {since}"),
            BackupReason::UntrackedWrites { table, since, .. } => {
                write!(f, "table {table} has no replica identity and was updated or deleted from after {since}")
            }
            BackupReason::Scheduled => f.write_str("--full-backup-every"),
            BackupReason::Inexact { table, reason, lsn, .. } => write!(f, "table {table} cannot be replayed exactly past {lsn}: {reason}"),
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
            BackupReason::LateTable { .. } | BackupReason::UnseenChange { .. } | BackupReason::UntrackedWrites { .. } | BackupReason::Scheduled => false,
        }
    }

    /// The table image that takes care of this, when one table is concerned.
    pub fn image(&self) -> Option<ImageInfo> {
        let (table, cover) = match self {
            BackupReason::SchemaChange { table, lsn } => (
                table,
                ImageCover {
                    reason: "its definition changed without captured DDL (no `pgkeep setup`, or a role whose DDL is not captured)".into(),
                    lsn: *lsn,
                    time: None,
                    unseen: false,
                },
            ),
            BackupReason::LateTable { table, since, time } => (
                table,
                ImageCover { reason: "it joined the publications late (its earlier changes are not archived)".into(), lsn: *since, time: *time, unseen: true },
            ),
            BackupReason::UnseenChange { table, since, time } => (
                table,
                ImageCover {
                    reason: "its definition changed without captured DDL, and no archived change shows it".into(),
                    lsn: *since,
                    time: *time,
                    unseen: true,
                },
            ),
            BackupReason::UntrackedWrites { table, since, time } => (
                table,
                ImageCover {
                    reason: "it has no replica identity, and UPDATE or DELETE changed it (those are not archived)".into(),
                    lsn: *since,
                    time: *time,
                    unseen: true,
                },
            ),
            BackupReason::Inexact { table, reason, lsn, time } => (table, ImageCover { reason: reason.clone(), lsn: *lsn, time: *time, unseen: false }),
            BackupReason::NotCovered { .. } | BackupReason::Scheduled => return None,
        };
        let (schema, name) = crate::pg::catalog::split_table_name(table)?;
        Some(ImageInfo { schema, name, covers: vec![cover] })
    }
}

/// Queue `image`, merged with a queued image of the same table.
fn queue_image(images: &mut Vec<ImageInfo>, image: ImageInfo) {
    match images.iter_mut().find(|i| i.schema == image.schema && i.name == image.name) {
        Some(queued) => {
            for c in image.covers {
                if !queued.covers.contains(&c) {
                    queued.covers.push(c);
                }
            }
        }
        None => images.push(image),
    }
}

/// What the automatic backups of a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AutoBackupTotals {
    /// Ids of the full backups taken.
    pub taken: Vec<String>,
    /// Ids of the table images taken.
    pub images: Vec<String>,
    /// Backups that failed.
    pub failed: u64,
}

enum Command {
    Backup(BackupReason),
    Image(ImageInfo),
    /// The newest full backup that counts finished then (for `every`).
    NewestFull(DateTime<Utc>),
}

#[derive(Default)]
struct Shared {
    /// When the backup in progress started (none running: `None`).
    running_since: Mutex<Option<DateTime<Utc>>>,
    failed: AtomicU64,
    taken: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
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
            let task = tokio::spawn(worker(settings.clone(), opts.clone(), rx, shared.clone()).instrument(span));
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
            BackupReason::SchemaChange { .. }
            | BackupReason::LateTable { .. }
            | BackupReason::UnseenChange { .. }
            | BackupReason::UntrackedWrites { .. }
            | BackupReason::Inexact { .. } => self.opts.on_schema_change,
            BackupReason::Scheduled => self.opts.every.is_some(),
        };
        match &self.tx {
            Some(tx) if wanted => match reason.image() {
                Some(image) => {
                    tracing::info!(reason = %reason, "a table image is needed; taking one");
                    let _ = tx.send(Command::Image(image));
                }
                None => {
                    tracing::info!(reason = %reason, "a new full backup is needed; taking one");
                    let _ = tx.send(Command::Backup(reason));
                }
            },
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
        if let (Some(m), Some(at)) = (&self.opts.metrics, newest) {
            m.full_backup(at.timestamp(), false);
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
        let mut images = self.shared.images.lock().map(|t| t.clone()).unwrap_or_default();
        if let Some(since) = abandoned {
            // The abort may have come after its manifest was written: then it is complete.
            let known: Vec<String> = taken.iter().chain(&images).cloned().collect();
            let finished = finished_since(&self.settings, since, &known).await;
            if finished.is_empty() {
                tracing::warn!(
                    "stream stopping: the automatic backup in progress is abandoned \
                     (it stays invisible; `pgkeep expire` removes its objects after 24 hours)"
                );
            }
            for (id, kind) in finished {
                tracing::info!(backup_id = %id, "stream stopping: the automatic {kind} in progress had finished");
                match kind {
                    BackupKind::TableImage => images.push(id),
                    _ => taken.push(id),
                }
            }
        }
        AutoBackupTotals { taken, images, failed: self.shared.failed.load(Ordering::SeqCst) }
    }
}

/// Full backups and table images of the stream's database, taken on this
/// host, started at or after `since` and valid in a repository, that are
/// not in `taken`: the one abandoned at stop, if it had written its manifest.
async fn finished_since(settings: &Settings, since: DateTime<Utc>, taken: &[String]) -> Vec<(String, BackupKind)> {
    let repos = match crate::repo::meta::open_all(&settings.repos, crate::repo::meta::Access::Read).await {
        Ok(repos) => repos,
        Err(e) => {
            tracing::warn!(error = %e.user_line(), "cannot check whether the abandoned automatic full backup finished");
            return Vec::new();
        }
    };
    let host = crate::repo::manifest::RunInfo::current().host;
    let mut found: Vec<(String, BackupKind)> = Vec::new();
    for repo in &repos {
        let Ok(entries) = catalog::list_backups(repo.as_ref()).await else { continue };
        for m in entries.into_iter().filter_map(|e| match e {
            CatalogEntry::Valid(m) => Some(m),
            CatalogEntry::Invalid(..) => None,
        }) {
            let id = m.backup_id.to_string();
            if matches!(m.kind, BackupKind::Full | BackupKind::TableImage)
                && m.database == settings.db.dbname
                && m.started_at >= since
                && m.started_by.host == host
                && !taken.contains(&id)
                && !found.iter().any(|(f, _)| *f == id)
            {
                found.push((id, m.kind));
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
    let covering =
        manifests.iter().filter(counts).filter(|m| m.snapshot.consistent_lsn >= chain_start).max_by_key(|m| m.finished_at).map(|m| m.backup_id.to_string());
    let newest = manifests.iter().filter(counts).map(|m| m.finished_at).max();
    (covering, newest)
}

/// What the worker runs next.
enum Job {
    Full(BackupReason),
    Image(ImageInfo),
}

/// Runs backups one at a time as requests and the schedule ask: a full
/// backup asked for first, then table images in the order asked.
async fn worker(settings: Settings, opts: AutoBackupOptions, mut rx: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let (every, after_backup) = (opts.every, opts.after_backup.clone());
    let metrics = opts.metrics.clone();
    let notifier = Notifier::from_settings(&settings);
    let mut next_due = every.map(|e| tokio::time::Instant::now() + e);
    let mut pending: Option<BackupReason> = None;
    // Images a stream before this one asked for and did not take.
    let mut images: Vec<ImageInfo> = Vec::new();
    if let Some(journal) = &opts.journal {
        images = journal.load().await;
        if !images.is_empty() {
            tracing::info!(tables = %images.iter().map(ImageInfo::table).collect::<Vec<_>>().join(", "), "table images asked for before this run are taken first");
        }
    }
    let mut recorded = images.clone();
    let mut open = true;
    loop {
        // The queue as it is now, in every repository, before anything runs.
        if let Some(journal) = &opts.journal
            && recorded != images
        {
            journal.save(&images).await;
            recorded = images.clone();
        }
        let job = match pending.take() {
            Some(reason) => Job::Full(reason),
            // Taken off the queue (and the journal) only once it is done.
            None if !images.is_empty() => Job::Image(images[0].clone()),
            None => {
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
                        Some(Command::Image(image)) => queue_image(&mut images, image),
                        Some(Command::NewestFull(at)) => next_due = every.map(|e| due_after(at, e)),
                        None => open = false,
                    },
                    _ = timer => pending = Some(BackupReason::Scheduled),
                }
                continue;
            }
        };
        if let Ok(mut since) = shared.running_since.lock() {
            *since = Some(Utc::now());
        }
        let opts = match &job {
            Job::Full(_) => BackupOptions::default(),
            Job::Image(image) => BackupOptions { kind: BackupKind::TableImage, image: Some(image.clone()), ..BackupOptions::default() },
        };
        let run = backup::run(&settings, &opts);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                command = rx.recv(), if open => match command {
                    Some(Command::Backup(next)) => {
                        tracing::info!(reason = %next, "a backup is running; a full backup follows it");
                        pending.get_or_insert(next);
                    }
                    Some(Command::Image(image)) => queue_image(&mut images, image),
                    Some(Command::NewestFull(_)) => {}
                    None => open = false,
                },
            }
        };
        // Cleared with no await before its outcome is recorded (see `stop`).
        if let Ok(mut since) = shared.running_since.lock() {
            *since = None;
        }
        if let Some(m) = &metrics {
            match (&job, &result) {
                (Job::Full(_), Ok(r)) => m.full_backup(r.manifest.finished_at.timestamp(), true),
                (Job::Image(_), Ok(_)) => m.image_taken(),
                (_, Err(_)) => m.backup_failed(),
            }
        }
        match job {
            Job::Full(reason) => {
                next_due = every.map(|e| tokio::time::Instant::now() + e);
                full_done(&settings, &notifier, after_backup.as_ref(), &shared, result, reason, &mut pending, &mut images).await;
            }
            Job::Image(image) => {
                let table = (image.schema.clone(), image.name.clone());
                let taken = image.covers.clone();
                let at = image_done(&shared, result, image, &mut pending);
                // Off the queue once done, or once a full backup replaces it. A change asked
                // for meanwhile stays: a mark after the image's snapshot, and any unseen change
                // (it is only known to be after its `since`, maybe after the snapshot too).
                if let Some(i) = images.iter().position(|i| (i.schema.clone(), i.name.clone()) == table) {
                    match at {
                        Some(c) => images[i].covers.retain(|cv| if cv.unseen { !taken.contains(cv) } else { cv.lsn >= c }),
                        None => images[i].covers.clear(),
                    }
                    if images[i].covers.is_empty() {
                        images.remove(i);
                    }
                }
            }
        }
    }
}

/// After an automatic full backup: record, notify, retention; what it
/// covers is no longer pending.
#[allow(clippy::too_many_arguments)]
async fn full_done(
    settings: &Settings,
    notifier: &Notifier,
    after_backup: Option<&AfterBackup>,
    shared: &Shared,
    result: crate::error::Result<backup::BackupReport>,
    reason: BackupReason,
    pending: &mut Option<BackupReason>,
    images: &mut Vec<ImageInfo>,
) {
    match result {
        Ok(report) => {
            let lsn = report.manifest.snapshot.consistent_lsn;
            tracing::info!(backup_id = %report.manifest.backup_id, consistent_lsn = %lsn, reason = %reason, "automatic full backup done");
            if let Ok(mut taken) = shared.taken.lock() {
                taken.push(report.manifest.backup_id.to_string());
            }
            if report.manifest.snapshot.method != SnapshotMethod::ReplicationSlot {
                tracing::warn!(backup_id = %report.manifest.backup_id, "the automatic full backup has no replication-slot snapshot: the change archive cannot continue it");
            } else {
                if pending.as_ref().is_some_and(|p| p.covered_by(lsn)) {
                    *pending = None;
                }
                // A base after a change replays it exactly: no image needed.
                images.retain(|i| i.covers.iter().any(|c| c.lsn >= lsn));
            }
            let event = Event::backup_succeeded(&report).with_summary(format!("{} (automatic: {reason})", report.summary_line()));
            let _ = notifier.send(&event).await;
            // Retention, like after `pgkeep backup`: the step logs and notifies its own outcome.
            if let Some(step) = after_backup {
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

/// After a table image: record it and return its consistent point; a
/// failed one is replaced by a full backup, which makes the table exact
/// again too (`None`).
fn image_done(shared: &Shared, result: crate::error::Result<backup::BackupReport>, image: ImageInfo, pending: &mut Option<BackupReason>) -> Option<Lsn> {
    let table = image.table();
    match result {
        Ok(report) => {
            tracing::info!(
                backup_id = %report.manifest.backup_id,
                table = %table,
                consistent_lsn = %report.manifest.snapshot.consistent_lsn,
                rows = report.manifest.stats.rows,
                stored_bytes = report.manifest.stats.stored_bytes,
                "table image done: replay puts it in place of the table at its consistent point"
            );
            if let Ok(mut taken) = shared.images.lock() {
                taken.push(report.manifest.backup_id.to_string());
            }
            Some(report.manifest.snapshot.consistent_lsn)
        }
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(error = %e.user_line(), table = %table, "no table image; taking a full backup instead");
            let first = image.covers.first().cloned();
            pending.get_or_insert(BackupReason::Inexact {
                table,
                reason: first.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
                lsn: first.as_ref().map(|c| c.lsn).unwrap_or_default(),
                time: first.and_then(|c| c.time),
            });
            None
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
        assert!(!BackupReason::LateTable { table: "t".into(), since: Lsn(0), time: None }.covered_by(Lsn(u64::MAX)));
        assert!(BackupReason::NotCovered { chain_start: Lsn(5) }.covered_by(Lsn(5)));
    }

    #[test]
    fn options_default_to_off() {
        assert!(!AutoBackupOptions::default().any());
        assert!(AutoBackupOptions::enabled().any());
    }
}
