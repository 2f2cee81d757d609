//! `pgkeep list`: every backup in every configured repository, merged by id:
//! kind, start and duration, database and stored size, compression ratio,
//! and which repositories hold a valid copy. Damaged manifests are listed
//! as such instead of being hidden. With `--legacy`, the archives of the
//! old scripts (`full_backup_*.dump.gz`) are listed too, as kind `legacy`.
//! The CLI shows only the configured database's backups unless
//! `--all-databases` ([`configured_database`], [`only_database`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::commands::backup::human_bytes;
use crate::config::Settings;
use crate::error::Result;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::manifest::BackupManifest;
use crate::restore::legacy;
use crate::restore::source::open_repositories;

/// One backup as listed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListedBackup {
    /// Backup id.
    pub backup_id: String,
    /// full / incremental / pre-restore / table image.
    pub kind: String,
    /// Table images: the table (`schema.name`) and the LSN it is consistent at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_of: Option<String>,
    /// Parent backup, for incrementals.
    pub parent: Option<String>,
    /// Database name.
    pub database: String,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// Stop time (RFC 3339).
    pub finished_at: String,
    /// Seconds taken.
    pub duration_secs: f64,
    /// Database size at backup time.
    pub database_size: u64,
    /// Raw COPY bytes.
    pub raw_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Raw / stored, for kinds that copy table data (not incrementals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// Incrementals and table images: what they hold (transactions, row
    /// changes, LSN and time range; the table and the changes it covers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<String>,
    /// Repositories holding a valid copy.
    pub repositories: Vec<String>,
    /// Problems found while reading it (damaged copies).
    pub problems: Vec<String>,
    /// Legacy archives only: last modification time of the first copy (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// Database size change since the previous backup of the same database (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes: Option<i64>,
    /// The newest `pgkeep verify` of this backup: `passed` / `FAILED` and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<String>,
    /// Full backups: how far the change archive continues it without a gap —
    /// a point-in-time restore can reach any transaction up to this commit time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<String>,
    /// What the backup's manifest warns about (e.g. tables whose changes are not fully archived).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn listed(m: &BackupManifest) -> ListedBackup {
    ListedBackup {
        backup_id: m.backup_id.to_string(),
        kind: m.kind.to_string(),
        parent: m.parent.as_ref().map(|p| p.to_string()),
        database: m.database.clone(),
        started_at: m.started_at.to_rfc3339(),
        finished_at: m.finished_at.to_rfc3339(),
        duration_secs: m.stats.duration_ms as f64 / 1000.0,
        database_size: m.stats.database_size,
        raw_bytes: m.stats.raw_bytes,
        stored_bytes: m.stats.stored_bytes,
        compression_ratio: crate::backup::summary::ratio(m),
        holds: crate::backup::summary::held(m),
        warnings: m.warnings.clone(),
        image_of: m.image.as_ref().map(|i| format!("{} at LSN {}", i.table(), m.snapshot.consistent_lsn)),
        ..ListedBackup::default()
    }
}

/// The database `list` shows by default: the configured one, or `None`
/// when no database is configured (the name would only be the default, the
/// OS user), so every backup is listed.
pub fn configured_database(settings: &Settings) -> Option<&str> {
    let defaulted =
        settings.provenance.iter().any(|(k, _, src)| k == "db.name" && matches!(src, crate::config::Source::Derived(d) if d.starts_with("default")));
    (!defaulted).then_some(settings.db.dbname.as_str())
}

/// Keep the backups of `database` (and legacy archives and damaged
/// manifests, whose database is unknown); also return how many were left out.
pub fn only_database(items: Vec<ListedBackup>, database: &str) -> (Vec<ListedBackup>, usize) {
    let before = items.len();
    let kept: Vec<ListedBackup> = items.into_iter().filter(|b| b.database.is_empty() || b.database == database).collect();
    let hidden = before - kept.len();
    (kept, hidden)
}

