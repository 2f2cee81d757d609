//! Point-in-time recovery: replaying archived change segments on top of a
//! restored full backup, up to a [`RecoveryTarget`].
//!
//! [`plan`] chooses what to replay (read-only, before anything is touched):
//!
//! 1. list this cluster's change streams in every repository;
//! 2. take the newest full backup that is not after the target and whose
//!    consistent point an unbroken chain of segments reaches back to; for a
//!    target time, by the server's clock: the commit time of the last
//!    archived transaction before its consistent point;
//! 3. check that the chain reaches the target — for a time, that its newest
//!    commit or heartbeat (the server's clock) is at or after it; a target
//!    beyond the archive is an error saying how far it reaches.
//!
//! [`run`] replays the plan into a restored database:
//!
//! 1. read segments ahead of the writer (any repository with a good copy);
//! 2. skip transactions the backup already holds (commit before its
//!    consistent point), stop before the first one past the target;
//! 3. apply the rest in commit order through the set-based [`apply`]
//!    writer, running captured DDL where it happened (a large transaction's
//!    parts are read one at a time where it continues them, and batches are
//!    written inside a transaction too once they are big enough); a
//!    transaction that made a change the archive cannot reproduce
//!    ([`inexact`]) stops the replay with an error naming the table and the
//!    window, unless accepted;
//! 4. advance sequences ([`sequences`]);
//! 5. without `session_replication_role = replica` (not permitted to the
//!    role), put back the triggers and foreign keys [`suspend`] took away;
//! 6. place every table in pgkeep's publications by its replica identity,
//!    as on the source (those statements are not archived).

pub mod apply;
pub mod batch;
pub mod chain;
pub mod ddl;
pub mod fast_default;
pub mod image;
pub mod inexact;
pub mod partition;
pub mod sequences;
pub mod sql;
pub mod suspend;
pub mod target;
pub mod triggers;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::DbSettings;
use crate::crypto::Keyring;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::ProgressCounters;
use crate::replication::pgoutput::{self, PgOutputMessage};
use crate::repo::layout::{BackupKind, Lsn};
use crate::repo::manifest::{BackupManifest, SnapshotMethod};
use crate::storage::Storage;
use crate::stream::segment::{ChangeSegment, SegmentTransaction, SequenceSample};
use chain::{SegmentRef, StreamArchive};
pub use target::RecoveryTarget;

/// What to replay on top of which backup.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The base backup.
    pub base: BackupManifest,
    /// The stream replayed.
    pub stream_id: String,
    /// Segments from the one holding the base's consistent point to the end of the chain.
    pub segments: Vec<SegmentRef>,
    /// Where replay stops.
    pub target: RecoveryTarget,
    /// Later full backups of the cluster that a stream can continue
    /// (consistent point, id, start): where an inexact table is exact again.
    pub later_bases: Vec<(Lsn, String, DateTime<Utc>)>,
    /// Replay across changes the archive cannot reproduce, with a warning
    /// (`--accept-inexact`), instead of refusing.
    pub accept_inexact: bool,
    /// Table images of the base's database and cluster consistent after
    /// the base ([`image`]), oldest first.
    pub images: Vec<BackupManifest>,
    /// Tables the stream could not archive, and when
    /// ([`crate::stream::unarchived`]).
    pub unarchived: Vec<crate::stream::unarchived::UnarchivedWindow>,
}

impl ReplayPlan {
    /// The base backup's consistent point: transactions committed before it are in the base.
    pub fn from(&self) -> Lsn {
        self.base.snapshot.consistent_lsn
    }

    /// End of the archived chain.
    pub fn archive_end(&self) -> Lsn {
        self.segments.last().map(|s| s.end).unwrap_or(self.from())
    }
}

