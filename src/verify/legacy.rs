//! `verify` of a legacy archive (`full_backup_YYYYMMDD_HHMMSS.dump.gz`, the
//! old scripts' `pg_dump -Fc | gzip`): every check of the seed's
//! verify-backup.sh, as pgkeep checks.
//!
//! - **file-integrity**: the gzip file unpacks whole, CRC and length of
//!   every member match (a flipped byte or a cut file fails here);
//! - **format**: `pg_restore --list` reads it as a `pg_dump` custom-format
//!   archive (contents listable), and a data-only pass reads every table's
//!   data to the end (a truncated dump inside valid gzip fails here);
//! - **critical-tables**: each named table is in the archive with rows;
//! - **completeness** (`--deep`): `pg_restore` into a scratch database,
//!   every table's row count equal to the archive's, dropped afterwards;
//! - **production** (`--compare-production`): live row counts against the archive's;
//! - **metadata**: age, from the time in its name (else its modification time).
//!
//! The pieces are the legacy restore's ([`crate::restore::legacy`]); the
//! unpacked file is private and removed when done.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::production::{BackedUpCount, compare_counts};
use super::{BackupVerification, Check, CheckResult, Status};
use crate::config::DbSettings;
use crate::progress::ProgressCounters;
use crate::restore::legacy::{self, LegacyArchive, TableRows};
use crate::restore::target;

/// What to check beyond the archive itself.
#[derive(Debug, Clone)]
pub struct LegacyChecks {
    /// Server whose version picks `pg_restore`, and where `--deep` creates its scratch database.
    pub scratch_server: DbSettings,
    /// Restore into a scratch database and compare row counts.
    pub deep: bool,
    /// Compare live row counts in this database, within this tolerance (percent).
    pub production: Option<(DbSettings, f64)>,
    /// Older than this fails the metadata check.
    pub max_age: Duration,
    /// Tables that must be present and not empty.
    pub critical_tables: Vec<String>,
    /// `pg_restore -j` for `--deep`.
    pub jobs: usize,
}

/// Run every check on `archive`. Never `Err`: each failure is a failed check naming the archive.
pub async fn verify_archive(archive: &LegacyArchive, opts: &LegacyChecks) -> BackupVerification {
    let location = archive.location();
    let repo = Some(archive.repository.location());
    let mut checks = Vec::new();
    let mut scratch_database = None;
    let skip_rest = |checks: &mut Vec<CheckResult>, from: &[Check], why: &str| {
        for c in from {
            checks.push(CheckResult::new(*c, None, Status::Skip, why.to_string()));
        }
    };

    // 1. pg_restore of at least the server's major (any, when the server is unreachable and not needed).
    let major = match legacy::server_context(&opts.scratch_server, &opts.scratch_server.dbname).await {
        Ok((m, _)) => m,
        Err(_) if !opts.deep => 0,
        Err(e) => {
            checks.push(CheckResult::from_problems(Check::FileIntegrity, repo, "", vec![format!("cannot reach the server for --deep: {}", e.user_line())]));
            return done(archive, None, checks);
        }
    };
    let pg_restore = match legacy::find_pg_restore(major).await {
        Ok(p) => p,
        Err(e) => {
            checks.push(CheckResult::from_problems(Check::Format, repo, "", vec![e.user_line()]));
            return done(archive, None, checks);
        }
    };

    // 2. gzip: unpack the whole file, CRC and length of every member.
    let file = match legacy::unpack(archive, &std::env::temp_dir(), Arc::new(ProgressCounters::default())).await {
        Ok(f) => {
            let summary = format!("gzip valid (CRC and length match): {} bytes stored, {} unpacked", archive.size, f.bytes());
            checks.push(CheckResult::new(Check::FileIntegrity, repo.clone(), Status::Pass, summary));
            f
        }
        Err(e) => {
            checks.push(CheckResult::from_problems(Check::FileIntegrity, repo, "", vec![e.user_line()]));
            skip_rest(&mut checks, &[Check::Format, Check::CriticalTables, Check::Completeness], "the archive does not unpack");
            checks.push(age(archive, opts.max_age));
            return done(archive, None, checks);
        }
    };

    // 3. pg_dump custom format, contents listable, every table's data readable to its end.
    let read = async {
        let toc = legacy::read_toc(&pg_restore, &file).await?;
        let tables = legacy::count_rows(&pg_restore, &file).await?;
        Ok::<_, crate::error::Error>((toc, tables))
    }
    .await;
    let (toc, tables) = match read {
        Ok((toc, tables)) => {
            let mut problems = legacy::script::unmatched(&toc, &tables);
            problems.iter_mut().for_each(|p| *p = format!("{p} (archive {location})"));
            let summary = format!(
                "pg_dump custom format, {} entries listed, {} tables with data, {} rows",
                toc.entries,
                tables.len(),
                tables.iter().map(|t| t.rows).sum::<u64>()
            );
            checks.push(CheckResult::from_problems(Check::Format, repo.clone(), summary, problems));
            (toc, tables)
        }
        Err(e) => {
            checks.push(CheckResult::from_problems(Check::Format, repo, "", vec![e.user_line()]));
            skip_rest(&mut checks, &[Check::CriticalTables, Check::Completeness], "the archive cannot be read");
            checks.push(age(archive, opts.max_age));
            return done(archive, None, checks);
        }
    };

    // 4. Critical tables: in the archive, with rows.
    checks.push(critical_tables(&location, &tables, &opts.critical_tables));

    // 5. --deep: pg_restore into a scratch database, row counts equal, dropped.
    if opts.deep {
        let (check, scratch) = completeness(&location, repo.clone(), opts, &pg_restore, &file, &toc, &tables).await;
        checks.push(check);
        scratch_database = scratch;
    } else {
        checks.push(CheckResult::new(Check::Completeness, None, Status::Skip, "scratch restore not requested (--deep)"));
    }
    drop(file);

    // 6. --compare-production: live row counts against the archive's.
    if let Some((db, tolerance)) = &opts.production {
        let counts: Vec<BackedUpCount> =
            tables.iter().map(|t| BackedUpCount { schema: t.schema.clone(), name: t.name.clone(), rows: t.rows, filter: String::new() }).collect();
        checks.push(match compare_counts(db, &counts, *tolerance).await {
            Ok(r) => r,
            Err(e) => CheckResult::from_problems(Check::Production, None, "", vec![e.user_line()]),
        });
    }

    // 7. Age.
    checks.push(age(archive, opts.max_age));
    checks.push(CheckResult::new(Check::Chains, None, Status::Skip, "a legacy archive has no incremental chain"));
    done(archive, scratch_database, checks)
}

