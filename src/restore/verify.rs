//! Proving a restored database equal to its backup: for every table, the row
//! count and the order-independent content fingerprint recomputed with
//! `COPY … TO STDOUT` under the same session settings as the backup; NOT
//! NULL columns still NOT NULL (so they hold no NULLs); critical tables
//! present and not empty. Used by restore, and by `verify --deep` later.
//! The read-back streams in 1 MiB batches: rows of any size cost one batch
//! of memory (`replication::copy_out`, `pipeline::process::RowFingerprinter`).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, qualified, quote_ident};
use crate::pg::connect;
use crate::pipeline::TableFingerprint;
use crate::pipeline::process::RowFingerprinter;
use crate::replication::ReplicationConnection;
use crate::repo::manifest::{BackupManifest, TableEntry};

/// The outcome of verifying a restored database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Tables whose rows and fingerprint matched.
    pub tables_checked: usize,
    /// Rows counted.
    pub rows: u64,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether everything matched.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// Count one table's outcome (from [`check_table`]).
    pub fn add(&mut self, rows: u64, problem: Option<String>) {
        self.rows += rows;
        match problem {
            Some(p) => self.problems.push(p),
            None => self.tables_checked += 1,
        }
    }
}

/// Bytes of COPY text fingerprinted at a time by the read-back.
const READ_BATCH: usize = 1 << 20;

/// Fingerprint one table as restored, reading `COPY … TO STDOUT` in
/// batches of [`READ_BATCH`] bytes cut anywhere (memory is one batch and
/// one socket read, whatever the row sizes).
async fn fingerprint(conn: &mut ReplicationConnection, t: &TableEntry) -> Result<TableFingerprint> {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let table = qualified(&t.schema, &t.name);
    // COPY of a table reads only that table (no children), and skips the
    // executor's projection that a query would add.
    let sql = match (&t.extension, cols.is_empty()) {
        (Some(e), _) => format!("COPY (SELECT {} FROM ONLY {table} {}) TO STDOUT", cols.join(", "), e.filter),
        (None, true) => format!("COPY {table} TO STDOUT"),
        (None, false) => format!("COPY {table} ({}) TO STDOUT", cols.join(", ")),
    };
    let what = format!("read back table {}.{}", t.schema, t.name);
    let mut reader = conn.copy_out(&sql, &what).await?;
    let mut fp = RowFingerprinter::default();
    // Read in batches of many rows: one call per batch, not per row.
    let mut batch = bytes::BytesMut::with_capacity(READ_BATCH);
    loop {
        let more = reader.read_into(&mut batch, READ_BATCH).await?;
        fp.push(&batch);
        batch.clear();
        if !more {
            break;
        }
    }
    fp.finish().ok_or_else(|| Error::new(ErrorKind::Database, format!("reading back table {}.{} ended in the middle of a row", t.schema, t.name)))
}

/// A session for reading tables back, with the backup's session settings.
pub async fn verify_session(db: &DbSettings) -> Result<ReplicationConnection> {
    let mut conn = ReplicationConnection::connect_regular(db).await?;
    conn.simple_query(SESSION_SETUP).await.map_err(|e| e.context("cannot configure the verify session"))?;
    Ok(conn)
}

/// Read table `t` back and compare it with the manifest: its row count,
/// and a problem line when the rows or the fingerprint differ.
pub async fn check_table(conn: &mut ReplicationConnection, t: &TableEntry) -> Result<(u64, Option<String>)> {
    let fp = fingerprint(conn, t).await?;
    let problem = if fp.rows != t.rows {
        Some(format!("table {}.{}: {} rows restored, backup has {}", t.schema, t.name, fp.rows, t.rows))
    } else if fp.to_hex() != t.fingerprint {
        Some(format!("table {}.{}: content fingerprint differs from the backup's", t.schema, t.name))
    } else {
        None
    };
    Ok((fp.rows, problem))
}

/// Verify `tables` (indexes into the manifest) in `db` with `jobs` connections.
pub async fn verify_tables(manifest: &BackupManifest, db: &DbSettings, tables: &[usize], critical: &[String], jobs: usize) -> Result<VerifyReport> {
    let manifest = Arc::new(manifest.clone());
    let queue = Arc::new(Mutex::new(tables.iter().copied().collect::<VecDeque<_>>()));
    let report = Arc::new(Mutex::new(VerifyReport::default()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..jobs.max(1).min(tables.len().max(1)) {
        let (manifest, queue, report, db) = (manifest.clone(), queue.clone(), report.clone(), db.clone());
        set.spawn(async move {
            let mut conn = verify_session(&db).await?;
            loop {
                let Some(i) = queue.lock().await.pop_front() else { break };
                let (rows, problem) = check_table(&mut conn, &manifest.tables[i]).await?;
                report.lock().await.add(rows, problem);
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(j) = set.join_next().await {
        j.map_err(|e| Error::internal(format!("verify worker crashed: {e}")))??;
    }
    let mut report = Arc::try_unwrap(report).map(|m| m.into_inner()).unwrap_or_default();
    final_checks(&manifest, db, tables, critical, &mut report).await?;
    Ok(report)
}

/// The checks after every table was read back: NOT NULL columns of the
/// backup still NOT NULL, and critical tables present and not empty.
pub async fn final_checks(manifest: &BackupManifest, db: &DbSettings, tables: &[usize], critical: &[String], report: &mut VerifyReport) -> Result<()> {
    // NOT NULL columns of the backup are NOT NULL in the restore.
    let conn = connect(db).await?;
    let rows = conn
        .client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot read NOT NULL columns: {e}")))?;
    let not_null: std::collections::HashSet<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    for &i in tables {
        let t = &manifest.tables[i];
        for c in t.columns.iter().filter(|c| c.not_null) {
            if !not_null.contains(&(t.schema.clone(), t.name.clone(), c.name.clone())) {
                report.problems.push(format!("table {}.{}: column {} is no longer NOT NULL", t.schema, t.name, c.name));
            }
        }
    }

    // Critical tables: present in the backup and not empty.
    for name in critical {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        match manifest.tables.iter().find(|t| t.schema == schema && t.name == table) {
            None => report.problems.push(format!("critical table {schema}.{table} is not in backup {}", manifest.backup_id)),
            Some(t) if t.rows == 0 => report.problems.push(format!("critical table {schema}.{table} is empty")),
            Some(_) => {}
        }
    }
    Ok(())
}
