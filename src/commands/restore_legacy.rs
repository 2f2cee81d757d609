//! `pgkeep restore` of a legacy archive: a `full_backup_YYYYMMDD_HHMMSS.dump.gz`
//! written by the old scripts (`pg_dump -Fc | gzip`). Same steps and the
//! same safety as [`restore::run`](crate::commands::restore::run) — approval,
//! pre-restore backup, temporary database, verification, swap approval,
//! swap — with `pg_restore` doing the load.
//!
//! Reached two ways: `restore::run` hands over an id that no repository has
//! a pgkeep backup of ([`run_if_archive`]); the CLI calls [`run_legacy`]
//! when the argument ends in `.dump.gz` (a file name, key or
//! `<location>/<key>`), which picks the archive even when a pgkeep backup
//! has the same id. `latest` never means a legacy archive.
//!
//! The archive is unpacked to a private temporary file rather than streamed
//! into `pg_restore`: the gzip CRC is only known at the end of the stream,
//! `pg_restore -j` needs a seekable file, and the file is read three times
//! (`--list`, a data-only pass that counts every table's rows, the load).
//! The first two run before anything is created on the server, so a damaged
//! archive — including a truncated dump inside a valid gzip file — is
//! refused before the pre-restore backup and the temporary database.
//!
//! In the report, `seconds.data` covers unpacking, checking and
//! `pg_restore` (schema, data, indexes); `schema` and `indexes` stay 0.

use std::time::Instant;