/// The last transaction replayed.
#[derive(Debug, Clone, Serialize)]
pub struct StopPoint {
    /// Its transaction id on the source.
    pub xid: u32,
    /// Where its commit record starts.
    pub commit_lsn: Lsn,
    /// Where it ends.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: Option<DateTime<Utc>>,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The target asked for.
    pub target: RecoveryTarget,
    /// The base backup.
    pub base_backup: String,
    /// The stream replayed.
    pub stream_id: String,
    /// Replay started after this LSN (the base's consistent point).
    pub from_lsn: Lsn,
    /// End of the archived chain.
    pub archive_end: Lsn,
    /// Segments read.
    pub segments: usize,
    /// Transactions applied.
    pub transactions: u64,
    /// The last transaction applied (`None`: none after the base).
    pub stopped_at: Option<StopPoint>,
    /// The first transaction not applied because it is past the target.
    pub next_after_target: Option<StopPoint>,
    /// Row changes, DDL statements, truncates and batches.
    pub applied: apply::ApplyStats,
    /// Changes the archive cannot reproduce that replay crossed because
    /// the user accepted it (`--accept-inexact`), one line each.
    pub inexact_accepted: Vec<String>,
    /// Table images put in place of their tables, one line each.
    pub table_images: Vec<String>,
    /// Sequences advanced.
    pub sequences_advanced: usize,
    /// Tables put into (or moved between) pgkeep's publications after the
    /// replay, as the source had them at the target.
    pub publication_placements: Vec<String>,
    /// Seconds spent.
    pub seconds: f64,
    /// Row changes per second.
    pub changes_per_second: f64,
}

impl ReplayReport {
    /// One line for the restore summary.
    pub fn summary(&self) -> String {
        let stop = match &self.stopped_at {
            Some(s) => format!(
                "stopped after transaction {} committed at {} (LSN {})",
                s.xid,
                s.commit_time.map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()).unwrap_or_else(|| "?".into()),
                s.commit_lsn
            ),
            None => "no transaction after the base backup".to_string(),
        };
        let mut warn = match self.applied.insert_only_tables.as_slice() {
            [] => String::new(),
            t => format!("; WARNING: {} has no replica identity, so its UPDATEs and DELETEs are not in the archive", t.join(", ")),
        };
        if !self.inexact_accepted.is_empty() {
            warn.push_str(&format!("; WARNING: not exact (accepted): {}", self.inexact_accepted.join("; ")));
        }
        if !self.applied.ddl_rejected.is_empty() {
            warn.push_str(&format!("; WARNING: {} captured DDL message(s) not signed by `pgkeep setup` were not run", self.applied.ddl_rejected.len()));
        }
        format!(
            "point in time {}: replayed {} transaction(s), {} row change(s), {} DDL statement(s) from {} segment(s) on top of {}; {stop}; the archive ends at LSN {} ({:.0} changes/s){warn}",
            self.target,
            self.transactions,
            self.applied.changes,
            self.applied.ddl_statements,
            self.segments,
            self.base_backup,
            self.archive_end,
            self.changes_per_second
        )
    }
}

