//! Claiming a backup id (docs/FORMAT.md §2): before a backup writes any
//! data, its id is claimed atomically in every repository, so two runs that
//! start in the same second (cron meeting cron, or a `stream` automatic
//! backup) never share an id, whichever database they back up.
//!
//! In one repository, a claim is made one of two ways:
//! - **Exclusive create** of `backups/<id>/claim.json` with
//!   [`Storage::put_if_absent`]: create-exclusive on a local disk,
//!   `If-None-Match: *` on S3. Exactly one claimant creates it.
//! - **Sole claim**, on stores that cannot create conditionally (they refuse
//!   the header, or ignore it, which [`conditional_put_works`] detects): each
//!   claimant writes its own `backups/<id>/claims/<token>.json`, then lists
//!   `backups/<id>/`, and wins only if its claim is the only object there; a
//!   loser deletes its claim and moves on. Two claimants never both win as
//!   long as listing is read-after-write consistent (local disks, S3 since
//!   2020): the later writer's listing sees the earlier claim. Both may lose,
//!   which costs an id, never safety.
//!
//! Either way an id whose folder already holds objects (a run by a pgkeep
//! before claims existed, or an interrupted run) is taken. An id is claimed
//! in the repositories in their configured order; if a later repository has
//! it taken, the claims already made are removed and the next `_N` suffix is
//! tried. Claims stay in the backup folder; removing the folder (a failed
//! run's cleanup, `expire`) frees the id.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::{BackupId, BackupKind, LOCKS_PREFIX};
use super::manifest::RunInfo;
use crate::error::{Error, Result};
use crate::storage::{PutIfAbsent, PutOptions, Storage};

/// Name of the exclusive claim inside a backup's folder.
pub const CLAIM_NAME: &str = "claim.json";
/// Folder of sole claims inside a backup's folder.
pub const CLAIMS_DIR: &str = "claims/";

/// How many `_N` suffixes are tried before giving up.
const MAX_SEQ: u32 = 1000;

/// The JSON content of a claim object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The id claimed.
    pub backup_id: String,
    /// The database the backup is of.
    pub database: String,
    /// Random hex, unique per claim attempt.
    pub token: String,
    /// Process id of the claimant.
    pub pid: u32,
    /// Host of the claimant.
    pub host: String,
    /// When the claim was made.
    pub claimed_at: DateTime<Utc>,
}

/// Claim a fresh id for a backup of `kind` of `database` started at `at`
/// in every repository of `repos`: `<kind>_YYYYMMDD_HHMMSS_<db tag>`, with
/// the first free `_N` suffix.
pub async fn claim_id(repos: &[Arc<dyn Storage>], kind: BackupKind, at: DateTime<Utc>, database: &str) -> Result<BackupId> {
    // 1. Which way each repository can claim: probed once per run.
    let mut methods = Vec::with_capacity(repos.len());
    for r in repos {
        methods.push(if conditional_put_works(r.as_ref()).await? { ClaimMethod::Exclusive } else { ClaimMethod::SoleClaim });
    }
    // 2. The first id free everywhere, claimed in every repository in order.
    claim_id_using(repos, &methods, kind, at, database).await
}

/// How a claim is made in one repository (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMethod {
    /// `claim.json` created with `put_if_absent`.
    Exclusive,
    /// Own claim under `claims/`, then a listing that must show only it.
    SoleClaim,
}

/// [`claim_id`] with the method of each repository given (`methods[i]` for
/// `repos[i]`) instead of probed.
pub async fn claim_id_using(repos: &[Arc<dyn Storage>], methods: &[ClaimMethod], kind: BackupKind, at: DateTime<Utc>, database: &str) -> Result<BackupId> {
    let exclusive: Vec<bool> = methods.iter().map(|m| *m == ClaimMethod::Exclusive).collect();
    for seq in 0..MAX_SEQ {
        let id = BackupId::for_database(kind, at, database, seq);
        let record = ClaimRecord {
            backup_id: id.to_string(),
            database: database.to_string(),
            token: hex::encode(rand::random::<[u8; 8]>()),
            pid: std::process::id(),
            host: RunInfo::current().host,
            claimed_at: Utc::now(),
        };
        let mut claimed: Vec<(&Arc<dyn Storage>, String)> = Vec::new();
        let mut all = true;
        for (r, &excl) in repos.iter().zip(&exclusive) {
            let outcome = if excl { claim_exclusive(r.as_ref(), &id, &record).await } else { claim_sole(r.as_ref(), &id, &record).await };
            match outcome {
                Ok(Some(key)) => claimed.push((r, key)),
                Ok(None) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    release(&claimed).await;
                    return Err(e.context(format!("cannot claim backup id {id}")));
                }
            }
        }
        if all {
            tracing::debug!(backup_id = %id, "backup id claimed in every repository");
            return Ok(id);
        }
        release(&claimed).await;
        tracing::debug!(backup_id = %id, "backup id taken; trying the next suffix");
    }
    Err(Error::internal(format!("cannot claim a backup id for database {database}: {MAX_SEQ} ids of this second are taken")))
}