/// Step 5 (`--deep`): `pg_restore` into a new scratch database, every
/// table's row count equal to the archive's, the database dropped. Returns
/// the check and the scratch database's name, when one was created.
async fn completeness(
    location: &str,
    repo: Option<String>,
    opts: &LegacyChecks,
    pg_restore: &std::path::Path,
    file: &legacy::UnpackedArchive,
    toc: &legacy::ArchiveToc,
    tables: &[TableRows],
) -> (CheckResult, Option<String>) {
    let server = &opts.scratch_server;
    let base = format!("pgkeep_verify_{}", Utc::now().format("%Y%m%d_%H%M%S"));
    let name = match target::create_unique_database(server, &base, None).await {
        Ok(name) => name,
        Err(e) => {
            let why = vec![format!("cannot create a scratch database: {}", e.user_line())];
            return (CheckResult::from_problems(Check::Completeness, repo, "", why), None);
        }
    };
    let place = format!("{name} on {}:{}", server.host, server.port);
    let work = server.with_dbname(&name);
    let outcome = async {
        legacy::load(pg_restore, file, &work, opts.jobs).await?;
        legacy::verify(&work, toc, tables, &[], opts.jobs).await
    }
    .await;
    let dropped = target::drop_database(server, &name).await;
    let mut problems = Vec::new();
    let mut summary = String::new();
    let mut details = Vec::new();
    match outcome {
        Ok(report) => {
            problems.extend(report.problems.iter().map(|p| format!("{p} (restored into {place})")));
            summary = format!("restored into {place}: {} tables, {} rows, row counts equal to the archive's; dropped", report.tables_checked, report.rows);
            details = tables.iter().map(|t| format!("table {}.{}: {} rows", t.schema, t.name, t.rows)).collect();
        }
        Err(e) => problems.push(format!("restore of {location} into scratch database {place} failed: {}", e.user_line())),
    }
    if let Err(e) = dropped {
        problems.push(format!("scratch database {place} could not be dropped: {}", e.user_line()));
    }
    let mut r = CheckResult::from_problems(Check::Completeness, repo, summary, problems);
    r.details = details;
    (r, Some(name))
}

fn done(archive: &LegacyArchive, scratch_database: Option<String>, checks: Vec<CheckResult>) -> BackupVerification {
    let passed = !checks.iter().any(|c| c.status == Status::Fail);
    BackupVerification { backup_id: archive.file_name().to_string(), repositories: vec![archive.repository.location()], scratch_database, checks, passed }
}

/// Critical tables are in the archive with rows.
fn critical_tables(location: &str, tables: &[TableRows], names: &[String]) -> CheckResult {
    if names.is_empty() {
        return CheckResult::new(Check::CriticalTables, None, Status::Skip, "no critical tables configured (--critical-tables)");
    }
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for name in names {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name.as_str()));
        match tables.iter().find(|t| t.schema == schema && t.name == table) {
            None => problems.push(format!("critical table {schema}.{table} is not in legacy archive {location}")),
            Some(t) if t.rows == 0 => problems.push(format!("critical table {schema}.{table} is empty in legacy archive {location}")),
            Some(t) => seen.push(format!("{schema}.{table} ({} rows)", t.rows)),
        }
    }
    CheckResult::from_problems(Check::CriticalTables, None, seen.join(", "), problems)
}

/// The archive's age: the time in its name, else its modification time.
fn age(archive: &LegacyArchive, max_age: Duration) -> CheckResult {
    let Some(at) = archive.named_time().or(archive.modified) else {
        return CheckResult::new(Check::Metadata, None, Status::Warn, format!("the age of legacy archive {} is unknown", archive.location()));
    };
    let age = (Utc::now() - at).to_std().unwrap_or_default();
    let shown = humantime::format_duration(Duration::from_secs(age.as_secs()));
    let limit = humantime::format_duration(max_age);
    let started = at.format("%Y-%m-%d %H:%M:%S UTC");
    if age > max_age {
        let problem = format!("legacy archive {} is {shown} old (taken {started}), older than --max-age {limit}", archive.location());
        CheckResult::from_problems(Check::Metadata, None, "", vec![problem])
    } else {
        CheckResult::new(Check::Metadata, None, Status::Pass, format!("{shown} old (taken {started}), limit {limit}"))
    }
}
