//! The backup's consistent snapshot, held open on one connection until every
//! COPY and the schema capture have finished.
//!
//! Method `exported_snapshot`: a `REPEATABLE READ READ ONLY` transaction that
//! calls `pg_export_snapshot()`. (The replication-slot method, which lets
//! change archiving continue exactly from the snapshot, arrives with the
//! replication client.) While open, the holder takes `ACCESS SHARE` locks on
//! every table, with a `lock_timeout`, so concurrent DDL cannot drop or
//! rewrite a table under the backup; a timeout names the blocking sessions.

use std::time::Duration;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, TableInfo};
use crate::pg::{Connection, connect};
use crate::repo::layout::Lsn;
use crate::repo::manifest::SnapshotMethod;

/// An exported snapshot and the connection that keeps it alive.
pub struct SnapshotHolder {
    conn: Connection,
    db: DbSettings,
    /// Name to pass to `SET TRANSACTION SNAPSHOT` and `pg_dump --snapshot`.
    pub name: String,
    /// WAL position at export.
    pub lsn: Lsn,
    /// How the snapshot was taken.
    pub method: SnapshotMethod,
}

impl SnapshotHolder {
    /// Open a connection and export a snapshot from a read-only repeatable-read transaction.
    pub async fn export(db: &DbSettings) -> Result<SnapshotHolder> {
        let conn = connect(db).await?;
        let client = &conn.client;
        client
            .batch_execute(SESSION_SETUP)
            .await
            .map_err(|e| pg_err(e, "cannot configure the snapshot session"))?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| pg_err(e, "cannot start the snapshot transaction"))?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text",
                &[],
            )
            .await
            .map_err(|e| pg_err(e, "cannot export a snapshot"))?;
        let name: String = row.get(0);
        let lsn: Option<String> = row.get(1);
        let lsn = lsn.and_then(|l| l.parse().ok()).unwrap_or_default();
        tracing::info!(snapshot = %name, lsn = %lsn, "exported snapshot");
        Ok(SnapshotHolder { conn, db: db.clone(), name, lsn, method: SnapshotMethod::ExportedSnapshot })
    }

    /// The client inside the snapshot transaction (for catalog reads under the snapshot).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn.client
    }

    /// Take ACCESS SHARE locks on `tables`, waiting at most `timeout` for each batch.
    pub async fn lock_tables(&self, tables: &[TableInfo], timeout: Duration) -> Result<()> {
        let client = &self.conn.client;
        client
            .batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", timeout.as_millis()))
            .await
            .map_err(|e| pg_err(e, "cannot set lock_timeout"))?;
        for batch in tables.chunks(500) {
            let names: Vec<String> = batch.iter().map(TableInfo::qualified).collect();
            let sql = format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", "));
            if let Err(e) = client.batch_execute(&sql).await {
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                    let blockers = self.blockers(batch).await.unwrap_or_default();
                    return Err(Error::new(
                        ErrorKind::Database,
                        format!(
                            "could not lock the tables to back up within {}s: {}",
                            timeout.as_secs(),
                            if blockers.is_empty() { "another session holds a conflicting lock".to_string() } else { blockers }
                        ),
                    )
                    .with_hint("wait for the DDL or long transaction to finish, or terminate it, then rerun"));
                }
                return Err(pg_err(e, "cannot lock tables"));
            }
        }
        Ok(())
    }

    /// Describe the sessions holding or awaiting ACCESS EXCLUSIVE locks on
    /// `tables` (pid, user, application, state, transaction age). Uses a
    /// separate connection: the failed LOCK aborted the snapshot transaction.
    async fn blockers(&self, tables: &[TableInfo]) -> Result<String> {
        let conn = connect(&self.db).await?;
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let rows = conn
            .client
            .query(
                "SELECT DISTINCT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
                 coalesce(a.state, ''), coalesce(extract(epoch FROM now() - a.xact_start)::int8, 0), c.relname::text \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation \
                 WHERE l.relation = ANY($1) AND l.mode = 'AccessExclusiveLock' AND a.pid <> pg_backend_pid() \
                 ORDER BY 1",
                &[&oids],
            )
            .await
            .map_err(|e| pg_err(e, "cannot read pg_locks"))?;
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "pid {} (user {}, application '{}', {}, transaction open {}s) locks table {}",
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, i64>(4),
                    r.get::<_, String>(5)
                )
            })
            .collect();
        Ok(parts.join("; "))
    }

    /// End the snapshot transaction.
    pub async fn release(self) -> Result<()> {
        let _ = self.conn.client.batch_execute("COMMIT").await;
        Ok(())
    }
}

fn pg_err(e: tokio_postgres::Error, what: &str) -> Error {
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    Error::new(ErrorKind::Database, format!("{what}: {msg}"))
}