fn encode(record: &ClaimRecord) -> Result<Bytes> {
    serde_json::to_vec_pretty(record).map(Bytes::from).map_err(|e| Error::internal(format!("cannot serialize claim: {e}")))
}

/// Exclusive create of `claim.json`. `Some(key)` if we own the id here.
async fn claim_exclusive(r: &dyn Storage, id: &BackupId, record: &ClaimRecord) -> Result<Option<String>> {
    if !r.list(&id.prefix()).await?.is_empty() {
        return Ok(None);
    }
    let key = id.key(CLAIM_NAME);
    match r.put_if_absent(&key, encode(record)?).await? {
        PutIfAbsent::Created => Ok(Some(key)),
        PutIfAbsent::Exists => Ok(None),
        // The probe said it works; a store that changes its mind is not trusted.
        PutIfAbsent::Unsupported => claim_sole(r, id, record).await,
    }
}

/// Sole claim: our own token object, then a listing that must show nothing else.
async fn claim_sole(r: &dyn Storage, id: &BackupId, record: &ClaimRecord) -> Result<Option<String>> {
    if !r.list(&id.prefix()).await?.is_empty() {
        return Ok(None);
    }
    let key = id.key(&format!("{CLAIMS_DIR}{}.json", record.token));
    r.put(&key, encode(record)?, PutOptions::default()).await?;
    let listed = match r.list(&id.prefix()).await {
        Ok(l) => l,
        Err(e) => {
            let _ = r.delete(&key).await;
            return Err(e);
        }
    };
    if listed.len() == 1 && listed[0].key == key {
        return Ok(Some(key));
    }
    let _ = r.delete(&key).await;
    Ok(None)
}

async fn release(claimed: &[(&Arc<dyn Storage>, String)]) {
    for (r, key) in claimed {
        if let Err(e) = r.delete(key).await {
            tracing::warn!(repo = %r.location(), key = %key, error = %e.user_line(), "cannot remove a claim; `expire` removes it with the empty backup folder");
        }
    }
}

/// Whether `put_if_absent` really is exclusive in `r`: create a probe
/// object twice; the second must answer `Exists`. A store that refuses the
/// condition, or ignores it and overwrites, gets the sole-claim scheme.
pub async fn conditional_put_works(r: &dyn Storage) -> Result<bool> {
    let probe = format!("{LOCKS_PREFIX}claim-probe-{}", hex::encode(rand::random::<[u8; 8]>()));
    let first = r.put_if_absent(&probe, Bytes::from_static(b"probe")).await?;
    let works = match first {
        PutIfAbsent::Created => r.put_if_absent(&probe, Bytes::from_static(b"probe")).await? == PutIfAbsent::Exists,
        PutIfAbsent::Exists | PutIfAbsent::Unsupported => false,
    };
    if first != PutIfAbsent::Unsupported {
        let _ = r.delete(&probe).await;
    }
    if !works {
        tracing::info!(repo = %r.location(), "the store does not create objects conditionally (If-None-Match); backup ids are claimed by listing instead");
    }
    Ok(works)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap()
    }

    #[tokio::test]
    async fn concurrent_claims_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let repos: Vec<Arc<dyn Storage>> = vec![Arc::new(LocalStorage::new(dir.path().join("a"))), Arc::new(LocalStorage::new(dir.path().join("b")))];
        assert!(conditional_put_works(repos[0].as_ref()).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let repos = repos.clone();
            let db = if i % 2 == 0 { "app" } else { "orders" };
            tasks.push(tokio::spawn(async move { claim_id(&repos, BackupKind::Full, at(), db).await.unwrap() }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().to_string());
        }
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "{ids:?}");
        assert!(ids.contains(&"full_backup_20261124_020000_app".to_string()), "{ids:?}");
        assert!(ids.contains(&"full_backup_20261124_020000_orders_7".to_string()), "{ids:?}");
        // The probe leaves nothing behind.
        assert!(repos[0].list(LOCKS_PREFIX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sole_claims_never_share_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let r: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let id = BackupId::for_database(BackupKind::Full, at(), "app", 0);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (r, id) = (r.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let rec =
                    ClaimRecord { backup_id: id.to_string(), database: "app".into(), token: format!("{i:016x}"), pid: 1, host: "h".into(), claimed_at: at() };
                claim_sole(r.as_ref(), &id, &rec).await.unwrap().is_some()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as u32;
        }
        assert!(winners <= 1, "{winners} winners");
        // An id whose folder holds anything is taken.
        let rec = ClaimRecord { backup_id: id.to_string(), database: "app".into(), token: "ff".into(), pid: 1, host: "h".into(), claimed_at: at() };
        r.put(&id.key("data/w01-000001.pack"), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
        assert_eq!(claim_sole(r.as_ref(), &id, &rec).await.unwrap(), None);
        assert_eq!(claim_exclusive(r.as_ref(), &id, &rec).await.unwrap(), None);
    }
}