/// Choose the base backup and segments for `target` (steps 1–3).
/// `candidates` are the backups to consider, any order; `explicit` when the
/// user named the backup (then it is the only candidate and errors say why).
pub async fn plan(
    repos: &[Arc<dyn Storage>],
    candidates: Vec<BackupManifest>,
    target: RecoveryTarget,
    explicit: bool,
    keys: &Arc<Keyring>,
) -> Result<ReplayPlan> {
    let mut candidates: Vec<BackupManifest> = candidates.into_iter().filter(|m| m.kind == BackupKind::Full || explicit).collect();
    candidates.sort_by(|a, b| b.snapshot.consistent_lsn.cmp(&a.snapshot.consistent_lsn).then(b.started_at.cmp(&a.started_at)));
    let bases: Vec<(String, Lsn, String, DateTime<Utc>)> = candidates
        .iter()
        .filter(|m| m.kind == BackupKind::Full && m.snapshot.method == SnapshotMethod::ReplicationSlot)
        .map(|m| (m.server.system_identifier.clone(), m.snapshot.consistent_lsn, m.backup_id.to_string(), m.started_at))
        .collect();
    let mut why_not = Vec::new();
    let mut streams_by_system: Vec<(String, Vec<StreamArchive>)> = Vec::new();
    for m in candidates {
        let id = m.backup_id.to_string();
        if m.snapshot.method != SnapshotMethod::ReplicationSlot {
            why_not.push(format!("{id} was taken without a replication slot snapshot, so no change archive continues it"));
            continue;
        }
        let c = m.snapshot.consistent_lsn;
        if let RecoveryTarget::Lsn(l) = target
            && c > l
        {
            why_not.push(format!("{id} is consistent at {c}, after the target"));
            continue;
        }
        // 1. The streams of this backup's cluster.
        let sys = m.server.system_identifier.clone();
        if !streams_by_system.iter().any(|(s, _)| *s == sys) {
            streams_by_system.push((sys.clone(), chain::list_streams(repos, &sys).await?));
        }
        let streams = &streams_by_system.iter().find(|(s, _)| *s == sys).expect("listed").1;
        // 2. The stream whose unbroken chain from the consistent point reaches furthest.
        let best = streams.iter().map(|s| (s, s.chain_from(c))).filter(|(_, chain)| !chain.is_empty()).max_by_key(|(_, chain)| chain.last().map(|s| s.end));
        let Some((stream, segs)) = best else {
            let span = streams
                .iter()
                .filter_map(|s| Some(format!("{} covers {}..{}", s.stream_id, s.segments.first()?.start, s.segments.last()?.end)))
                .collect::<Vec<_>>();
            why_not.push(if span.is_empty() {
                format!("{id}: no change segments of its cluster in any repository (is `pgkeep stream` running?)")
            } else {
                format!("{id}: no archive reaches back to its consistent point {c} ({})", span.join("; "))
            });
            continue;
        };
        let mut later_bases: Vec<_> = bases.iter().filter(|b| b.0 == sys && b.1 > c).map(|b| (b.1, b.2.clone(), b.3)).collect();
        later_bases.sort();
        let plan = ReplayPlan {
            base: m.clone(),
            stream_id: stream.stream_id.clone(),
            segments: segs.to_vec(),
            target,
            later_bases,
            accept_inexact: false,
            images: table_images(repos, &m).await,
            // Read below, once the plan stands.
            unarchived: Vec::new(),
        };
        // 3. The chain reaches the target.
        let end = plan.archive_end();
        let gap = stream.gap_after(c).map(|(a, b)| format!("; the archive has a gap from {a} to {b}")).unwrap_or_default();
        match target {
            RecoveryTarget::Lsn(l) if end <= l => {
                return Err(Error::new(ErrorKind::NotFound, format!("target LSN {l} is beyond the end of the change archive at {end}{gap}"))
                    .with_hint("choose an earlier target, or `latest`"));
            }
            RecoveryTarget::Time(t) => {
                // A base whose snapshot the server took after the target may
                // hold changes the archive never saw (a schema change made
                // without `pgkeep setup`): never a base for it.
                if let Some(st) = m.snapshot.server_time
                    && st > t
                {
                    why_not.push(format!("{id} was taken at {} by the server's clock, after the target", st.format("%Y-%m-%d %H:%M:%S%.6f UTC")));
                    continue;
                }
                // The base must not hold a transaction committed after the
                // target: the server's commit time of its last transaction,
                // from the archive; the client's clock only when the archive
                // holds no commit before the base.
                match last_commit_before_point(repos, stream, c, keys).await? {
                    Some(late) if late.commit_time.is_none_or(|ct| ct > t) => {
                        why_not.push(format!(
                            "{id} already holds a transaction committed at {} (after the target)",
                            late.commit_time.map(|x| x.to_rfc3339()).unwrap_or_else(|| "?".into())
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None if m.started_at > t => {
                        why_not.push(format!("{id} started after the target"));
                        continue;
                    }
                    None => {}
                }
                // The archive must reach the target, by the server's clock.
                let reach = reach_time(repos, &plan.segments, keys).await?;
                if reach.is_none_or(|r| r < t) {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "target time {target} is after the end of the change archive: it reaches {} (LSN {end}){gap}",
                            reach.map(|r| r.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()).unwrap_or_else(|| "no known time".into())
                        ),
                    )
                    .with_hint("an idle `pgkeep stream` stores a heartbeat segment at least every minute: wait for it, or restore `latest`"));
                }
            }
            _ => {}
        }
        // The plan stands: the tables its stream could not archive (read once, for this stream).
        let unarchived = crate::stream::unarchived::UnarchivedLog::of_stream(repos, &stream.stream_id).load().await?.all;
        return Ok(ReplayPlan { unarchived, ..plan });
    }
    let mut err = Error::new(
        ErrorKind::NotFound,
        format!(
            "no full backup can be brought to {target}: {}",
            if why_not.is_empty() { "there are no full backups of this database".into() } else { why_not.join("; ") }
        ),
    );
    err = err.with_hint("a point-in-time restore needs a full backup taken while `pgkeep stream` archives the database, and an unbroken archive after it");
    Err(err)
}

