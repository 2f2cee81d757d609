//! The backup engine: a full, transactionally consistent logical backup of
//! one database into every configured repository. [`run`] reads as the steps
//! the README lists; the details live in the sibling modules and
//! `crate::pipeline`. Called by `pgkeep backup` (`commands::backup`), by
//! incremental backups and pre-restore backups, and by `stream`'s automatic
//! backups.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use tracing::Instrument;

use crate::backup::plan;
use crate::backup::schema::{self, SchemaDump};
use crate::backup::snapshot::SnapshotHolder;
use crate::backup::worker::{self, TaskResult, WorkerShared};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{self, ServerFacts, TableInfo};
use crate::pg::connect;
use crate::pipeline::pack::PackSink;
use crate::pipeline::process;
use crate::pipeline::targets::BackupTargets;
use crate::pipeline::{Compression, TableFingerprint};
use crate::progress::ProgressCounters;
use crate::repo::catalog as repo_catalog;
use crate::repo::claim;
use crate::repo::layout::{BackupId, BackupKind};
use crate::repo::lock::{self, LockMode, LockOptions};
use crate::repo::manifest::{
    BackupManifest, BackupStats, ChunkRef, CompressionInfo, ExtensionConfig, ImageInfo, LargeObjects, ObjectEntry, RunInfo, SchemaObjects, ServerInfo,
    SnapshotInfo, TableEntry,
};
use crate::repo::meta;
use crate::storage::Storage;

/// Options of a backup run.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Chunk compression.
    pub compression: Compression,
    /// Raw bytes per chunk.
    pub chunk_size: usize,
    /// Tables larger than this are split into block ranges of about this size.
    pub range_bytes: u64,
    /// Pack objects are closed at this size.
    pub pack_size: u64,
    /// How long to wait for table locks.
    pub lock_timeout: Duration,
    /// Full or pre-restore.
    pub kind: BackupKind,
    /// Live counters for a progress display.
    pub progress: Arc<ProgressCounters>,
    /// Encryption of this backup; `run` sets it from the settings' recipients or passphrase.
    pub sealer: Option<Arc<crate::crypto::Sealer>>,
    /// A table image ([`BackupKind::TableImage`]): only this table (or its
    /// leaf partitions) and its schema are copied.
    pub image: Option<ImageInfo>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            compression: Compression::Zstd(1),
            chunk_size: 8 << 20,
            range_bytes: 256 << 20,
            pack_size: 256 << 20,
            lock_timeout: Duration::from_secs(30),
            kind: BackupKind::Full,
            progress: Arc::new(ProgressCounters::default()),
            sealer: None,
            image: None,
        }
    }
}

/// What a finished backup reports.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The manifest written.
    pub manifest: BackupManifest,
    /// Repositories written.
    pub repositories: Vec<String>,
}

impl BackupReport {
    /// One human line saying what the backup holds (see [`crate::backup::summary`]).
    pub fn summary_line(&self) -> String {
        crate::backup::summary::line(&self.manifest, &self.repositories)
    }

    /// Machine-readable report.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "backup_id": self.manifest.backup_id.as_str(),
            "kind": self.manifest.kind.to_string(),
            "database": self.manifest.database,
            "tables": self.manifest.tables.len(),
            "stats": self.manifest.stats,
            "repositories": self.repositories,
            "snapshot_lsn": self.manifest.snapshot.consistent_lsn.to_string(),
        })
    }
}

