//! `verify --deep`: restore a backup into a scratch database named
//! `pgkeep_verify_YYYYMMDD_HHMMSS` on a scratch server, prove row counts,
//! fingerprints and NOT NULL columns equal to the manifest with
//! `restore::verify::verify_tables`, and drop the scratch database afterwards whatever
//! happened. Production is never touched.

use std::sync::Arc;

use chrono::Utc;

use super::{Check, CheckResult, Status};
use crate::config::db::{ConnFields, SslMode};
use crate::config::{DbSettings, Secret};
use crate::error::{Error, Result};
use crate::progress::ProgressCounters;
use crate::repo::manifest::DatabaseInfo;
use crate::restore::source::BackupSource;
use crate::restore::target;
use crate::restore::verify::VerifyReport;

/// The scratch server of `--scratch-db URL`: host, port, user, password and
/// TLS from the URL (unset ones from `base`); the URL's database is ignored.
pub fn scratch_server(url: &str, base: &DbSettings) -> Result<DbSettings> {
    let f = ConnFields::parse(url, "--scratch-db")?;
    let port = match f.get("port") {
        Some(p) => p.parse().map_err(|_| Error::config(format!("--scratch-db has an invalid port `{p}`")))?,
        None => base.port,
    };
    let sslmode = match f.get("sslmode") {
        Some(m) => SslMode::parse(m).ok_or_else(|| Error::config(format!("--scratch-db has an unknown sslmode `{m}`")))?,
        None => base.sslmode,
    };
    Ok(DbSettings {
        host: f.get("host").map(str::to_string).unwrap_or_else(|| base.host.clone()),
        port,
        user: f.get("user").map(str::to_string).unwrap_or_else(|| base.user.clone()),
        password: f.get("password").map(Secret::new).or_else(|| base.password.clone()),
        dbname: "postgres".to_string(),
        sslmode,
        sslrootcert: f.get("sslrootcert").map(Into::into).or_else(|| base.sslrootcert.clone()),
        connect_timeout: base.connect_timeout,
    })
}

/// Create `pgkeep_verify_YYYYMMDD_HHMMSS` (with `_N` when taken). Returns its name.
async fn create_scratch_database(server: &DbSettings, info: Option<&DatabaseInfo>) -> Result<String> {
    target::create_unique_database(server, &format!("pgkeep_verify_{}", Utc::now().format("%Y%m%d_%H%M%S")), info).await
}

/// Create → globals and pre-data → load → post-data → sequences →
/// [`verify_tables`], into `work`. The caller drops `work`.
/// `progress` counts the load (its bytes against the manifest's raw bytes).
pub(crate) async fn restore_and_verify(source: &Arc<BackupSource>, work: &DbSettings, jobs: usize, progress: &Arc<ProgressCounters>) -> Result<VerifyReport> {
    let all: Vec<usize> = (0..source.manifest.tables.len()).collect();
    let mut times = crate::restore::report::PhaseTimes::default();
    let (_, _, report) = crate::restore::phases::load_and_verify(source, work, &all, jobs, &[], progress, &mut times).await?;
    Ok(report)
}

/// The completeness check: restore into a scratch database on `server`,
/// verify, drop. Returns the result and the scratch database's name (none
/// when it could not be created). `progress` counts the restore.
pub async fn check_completeness(
    source: Arc<BackupSource>,
    server: &DbSettings,
    jobs: usize,
    progress: &Arc<ProgressCounters>,
) -> (CheckResult, Option<String>) {
    let repo = Some(source.storage.location());
    let name = match create_scratch_database(server, source.manifest.database_info.as_ref()).await {
        Ok(n) => n,
        Err(e) => {
            let r = CheckResult::from_problems(Check::Completeness, repo, "", vec![format!("cannot create a scratch database: {}", e.user_line())]);
            return (r, None);
        }
    };
    let place = format!("{name} on {}:{}", server.host, server.port);
    let outcome = restore_and_verify(&source, &server.with_dbname(&name), jobs, progress).await;
    // Always dropped, also when the restore failed.
    let dropped = target::drop_database(server, &name).await;
    let mut problems = Vec::new();
    let mut summary = String::new();
    match outcome {
        Ok(report) => {
            problems.extend(report.problems.iter().map(|p| format!("{p} (restored into {place})")));
            summary = format!(
                "restored into {place}: {} tables, {} rows, counts and fingerprints equal, NOT NULL columns kept; dropped",
                report.tables_checked, report.rows
            );
        }
        Err(e) => problems.push(format!("restore into scratch database {place} failed: {}", e.user_line())),
    }
    if let Err(e) = dropped {
        problems.push(format!("scratch database {place} could not be dropped: {}", e.user_line()));
    }
    let mut r = CheckResult::from_problems(Check::Completeness, repo, summary, problems);
    if r.status == Status::Fail {
        r.details.push(format!("scratch database {place} dropped"));
    }
    (r, Some(name))
}

