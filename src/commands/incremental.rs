//! `pgkeep backup --incremental`: record an incremental backup — the change
//! archive since the previous backup, pinned up to now — instead of copying
//! the tables again. Restoring it is a point-in-time restore of its full
//! ancestor to the incremental's end.
//!
//! [`run`], step by step:
//!
//! 1. preflight and repositories (shared lock, as a full backup);
//! 2. the change-archiving slot: missing → created (with its publication),
//!    then a full backup instead, so the next incremental has an archive;
//! 3. the parent: the newest full or incremental backup of this database and
//!    cluster; none → a full backup instead;
//! 4. a restore point: a `pgkeep.restore_point` logical message marks "now"
//!    in the WAL; when `pgkeep stream` is running it archives up to there
//!    by itself and we wait for it, otherwise we drain the slot ourselves
//!    (never two consumers of one slot);
//! 5. the range: the unbroken chain of segments from the parent's end to
//!    the restore point, every segment read and checked;
//! 6. the schema now; if it differs from the parent's and no DDL was
//!    captured in the range, a full backup instead (a replay across an
//!    uncaptured schema change could not be trusted);
//! 7. the manifest, last, in every repository.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::try_join_all;

use super::backup::{self, BackupOptions, BackupReport};
use crate::backup::schema::SchemaDump;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{self, ServerFacts};
use crate::pg::connect;
use crate::replay::chain;
use crate::replication::pgoutput::{self, PgOutputMessage};
use crate::repo::catalog::{self as repo_catalog, CatalogEntry};
use crate::repo::layout::{BackupKind, Lsn};
use crate::repo::lock::{self, LockMode, LockOptions};
use crate::repo::manifest::{BackupManifest, BackupStats, ChangeRange, LargeObjects, ObjectEntry, RunInfo, SnapshotInfo, SnapshotMethod};
use crate::storage::Storage;
use crate::stream::ddl::DDL_PREFIX;
use crate::stream::{self, StreamOptions};

/// The prefix of the restore-point message.
pub const RESTORE_POINT_PREFIX: &str = "pgkeep.restore_point";
/// How long to wait for the archive to reach the restore point.
const ARCHIVE_WAIT: Duration = Duration::from_secs(600);

/// Take an incremental backup (or a full one when an incremental cannot stand; the report says which).
pub async fn run(settings: &Settings, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let started_at = Utc::now();
    let db = &settings.db.dbname;
    let full_instead = async |why: String| -> Result<BackupReport> {
        tracing::warn!(reason = %why, "taking a full backup instead of an incremental");
        backup::run(settings, &BackupOptions { kind: BackupKind::Full, ..opts.clone() }).await
    };

    // 1. Preflight and repositories; the keys that read (and the sealer that writes) encrypted data.
    let keys = Arc::new(crate::crypto::Keyring::from_settings(&settings.encryption));
    let opts = &BackupOptions { sealer: crate::crypto::Sealer::from_settings(&settings.encryption)?.map(Arc::new), ..opts.clone() };
    let facts = backup::preflight(settings).await?;
    let system_identifier = facts.system_identifier.clone().unwrap_or_default();
    let repos = backup::open_repositories(settings).await?;

    // 2. The slot (first: a missing one is created even when there is no parent yet).
    let slot = stream::default_name(db);
    let conn = connect::connect(&settings.db).await?;
    let slot_row = conn
        .client
        .query_opt("SELECT active, wal_status::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()", &[&slot])
        .await
        .map_err(crate::pg::query_error(format!("looking up replication slot {slot}")))?;
    let Some(slot_row) = slot_row else {
        // Create the slot and publication (a stream run that stops at once), then a full backup they continue.
        let opts_stream = StreamOptions::new(slot.clone(), slot.clone());
        stream::run(settings, &opts_stream, std::future::ready(())).await?;
        return full_instead(format!("there was no change-archiving slot {slot}; it now exists and the next incremental builds on this backup")).await;
    };
    // 3. The parent.
    let Some(parent) = newest_backup(&repos, db, &system_identifier).await? else {
        return full_instead(format!("database {db} has no backup to build on")).await;
    };
    if parent.snapshot.method != SnapshotMethod::ReplicationSlot {
        return full_instead(format!("backup {} has no replication-slot snapshot for changes to continue from", parent.backup_id)).await;
    }

    let (active, wal_status): (bool, Option<String>) = (slot_row.get(0), slot_row.get(1));
    if wal_status.as_deref() == Some("lost") {
        return full_instead(format!("slot {slot} lost WAL it needed; the archive has a gap")).await;
    }
    let stream_id = format!("{system_identifier}-{slot}");

    // 4-7. Under the shared lock: restore point, range, schema, manifest.
    let locks = lock::acquire_all(&repos, "backup", LockMode::Shared, &LockOptions::default()).await?;
    let increment = Increment {
        settings,
        opts,
        facts: &facts,
        repos: &repos,
        keys: &keys,
        client: &conn.client,
        slot: &slot,
        slot_active: active,
        system_identifier: &system_identifier,
        stream_id: &stream_id,
        parent_end: parent.changes.as_ref().map(|c| c.end_lsn).unwrap_or(parent.snapshot.consistent_lsn),
        parent: &parent,
        started,
        started_at,
    };
    let outcome = increment.record().await;
    lock::release_all(locks).await;
    match outcome {
        Ok(Recorded::Manifest(manifest)) => {
            let report = BackupReport { manifest: *manifest, repositories: repos.iter().map(|r| r.location()).collect() };
            tracing::info!("{}", report.summary_line());
            Ok(report)
        }
        Ok(Recorded::Gap) => full_instead(format!("the change archive of stream {stream_id} has a gap after backup {}", parent.backup_id)).await,
        Ok(Recorded::UncapturedSchemaChange) => {
            full_instead(format!("the schema changed since backup {} and no DDL was captured (`pgkeep setup`)", parent.backup_id)).await
        }
        Ok(Recorded::Unarchived(tables)) => {
            full_instead(format!("the change archive since backup {} lacks the changes of {}", parent.backup_id, tables.join("; "))).await
        }
        Err(e) => Err(e),
    }
}