/// Bytes as KiB/MiB/GiB text.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Take a full backup.
pub async fn run(settings: &Settings, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let started_at = Utc::now();

    // 1. Preflight: connect, check version, privileges, wal_level.
    let facts = preflight(settings).await?;
    // 1a. Encryption (when configured): a fresh data key, wrapped for the recipients or passphrase.
    let opts = &BackupOptions { sealer: crate::crypto::Sealer::from_settings(&settings.encryption)?.map(Arc::new), ..opts.clone() };

    // 2. Repositories: reachable, writable, initialized; pick a free backup id.
    let repos = open_repositories(settings).await?;
    // Shared `backup` lock in every repository (docs/FORMAT.md §6): `expire`
    // never runs while this backup writes. Released below, success or failure.
    let locks = lock::acquire_all(&repos, "backup", LockMode::Shared, &LockOptions::default()).await?;
    // The id is claimed atomically in every repository before anything is written (repo::claim).
    let backup_id = match claim::claim_id(&repos, opts.kind, started_at, &settings.db.dbname).await {
        Ok(id) => id,
        Err(e) => {
            lock::release_all(locks).await;
            return Err(e);
        }
    };
    let span = tracing::info_span!("backup", backup_id = %backup_id, database = %settings.db.dbname);
    // Every repository is written at once; one that fails is dropped and the others carry on.
    let targets = BackupTargets::new(repos.clone());

    // 3–5. Snapshot, tables, schema and data. The snapshot, its table locks
    // and its slot are released the moment this ends, success or failure,
    // before anything else (cleanup included). SIGTERM/SIGINT stop it
    // (crate::interrupt) and take the failure path of step 7.
    let captured = crate::interrupt::guard(capture(settings, opts, &facts, &targets, &backup_id)).instrument(span.clone()).await;

    // 6. Manifest last, in every repository still healthy, once every object is durable there.
    if opts.kind == BackupKind::TableImage {
        crate::failpoint::hit("image.before_manifest");
    }
    let result = match captured.and_then(|c| c.into_manifest(settings, opts, &facts, &backup_id, started, started_at)) {
        Ok(manifest) => write_manifests(&targets, manifest).instrument(span).await,
        Err(e) => Err(e),
    };

    // 7. Report, or clean up: an unfinished backup is never visible, in any repository.
    let outcome = conclude(result, &targets, &backup_id).await;
    lock::release_all(locks).await;
    outcome
}

/// What the database gave, before the manifest is assembled.
struct Captured {
    tables: Arc<Vec<TableInfo>>,
    results: Vec<TaskResult>,
    objects: Vec<ObjectEntry>,
    schema: SchemaObjects,
    sequences: Vec<crate::repo::manifest::SequenceEntry>,
    lo_count: u64,
    warnings: Vec<String>,
    snapshot: SnapshotInfo,
}

/// Steps 3–5: take the snapshot, read everything under it into the
/// repositories, and release it. On failure it is released first, then the
/// failure is logged (the database is free from that moment), then returned.
async fn capture(settings: &Settings, opts: &BackupOptions, facts: &ServerFacts, targets: &Arc<BackupTargets>, backup_id: &BackupId) -> Result<Captured> {
    // 3. Consistent snapshot, held until every COPY and the schema dump finish.
    // 4a. Under it: tables and their locks (a new snapshot if a table was
    //     rewritten or truncated in between).
    let (snapshot, tables) = snapshot_and_locks(settings, opts, facts).await?;
    // The server's clock at the snapshot: point-in-time restores choose bases by it.
    let server_time = snapshot.client().query_one("SELECT now()", &[]).await.ok().and_then(|r| r.try_get::<_, chrono::DateTime<Utc>>(0).ok());
    let read = read_under(&snapshot, tables, settings, opts, facts, targets, backup_id).await;
    let info = SnapshotInfo { method: snapshot.method, consistent_lsn: snapshot.lsn, slot_name: snapshot.slot_name.clone(), slot_kept: false, server_time };
    let released = snapshot.release().await;
    let (tables, results, objects, schema_dump, sequences, lo_count, warnings) = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e.user_line(), "backup failed; snapshot, table locks and slot released; removing the partial backup");
            return Err(e);
        }
    };
    released?;
    // 5a. The schema SQL as a pack of its own (storage only: the database is already free).
    let (schema, schema_packs) = store_schema(targets, backup_id, opts, schema_dump).await?;
    let mut objects = objects;
    objects.extend(schema_packs);
    Ok(Captured { tables, results, objects, schema, sequences, lo_count, warnings, snapshot: info })
}

/// What [`read_under`] reads: tables, task results, packs, schema dump, sequences, large objects, warnings.
type ReadOut = (Arc<Vec<TableInfo>>, Vec<TaskResult>, Vec<ObjectEntry>, SchemaDump, Vec<crate::repo::manifest::SequenceEntry>, u64, Vec<String>);