/// The completeness check of an incremental backup: its full ancestor
/// restored into a scratch database and verified, the archive replayed to
/// the incremental's restore point, dropped. Same results as
/// [`check_completeness`].
pub async fn check_incremental(
    repos: &[Arc<dyn crate::storage::Storage>],
    m: &crate::repo::manifest::BackupManifest,
    keys: &Arc<crate::crypto::Keyring>,
    server: &DbSettings,
    jobs: usize,
    progress: &Arc<ProgressCounters>,
) -> (CheckResult, Option<String>) {
    let fail = |why: String| (CheckResult::from_problems(Check::Completeness, None, "", vec![why]), None);
    let (root, end) = match crate::restore::plan::incremental_root(repos, &m.backup_id).await {
        Ok(r) => r,
        Err(e) => return fail(e.user_line()),
    };
    let source = match BackupSource::find_with_keys(repos, &crate::restore::source::BackupSelector::Id(root.clone()), &m.database, keys).await {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(e.user_line()),
    };
    let target = crate::replay::RecoveryTarget::Lsn(end);
    let plan = match crate::replay::plan(repos, vec![source.manifest.clone()], target, true, keys).await {
        Ok(p) => p,
        Err(e) => return fail(e.user_line()),
    };
    let repo = Some(source.storage.location());
    let name = match create_scratch_database(server, source.manifest.database_info.as_ref()).await {
        Ok(n) => n,
        Err(e) => return fail(format!("cannot create a scratch database: {}", e.user_line())),
    };
    let place = format!("{name} on {}:{}", server.host, server.port);
    let work = server.with_dbname(&name);
    let outcome = async {
        let base = restore_and_verify(&source, &work, jobs, progress).await?;
        let replay = crate::replay::run(repos, &plan, &work, None, keys, &crate::restore::image::TableImages::new(repos, keys), progress).await?;
        Ok::<_, crate::error::Error>((base, replay))
    }
    .await;
    let dropped = target::drop_database(server, &name).await;
    let mut problems = Vec::new();
    let mut summary = String::new();
    match outcome {
        Ok((base, replay)) => {
            problems.extend(base.problems.iter().map(|p| format!("{p} (full backup {root} restored into {place})")));
            summary = format!(
                "full backup {root} restored into {place} ({} tables, {} rows, counts and fingerprints equal), then {} transaction(s) and {} row change(s) replayed to {end}; dropped",
                base.tables_checked, base.rows, replay.transactions, replay.applied.changes
            );
        }
        Err(e) => problems.push(format!("restore of incremental {} into scratch database {place} failed: {}", m.backup_id, e.user_line())),
    }
    if let Err(e) = dropped {
        problems.push(format!("scratch database {place} could not be dropped: {}", e.user_line()));
    }
    (CheckResult::from_problems(Check::Completeness, repo, summary, problems), Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_url_keeps_server_and_ignores_database() {
        let base = DbSettings {
            host: "prod".into(),
            port: 5432,
            user: "app".into(),
            password: Some(Secret::new("p")),
            dbname: "app".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let s = scratch_server("postgres://scratch:s3cret@scratch-host:6543/whatever", &base).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.user.as_str(), s.dbname.as_str()), ("scratch-host", 6543, "scratch", "postgres"));
        assert_eq!(s.password.unwrap().expose(), "s3cret");
        let s = scratch_server("postgres://other-host/x", &base).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.user.as_str()), ("other-host", 5432, "app"));
        assert!(scratch_server("nonsense", &base).is_err());
    }
}
