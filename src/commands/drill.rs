//! `pgkeep drill`: the seed's monthly test restore, automated. Pick a random
//! recent backup (or the one named), restore it into a temporary database
//! with full verification (row counts, fingerprints, NOT NULL, critical
//! tables), run the user's SQL assertions, drop the temporary database, and
//! record the outcome with the measured recovery time (RTO) in the
//! repository (`audit/<timestamp>_drill.json`), where `check` reports it.

use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::commands::restore::{self, RestoreOptions};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::connect;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{AUDIT_PREFIX, BackupKind};
use crate::repo::manifest::RunInfo;
use crate::restore::source::{BackupSelector, open_repositories};
use crate::restore::target;
use crate::storage::PutOptions;

/// Options of a drill.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// A specific backup; default: a random one of the last `recent` full backups.
    pub backup: Option<String>,
    /// How many recent full backups to pick from.
    pub recent: usize,
    /// SQL assertions: statements separated by `;`, each must return `true` in its first row.
    pub assert_sql: Option<String>,
    /// Critical tables (present and not empty).
    pub critical_tables: Vec<String>,
}

/// The recorded outcome of a drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The backup drilled.
    pub backup_id: String,
    /// Whether restore, verification and assertions all passed.
    pub passed: bool,
    /// Measured recovery time: start of the restore to a verified database, seconds.
    pub rto_seconds: f64,
    /// Rows restored and verified.
    pub rows: u64,
    /// Assertions run and failed.
    pub assertions: usize,
    /// Problems found.
    pub problems: Vec<String>,
    /// Who ran it.
    pub run_by: RunInfo,
}

/// Split an assertion file into statements (on `;` outside quotes,
/// identifiers, dollar quotes and comments).
pub fn split_statements(sql: &str) -> Vec<String> {
    crate::pg::split::split_statements(sql).into_iter().map(str::to_string).collect()
}

/// Run a drill and record it in every repository.
pub async fn run(settings: &Settings, opts: &DrillOptions) -> Result<DrillRecord> {
    // 1. Choose the backup: named, or random among the recent full backups.
    let repos = open_repositories(settings).await?;
    let backup = match &opts.backup {
        Some(b) => b.clone(),
        None => {
            let mut fulls = Vec::new();
            for e in catalog::list_backups(repos[0].as_ref()).await? {
                if let CatalogEntry::Valid(m) = e
                    && m.kind == BackupKind::Full
                    && m.database == settings.db.dbname
                {
                    fulls.push(m.backup_id.to_string());
                }
            }
            let recent: Vec<String> = fulls.iter().rev().take(opts.recent.max(1)).cloned().collect();
            if recent.is_empty() {
                return Err(Error::new(ErrorKind::NotFound, format!("no full backup of {} to drill in {}", settings.db.dbname, repos[0].location())));
            }
            recent[rand::random_range(0..recent.len())].clone()
        }
    };

    // 2. Restore into a temporary database with verification (the RTO clock runs here).
    let started = Instant::now();
    let ropts = RestoreOptions {
        temp_only: true,
        no_pre_backup: true,
        yes: true,
        critical_tables: opts.critical_tables.clone(),
        ..RestoreOptions::new(BackupSelector::parse(&backup)?)
    };
    let mut record = DrillRecord {
        at: Utc::now(),
        backup_id: backup.clone(),
        passed: false,
        rto_seconds: 0.0,
        rows: 0,
        assertions: 0,
        problems: Vec::new(),
        run_by: RunInfo::current(),
    };
    match restore::run(settings, &ropts).await {
        Err(e) => record.problems.push(e.user_line()),
        Ok(report) => {
            record.rto_seconds = started.elapsed().as_secs_f64();
            record.rows = report.rows;
            // 3. The user's assertions, then drop the temporary database whatever happened.
            let temp = settings.db.with_dbname(&report.restored_into);
            if let Some(sql) = &opts.assert_sql {
                match run_assertions(&temp, sql).await {
                    Ok((n, failed)) => {
                        record.assertions = n;
                        record.problems.extend(failed);
                    }
                    Err(e) => record.problems.push(e.user_line()),
                }
            }
            if let Err(e) = target::drop_database(&settings.db, &report.restored_into).await {
                record.problems.push(e.user_line());
            }
        }
    }
    record.passed = record.problems.is_empty();

    // 4. Record the outcome in every repository.
    let key = format!("{AUDIT_PREFIX}{}_drill.json", record.at.format("%Y%m%d_%H%M%S"));
    let body = Bytes::from(serde_json::to_vec_pretty(&record).map_err(|e| Error::internal(e.to_string()))?);
    for r in &repos {
        if let Err(e) = r.put(&key, body.clone(), PutOptions::default()).await {
            tracing::warn!(repo = %r.location(), error = %e.user_line(), "drill result not recorded");
        }
    }
    Ok(record)
}

/// Run each assertion; returns (count, failures).
async fn run_assertions(db: &crate::config::DbSettings, sql: &str) -> Result<(usize, Vec<String>)> {
    let conn = connect(db).await?;
    let stmts = split_statements(sql);
    let mut failed = Vec::new();
    for (i, stmt) in stmts.iter().enumerate() {
        let short: String = stmt.chars().take(80).collect();
        match conn.client.simple_query(stmt).await {
            Err(e) => failed.push(format!("assertion {} ({short}) failed to run: {}", i + 1, crate::pg::error_message(&e))),
            Ok(msgs) => {
                let first = msgs.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                    _ => None,
                });
                if first != Some(Some("t".to_string())) {
                    failed.push(format!("assertion {} ({short}) is not true", i + 1));
                }
            }
        }
    }
    Ok((stmts.len(), failed))
}

/// The newest drill record in a repository, if any.
pub async fn last_record(storage: &dyn crate::storage::Storage) -> Result<Option<DrillRecord>> {
    let objects = storage.list(AUDIT_PREFIX).await?;
    let Some(last) = objects.iter().filter(|o| o.key.ends_with("_drill.json")).max_by(|a, b| a.key.cmp(&b.key)) else {
        return Ok(None);
    };
    let bytes = storage.get(&last.key, None).await?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::corrupt(format!("drill record {} cannot be parsed: {e}", last.key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes() {
        let s = split_statements("SELECT count(*) > 0 FROM users;\n SELECT 'a;b' = 'a;b'; SELECT \"x;y\" IS NULL FROM t\n");
        assert_eq!(s, vec!["SELECT count(*) > 0 FROM users", "SELECT 'a;b' = 'a;b'", "SELECT \"x;y\" IS NULL FROM t"]);
        assert!(split_statements("  ;  ").is_empty());
    }
}