/// Every backup of every repository, oldest first.
pub async fn run(settings: &Settings) -> Result<Vec<ListedBackup>> {
    let repos = open_repositories(settings).await?;
    let mut by_id: BTreeMap<(String, String), ListedBackup> = BTreeMap::new();
    // Full backups a change archive may continue: id -> (cluster, consistent point).
    let mut continuable: BTreeMap<String, (String, crate::repo::layout::Lsn)> = BTreeMap::new();
    for repo in &repos {
        for entry in catalog::list_backups(repo.as_ref()).await? {
            match entry {
                CatalogEntry::Valid(m) => {
                    if m.kind == crate::repo::layout::BackupKind::Full && m.snapshot.method == crate::repo::manifest::SnapshotMethod::ReplicationSlot {
                        continuable.insert(m.backup_id.to_string(), (m.server.system_identifier.clone(), m.snapshot.consistent_lsn));
                    }
                    let key = (m.started_at.to_rfc3339(), m.backup_id.to_string());
                    by_id.entry(key).or_insert_with(|| listed(&m)).repositories.push(repo.location());
                }
                CatalogEntry::Invalid(id, e) => {
                    let key = (id.timestamp().to_rfc3339(), id.to_string());
                    let item = by_id.entry(key).or_insert_with(|| ListedBackup {
                        backup_id: id.to_string(),
                        kind: id.kind().to_string(),
                        started_at: id.timestamp().to_rfc3339(),
                        ..ListedBackup::default()
                    });
                    item.problems.push(e.user_line());
                }
            }
        }
    }
    let mut items: Vec<ListedBackup> = by_id.into_values().collect();
    // Size growth: against the previous valid backup of the same database.
    let mut previous: BTreeMap<String, u64> = BTreeMap::new();
    for b in items.iter_mut().filter(|b| b.database_size > 0) {
        if let Some(prev) = previous.insert(b.database.clone(), b.database_size) {
            b.growth_bytes = Some(b.database_size as i64 - prev as i64);
        }
    }
    recoverable_until(&repos, &continuable, &mut items).await;
    // Last verification result, from the audit trail of the first repository.
    if let Some(repo) = repos.first()
        && let Ok(records) = crate::repo::audit::list(repo.as_ref()).await
    {
        for rec in records.iter().filter(|r| r.operation == "verify") {
            let id = rec.details.get("backup_id").and_then(|v| v.as_str()).unwrap_or_default();
            if let Some(b) = items.iter_mut().find(|b| b.backup_id == id) {
                let when = rec.at.format("%Y-%m-%d %H:%M UTC");
                b.last_verification = Some(format!("{} {when}", if rec.ok { "passed" } else { "FAILED" }));
            }
        }
    }
    Ok(items)
}

/// For each continuable full backup, the last commit time the change archive reaches from it.
async fn recoverable_until(
    repos: &[std::sync::Arc<dyn crate::storage::Storage>],
    continuable: &BTreeMap<String, (String, crate::repo::layout::Lsn)>,
    items: &mut [ListedBackup],
) {
    use crate::replay::chain;
    let mut streams: BTreeMap<String, Vec<chain::StreamArchive>> = BTreeMap::new();
    let mut end_time: BTreeMap<String, Option<String>> = BTreeMap::new();
    for item in items.iter_mut() {
        let Some((system, lsn)) = continuable.get(&item.backup_id) else { continue };
        if !streams.contains_key(system) {
            streams.insert(system.clone(), chain::list_streams(repos, system).await.unwrap_or_default());
        }
        let Some(last) = streams[system].iter().filter_map(|s| s.chain_from(*lsn).last()).max_by_key(|s| s.end) else { continue };
        if !end_time.contains_key(&last.key) {
            // The last commit in the chain, or when its last (heartbeat) segment was stored.
            // The metadata line is readable without a key, also in encrypted segments.
            let meta = match repos[last.repos[0]].get(&last.key, None).await {
                Ok(bytes) => crate::stream::segment::decode_meta(&bytes, &last.key).ok(),
                Err(_) => None,
            };
            let t = meta.and_then(|m| m.last_commit_time).or(last.stored_at);
            end_time.insert(last.key.clone(), t.map(|t| t.to_rfc3339()));
        }
        item.recoverable_until = end_time[&last.key].clone();
    }
}

