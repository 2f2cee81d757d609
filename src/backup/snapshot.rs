//! The backup's consistent snapshot, held open on one connection until every
//! COPY and the schema capture have finished.
//!
//! Two methods:
//! - `replication_slot` ([`SnapshotHolder::from_slot`]): a replication
//!   connection runs `CREATE_REPLICATION_SLOT … TEMPORARY LOGICAL pgoutput`
//!   with an exported snapshot and then stays idle (the snapshot lives until
//!   its next command); the slot's consistent point is where change archiving
//!   continues. A regular connection imports the snapshot for catalog reads
//!   and locks.
//! - `exported_snapshot` ([`SnapshotHolder::export`]): a `REPEATABLE READ READ
//!   ONLY` transaction calls `pg_export_snapshot()`; consistent, but with no
//!   slot to continue from.
//!
//! While open, the holder takes `ACCESS SHARE` locks on every table, with a
//! `lock_timeout`, so concurrent DDL cannot drop or rewrite a table under the
//! backup; a timeout names the blocking sessions. A rewrite or TRUNCATE that
//! committed between the snapshot and the locks is detected
//! ([`SnapshotHolder::rewritten_since_snapshot`]) and the backup takes a new
//! snapshot.

use std::time::Duration;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::quote_literal;
use crate::pg::catalog::{SESSION_SETUP, TableInfo};
use crate::pg::{Connection, connect};
use crate::replication::ReplicationConnection;
use crate::repo::layout::Lsn;
use crate::repo::manifest::SnapshotMethod;

/// An exported snapshot and the connections that keep it alive.
pub(crate) struct SnapshotHolder {
    conn: Connection,
    db: DbSettings,
    /// The idle replication connection that exported the snapshot (slot method).
    replication: Option<ReplicationConnection>,
    /// The temporary slot, when one was created.
    pub slot_name: Option<String>,
    /// Name to pass to `SET TRANSACTION SNAPSHOT` and `pg_dump --snapshot`.
    pub name: String,
    /// WAL position at export.
    pub lsn: Lsn,
    /// How the snapshot was taken.
    pub method: SnapshotMethod,
}

impl SnapshotHolder {
    /// Open a connection and export a snapshot from a read-only repeatable-read transaction.
    pub(crate) async fn export(db: &DbSettings) -> Result<SnapshotHolder> {
        let conn = connect(db).await?;
        let client = &conn.client;
        client.batch_execute(SESSION_SETUP).await.map_err(|e| pg_err(e, "cannot configure the snapshot session"))?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| pg_err(e, "cannot start the snapshot transaction"))?;
        let row = client
            .query_one("SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text", &[])
            .await
            .map_err(|e| pg_err(e, "cannot export a snapshot"))?;
        let name: String = row.get(0);
        let lsn: Option<String> = row.get(1);
        let lsn = lsn.and_then(|l| l.parse().ok()).unwrap_or_default();
        tracing::info!(snapshot = %name, lsn = %lsn, "exported snapshot");
        Ok(SnapshotHolder { conn, db: db.clone(), replication: None, slot_name: None, name, lsn, method: SnapshotMethod::ExportedSnapshot })
    }

    /// Create a temporary logical slot with an exported snapshot, waiting at
    /// most `timeout` for running transactions (slot creation waits for them);
    /// then import the snapshot on a regular connection.
    pub(crate) async fn from_slot(db: &DbSettings, timeout: Duration) -> Result<SnapshotHolder> {
        let mut repl = ReplicationConnection::connect(db).await?;
        let slot = format!("pgkeep_tmp_{}_{:08x}", std::process::id(), rand::random::<u32>());
        let cancel = repl.cancel_token();
        let created = match tokio::time::timeout(timeout, repl.create_logical_slot(&slot, true, true)).await {
            Ok(r) => r?,
            Err(_) => {
                let _ = ReplicationConnection::cancel(&cancel, db).await;
                let waiting_on = slot_blockers(db).await.unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Database,
                    format!(
                        "creating the replication slot waited {}s for running transactions{}",
                        timeout.as_secs(),
                        if waiting_on.is_empty() { String::new() } else { format!(": {waiting_on}") }
                    ),
                )
                .with_hint("slot creation needs every transaction that was running to finish; end or wait for them"));
            }
        };
        let name = created.snapshot_name.ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no snapshot"))?;
        let conn = connect(db).await?;
        let import = format!("{SESSION_SETUP}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}", quote_literal(&name));
        conn.client.batch_execute(&import).await.map_err(|e| pg_err(e, "cannot import the slot's snapshot"))?;
        tracing::info!(slot = %created.slot_name, snapshot = %name, lsn = %created.consistent_point, "created temporary replication slot with exported snapshot");
        Ok(SnapshotHolder {
            conn,
            db: db.clone(),
            replication: Some(repl),
            slot_name: Some(created.slot_name),
            name,
            lsn: created.consistent_point,
            method: SnapshotMethod::ReplicationSlot,
        })
    }

    /// The client inside the snapshot transaction (for catalog reads under the snapshot).
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.conn.client
    }

    /// Take ACCESS SHARE locks on `tables`, waiting at most `timeout` for each batch.
    pub(crate) async fn lock_tables(&self, tables: &[TableInfo], timeout: Duration) -> Result<()> {
        let client = &self.conn.client;
        client.batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", timeout.as_millis())).await.map_err(|e| pg_err(e, "cannot set lock_timeout"))?;
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

    /// The tables of `tables` whose storage changed between the snapshot and
    /// their locks (a rewrite — `ALTER TABLE … TYPE`, `VACUUM FULL`,
    /// `CLUSTER` — or a `TRUNCATE` committed in between): the snapshot's
    /// `pg_class.relfilenode` differs from the current one, and the rows
    /// in the new file are invisible to the snapshot, so a copy would be
    /// empty or stale. Call after [`lock_tables`](Self::lock_tables).
    pub(crate) async fn rewritten_since_snapshot(&self, tables: &[TableInfo]) -> Result<Vec<String>> {
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let rows = self
            .conn
            .client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1) AND c.relfilenode IS DISTINCT FROM pg_catalog.pg_relation_filenode(c.oid) ORDER BY 1",
                &[&oids],
            )
            .await
            .map_err(|e| pg_err(e, "cannot compare the tables' storage with the snapshot's"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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

    /// End the snapshot transaction, close its connection (which ends the
    /// table locks) and the replication connection (which drops the
    /// temporary slot). Returns once both sockets are closed, so the caller
    /// can say the database is free.
    pub(crate) async fn release(self) -> Result<()> {
        let _ = self.conn.client.batch_execute("COMMIT").await;
        let crate::pg::Connection { client, driver } = self.conn;
        // The driver sends Terminate and ends once its client is gone.
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        if let Some(repl) = self.replication {
            repl.close().await?;
        }
        Ok(())
    }
}

fn pg_err(e: tokio_postgres::Error, what: &str) -> Error {
    crate::pg::query_error(what)(e)
}

/// Transactions holding an xid, oldest first: what slot creation waits for.
async fn slot_blockers(db: &DbSettings) -> Result<String> {
    let conn = connect(db).await?;
    let rows = conn
        .client
        .query(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(state, ''), \
             coalesce(extract(epoch FROM now() - xact_start)::int8, 0) FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 10",
            &[],
        )
        .await
        .map_err(|e| pg_err(e, "cannot read pg_stat_activity"))?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "pid {} (user {}, application '{}', {}, transaction open {}s)",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, i64>(4)
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}