/// The table images a replay from `base` can use ([`image::continues`]),
/// oldest first, each once (from the first repository listing it).
/// A repository that cannot be listed is skipped with a warning: without
/// its images, a window is refused, never replayed wrongly.
async fn table_images(repos: &[Arc<dyn Storage>], base: &BackupManifest) -> Vec<BackupManifest> {
    let mut out: Vec<BackupManifest> = Vec::new();
    for repo in repos {
        match crate::repo::catalog::list_backups(repo.as_ref()).await {
            Ok(entries) => {
                for e in entries {
                    if let crate::repo::catalog::CatalogEntry::Valid(m) = e
                        && image::continues(&m, base)
                        && !out.iter().any(|o| o.backup_id == m.backup_id)
                    {
                        out.push(*m);
                    }
                }
            }
            Err(e) => tracing::warn!(repository = %repo.location(), error = %e.user_line(), "cannot list the table images"),
        }
    }
    out.sort_by_key(|m| m.snapshot.consistent_lsn);
    out
}

/// Segments read back from the end of the archive, or from a base's
/// consistent point, looking for a time (bounded).
const TIME_SCAN_SEGMENTS: usize = 16;

/// The last transaction committed before `c` (it is in a base consistent
/// at `c`), from the segments of `stream` that start before `c`, newest
/// first; `None` when they hold none.
async fn last_commit_before_point(repos: &[Arc<dyn Storage>], stream: &StreamArchive, c: Lsn, keys: &Arc<Keyring>) -> Result<Option<StopPoint>> {
    for s in stream.segments.iter().filter(|s| s.start < c).rev().take(TIME_SCAN_SEGMENTS) {
        let seg = chain::fetch_segment(repos, s, keys).await?;
        if let Some(p) = last_commit_before(&seg, c) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// How far `segments` reach by the server's clock: the time of the
/// newest heartbeat (the server's clock when its WAL ended at the
/// segment's end) or commit in them; `None` when the last segments hold
/// neither.
async fn reach_time(repos: &[Arc<dyn Storage>], segments: &[SegmentRef], keys: &Arc<Keyring>) -> Result<Option<DateTime<Utc>>> {
    for s in segments.iter().rev().take(TIME_SCAN_SEGMENTS) {
        let seg = chain::fetch_segment(repos, s, keys).await?;
        if let Some(t) = seg.meta.server_time.max(seg.meta.last_commit_time) {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// The last transaction of `seg` committed before `c` (it is in the base).
fn last_commit_before(seg: &ChangeSegment, c: Lsn) -> Option<StopPoint> {
    seg.transactions.iter().rev().find_map(|t| match pgoutput::decode(t.messages.first()?) {
        Ok(PgOutputMessage::Begin(b)) if b.final_lsn < c => {
            Some(StopPoint { xid: b.xid, commit_lsn: b.final_lsn, end_lsn: b.final_lsn, commit_time: b.commit_time.to_utc() })
        }
        _ => None,
    })
}

/// What a replay of `plan` restricted to `only` would refuse and can be
/// known before the base is restored: a table the stream could not archive
/// ([`inexact::unarchived`]). Run it before touching anything.
pub fn preflight(plan: &ReplayPlan, only: Option<&[(String, String)]>) -> Result<()> {
    inexact::unarchived(plan, &image::ImageWindows::new(plan.images.clone()), only).map(|_| ())
}

/// Replay `plan` into the restored database `work` (steps 1–6). `only`
/// restricts the replay to these tables (`(schema, name)`).
pub async fn run(
    repos: &[Arc<dyn Storage>],
    plan: &ReplayPlan,
    work: &DbSettings,
    only: Option<Vec<(String, String)>>,
    keys: &Arc<Keyring>,
    images: &dyn image::ImageHook,
    progress: &ProgressCounters,
) -> Result<ReplayReport> {
    let started = Instant::now();
    let segment_bytes = plan.segments.iter().map(|s| s.size).sum();
    progress.replay_bytes_total.store(segment_bytes, std::sync::atomic::Ordering::Relaxed);
    let from = plan.from();
    let mut applier = apply::Applier::connect(work, only.clone()).await?;
    applier.quiet_triggers().await?;
    // Tables a table image stands for from before the base (joined the publications late).
    let mut windows = image::ImageWindows::new(plan.images.clone());
    let skip = windows.at_start(from, !plan.accept_inexact);
    applier.skip(&skip);
    // Tables the stream could not archive: refused, brought back by an image, or accepted.
    let unarchived_accepted = inexact::unarchived(plan, &windows, only.as_deref())?;
    // 1. Segments read ahead of the writer.
    let (reader, mut rx) = read_ahead(repos, plan, keys);
    // 2-3. Each segment's transactions: skipped, applied, or the target reached.
    let mut replay = Replay {
        repos,
        plan,
        keys,
        only: only.as_deref(),
        images,
        from,
        windows,
        applier,
        report: ReplayReport::empty(plan, from),
        samples: Vec::new(),
        progress,
    };
    replay.report.inexact_accepted = unarchived_accepted;
    let result = replay.segments(&mut rx).await;
    reader.abort();
    // Done with the segments (also when the target came first): a progress display stops here.
    progress.replay_bytes.store(segment_bytes, std::sync::atomic::Ordering::Relaxed);
    result?;
    let Replay { mut applier, mut report, samples, .. } = replay;
    // 4. Sequences, and the triggers quieted for the replay.
    report.sequences_advanced = sequences::advance(applier.client(), &samples).await?;
    // 5. Triggers and foreign keys suspended for a role that may not be a replica: back.
    applier.finish().await?;
    triggers::restore(applier.client(), applier.quieted_triggers()).await?;
    // 6. Publication membership as the source had it: pgkeep's own
    //    placements (new tables, tables that gained or lost their replica
    //    identity) are not in the archive.
    applier
        .client()
        .batch_execute(&format!("SET {} = 'on'", crate::stream::publication::MAINTENANCE_SETTING))
        .await
        .map_err(crate::pg::query_error("cannot set up the session for the publications"))?;
    report.publication_placements = crate::stream::publication::place_restored(applier.client()).await?;
    report.applied = applier.stats().clone();
    report.seconds = started.elapsed().as_secs_f64();
    report.changes_per_second = report.applied.changes as f64 / report.seconds.max(1e-6);
    tracing::info!(
        transactions = report.transactions,
        changes = report.applied.changes,
        segments = report.segments,
        seconds = report.seconds,
        "replay finished"
    );
    Ok(report)
}

/// Step 1: a task that fetches the plan's segments in order (two ahead of
/// the writer) and stops after the first that fails.
fn read_ahead(
    repos: &[Arc<dyn Storage>],
    plan: &ReplayPlan,
    keys: &Arc<Keyring>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::Receiver<Result<ChangeSegment>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<ChangeSegment>>(2);
    let repos = repos.to_vec();
    let segs = plan.segments.clone();
    let keys = keys.clone();
    let reader = tokio::spawn(async move {
        for s in &segs {
            let r = chain::fetch_segment(&repos, s, &keys).await;
            let failed = r.is_err();
            if tx.send(r).await.is_err() || failed {
                return;
            }
        }
    });
    (reader, rx)
}

impl ReplayReport {
    /// A report of `plan` from `from` before anything is replayed.
    fn empty(plan: &ReplayPlan, from: Lsn) -> ReplayReport {
        ReplayReport {
            target: plan.target,
            base_backup: plan.base.backup_id.to_string(),
            stream_id: plan.stream_id.clone(),
            from_lsn: from,
            archive_end: plan.archive_end(),
            segments: 0,
            transactions: 0,
            stopped_at: None,
            next_after_target: None,
            applied: apply::ApplyStats::default(),
            inexact_accepted: Vec::new(),
            table_images: Vec::new(),
            sequences_advanced: 0,
            publication_placements: Vec::new(),
            seconds: 0.0,
            changes_per_second: 0.0,
        }
    }
}

/// What steps 2 and 3 of [`run`] share.
struct Replay<'a> {
    repos: &'a [Arc<dyn Storage>],
    plan: &'a ReplayPlan,
    keys: &'a Arc<Keyring>,
    only: Option<&'a [(String, String)]>,
    images: &'a dyn image::ImageHook,
    /// The base's consistent point: commits before it are in the base.
    from: Lsn,
    windows: image::ImageWindows,
    applier: apply::Applier,
    report: ReplayReport,
    /// The newest sequence samples seen.
    samples: Vec<SequenceSample>,
    /// Segment bytes and row changes applied, for a progress display.
    progress: &'a ProgressCounters,
}

impl Replay<'_> {
    /// Every segment from the reader, up to the target; then the table images due at the end.
    async fn segments(&mut self, rx: &mut tokio::sync::mpsc::Receiver<Result<ChangeSegment>>) -> Result<()> {
        let plan = self.plan;
        'segments: while let Some(seg) = rx.recv().await {
            let seg = seg?;
            self.report.segments += 1;
            // Sampled after the segment's last commit: ahead of every value its transactions used.
            if !seg.meta.sequences.is_empty() {
                self.samples = seg.meta.sequences.clone();
            }
            let span = tracing::debug_span!("replay_segment", start = %seg.meta.start_lsn, end = %seg.meta.end_lsn, transactions = seg.meta.transactions);
            let _g = span.enter();
            for m in &seg.schema {
                self.applier.message(decode(m)?).await?;
            }
            let seg_ref = &plan.segments[self.report.segments - 1];
            let last = seg.transactions.len().saturating_sub(1);
            for (i, txn) in seg.transactions.iter().enumerate() {
                // Parts holding its messages after Begin (only the last transaction has any).
                let parts = if i == last { seg.meta.parts } else { 0 };
                if !self.transaction(&seg, txn, seg_ref, parts).await? {
                    break 'segments;
                }
            }
            self.progress.replay_bytes.fetch_add(seg_ref.size, std::sync::atomic::Ordering::Relaxed);
            self.progress.changes.store(self.applier.stats().changes, std::sync::atomic::Ordering::Relaxed);
        }
        // Every segment of the plan, unless the target stopped the replay first:
        // a reader that ended early must never pass for the end of the archive.
        if self.report.next_after_target.is_none() && self.report.segments < plan.segments.len() {
            return Err(Error::internal(format!(
                "the segment reader stopped after {} of {} segments of stream {}",
                self.report.segments,
                plan.segments.len(),
                plan.stream_id
            )));
        }
        // Images every transaction before which was applied; a table whose
        // image the target does not reach is refused (or, accepted, a warning).
        self.windows.reach_at_end(plan.target, plan.archive_end());
        let due = self.windows.due_at_end(plan.target, plan.archive_end());
        put_images(&self.windows, due, &mut self.applier, self.images, &mut self.report).await?;
        self.report.inexact_accepted.extend(self.windows.unreached(&plan.target.to_string(), plan.accept_inexact)?);
        self.applier.flush().await?;
        Ok(())
    }

    /// One transaction of `seg`: skipped (in the base), applied, or the
    /// first past the target (recorded; returns `false`: the replay stops).
    async fn transaction(&mut self, seg: &ChangeSegment, txn: &SegmentTransaction, seg_ref: &SegmentRef, parts: u32) -> Result<bool> {
        let plan = self.plan;
        let Some(PgOutputMessage::Begin(b)) = txn.messages.first().map(decode).transpose()? else {
            return Err(Error::corrupt(format!("a transaction of stream {} does not start with Begin", plan.stream_id)));
        };
        let point = StopPoint { xid: b.xid, commit_lsn: b.final_lsn, end_lsn: b.final_lsn, commit_time: b.commit_time.to_utc() };
        // 2. In the base already: only layouts matter (those changed inside parts
        //    are described again by the next segment's schema record).
        if b.final_lsn < self.from {
            for m in &txn.messages {
                if let msg @ PgOutputMessage::Relation(_) = decode(m)? {
                    self.applier.message(msg).await?;
                }
            }
            return Ok(true);
        }
        if plan.target.is_past(b.final_lsn, point.commit_time) {
            self.report.next_after_target = Some(point);
            return Ok(false);
        }
        // Tables that joined the publications late and existed by now wait
        // for their image; table images consistent before this commit go in place.
        let skip = self.windows.reach(b.final_lsn, !plan.accept_inexact);
        self.applier.skip(&skip);
        let due = self.windows.due(b.final_lsn);
        put_images(&self.windows, due, &mut self.applier, self.images, &mut self.report).await?;
        // A change the archive cannot reproduce: the table waits for its
        // image, or (no image after it) refuse, or warn when accepted.
        for mark in seg.meta.inexact.iter().filter(|m| m.lsn == b.final_lsn) {
            if let Some(skip) = self.windows.crossing(mark, !plan.accept_inexact) {
                self.applier.skip(&skip);
            } else if let Some(line) = inexact::crossing(plan, mark, self.only)? {
                self.report.inexact_accepted.push(line);
            }
        }
        // 3. Apply.
        let end = self.apply(txn, seg_ref, b.final_lsn, parts).await?;
        self.report.transactions += 1;
        self.report.stopped_at = Some(StopPoint { end_lsn: end, ..point });
        Ok(true)
    }

    /// Step 3 for one transaction committed at `commit`: its parts (read
    /// one at a time), then its messages after Begin; returns its end LSN.
    async fn apply(&mut self, txn: &SegmentTransaction, seg_ref: &SegmentRef, commit: Lsn, parts: u32) -> Result<Lsn> {
        let applier = &mut self.applier;
        applier.begin(commit);
        let mut end = commit;
        for index in 1..=parts {
            let part = chain::fetch_part(self.repos, seg_ref, &self.plan.stream_id, commit, index, self.keys).await?;
            for m in &part.messages {
                applier.note_bytes(m.len());
                applier.message(decode(m)?).await?;
                applier.flush_if_full().await?;
            }
        }
        for m in &txn.messages[1..] {
            applier.note_bytes(m.len());
            let msg = decode(m)?;
            if let PgOutputMessage::Commit(c) = &msg {
                end = c.end_lsn;
            }
            applier.message(msg).await?;
            applier.flush_if_full().await?;
        }
        applier.commit().await?;
        Ok(end)
    }
}

/// Put the table images `due` in place, on the writer's session.
async fn put_images(
    windows: &image::ImageWindows,
    due: Vec<usize>,
    applier: &mut apply::Applier,
    hook: &dyn image::ImageHook,
    report: &mut ReplayReport,
) -> Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    applier.flush().await?;
    for i in due {
        let m = windows.image(i);
        let put = hook.put_in_place(applier.client(), m).await;
        let line = match put {
            Ok(line) => line,
            // Back to the replay's session, then the error.
            Err(e) => return applier.after_schema_sql(Err(e.context(format!("cannot put table image {} in place", m.backup_id)))).await,
        };
        applier.after_schema_sql(Ok(())).await?;
        applier.include(&windows.tables_of(i));
        tracing::info!(image = %m.backup_id, consistent_lsn = %m.snapshot.consistent_lsn, "{line}");
        report.table_images.push(line);
    }
    Ok(())
}

fn decode(m: &bytes::Bytes) -> Result<PgOutputMessage> {
    pgoutput::decode_shared(m).map_err(|e| Error::corrupt(format!("an archived pgoutput message does not decode: {e}")))
}