/// Steps 4–5 under the snapshot.
async fn read_under(
    snapshot: &SnapshotHolder,
    tables: Vec<TableInfo>,
    settings: &Settings,
    opts: &BackupOptions,
    facts: &ServerFacts,
    targets: &Arc<BackupTargets>,
    backup_id: &BackupId,
) -> Result<ReadOut> {
    // 4b. Under the snapshot: sequences, large objects (a table image has
    //     neither: replay samples sequences from the archive).
    let image = opts.image.is_some();
    let sequences = if image { Vec::new() } else { catalog::sequence_values(snapshot.client()).await? };
    let lo_count = if image { 0 } else { catalog::large_object_count(snapshot.client()).await? };
    if lo_count > 0 {
        tracing::warn!(count = lo_count, "large objects are not covered by this backup");
    }
    let warnings = if image { Vec::new() } else { identity_warnings(snapshot.client()).await };

    // 5. Schema (pg_dump, DDL only) and data (parallel COPY workers) at once;
    //    for a table image, only its tables' schema.
    let tables = Arc::new(tables);
    let server_major = facts.version_num / 10000;
    let only: Option<Vec<(String, String)>> = image.then(|| tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect());
    let (schema_dump, (results, objects)) = tokio::try_join!(
        schema::capture(&settings.db, &snapshot.name, server_major, facts.is_superuser, only.as_deref()),
        copy_all_tables(settings, opts, targets, backup_id, &snapshot.name, tables.clone(), facts),
    )?;
    Ok((tables, results, objects, schema_dump, sequences, lo_count, warnings))
}

impl Captured {
    fn into_manifest(
        self,
        settings: &Settings,
        opts: &BackupOptions,
        facts: &ServerFacts,
        backup_id: &BackupId,
        started: Instant,
        started_at: chrono::DateTime<Utc>,
    ) -> Result<BackupManifest> {
        let table_entries = assemble_tables(&self.tables, self.results);
        let stats = BackupStats {
            database_size: facts.database_size,
            raw_bytes: table_entries.iter().map(|t| t.raw_bytes).sum(),
            stored_bytes: self.objects.iter().map(|o| o.size).sum(),
            rows: table_entries.iter().map(|t| t.rows).sum(),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let mut manifest = BackupManifest {
            backup_id: backup_id.clone(),
            kind: opts.kind,
            parent: None,
            database: settings.db.dbname.clone(),
            database_info: facts.database_info.clone(),
            server: ServerInfo {
                version: facts.version.clone(),
                version_num: facts.version_num,
                system_identifier: facts.system_identifier.clone().unwrap_or_default(),
                timeline: facts.timeline.unwrap_or(0),
            },
            started_at,
            finished_at: Utc::now(),
            snapshot: self.snapshot,
            started_by: RunInfo::current(),
            compression: CompressionInfo { algorithm: opts.compression.name().into(), level: opts.compression.level() },
            encryption: None,
            schema: self.schema,
            tables: table_entries,
            sequences: self.sequences,
            large_objects: LargeObjects { count: self.lo_count, covered: self.lo_count == 0 },
            objects: self.objects,
            stats,
            warnings: self.warnings,
            changes: None,
            image: opts.image.clone(),
        };
        if let Some(sealer) = &opts.sealer {
            crate::repo::manifest_mac::seal(sealer, &mut manifest)?;
        }
        Ok(manifest)
    }
}

/// Step 6: the manifest in every healthy repository; one that fails to take
/// it is dropped like any other failed repository.
async fn write_manifests(targets: &BackupTargets, manifest: BackupManifest) -> Result<BackupManifest> {
    crate::failpoint::hit("backup.before_manifest");
    let healthy = targets.healthy();
    let written = join_all(healthy.iter().map(|(_, r)| repo_catalog::write_manifest(r.as_ref(), &manifest))).await;
    for ((i, _), w) in healthy.iter().zip(written) {
        if let Err(e) = w {
            targets.fail(*i, e)?;
        }
    }
    Ok(manifest)
}

/// Step 7: the report when every repository has the backup; otherwise
/// remove the partial backup where it is incomplete and fail, naming each
/// repository that failed and those where the backup is complete.
async fn conclude(result: Result<BackupManifest>, targets: &BackupTargets, backup_id: &BackupId) -> Result<BackupReport> {
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            remove_partial(targets.all(), &backup_id.prefix()).await;
            // Every repository failed: name the ones that failed before the last.
            let line = e.user_line();
            let earlier: Vec<String> =
                targets.failures().into_iter().filter(|f| !line.contains(&f.line)).map(|f| format!("in {}: {}", f.location, f.line)).collect();
            let e = if earlier.is_empty() { e } else { e.context(format!("earlier failed {}; then", earlier.join("; "))) };
            let what = if e.kind() == ErrorKind::Aborted { "stopped; nothing kept, locks released" } else { "failed" };
            return Err(e.context(format!("backup {backup_id} {what}")));
        }
    };
    let failures = targets.failures();
    let complete: Vec<String> = targets.healthy().iter().map(|(_, r)| r.location()).collect();
    let report = BackupReport { manifest, repositories: complete.clone() };
    if failures.is_empty() {
        tracing::info!("{}", report.summary_line());
        return Ok(report);
    }
    // Partial success: valid and listed where complete, absent where it failed.
    let failed: Vec<Arc<dyn Storage>> = targets.all().iter().enumerate().filter(|(i, _)| targets.is_failed(*i)).map(|(_, r)| r.clone()).collect();
    remove_partial(&failed, &backup_id.prefix()).await;
    tracing::info!("{}", report.summary_line());
    for f in &failures {
        tracing::error!(repo = %f.location, error = %f.line, "backup {backup_id} FAILED in this repository; it is complete only in {}", complete.join(", "));
    }
    let per_repo: Vec<String> = failures.iter().map(|f| format!("in {}: {}", f.location, f.line)).collect();
    Err(Error::new(
        failures[0].kind,
        format!(
            "backup {backup_id} failed in {} of {} repositories ({}); it is complete and listed in {}",
            failures.len(),
            targets.all().len(),
            per_repo.join("; "),
            complete.join(", ")
        ),
    )
    .with_hint("fix the failed repository and run the backup again; the complete copies are valid backups"))
}