/// How steps 4 to 7 ended.
enum Recorded {
    /// The incremental backup, its manifest written in every repository.
    Manifest(Box<BackupManifest>),
    /// The archive has no unbroken chain from the parent to the restore point.
    Gap,
    /// The schema differs from the parent's and no DDL was captured in the range.
    UncapturedSchemaChange,
    /// Tables the stream could not archive in the range (each with why).
    Unarchived(Vec<String>),
}

/// What steps 4 to 7 share: the slot, the parent and where the run started.
struct Increment<'a> {
    settings: &'a Settings,
    opts: &'a BackupOptions,
    facts: &'a ServerFacts,
    repos: &'a [Arc<dyn Storage>],
    keys: &'a Arc<crate::crypto::Keyring>,
    client: &'a tokio_postgres::Client,
    slot: &'a str,
    /// `pgkeep stream` is consuming the slot.
    slot_active: bool,
    system_identifier: &'a str,
    /// `<system_identifier>-<slot>`.
    stream_id: &'a str,
    parent: &'a BackupManifest,
    /// Where the parent's data ends: the end of its changes, else its consistent point.
    parent_end: Lsn,
    started: Instant,
    started_at: chrono::DateTime<Utc>,
}

impl Increment<'_> {
    /// Steps 4 to 7, in order.
    async fn record(&self) -> Result<Recorded> {
        // 4. The restore point, archived by the running stream or by us.
        let mark = self.restore_point().await?;
        // 5. The range.
        let Some(range) = self.range(mark).await? else {
            return Ok(Recorded::Gap);
        };
        // A table the stream could not archive in the range: a restore of it would be refused.
        let windows = crate::stream::unarchived::UnarchivedLog::of_stream(self.repos, self.stream_id).load().await?;
        let missing: Vec<String> = windows
            .all
            .iter()
            .filter(|w| w.since < mark && w.until.is_none_or(|u| u > self.parent_end))
            .map(|w| format!("table {} ({})", w.table(), w.reason))
            .collect();
        if !missing.is_empty() {
            return Ok(Recorded::Unarchived(missing));
        }
        // 6. The schema now, against the parent's.
        let server_major = self.facts.version_num / 10000;
        let dump = crate::backup::schema::capture(&self.settings.db, "", server_major, self.facts.is_superuser, None).await?;
        if !self.same_schema(&dump).await && !range.ddl {
            return Ok(Recorded::UncapturedSchemaChange);
        }
        // 7. Manifest last.
        self.write_manifest(mark, range, dump).await.map(|m| Recorded::Manifest(Box::new(m)))
    }

    /// Step 4: a `pgkeep.restore_point` message marks "now" in the WAL; the
    /// running stream archives up to it, or we drain the slot ourselves.
    async fn restore_point(&self) -> Result<Lsn> {
        let (client, slot, db) = (self.client, self.slot, &self.settings.db.dbname);
        let mark: String = client
            .query_one("SELECT pg_logical_emit_message(true, $1, $2)::text", &[&RESTORE_POINT_PREFIX, &format!("incremental of {db}")])
            .await
            .map_err(crate::pg::query_error("writing the restore point"))?
            .get(0);
        let mark: Lsn = mark.parse()?;
        if self.slot_active {
            wait_for_archive(client, slot, mark).await?;
        } else {
            let stream_opts = StreamOptions { segment_seconds: 1, ..StreamOptions::new(slot.to_string(), slot.to_string()) };
            let slot_name = slot.to_string();
            stream::run(self.settings, &stream_opts, async move {
                let _ = wait_for_archive(client, &slot_name, mark).await;
            })
            .await?;
            wait_for_archive(client, slot, mark).await?;
        }
        Ok(mark)
    }

    /// Step 5: the unbroken chain of segments from the parent's end to
    /// `mark`, every segment read and checked; `None` when there is none.
    async fn range(&self, mark: Lsn) -> Result<Option<ChangeRange>> {
        let (repos, parent_end) = (self.repos, self.parent_end);
        let streams = chain::list_streams(repos, self.system_identifier).await?;
        // The slot's newest epoch (`<id>.N` after the slot was created again).
        let archive = streams
            .iter()
            .filter_map(|s| stream::epoch_of(&s.stream_id, self.stream_id).map(|e| (e, s)))
            .max_by_key(|(e, _)| *e)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no change segments of stream {} in any repository", self.stream_id)))?;
        let segs = archive.chain_from(parent_end);
        let Some(last) = segs.iter().position(|s| s.end >= mark) else {
            return Ok(None);
        };
        let segs = &segs[..=last];
        let mut range = ChangeRange {
            stream_id: archive.stream_id.clone(),
            start_lsn: parent_end,
            end_lsn: mark,
            last_commit_lsn: parent_end,
            last_commit_time: None,
            transactions: 0,
            row_changes: 0,
            first_commit_time: None,
            segments: segs.iter().map(|s| ObjectEntry { key: s.key.clone(), size: s.size }).collect(),
            ddl: false,
        };
        for s in segs {
            let seg = chain::fetch_segment(repos, s, self.keys).await?;
            for t in &seg.transactions {
                let Some(Ok(PgOutputMessage::Begin(b))) = t.messages.first().map(|m| pgoutput::decode(m)) else { continue };
                if b.final_lsn < parent_end || b.final_lsn > mark {
                    continue;
                }
                range.transactions += 1;
                range.last_commit_lsn = b.final_lsn;
                range.last_commit_time = b.commit_time.to_utc();
                range.first_commit_time = range.first_commit_time.or(range.last_commit_time);
                for m in t.messages.iter().map(|m| pgoutput::decode(m)) {
                    match m {
                        Ok(PgOutputMessage::Insert(_) | PgOutputMessage::Update(_) | PgOutputMessage::Delete(_) | PgOutputMessage::Truncate(_)) => {
                            range.row_changes += 1
                        }
                        Ok(PgOutputMessage::Message(x)) if x.prefix == DDL_PREFIX => range.ddl = true,
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(range))
    }

    /// Step 6: `dump`'s schema is the parent's (a parent that cannot be read counts as different).
    async fn same_schema(&self, dump: &SchemaDump) -> bool {
        let parent = self.parent;
        let parent_source = crate::restore::source::BackupSource::find_with_keys(
            self.repos,
            &crate::restore::source::BackupSelector::Id(parent.backup_id.clone()),
            &self.settings.db.dbname,
            self.keys,
        )
        .await;
        let parent_pre = match parent_source {
            Ok(src) => src.read_chunk(&parent.schema.pre_data).await.ok(),
            Err(_) => None,
        };
        parent_pre.is_some_and(|p| {
            crate::restore::schema::strip_psql_guards(&String::from_utf8_lossy(&p))
                == crate::restore::schema::strip_psql_guards(&String::from_utf8_lossy(&dump.pre_data))
        })
    }

    /// Step 7: the schema pack, then the manifest, in every repository (all
    /// or nothing: a repository that fails fails the incremental backup).
    async fn write_manifest(&self, mark: Lsn, range: ChangeRange, dump: SchemaDump) -> Result<BackupManifest> {
        let (repos, parent, opts, db) = (self.repos, self.parent, self.opts, &self.settings.db.dbname);
        let backup_id = crate::repo::claim::claim_id(repos, BackupKind::Incremental, self.started_at, db).await?;
        // All or nothing here: a repository that fails the schema pack fails the incremental backup.
        let targets = crate::pipeline::targets::BackupTargets::new(repos.to_vec());
        let (schema, objects) = backup::store_schema(&targets, &backup_id, opts, dump).await?;
        targets.require_all()?;
        let sequences = catalog::sequence_values(self.client).await?;
        let manifest = BackupManifest {
            backup_id: backup_id.clone(),
            kind: BackupKind::Incremental,
            parent: Some(parent.backup_id.clone()),
            database: db.clone(),
            database_info: parent.database_info.clone(),
            server: parent.server.clone(),
            started_at: self.started_at,
            finished_at: Utc::now(),
            snapshot: SnapshotInfo {
                method: SnapshotMethod::ReplicationSlot,
                consistent_lsn: mark,
                slot_name: Some(self.slot.to_string()),
                slot_kept: true,
                server_time: None,
            },
            started_by: RunInfo::current(),
            compression: parent.compression.clone(),
            encryption: None,
            schema,
            tables: Vec::new(),
            sequences,
            large_objects: LargeObjects { count: 0, covered: true },
            stats: BackupStats {
                database_size: self.facts.database_size,
                raw_bytes: 0,
                stored_bytes: objects.iter().map(|o| o.size).sum::<u64>() + range.segments.iter().map(|s| s.size).sum::<u64>(),
                rows: 0,
                duration_ms: self.started.elapsed().as_millis() as u64,
            },
            objects,
            warnings: Vec::new(),
            changes: Some(range),
            image: None,
        };
        let mut manifest = manifest;
        if let Some(sealer) = &opts.sealer {
            crate::repo::manifest_mac::seal(sealer, &mut manifest)?;
        }
        if let Err(e) = try_join_all(repos.iter().map(|r| repo_catalog::write_manifest(r.as_ref(), &manifest))).await {
            for r in repos {
                backup::remove_prefix(r.as_ref(), &backup_id.prefix()).await;
            }
            return Err(e.context(format!("incremental backup {backup_id} failed")));
        }
        Ok(manifest)
    }
}

/// The newest valid full or incremental backup of `db` from cluster `system_identifier`.
async fn newest_backup(repos: &[Arc<dyn Storage>], db: &str, system_identifier: &str) -> Result<Option<BackupManifest>> {
    let mut best: Option<BackupManifest> = None;
    for repo in repos {
        for e in repo_catalog::list_backups(repo.as_ref()).await? {
            let CatalogEntry::Valid(m) = e else { continue };
            let eligible = m.database == db
                && matches!(m.kind, BackupKind::Full | BackupKind::Incremental)
                && (system_identifier.is_empty() || m.server.system_identifier == system_identifier);
            if eligible && best.as_ref().is_none_or(|b| (m.started_at, &m.backup_id) > (b.started_at, &b.backup_id)) {
                best = Some(*m);
            }
        }
    }
    Ok(best)
}

/// Wait until slot `slot` is confirmed at or past `lsn` (everything before it is archived).
async fn wait_for_archive(client: &tokio_postgres::Client, slot: &str, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + ARCHIVE_WAIT;
    loop {
        let confirmed: Option<String> = client
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(crate::pg::query_error(format!("reading slot {slot}")))?
            .get(0);
        if let Some(c) = confirmed
            && c.parse::<Lsn>()? >= lsn
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Aborted,
                format!("the change archive did not reach the restore point {lsn} within {} s (slot {slot})", ARCHIVE_WAIT.as_secs()),
            )
            .with_hint("check that `pgkeep stream` is healthy (`pgkeep check`)"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
