//! `pgkeep verify`: prove a backup restorable without touching production.
//! [`run`] reads as the checks the user sees: find the backup, then per
//! repository the format and file integrity, then critical tables,
//! completeness (`--deep`, `--compare-production`), metadata (age) and
//! chains. Every check ends as pass, warn, fail or skipped with the reason;
//! `Err` means verify itself could not run (no repository answers, backup
//! not found). Only reads, plus CREATE DATABASE on the scratch server.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::config::{DbSettings, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupId, BackupKind};
use crate::repo::manifest::BackupManifest;
use crate::restore::source::{BackupSelector, BackupSource, open_repositories};
use crate::storage::Storage;
use crate::verify::{BackupVerification, Check, CheckResult, Status, integrity, production, scratch};

/// Options of a verify run.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Which backup.
    pub selector: BackupSelector,
    /// Restore into a scratch database and compare counts and fingerprints.
    pub deep: bool,
    /// Server for the scratch database (its database name is ignored);
    /// `None`: the configured server.
    pub scratch_server: Option<DbSettings>,
    /// Compare live row counts with the manifest.
    pub compare_production: bool,
    /// Allowed difference of live row counts, in percent.
    pub tolerance_pct: f64,
    /// A backup older than this fails the metadata check.
    pub max_age: Duration,
    /// Tables that must be present and not empty (`schema.table` or `table`).
    pub critical_tables: Vec<String>,
    /// Live counters of the `--deep` scratch restore, for a progress display.
    pub progress: std::sync::Arc<crate::progress::ProgressCounters>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            selector: BackupSelector::Latest,
            deep: false,
            scratch_server: None,
            compare_production: false,
            tolerance_pct: 10.0,
            max_age: Duration::from_secs(48 * 3600),
            critical_tables: Vec::new(),
            progress: Default::default(),
        }
    }
}

/// Verify a backup in every repository that holds it, and record the
/// outcome in the repositories' audit trail (`list` and `check` show it).
pub async fn run(settings: &Settings, opts: &VerifyOptions) -> Result<BackupVerification> {
    let result = run_checks(settings, opts).await;
    if let Ok(v) = &result
        && let Ok(repos) = open_repositories(settings).await
    {
        let failed: Vec<&str> = v.failures().map(|c| c.check.name()).collect();
        let details = serde_json::json!({ "backup_id": v.backup_id, "passed": v.passed, "failed_checks": failed, "deep": opts.deep });
        crate::repo::audit::record(&repos, "verify", v.passed, details).await;
    }
    result
}

/// Verify the legacy archive `name` (its file name, key or
/// `<location>/<key>`, ending in `.dump.gz`) with the checks of
/// [`crate::verify::legacy`]; recorded in the audit trail like [`run`].
pub async fn run_legacy(settings: &Settings, opts: &VerifyOptions, name: &str) -> Result<BackupVerification> {
    let repos = open_repositories(settings).await?;
    let which = crate::restore::legacy::ArchiveSelector::Name(name.to_string());
    let Some(archive) = crate::restore::legacy::find_archive(&repos, &which).await? else {
        let where_ = repos.iter().map(|r| r.location()).collect::<Vec<_>>().join(", ");
        return Err(
            Error::new(ErrorKind::NotFound, format!("legacy archive {name} not found in {where_}")).with_hint("run `pgkeep list --legacy` to see the archives")
        );
    };
    let v = crate::verify::legacy::verify_archive(&archive, &legacy_checks(settings, opts)).await;
    let failed: Vec<&str> = v.failures().map(|c| c.check.name()).collect();
    let details =
        serde_json::json!({ "backup_id": v.backup_id, "legacy_archive": archive.location(), "passed": v.passed, "failed_checks": failed, "deep": opts.deep });
    crate::repo::audit::record(&repos, "verify", v.passed, details).await;
    Ok(v)
}

fn legacy_checks(settings: &Settings, opts: &VerifyOptions) -> crate::verify::legacy::LegacyChecks {
    crate::verify::legacy::LegacyChecks {
        scratch_server: opts.scratch_server.clone().unwrap_or_else(|| settings.db.clone()),
        deep: opts.deep,
        production: opts.compare_production.then(|| (settings.db.clone(), opts.tolerance_pct)),
        max_age: opts.max_age,
        critical_tables: opts.critical_tables.clone(),
        jobs: settings.jobs,
    }
}