/// Remove an unfinished backup from `repos`, all at once (best effort; see [`remove_prefix`]).
async fn remove_partial(repos: &[Arc<dyn Storage>], prefix: &str) {
    join_all(repos.iter().map(|r| remove_prefix(r.as_ref(), prefix))).await;
}

pub(crate) async fn preflight(settings: &Settings) -> Result<ServerFacts> {
    let conn = connect(&settings.db).await?;
    let facts = catalog::server_facts(&conn.client).await?;
    if facts.version_num < 130000 {
        return Err(Error::new(
            ErrorKind::Config,
            format!("PostgreSQL {} at {} is not supported: pgkeep needs 13 or later", facts.version, settings.db.display_target()),
        ));
    }
    tracing::info!(server = %facts.version, user = %facts.current_user, wal_level = %facts.wal_level, replication = facts.can_replicate, "connected");
    Ok(facts)
}

/// The replication-slot snapshot when the server and role allow it, else an
/// exported snapshot. Until change archiving is configured nothing consumes
/// the slot, so it is temporary, and any failure to create it falls back
/// (loudly) rather than failing the full backup.
async fn take_snapshot(settings: &Settings, opts: &BackupOptions, facts: &ServerFacts) -> Result<SnapshotHolder> {
    if facts.wal_level != "logical" {
        tracing::warn!(wal_level = %facts.wal_level, "incremental backups and point-in-time recovery need wal_level=logical; this full backup is consistent");
    } else if !facts.can_replicate {
        tracing::warn!(user = %facts.current_user, "role lacks the REPLICATION attribute: incremental backups and point-in-time recovery need it (ALTER ROLE … REPLICATION); this full backup is consistent");
    } else {
        match SnapshotHolder::from_slot(&settings.db, opts.lock_timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::warn!(error = %e.user_line(), "no replication-slot snapshot; falling back to an exported snapshot (consistent, but no point to continue change archiving from)")
            }
        }
    }
    SnapshotHolder::export(&settings.db).await
}

/// Snapshots taken before giving up when tables keep being rewritten between
/// a snapshot and its locks.
const REWRITE_ATTEMPTS: u32 = 3;

