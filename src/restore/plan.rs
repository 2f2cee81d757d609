//! Which backup and which archived changes a restore uses: `latest` among
//! several clusters, the base and chain for a point in time, the default
//! "newest backup plus everything archived after it", and an incremental's
//! full ancestor. Called by `commands::restore` and by `verify --deep`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::DbSettings;
use crate::crypto::Keyring;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::connect;
use crate::replay::{self, RecoveryTarget, ReplayPlan};
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupId, BackupKind, Lsn};
use crate::repo::manifest::BackupManifest;
use crate::restore::source::{BackupSelector, BackupSource};
use crate::storage::Storage;

/// Every valid manifest of `database` in any repository, each backup once
/// (a repository that cannot be listed is skipped).
async fn valid_manifests(repos: &[Arc<dyn Storage>], database: &str) -> Vec<BackupManifest> {
    let mut all: Vec<BackupManifest> = Vec::new();
    for repo in repos {
        let Ok(entries) = catalog::list_backups(repo.as_ref()).await else { continue };
        for e in entries {
            if let CatalogEntry::Valid(m) = e
                && m.database == database
                && !all.iter().any(|a| a.backup_id == m.backup_id)
            {
                all.push(*m);
            }
        }
    }
    all
}

/// When full backups of the configured database name come from several
/// clusters, `latest` means the newest of the configured server's cluster
/// (by system identifier), if it has any; `None` leaves `latest` as it is
/// (one cluster, or none of them is this server: then `find` warns).
pub(crate) async fn latest_of_this_cluster(repos: &[Arc<dyn Storage>], server: &DbSettings) -> Option<BackupSelector> {
    let mut newest: BTreeMap<String, (DateTime<Utc>, BackupId)> = BTreeMap::new();
    for m in valid_manifests(repos, &server.dbname).await.into_iter().filter(|m| m.kind == BackupKind::Full) {
        let slot = newest.entry(m.server.system_identifier.clone()).or_insert((m.started_at, m.backup_id.clone()));
        if (m.started_at, &m.backup_id) > (slot.0, &slot.1) {
            *slot = (m.started_at, m.backup_id);
        }
    }
    if newest.len() < 2 {
        return None;
    }
    // The configured database may not exist (yet) on this server: ask the maintenance database.
    let conn = match connect(server).await {
        Ok(c) => c,
        Err(_) => connect(&server.with_dbname("postgres")).await.ok()?,
    };
    let system = crate::pg::catalog::server_facts(&conn.client).await.ok()?.system_identifier?;
    let (_, id) = newest.remove(&system)?;
    tracing::info!(backup_id = %id, system_identifier = %system, "`latest`: backups of database {} come from {} clusters; using this server's", server.dbname, newest.len() + 1);
    Some(BackupSelector::Id(id))
}

/// Choose the base backup and change chain for a point-in-time restore:
/// the backup named, or among every valid backup of `database` the newest
/// that the archive continues to `target`.
pub(crate) async fn plan_point_in_time(
    repos: &[Arc<dyn Storage>],
    selector: &BackupSelector,
    database: &str,
    target: RecoveryTarget,
    keys: &Arc<Keyring>,
) -> Result<ReplayPlan> {
    let (candidates, explicit) = match selector {
        BackupSelector::Id(_) => (vec![BackupSource::find(repos, selector, database).await?.manifest], true),
        BackupSelector::Latest => (valid_manifests(repos, database).await, false),
    };
    replay::plan(repos, candidates, target, explicit, keys).await
}

/// `restore latest` without a target: the newest backup (an incremental's
/// full ancestor) with every change archived after it. `Ok(Err(why))` when
/// no archive continues it: then the backup alone is restored, and the
/// report says why.
pub(crate) async fn latest_data_plan(repos: &[Arc<dyn Storage>], database: &str, keys: &Arc<Keyring>) -> Result<std::result::Result<ReplayPlan, String>> {
    let newest = match BackupSource::find(repos, &BackupSelector::Latest, database).await {
        Ok(s) => s.manifest,
        // Nothing to restore: the usual error comes from the usual lookup.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Err(e.user_line())),
        Err(e) => return Err(e),
    };
    let base = match newest.kind {
        BackupKind::Incremental => incremental_root(repos, &newest.backup_id).await?.0,
        _ => newest.backup_id.clone(),
    };
    match plan_point_in_time(repos, &BackupSelector::Id(base), database, RecoveryTarget::Latest, keys).await {
        Ok(plan) => Ok(Ok(plan)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::warn!(backup = %newest.backup_id, reason = %e.user_line(), "no change archive continues the newest backup: restoring it alone");
            Ok(Err(format!("no change archive continues it ({})", e.user_line())))
        }
        Err(e) => Err(e),
    }
}

/// The full backup an incremental builds on, and the incremental's restore point.
pub(crate) async fn incremental_root(repos: &[Arc<dyn Storage>], id: &BackupId) -> Result<(BackupId, Lsn)> {
    let load = async |id: &BackupId| -> Result<BackupManifest> {
        let mut last = None;
        for r in repos {
            match catalog::load_manifest(r.as_ref(), id).await {
                Ok(m) => return Ok(m),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::NotFound, format!("backup {id} not found"))))
    };
    let incr = load(id).await?;
    let end = incr.changes.as_ref().map(|c| c.end_lsn).ok_or_else(|| Error::corrupt(format!("incremental backup {id} records no change range")))?;
    let mut at = incr;
    for _ in 0..10_000 {
        if at.kind == BackupKind::Full {
            return Ok((at.backup_id, end));
        }
        let parent = at.parent.clone().ok_or_else(|| Error::corrupt(format!("backup {} has no parent", at.backup_id)))?;
        at = load(&parent).await.map_err(|e| e.context(format!("incremental backup {id} needs its ancestor {parent}")))?;
    }
    Err(Error::corrupt(format!("incremental backup {id} has a parent cycle")))
}