/// Every backup, and every legacy archive as kind `legacy` (copies with the
/// same id merged, each copy listed as `<location>/<key>`), oldest first.
pub async fn run_with_legacy(settings: &Settings) -> Result<Vec<ListedBackup>> {
    let mut items = run(settings).await?;
    let repos = open_repositories(settings).await?;
    let mut by_id: BTreeMap<String, (ListedBackup, Vec<(String, u64)>)> = BTreeMap::new();
    for repo in &repos {
        for a in legacy::list_archives(repo).await? {
            let (item, sizes) = by_id.entry(a.id.clone()).or_insert_with(|| {
                let started = a.named_time().or(a.modified).map(|t| t.to_rfc3339()).unwrap_or_default();
                let item = ListedBackup {
                    backup_id: a.id.clone(),
                    kind: "legacy".to_string(),
                    started_at: started,
                    stored_bytes: a.size,
                    modified: a.modified.map(|t| t.to_rfc3339()),
                    ..ListedBackup::default()
                };
                (item, Vec::new())
            });
            item.repositories.push(a.location());
            sizes.push((a.location(), a.size));
        }
    }
    for (mut item, sizes) in by_id.into_values() {
        if sizes.iter().any(|(_, n)| *n != item.stored_bytes) {
            let all = sizes.iter().map(|(at, n)| format!("{n} bytes at {at}")).collect::<Vec<_>>().join(", ");
            item.problems.push(format!("copies differ in size: {all}"));
        }
        items.push(item);
    }
    // Stable: pgkeep backups keep their order among themselves.
    items.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    Ok(items)
}

/// Without `--legacy`: a line saying how many legacy archives the
/// repositories hold and how to see them, or `None` when there are none.
/// Best effort: a repository that cannot be listed adds nothing.
pub async fn legacy_hint(settings: &Settings) -> Option<String> {
    let repos = open_repositories(settings).await.ok()?;
    let mut ids = std::collections::BTreeSet::new();
    for repo in &repos {
        for a in legacy::list_archives(repo).await.unwrap_or_default() {
            ids.insert(a.id);
        }
    }
    (!ids.is_empty()).then(|| {
        format!(
            "{} legacy archive(s) (full_backup_*.dump.gz, newest {}) not shown: run `pgkeep list --legacy`; `pgkeep verify <file>.dump.gz` checks one\n",
            ids.len(),
            ids.last().map(String::as_str).unwrap_or_default()
        )
    })
}

/// A human table of the listing.
pub fn render(items: &[ListedBackup]) -> String {
    if items.is_empty() {
        return "no backups\n".to_string();
    }
    let mut out = format!(
        "{:<36} {:<11} {:<20} {:>8} {:>10} {:>10} {:>6}  {}\n",
        "BACKUP", "KIND", "STARTED (UTC)", "SECONDS", "DB SIZE", "STORED", "RATIO", "REPOSITORIES"
    );
    for b in items {
        let started = b.started_at.get(..19).unwrap_or(&b.started_at).replace('T', " ");
        if b.kind == "legacy" {
            out.push_str(&format!(
                "{:<36} {:<11} {:<20} {:>8} {:>10} {:>10} {:>6}  {}\n",
                b.backup_id,
                b.kind,
                started,
                "-",
                "-",
                human_bytes(b.stored_bytes),
                "-",
                b.repositories.join(", ")
            ));
            if let Some(m) = &b.modified {
                out.push_str(&format!("    modified {} UTC\n", m.get(..19).unwrap_or(m).replace('T', " ")));
            }
            for p in &b.problems {
                out.push_str(&format!("    problem: {p}\n"));
            }
            continue;
        }
        out.push_str(&format!(
            "{:<36} {:<11} {:<20} {:>8.1} {:>10} {:>10} {:>6}  {}\n",
            b.backup_id,
            b.kind,
            started,
            b.duration_secs,
            human_bytes(b.database_size),
            human_bytes(b.stored_bytes),
            b.compression_ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".to_string()),
            if b.repositories.is_empty() { "-".to_string() } else { b.repositories.join(", ") }
        ));
        let mut extra = Vec::new();
        match (&b.holds, &b.image_of) {
            (Some(h), _) => extra.push(h.clone()),
            (None, Some(i)) => extra.push(format!("table {i}")),
            (None, None) => {}
        }
        if let Some(p) = b.parent.as_ref().filter(|_| b.kind == "incremental") {
            extra.push(format!("parent {p}"));
        }
        if let Some(g) = b.growth_bytes {
            let sign = if g < 0 { "-" } else { "+" };
            extra.push(format!("database {sign}{} since the previous backup", human_bytes(g.unsigned_abs())));
        }
        if let Some(v) = &b.last_verification {
            extra.push(format!("verify {v}"));
        }
        if let Some(t) = &b.recoverable_until {
            extra.push(format!("point-in-time restore possible up to {} UTC", t.get(..19).unwrap_or(t).replace('T', " ")));
        }
        if !extra.is_empty() {
            out.push_str(&format!("    {}\n", extra.join("; ")));
        }
        for w in &b.warnings {
            out.push_str(&format!("    warning: {w}\n"));
        }
        for p in &b.problems {
            out.push_str(&format!("    problem: {p}\n"));
        }
    }
    out
}