/// Steps 3–4: a snapshot, its tables, and their locks — taken again when a
/// rewrite or TRUNCATE committed between the snapshot and the locks (the
/// copy would be empty or stale), at most [`REWRITE_ATTEMPTS`] times.
async fn snapshot_and_locks(settings: &Settings, opts: &BackupOptions, facts: &ServerFacts) -> Result<(SnapshotHolder, Vec<TableInfo>)> {
    let mut rewritten = Vec::new();
    for attempt in 1..=REWRITE_ATTEMPTS {
        let snapshot = take_snapshot(settings, opts, facts).await?;
        let mut tables = catalog::list_tables(snapshot.client()).await?;
        if let Some(image) = &opts.image {
            let leaves = catalog::leaf_tables_of(snapshot.client(), &image.schema, &image.name).await?;
            tables.retain(|t| leaves.contains(&t.oid));
            // Gone by that name: dropped, or renamed (then an image of nothing
            // would let replay keep the renamed table's inexact rows). The
            // caller takes a full backup instead.
            if tables.is_empty() {
                let _ = snapshot.release().await;
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("table {}.{} has no rows to image: it no longer exists by that name (dropped or renamed)", image.schema, image.name),
                ));
            }
        }
        check_privileges(&tables, facts)?;
        snapshot.lock_tables(&tables, opts.lock_timeout).await?;
        rewritten = snapshot.rewritten_since_snapshot(&tables).await?;
        if rewritten.is_empty() {
            return Ok((snapshot, tables));
        }
        tracing::warn!(
            attempt,
            tables = %rewritten.join(", "),
            "tables were rewritten or truncated after the backup's snapshot and before its locks: their rows are invisible to the snapshot; taking a new snapshot"
        );
        let _ = snapshot.release().await;
    }
    Err(Error::new(
        ErrorKind::Database,
        format!(
            "tables {} were rewritten or truncated between the backup's snapshot and its table locks {REWRITE_ATTEMPTS} times in a row",
            rewritten.join(", ")
        ),
    )
    .with_hint("a job keeps rewriting them (VACUUM FULL, CLUSTER, ALTER TABLE … TYPE, TRUNCATE): run the backup when it is done"))
}

fn check_privileges(tables: &[TableInfo], facts: &ServerFacts) -> Result<()> {
    let missing: Vec<String> = tables.iter().filter(|t| !t.can_select).map(TableInfo::display).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
    let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
    Err(Error::new(ErrorKind::Config, format!("role {} may not SELECT from {} table(s): {}{more}", facts.current_user, missing.len(), shown.join(", ")))
        .with_hint(format!("GRANT pg_read_all_data TO {} (PostgreSQL 14+), or GRANT SELECT on those tables", facts.current_user)))
}

pub(crate) async fn open_repositories(settings: &Settings) -> Result<Vec<Arc<dyn Storage>>> {
    meta::open_all(&settings.repos, meta::Access::Write).await
}

async fn copy_all_tables(
    settings: &Settings,
    opts: &BackupOptions,
    targets: &Arc<BackupTargets>,
    backup_id: &BackupId,
    snapshot: &str,
    tables: Arc<Vec<TableInfo>>,
    facts: &ServerFacts,
) -> Result<(Vec<TaskResult>, Vec<ObjectEntry>)> {
    let tasks = plan::plan(&tables, facts.version_num, opts.range_bytes);
    let jobs = settings.jobs.max(1).min(tasks.len().max(1));
    let mut remaining_parts: Vec<AtomicU32> = tables.iter().map(|_| AtomicU32::new(0)).collect();
    for t in &tasks {
        *remaining_parts[t.table].get_mut() += 1;
    }
    let progress = opts.progress.clone();
    progress.tables_total.store(tables.len() as u64, Ordering::Relaxed);
    let estimated_bytes: u64 = tables.iter().map(|t| t.bytes).sum();
    progress.bytes_total.store(estimated_bytes, Ordering::Relaxed);
    tracing::info!(tables = tables.len(), estimated_bytes, tasks = tasks.len(), jobs, "copying tables");
    let shared = Arc::new(WorkerShared {
        db: settings.db.clone(),
        snapshot: snapshot.to_string(),
        tables,
        queue: tokio::sync::Mutex::new(VecDeque::from(tasks)),
        compression: opts.compression,
        sealer: opts.sealer.clone(),
        chunk_size: opts.chunk_size,
        progress,
        remaining_parts,
    });
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let sink = PackSink::new(targets.clone(), backup_id.clone(), format!("data/w{:02}", i + 1), opts.pack_size);
        workers.spawn(worker::run(i + 1, shared.clone(), sink));
    }
    // The first failure stops every other worker before the caller cleans up,
    // so no worker writes into a backup that is being removed.
    let mut outcomes = Vec::with_capacity(jobs);
    while let Some(joined) = workers.join_next().await {
        let outcome = joined.map_err(|e| Error::internal(format!("copy worker crashed: {e}"))).and_then(|r| r);
        match outcome {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                workers.abort_all();
                while workers.join_next().await.is_some() {}
                return Err(e);
            }
        }
    }
    let mut results = Vec::new();
    let mut objects = Vec::new();
    for (r, o) in outcomes {
        results.extend(r);
        objects.extend(o);
    }
    Ok((results, objects))
}