async fn run_checks(settings: &Settings, opts: &VerifyOptions) -> Result<BackupVerification> {
    // 1. Find the backup: an id, or the newest backup of the configured database.
    let repos = open_repositories(settings).await?;
    let keys = Arc::new(crate::crypto::Keyring::from_settings(&settings.encryption));
    let id = match &opts.selector {
        BackupSelector::Id(id) => id.clone(),
        BackupSelector::Latest => latest(&repos, &settings.db.dbname).await?,
    };
    tracing::info!(backup_id = %id, "verifying");
    let mut checks = Vec::new();
    let mut holders = Vec::new();
    let mut manifest: Option<BackupManifest> = None;
    let mut sources: Vec<Arc<BackupSource>> = Vec::new();

    // 2. Per repository: format (manifest, copy, schema objects, table list), then file integrity.
    for repo in &repos {
        let location = repo.location();
        let Some(read) = integrity::read_manifests(repo.as_ref(), &id).await? else {
            checks.push(CheckResult::new(Check::FileIntegrity, Some(location), Status::Skip, format!("backup {id} is not in this repository")));
            continue;
        };
        holders.push(location.clone());
        let source = match &read.manifest {
            // An incremental's own objects are its schema; they are checked the same way.
            Some(m) => Some(integrity::open_source_with_keys(repo, m, &keys).await),
            None => None,
        };
        let readable = source.as_ref().and_then(|s| s.as_ref().ok());
        checks.push(integrity::check_format(&location, &read, readable).await);
        let files = match (&read.manifest, &source) {
            (None, _) => CheckResult::new(Check::FileIntegrity, Some(location), Status::Skip, "no readable manifest in this repository"),
            (Some(_), None) => CheckResult::new(Check::FileIntegrity, Some(location), Status::Skip, "incremental backups cannot be read yet (see chains)"),
            (Some(_), Some(Err(e))) => CheckResult::from_problems(Check::FileIntegrity, Some(location), "", vec![e.user_line()]),
            (Some(m), Some(Ok(s))) => integrity::check_files(repo.as_ref(), m, s, settings.jobs).await?,
        };
        // The first copy whose files all check out is the one --deep restores.
        if let Some(Ok(s)) = source
            && files.status == Status::Pass
        {
            sources.push(Arc::new(s));
        }
        checks.push(files);
        if manifest.is_none() {
            manifest = read.manifest;
        }
    }
    if holders.is_empty() {
        // An id with no pgkeep backup anywhere may name a legacy archive.
        let which = crate::restore::legacy::ArchiveSelector::Id(id.to_string());
        if let Ok(Some(archive)) = crate::restore::legacy::find_archive(&repos, &which).await {
            return Ok(crate::verify::legacy::verify_archive(&archive, &legacy_checks(settings, opts)).await);
        }
        let where_ = repos.iter().map(|r| r.location()).collect::<Vec<_>>().join(", ");
        return Err(
            Error::new(ErrorKind::NotFound, format!("backup {id} not found in {where_}")).with_hint("run `pgkeep list` to see the backups in each repository")
        );
    }
    let Some(m) = manifest else {
        // No readable manifest anywhere: nothing else can be checked.
        for check in [Check::CriticalTables, Check::Completeness, Check::Metadata, Check::Chains] {
            checks.push(CheckResult::new(check, None, Status::Skip, "no readable manifest"));
        }
        return Ok(finish(id, holders, None, checks));
    };

    // 3. Critical tables: present in the backup and not empty.
    checks.push(critical_tables(&m, &opts.critical_tables));

    // 4. Completeness: a scratch restore (--deep) and live row counts (--compare-production).
    let mut scratch_database = None;
    if opts.deep {
        match sources.first() {
            Some(source) => {
                let server = opts.scratch_server.clone().unwrap_or_else(|| settings.db.clone());
                let (r, name) = match m.kind {
                    // An incremental restores as its full ancestor replayed to its restore point.
                    BackupKind::Incremental => scratch::check_incremental(&repos, &m, &keys, &server, settings.jobs, &opts.progress).await,
                    _ => scratch::check_completeness(source.clone(), &server, settings.jobs, &opts.progress).await,
                };
                scratch_database = name;
                checks.push(r);
            }
            None => checks.push(CheckResult::from_problems(
                Check::Completeness,
                None,
                "",
                vec![format!("no repository holds an intact copy of backup {id} to restore")],
            )),
        }
    } else {
        checks.push(CheckResult::new(Check::Completeness, None, Status::Skip, "scratch restore not requested (--deep)"));
    }
    if opts.compare_production {
        checks.push(production::check_production(&settings.db, &m, opts.tolerance_pct).await?);
    }

    // 5. Metadata: the backup is younger than --max-age; who can open it.
    checks.push(age(&m, opts.max_age));
    if let Some(info) = &m.encryption {
        let who = crate::repo::manifest_mac::envelope(info).describe();
        checks.push(CheckResult::new(Check::Metadata, None, Status::Pass, format!("encrypted; opens with {who} (recorded in its envelope)")));
    }

    // 6. Chains: incrementals, and change segments contiguous in every repository.
    checks.push(chains(&repos, &m).await);
    let mut segment_checks = crate::verify::chains::check_chains_with_keys(&repos, &m, &keys).await;
    // The table images a point-in-time restore from it would put in place, read back.
    segment_checks.extend(crate::verify::images::check_images(&repos, &m, &keys, settings.jobs).await);
    if !segment_checks.is_empty() {
        checks.retain(|c| !(c.check == Check::Chains && c.status == Status::Skip));
        checks.extend(segment_checks);
    }
    Ok(finish(id, holders, scratch_database, checks))
}