use crate::commands::restore::{self, PhaseTimes, RestoreOptions, RestoreReport};
use crate::config::{DbSettings, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::layout::BackupId;
use crate::restore::approve;
use crate::restore::legacy::{self, ArchiveSelector, ArchiveToc, LegacyArchive, TableRows, UnpackedArchive};
use crate::restore::source::open_repositories;
use crate::restore::target;
use crate::restore::verify::VerifyReport;
use crate::storage::Storage;

/// Whether a restore argument names a legacy archive file (`….dump.gz`).
pub fn is_archive_name(arg: &str) -> bool {
    arg.ends_with(legacy::ARCHIVE_SUFFIX)
}

/// Restore the legacy archive `name` (its file name, key, or
/// `<location>/<key>`). `opts.selector` is not used.
pub async fn run_legacy(settings: &Settings, opts: &RestoreOptions, name: &str) -> Result<RestoreReport> {
    let result = run_legacy_steps(settings, opts, name).await;
    crate::commands::restore::audit(settings, "restore", &result).await;
    result
}

async fn run_legacy_steps(settings: &Settings, opts: &RestoreOptions, name: &str) -> Result<RestoreReport> {
    if opts.point_in_time.is_some() {
        return Err(crate::error::Error::config(format!("legacy archive {name} cannot be restored to a point in time"))
            .with_hint("point-in-time restores start from a pgkeep full backup taken while `pgkeep stream` runs"));
    }
    let repos = open_repositories(settings).await?;
    let which = ArchiveSelector::Name(name.to_string());
    match legacy::find_archive(&repos, &which).await? {
        Some(archive) => run_archive(settings, opts, archive).await,
        None => {
            let where_ = repos.iter().map(|r| r.location()).collect::<Vec<_>>().join(", ");
            Err(Error::new(ErrorKind::NotFound, format!("legacy archive {name} not found in {where_}"))
                .with_hint("run `pgkeep list --legacy` to see the archives; copy others into BACKUP_DIR first"))
        }
    }
}

/// Called by `restore::run` when no repository has a pgkeep backup `id`:
/// restore the legacy archive with that id, or return `not_found`. A pgkeep
/// backup folder `backups/<id>/` (a damaged or unfinished backup) is never
/// replaced by an archive silently: then `not_found` is returned too.
pub(crate) async fn run_if_archive(
    settings: &Settings,
    opts: &RestoreOptions,
    repos: &[std::sync::Arc<dyn Storage>],
    id: &BackupId,
    not_found: Error,
) -> Result<RestoreReport> {
    for repo in repos {
        if !repo.list(&id.prefix()).await.map(|o| o.is_empty()).unwrap_or(true) {
            return Err(not_found);
        }
    }
    match legacy::find_archive(repos, &ArchiveSelector::Id(id.to_string())).await {
        Ok(Some(archive)) => run_archive(settings, opts, archive).await,
        Ok(None) => Err(not_found),
        Err(e) => Err(not_found.context(format!("looking for a legacy archive too: {}", e.user_line()))),
    }
}

/// What was learnt of the archive before anything is created.
struct CheckedArchive {
    file: UnpackedArchive,
    toc: ArchiveToc,
    tables: Vec<TableRows>,
}

/// The steps of a legacy restore, as in `restore::run`.
async fn run_archive(settings: &Settings, opts: &RestoreOptions, archive: LegacyArchive) -> Result<RestoreReport> {
    let server = &settings.db;
    let id = archive.id.clone();
    let target_name = opts.target_db.clone().unwrap_or_else(|| server.dbname.clone());
    let swapping = opts.target_db.is_none() && !opts.temp_only;
    tracing::info!(archive = %archive.location(), size = archive.size, "restoring a legacy archive");

    // 1. The archive is found (read-only); ask for approval.
    if !opts.tables.is_empty() {
        return Err(Error::config(format!("--table is not available for legacy archive {id}"))
            .with_hint("restore the whole archive with --target-db or --temp-only, then copy the table"));
    }
    if opts.target_db.is_some() && target::database_exists(server, &target_name).await? {
        return Err(Error::config(format!("database {target_name} already exists on {}:{}", server.host, server.port))
            .with_hint("--target-db creates a new database; choose another name"));
    }
    let plan = if swapping {
        format!("restore legacy archive {} and then replace database {target_name} on {}:{}", archive.location(), server.host, server.port)
    } else {
        format!("restore legacy archive {} into a new database on {}:{}", archive.location(), server.host, server.port)
    };
    approve::gate("RESTORE", plan, opts.yes).await?;
    let mut times = PhaseTimes::default();

    // 2. Fetch and check, before anything is created: unpack (gzip CRC and
    //    length), read the table of contents, count every table's rows.
    let t = Instant::now();
    let (major, like) = legacy::server_context(server, &target_name).await?;
    let pg_restore = legacy::find_pg_restore(major).await?;
    let file = legacy::unpack(&archive, &std::env::temp_dir(), opts.progress.clone()).await?;
    let toc = legacy::read_toc(&pg_restore, &file).await?;
    let tables = legacy::count_rows(&pg_restore, &file).await?;
    let checked = CheckedArchive { file, toc, tables };
    times.data = t.elapsed().as_secs_f64();
    opts.progress.tables_total.store(checked.tables.len() as u64, std::sync::atomic::Ordering::Relaxed);

    // 3. Pre-restore backup of the database about to be replaced.
    let mut pre_backup = None;
    if swapping && !opts.no_pre_backup && like.is_some() {
        let t = Instant::now();
        pre_backup = Some(restore::pre_restore_backup(settings).await?);
        times.pre_backup = t.elapsed().as_secs_f64();
    }

    // 4. The temporary (or new target) database, like the one it replaces.
    let work_db = match &opts.target_db {
        Some(name) => {
            target::create_database(server, name, like.as_ref()).await?;
            name.clone()
        }
        None => target::create_temp_database(server, like.as_ref()).await?,
    };
    let work = server.with_dbname(&work_db);

    // 5-6. Load with pg_restore and verify; on failure drop the work database, production untouched.
    let verification = match load_and_verify(settings, opts, &pg_restore, &checked, &work, &mut times).await {
        Ok(v) if v.passed() => v,
        other => {
            let err = match other {
                Err(e) => e,
                Ok(report) => Error::new(
                    ErrorKind::CheckFailed,
                    format!("restored data does not match legacy archive {}: {}", archive.location(), report.problems.join("; ")),
                ),
            };
            return Err(restore::abandon(server, opts, &work_db, err).await);
        }
    };
    let bytes = checked.file.bytes();
    let tables = checked.tables.len();
    drop(checked); // removes the unpacked file
    let mut report = RestoreReport {
        backup_id: id.clone(),
        repository: archive.location(),
        restored_into: work_db.clone(),
        pre_restore_backup: pre_backup,
        swap: None,
        rows: verification.rows,
        bytes,
        roles_created: 0,
        tables_restored: tables,
        foreign_keys_skipped: Vec::new(),
        ownership: Default::default(),
        verification,
        point_in_time: None,
        not_replayed: None,
        seconds: times,
    };
    if !swapping {
        return Ok(report);
    }

    // 7-8. Swap approval, then swap: target -> target_old, temp -> target.
    restore::swap_in(server, opts, &target_name, &work_db, &mut report).await?;

    // 9. Post-restore check: the target answers and holds the tables.
    restore::post_restore_check(server, &target_name, &id, tables).await?;
    Ok(report)
}

/// `pg_restore` into `work`, then the row-count verification.
async fn load_and_verify(
    settings: &Settings,
    opts: &RestoreOptions,
    pg_restore: &std::path::Path,
    checked: &CheckedArchive,
    work: &DbSettings,
    times: &mut PhaseTimes,
) -> Result<VerifyReport> {
    let t = Instant::now();
    legacy::load(pg_restore, &checked.file, work, settings.jobs).await?;
    times.data += t.elapsed().as_secs_f64();
    let progress = &opts.progress;
    progress.tables_done.store(checked.tables.len() as u64, std::sync::atomic::Ordering::Relaxed);
    progress.rows.store(checked.tables.iter().map(|t| t.rows).sum(), std::sync::atomic::Ordering::Relaxed);

    let t = Instant::now();
    let report = legacy::verify(work, &checked.toc, &checked.tables, &opts.critical_tables, settings.jobs).await?;
    times.verify = t.elapsed().as_secs_f64();
    Ok(report)
}
