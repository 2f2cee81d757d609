//! `pgkeep stream`: archive a database's logical changes, continuously, as
//! [`segment::ChangeSegment`]s in every repository (docs/FORMAT.md §5).
//!
//! [`run`] is the whole process, step by step:
//!
//! 1. open every repository;
//! 2. name the stream `<system_identifier>-<slot>` (`IDENTIFY_SYSTEM`);
//! 3. make sure both publications exist and hold every table
//!    ([`publication`]): the main one (`FOR TABLE`, tables with a usable
//!    replica identity; never `FOR ALL TABLES`, which would make UPDATE and
//!    DELETE fail on tables without one) and `<publication>_insert_only`
//!    (`publish = 'insert, truncate'`, the other tables, each named in a
//!    warning with the fix), then that the permanent `pgoutput` slot exists
//!    (publications first: pgoutput looks them up as of each change's time);
//! 4. find the resume point ([`slot`]): the end of the segment chain present
//!    in every repository, or the slot's `confirmed_flush_lsn` when there is
//!    none; a gap is an error, segments beyond the common end (a crash
//!    between puts) are removed — the slot was never confirmed past them.
//!    Once per run, [`autobackup`] checks that a full backup covers the
//!    chain, and takes one if not;
//! 5. run the [`archiver`] until `shutdown` resolves (what the server had
//!    committed by then is received, then the open segment is stored and
//!    confirmed) or a fatal error, reconnecting with
//!    backoff (1 s, 2 s, … 30 s) and going back to step 3 after connection
//!    and transient storage errors. While it runs, new tables join a
//!    publication within `publication_check`, each segment carries
//!    sequence samples, and schema changes without captured DDL
//!    ([`setup`] installs the capture) lead to a new full backup.

