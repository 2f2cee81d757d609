//! `pgkeep list`: every backup in every configured repository, merged by id:
//! kind, start and duration, database and stored size, compression ratio,
//! and which repositories hold a valid copy. Damaged manifests are listed
//! as such instead of being hidden.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::commands::backup::human_bytes;
use crate::config::Settings;
use crate::error::Result;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::manifest::BackupManifest;
use crate::restore::source::open_repositories;

/// One backup as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ListedBackup {
    /// Backup id.
    pub backup_id: String,
    /// full / incremental / pre-restore.
    pub kind: String,
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
    /// Raw / stored.
    pub compression_ratio: f64,
    /// Repositories holding a valid copy.
    pub repositories: Vec<String>,
    /// Problems found while reading it (damaged copies).
    pub problems: Vec<String>,
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
        compression_ratio: if m.stats.stored_bytes > 0 { m.stats.raw_bytes as f64 / m.stats.stored_bytes as f64 } else { 0.0 },
        repositories: Vec::new(),
        problems: Vec::new(),
    }
}

/// Every backup of every repository, oldest first.
pub async fn run(settings: &Settings) -> Result<Vec<ListedBackup>> {
    let repos = open_repositories(settings).await?;
    let mut by_id: BTreeMap<(String, String), ListedBackup> = BTreeMap::new();
    for repo in &repos {
        for entry in catalog::list_backups(repo.as_ref()).await? {
            match entry {
                CatalogEntry::Valid(m) => {
                    let key = (m.started_at.to_rfc3339(), m.backup_id.to_string());
                    by_id.entry(key).or_insert_with(|| listed(&m)).repositories.push(repo.location());
                }
                CatalogEntry::Invalid(id, e) => {
                    let key = (id.timestamp().to_rfc3339(), id.to_string());
                    let item = by_id.entry(key).or_insert_with(|| ListedBackup {
                        backup_id: id.to_string(),
                        kind: id.kind().to_string(),
                        parent: None,
                        database: String::new(),
                        started_at: id.timestamp().to_rfc3339(),
                        finished_at: String::new(),
                        duration_secs: 0.0,
                        database_size: 0,
                        raw_bytes: 0,
                        stored_bytes: 0,
                        compression_ratio: 0.0,
                        repositories: Vec::new(),
                        problems: Vec::new(),
                    });
                    item.problems.push(e.user_line());
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
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
        out.push_str(&format!(
            "{:<36} {:<11} {:<20} {:>8.1} {:>10} {:>10} {:>6.2}  {}\n",
            b.backup_id,
            b.kind,
            started,
            b.duration_secs,
            human_bytes(b.database_size),
            human_bytes(b.stored_bytes),
            b.compression_ratio,
            if b.repositories.is_empty() { "-".to_string() } else { b.repositories.join(", ") }
        ));
        for p in &b.problems {
            out.push_str(&format!("    problem: {p}\n"));
        }
    }
    out
}