fn finish(id: BackupId, repositories: Vec<String>, scratch_database: Option<String>, checks: Vec<CheckResult>) -> BackupVerification {
    let passed = !checks.iter().any(|c| c.status == Status::Fail);
    BackupVerification { backup_id: id.to_string(), repositories, scratch_database, checks, passed }
}

/// The newest backup of `database` in any repository. A backup whose
/// manifests are both damaged counts too (its database is unknown): verify
/// exists to report it.
async fn latest(repos: &[Arc<dyn Storage>], database: &str) -> Result<BackupId> {
    let mut best: Option<(chrono::DateTime<Utc>, BackupId)> = None;
    for repo in repos {
        for entry in catalog::list_backups(repo.as_ref()).await? {
            let candidate = match entry {
                CatalogEntry::Valid(m) if m.database == database => (m.started_at, m.backup_id),
                CatalogEntry::Valid(_) => continue,
                CatalogEntry::Invalid(id, _) => (id.timestamp(), id),
            };
            if best.as_ref().is_none_or(|b| candidate > *b) {
                best = Some(candidate);
            }
        }
    }
    best.map(|b| b.1).ok_or_else(|| {
        let where_ = repos.iter().map(|r| r.location()).collect::<Vec<_>>().join(", ");
        Error::new(ErrorKind::NotFound, format!("no backup of database {database} found in {where_}"))
            .with_hint("run `pgkeep backup` first, or name a backup id")
    })
}

/// Critical tables are listed in the manifest with rows > 0.
fn critical_tables(m: &BackupManifest, names: &[String]) -> CheckResult {
    if names.is_empty() {
        return CheckResult::new(Check::CriticalTables, None, Status::Skip, "no critical tables configured (--critical-tables)");
    }
    if m.kind == BackupKind::Incremental {
        return CheckResult::new(Check::CriticalTables, None, Status::Skip, "an incremental holds no tables; verify its full ancestor");
    }
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for name in names {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name.as_str()));
        match m.tables.iter().find(|t| t.schema == schema && t.name == table) {
            None => problems.push(format!("critical table {schema}.{table} is not in backup {}", m.backup_id)),
            Some(t) if t.rows == 0 => problems.push(format!("critical table {schema}.{table} is empty in backup {}", m.backup_id)),
            Some(t) => seen.push(format!("{schema}.{table} ({} rows)", t.rows)),
        }
    }
    CheckResult::from_problems(Check::CriticalTables, None, seen.join(", "), problems)
}

/// The backup's snapshot is younger than `max_age`.
fn age(m: &BackupManifest, max_age: Duration) -> CheckResult {
    let age = (Utc::now() - m.started_at).to_std().unwrap_or_default();
    let shown = humantime::format_duration(Duration::from_secs(age.as_secs()));
    let limit = humantime::format_duration(max_age);
    let started = m.started_at.format("%Y-%m-%d %H:%M:%S UTC");
    if age > max_age {
        let problem = format!("backup {} is {shown} old (started {started}), older than --max-age {limit}", m.backup_id);
        CheckResult::from_problems(Check::Metadata, None, "", vec![problem])
    } else {
        CheckResult::new(Check::Metadata, None, Status::Pass, format!("{shown} old (started {started}), limit {limit}"))
    }
}

/// Incremental chains and change segments: none are written yet.
async fn chains(repos: &[Arc<dyn crate::storage::Storage>], m: &BackupManifest) -> CheckResult {
    if m.kind != BackupKind::Incremental {
        return CheckResult::new(Check::Chains, None, Status::Skip, "no incremental backups or change segments");
    }
    // Every ancestor readable, down to a full backup; the range's segments are read by the segment checks.
    match crate::restore::plan::incremental_root(repos, &m.backup_id).await {
        Ok((root, end)) => {
            let range = m.changes.as_ref();
            CheckResult::new(
                Check::Chains,
                None,
                Status::Pass,
                format!(
                    "incremental on full backup {root} (parent {}): changes {}..{end}, {} transaction(s) in {} segment(s)",
                    m.parent.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                    range.map(|r| r.start_lsn.to_string()).unwrap_or_else(|| "?".into()),
                    range.map_or(0, |r| r.transactions),
                    range.map_or(0, |r| r.segments.len())
                ),
            )
        }
        Err(e) => CheckResult::from_problems(Check::Chains, None, "", vec![e.user_line()]),
    }
}