pub mod archiver;
pub mod autobackup;
pub mod catalog_watch;
pub mod ddl;
pub mod inexact;
pub mod metrics;
pub mod publication;
pub mod schema_watch;
pub mod segment;
pub mod session; // run_session: one replication session driving the archiver
pub mod setup;
pub mod slot;
pub mod unarchived;
pub mod upkeep;
pub mod watch_state;
pub mod write_watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::replication::{ReplicationConnection, validate_slot_name};
use crate::repo::layout::Lsn;
use crate::repo::layout::{CHANGES_PREFIX, parse_segment_key};
use crate::storage::Storage;
use archiver::{Archiver, SegmentLimits};
use autobackup::{AutoBackup, AutoBackupOptions, AutoBackupTotals, BackupReason};
use publication::{MAINTENANCE_SETTING, PublicationNames, ReconcileMode, Reconciled};
use session::{SessionContext, SessionEnd, SessionTotals};
use upkeep::Upkeep;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `pgkeep stream` was asked to do.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Logical slot (created, permanent, `pgoutput`, if missing).
    pub slot: String,
    /// Main publication (created `FOR TABLE …` if missing); the insert-only
    /// one is named after it ([`publication::insert_only_name`]).
    pub publication: String,
    /// Close a segment this many seconds after its first transaction.
    pub segment_seconds: u64,
    /// Close a segment once its raw payload exceeds this many bytes.
    pub segment_bytes: u64,
    /// Keep at most about this many bytes of one transaction in memory;
    /// a larger one is stored in parts as it arrives (docs/FORMAT.md §5.2).
    pub transaction_memory: u64,
    /// How often tables that are in neither publication are put into one.
    pub publication_check: Duration,
    /// Full backups the stream takes by itself (all off here; the CLI turns
    /// them on).
    pub auto_backup: AutoBackupOptions,
    /// Serve Prometheus metrics here (`--metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl StreamOptions {
    /// `slot` and `publication` with the default segment limits (10 s,
    /// 16 MiB), a publication check every 5 s, no automatic backups.
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> StreamOptions {
        StreamOptions {
            slot: slot.into(),
            publication: publication.into(),
            segment_seconds: 10,
            segment_bytes: 16 << 20,
            transaction_memory: 16 << 20,
            publication_check: Duration::from_secs(5),
            auto_backup: AutoBackupOptions::default(),
            metrics_addr: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Where archiving resumed.
    pub start_lsn: Lsn,
    /// End of the last segment stored in every repository (and confirmed).
    pub durable_end: Lsn,
    /// Segments, transactions, changes and bytes stored.
    pub totals: SessionTotals,
    /// Tables without a usable replica identity at start (in the
    /// insert-only publication: only their inserts and truncates are archived).
    pub tables_without_identity: Vec<String>,
    /// Full backups the stream took by itself.
    pub auto_backups: AutoBackupTotals,
    /// Connection attempts that failed or ended and were retried.
    pub reconnects: u64,
}

/// Archive changes until `shutdown` resolves or a fatal error.
pub async fn run(settings: &Settings, opts: &StreamOptions, shutdown: impl Future<Output = ()>) -> Result<StreamReport> {
    validate_slot_name(&opts.slot)?;
    if opts.segment_seconds == 0 || opts.segment_bytes == 0 {
        return Err(Error::config("--segment-seconds and --segment-bytes must be at least 1"));
    }
    if !(1 << 20..=256 << 20).contains(&opts.transaction_memory) || opts.segment_bytes > 512 << 20 {
        return Err(Error::config("--transaction-memory must be between 1MiB and 256MiB, and --segment-bytes at most 512MiB"));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    // 1. Repositories.
    let repos = crate::repo::meta::open_all(&settings.repos, crate::repo::meta::Access::Read).await?;
    // 2. Stream id.
    let mut repl = ReplicationConnection::connect(&settings.db).await?;
    let identity = repl.identify_system().await?;
    let base = format!("{}-{}", identity.systemid, opts.slot);
    let stream_id = stream_epoch(settings, &repos, &base, &opts.slot).await?;
    let span = tracing::info_span!("stream", stream_id = %stream_id, slot = %opts.slot, lsn = tracing::field::Empty);
    // Table images asked for are recorded in the repositories until taken.
    let journal = opts.auto_backup.on_schema_change.then(|| autobackup::ImageJournal::new(&repos, &base));
    // Metrics, when asked for: a taken address fails here, before anything runs.
    let metrics = metrics::StreamMetrics::new();
    let server = match opts.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let autobackup = AutoBackup::start(settings, AutoBackupOptions { journal, metrics: Some(metrics.clone()), ..opts.auto_backup.clone() });
    let stream = Stream { settings, opts, repos, stream_id, system_identifier: identity.systemid.to_string(), span: span.clone(), metrics };
    let result = stream.archive(repl, &autobackup, &mut shutdown).instrument(span.clone()).await;
    let auto_backups = autobackup.stop().instrument(span).await;
    if let Some(server) = server {
        server.abort();
    }
    result.map(|report| StreamReport { auto_backups, ..report })
}

/// The stream id to archive under: `base` (`<system_identifier>-<slot>`),
/// or `base.N` after the slot had to be created again.
///
/// A new slot starts where the server is now; it can never continue an
/// archive that an earlier slot of the same name wrote, because the changes
/// in between are gone. So a slot that lost its WAL (`wal_status = lost`,
/// `max_slot_wal_keep_size`) or that the server invalidated for another
/// reason (`invalidation_reason`, e.g. PostgreSQL 18's `idle_timeout` after
/// `idle_replication_slot_timeout`) is dropped here, loudly, and whenever the slot
/// is about to be created while an archive of the name exists, archiving
/// continues as a new stream `base.N` — a new chain that a new full backup
/// covers (`stream` takes one by itself unless told not to). The old chain
/// stays restorable up to where it ends.
async fn stream_epoch(settings: &Settings, repos: &[Arc<dyn Storage>], base: &str, slot: &str) -> Result<String> {
    let conn = crate::pg::connect::connect(&settings.db).await?;
    // `invalidation_reason` (17+, read through to_jsonb so older servers give NULL):
    // `wal_removed`, or on 18 `idle_timeout` (idle_replication_slot_timeout).
    let state: Option<(bool, String, String, Option<String>)> = conn
        .client
        .query_opt(
            "SELECT active, coalesce(wal_status, ''), coalesce(database::text, ''), to_jsonb(s) ->> 'invalidation_reason' \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(crate::pg::query_error(format!("looking up replication slot {slot}")))?
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)));
    let mut exists = state.is_some();
    // After `restore` swapped a database in, the slot still belongs to the database it
    // replaced (renamed `<db>_old…` or `<db>_rolled_back…`), which nothing archives: it
    // would only hold WAL. The live database gets a new slot and chain.
    let db = &settings.db.dbname;
    if let Some((false, _, on, _)) = &state
        && on != db
        && (on.starts_with(&format!("{db}_old")) || on.starts_with(&format!("{db}_rolled_back")))
    {
        tracing::warn!(slot = %slot, database = %on, "the slot belongs to the database a restore replaced; dropping it so that it holds no WAL, and starting a new chain for {db}");
        conn.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(crate::pg::query_error(format!("dropping replication slot {slot} of database {on}")))?;
        exists = false;
    }
    if let Some((active, status, _, reason)) = &state
        && exists
        && (status == "lost" || reason.is_some())
    {
        if *active {
            return Err(Error::new(ErrorKind::Locked, format!("replication slot {slot} lost its WAL and is still in use by another process")));
        }
        match reason.as_deref() {
            Some("idle_timeout") => {
                tracing::error!(slot = %slot, "replication slot was invalidated after idle_replication_slot_timeout: the archive has a gap; dropping it and starting a new chain that a new full backup must cover")
            }
            Some(other) => {
                tracing::error!(slot = %slot, reason = %other, "replication slot was invalidated: the archive has a gap; dropping it and starting a new chain that a new full backup must cover")
            }
            None => {
                tracing::error!(slot = %slot, "replication slot lost WAL it had not sent (max_slot_wal_keep_size): the archive has a gap; dropping it and starting a new chain that a new full backup must cover")
            }
        }
        conn.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(crate::pg::query_error(format!("dropping the lost replication slot {slot}")))?;
        exists = false;
    }
    // The epochs already archived: `base` is 0, `base.N` is N.
    let mut latest: Option<u32> = None;
    for repo in repos {
        for o in repo.list(CHANGES_PREFIX).await? {
            let Some((stream, _, _)) = parse_segment_key(&o.key) else { continue };
            if let Some(e) = epoch_of(&stream, base) {
                latest = latest.max(Some(e));
            }
        }
    }
    let name = |e: u32| if e == 0 { base.to_string() } else { format!("{base}.{e}") };
    Ok(match (exists, latest) {
        (_, None) => base.to_string(),
        (true, Some(e)) => name(e),
        (false, Some(e)) => {
            let next = name(e + 1);
            tracing::warn!(old = %name(e), new = %next, "the slot is new, so it cannot continue the existing archive: archiving as a new stream");
            next
        }
    })
}