/// Merge task results into one entry per table, ranges in block order.
fn assemble_tables(tables: &[TableInfo], mut results: Vec<TaskResult>) -> Vec<TableEntry> {
    results.sort_by_key(|r| (r.task.table, r.task.part));
    let mut entries: Vec<(TableFingerprint, u64, Vec<ChunkRef>)> = vec![(TableFingerprint::default(), 0, Vec::new()); tables.len()];
    for r in results {
        let e = &mut entries[r.task.table];
        e.0.merge(r.fingerprint);
        e.1 += r.raw_bytes;
        e.2.extend(r.chunks);
    }
    tables
        .iter()
        .zip(entries)
        .map(|(t, (fp, raw, chunks))| TableEntry {
            schema: t.schema.clone(),
            name: t.name.clone(),
            oid: t.oid,
            columns: t.columns.clone(),
            rows: fp.rows,
            raw_bytes: raw,
            fingerprint: fp.to_hex(),
            chunks,
            extension: t.extension.as_ref().map(|(name, filter)| ExtensionConfig { name: name.clone(), filter: filter.clone() }),
        })
        .collect()
}

/// Store the schema SQL as chunks of one `schema` pack.
pub(crate) async fn store_schema(
    targets: &Arc<BackupTargets>,
    backup_id: &BackupId,
    opts: &BackupOptions,
    dump: SchemaDump,
) -> Result<(SchemaObjects, Vec<ObjectEntry>)> {
    let mut sink = PackSink::new(targets.clone(), backup_id.clone(), "schema/schema", u64::MAX);
    let mut put = async |bytes: Vec<u8>| -> Result<ChunkRef> {
        let chunk = process::join(process::spawn_process_sealed(bytes.into(), opts.compression, false, opts.sealer.clone())).await?;
        sink.append(&chunk).await
    };
    let pre_data = put(dump.pre_data).await?;
    let post_data = put(dump.post_data).await?;
    let globals = match dump.globals {
        Some(g) => Some(put(g).await?),
        None => None,
    };
    let objects = sink.finish().await?;
    Ok((SchemaObjects { pre_data, post_data, globals }, objects))
}

/// Tables whose changes a point-in-time restore of this backup cannot fully
/// replay: without a usable replica identity only their inserts and
/// truncates are archived. Best effort: a failed query yields none.
async fn identity_warnings(client: &tokio_postgres::Client) -> Vec<String> {
    use crate::pg::catalog::{ARCHIVABLE_TABLE_SQL, USABLE_IDENTITY_SQL};
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE {ARCHIVABLE_TABLE_SQL} AND NOT {USABLE_IDENTITY_SQL} ORDER BY 1, 2"
    );
    match client.query(&sql, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let (schema, name): (String, String) = (r.get(0), r.get(1));
                format!(
                    "table {schema}.{name} has no replica identity: only its inserts and truncates are archived, so a point-in-time restore does not replay its updates and deletes (fix: ALTER TABLE {} REPLICA IDENTITY FULL, or add a primary key)",
                    catalog::qualified(&schema, &name)
                )
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "could not list tables without replica identity");
            Vec::new()
        }
    }
}

/// Best-effort removal of an interrupted backup's objects: abort its
/// unfinished uploads, then delete what it wrote. Every request is bounded by
/// the storage's deadline, and the first failure stops the removal (a store
/// that stalls is not waited on request after request); leftovers have no
/// manifest, are never listed, and `expire` removes them.
pub(crate) async fn remove_prefix(storage: &dyn Storage, prefix: &str) {
    let failed =
        |e: Error| tracing::warn!(repo = %storage.location(), prefix, error = %e.user_line(), "cannot remove the unfinished backup; `expire` removes it later");
    if let Err(e) = storage.clean_incomplete(prefix, Duration::ZERO).await {
        return failed(e);
    }
    let objects = match storage.list(prefix).await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    for o in objects {
        if let Err(e) = storage.delete(&o.key).await {
            return failed(e);
        }
    }
}