/// The epoch of stream id `stream` of base `<system_identifier>-<slot>`:
/// 0 for `base` itself, N for `base.N`, `None` for another stream.
pub fn epoch_of(stream: &str, base: &str) -> Option<u32> {
    if stream == base {
        return Some(0);
    }
    stream.strip_prefix(base)?.strip_prefix('.')?.parse().ok()
}

/// What steps 3 to 5 share.
struct Stream<'a> {
    settings: &'a Settings,
    opts: &'a StreamOptions,
    repos: Vec<Arc<dyn Storage>>,
    stream_id: String,
    system_identifier: String,
    span: tracing::Span,
    metrics: Arc<metrics::StreamMetrics>,
}

impl Stream<'_> {
    /// Steps 3 to 5, inside the stream's span.
    async fn archive<F: Future<Output = ()>>(
        &self,
        mut repl: ReplicationConnection,
        autobackup: &AutoBackup,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Result<StreamReport> {
        let (settings, opts) = (self.settings, self.opts);
        let names = PublicationNames::new(&opts.publication);
        // 3. Publications, then slot.
        let mut upkeep = Upkeep::new(settings.db.clone());
        upkeep.track_unarchived(unarchived::UnarchivedLog::of_stream(&self.repos, &self.stream_id));
        upkeep.keep_watch_state(watch_state::WatchLog::new(&self.repos, unarchived::base_of(&self.stream_id))).await;
        let first = upkeep.reconcile(&names, ReconcileMode { create: true, announce: true }).await?;
        let slot_existed = slot::ensure_slot(upkeep.client().await?, &mut repl, &opts.slot, &settings.db.dbname).await?;
        let mut repl = Some(repl);
        // A slot older than the insert-only publication cannot stream it
        // until its position passes the publication's creation.
        let mut resubscribe_at = if first.created_insert_only && slot_existed { Some(self.insert_only_from(&mut upkeep, &names).await?) } else { None };
        if !first.created_main {
            request_late(autobackup, &first, &mut upkeep).await;
        }
        let mut insert_only_exists = first.insert_only_exists;
        let tables_without_identity = first.insert_only_tables.clone();

        let limits =
            SegmentLimits { max_age: Duration::from_secs(opts.segment_seconds), max_bytes: opts.segment_bytes, transaction_memory: opts.transaction_memory };
        // Encryption (when configured): one data key for this run's segments.
        let sealer = crate::crypto::Sealer::from_settings(&settings.encryption)?;
        let mut totals = SessionTotals::default();
        let mut start_lsn = None;
        let mut durable_end = Lsn(0);
        let mut reconnects = 0;
        let mut backoff = Duration::from_secs(1);
        let mut coverage_checked = false;
        let mut attempt_no = 0u64;
        loop {
            attempt_no += 1;
            if attempt_no > 1 {
                // 3 again. Not fatal: the periodic check tries again.
                match upkeep.reconcile(&names, ReconcileMode { create: true, announce: false }).await {
                    Ok(again) => {
                        request_late(autobackup, &again, &mut upkeep).await;
                        insert_only_exists = again.insert_only_exists;
                        if again.created_insert_only {
                            // Failing that, pgoutput's refusal is handled below.
                            resubscribe_at = self.insert_only_from(&mut upkeep, &names).await.ok();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.user_line(), "cannot check the publications"),
                }
            }
            let cx = SessionContext {
                slot: &opts.slot,
                names: &names,
                insert_only: insert_only_exists,
                resubscribe_at,
                repos: &self.repos,
                limits,
                publication_check: opts.publication_check,
                autobackup,
                sealer: sealer.as_ref(),
                metrics: &self.metrics,
            };
            // 4. Resume point, 5. archive.
            let attempt = async {
                let plan = slot::resume_point(&settings.db, &opts.slot, &self.stream_id, &self.repos).await?;
                if start_lsn.is_none() {
                    // Once: fmt layers append a field recorded again.
                    self.span.record("lsn", tracing::field::display(plan.resume));
                    start_lsn = Some(plan.resume);
                }
                if !coverage_checked {
                    autobackup.check_coverage(&self.repos, &self.system_identifier, &settings.db.dbname, plan.chain_start).await;
                    coverage_checked = true;
                }
                let mut conn = match repl.take() {
                    Some(conn) => conn,
                    None => ReplicationConnection::connect(&settings.db).await?,
                };
                let mut archiver = Archiver::new(self.stream_id.clone(), plan.resume);
                let result = session::run_session(&mut conn, &mut archiver, &cx, &mut upkeep, &mut totals, shutdown).await;
                durable_end = archiver.durable_end();
                let progressed = durable_end > plan.resume;
                if result.is_ok() {
                    let _ = conn.close().await;
                }
                result.map(|end| (end, progressed))
            };
            match attempt.await {
                Ok((SessionEnd::Shutdown, _)) => break,
                Ok((SessionEnd::Resubscribe, _)) => {
                    resubscribe_at = None;
                    continue;
                }
                Ok((SessionEnd::ServerEnded, progressed)) => {
                    tracing::warn!("the server ended the replication stream; reconnecting");
                    self.metrics.session_error("server_ended");
                    if progressed {
                        backoff = Duration::from_secs(1);
                    }
                }
                Err(e) if resubscribe_at.is_none() && insert_only_exists && publication::is_missing_publication(&e, &names.insert_only) => {
                    // Created by an earlier run that stopped before the
                    // archive passed its creation.
                    resubscribe_at = Some(self.insert_only_from(&mut upkeep, &names).await?);
                    continue;
                }
                Err(e) if e.is_retryable() || slot::is_slot_in_use(&e) => {
                    // A slot still held by a killed predecessor's walsender is
                    // released once the server notices; a live second streamer
                    // keeps us waiting here, warned every attempt.
                    tracing::warn!(error = %e.user_line(), backoff_s = backoff.as_secs(), "stream interrupted; reconnecting");
                    self.metrics.session_error(metrics::error_class(e.kind()));
                }
                Err(e) => return Err(e),
            }
            reconnects += 1;
            self.metrics.reconnected();
            tokio::select! {
                _ = shutdown.as_mut() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let start_lsn = start_lsn.unwrap_or(durable_end);
        tracing::info!(start_lsn = %start_lsn, durable_end = %durable_end, segments = totals.segments, "stream stopped");
        Ok(StreamReport {
            stream_id: self.stream_id.clone(),
            start_lsn,
            durable_end,
            totals,
            tables_without_identity,
            auto_backups: AutoBackupTotals::default(),
            reconnects,
        })
    }

    /// Where the insert-only publication can be streamed from: the current
    /// WAL position (it exists by now). Until the archive gets there, only
    /// the main publication is streamed.
    async fn insert_only_from(&self, upkeep: &mut Upkeep, names: &PublicationNames) -> Result<Lsn> {
        let at = upkeep.current_wal_lsn().await?;
        tracing::warn!(
            publication = %names.insert_only,
            from = %at,
            "the slot's position predates the insert-only publication: streaming only {} until the archive reaches {at}; \
             inserts into tables without a replica identity before that are not archived",
            names.main
        );
        Ok(at)
    }
}

/// Tables added to a publication that already existed missed earlier changes
/// (so did tables that were not archived, [`unarchived`]). `upkeep` made that
/// reconcile: it knows since when.
pub(crate) async fn request_late(autobackup: &AutoBackup, done: &Reconciled, upkeep: &mut Upkeep) {
    for (table, (since, time)) in upkeep.late_tables(done) {
        request_unseen(autobackup, upkeep, BackupReason::LateTable { table, since, time }).await;
    }
}

/// Ask for the table image of a change the archive does not show (a late
/// table, a definition change found in the catalog, an UPDATE or DELETE of a
/// table without a replica identity), recorded first in every repository
/// ([`Upkeep::record_unseen`]): replay refuses past it until the image
/// exists, also when automatic backups are off or the image fails.
pub(crate) async fn request_unseen(autobackup: &AutoBackup, upkeep: &mut Upkeep, reason: BackupReason) {
    if let Some(info) = reason.image()
        && let Some(cover) = info.covers.iter().find(|c| c.unseen)
    {
        upkeep.record_unseen(&info.schema, &info.name, &cover.reason, (cover.lsn, cover.time)).await;
    }
    autobackup.request(reason);
}

/// The default slot and publication name for a database: `pgkeep_<db>`,
/// lower-cased, anything but `[a-z0-9_]` replaced by `_`, at most 63 bytes.
pub fn default_name(dbname: &str) -> String {
    let mut n: String = format!("pgkeep_{dbname}").chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    n.truncate(63);
    n
}

/// Stop using change archiving: drop pgkeep's slot (so the server stops
/// retaining WAL for it) and both its publications. Returns what was removed.
pub async fn remove(settings: &Settings, slot: &str, publication: &str) -> Result<Vec<String>> {
    validate_slot_name(slot)?;
    let conn = crate::pg::connect(&settings.db).await?;
    let mut removed = Vec::new();
    let fail = crate::pg::query_error;
    conn.client.batch_execute(&format!("SET {MAINTENANCE_SETTING} = 'on'")).await.map_err(fail("cannot set up the session".to_string()))?;
    let dropped = conn
        .client
        .query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&slot])
        .await
        .map_err(fail(format!("cannot drop replication slot {slot}")))?;
    if !dropped.is_empty() {
        removed.push(format!("replication slot {slot}"));
    } else {
        let active: Option<i32> = conn
            .client
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(fail(format!("cannot look up replication slot {slot}")))?
            .and_then(|r| r.get(0));
        if let Some(pid) = active {
            return Err(Error::new(ErrorKind::Database, format!("replication slot {slot} is in use by pid {pid}"))
                .with_hint("stop `pgkeep stream` first, then run this again"));
        }
    }
    removed.extend(publication::drop_all(&conn.client, &PublicationNames::new(publication)).await?);
    Ok(removed)
}
