//! The replay writer: pgoutput messages in, set-based statements on the
//! restored database out.
//!
//! One connection with `session_replication_role = replica` (as PostgreSQL's
//! own apply worker: user triggers, rules and foreign-key triggers do not
//! fire — their effects are in the archive already); when the role may not
//! set it, user triggers and foreign keys are [`suspend`](super::suspend)ed
//! in the restored database instead. Row changes collect in
//! per-table [`batch`](super::batch)es; at a transaction boundary, when the
//! batch is big enough, or before a TRUNCATE, a captured DDL statement or a
//! changed relation, everything is written in one transaction: per table a
//! DELETE of the keys that are replaced or gone, UPDATEs of the patched
//! columns, and one COPY of the new rows (where in-place UPDATEs could
//! collide on a unique index besides the key, or may not set a `GENERATED
//! ALWAYS` identity column, patched rows are deleted and copied back in
//! whole, their unchanged values read from the database; deferrable
//! constraints are deferred to the commit). Every DELETE and UPDATE must
//! touch exactly the rows the archive says existed; anything else means
//! the replay diverged from its base, and it stops with an error.

mod lanes;
mod write;

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::batch::{BatchError, Key, KeyedBatch, Outcome, PatchValue, RowState, UnkeyedBatch, UnkeyedChange, Value};
use super::sql::{self, TargetColumn};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, qualified};
use crate::pg::connect;
use crate::replication::pgoutput::{Oid, OldTuple, PgOutputMessage, Relation, ReplicaIdentity, Truncate};
use crate::repo::layout::Lsn;
use crate::stream::ddl::{DDL_PREFIX, DdlMessage};
use crate::stream::inexact::{MISSING_PREFIX, MissingValue, PARTITION_PREFIX, PartitionMessage};

/// Write the batches once they hold this many row changes (at a commit)…
const BATCH_CHANGES: u64 = 200_000;

/// [`BATCH_CHANGES`], or `PGKEEP_REPLAY_BATCH_CHANGES` when set: a tuning
/// knob, and how tests make batches end anywhere (inside transactions,
/// with tables split between sessions) on small workloads.
fn batch_changes() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var("PGKEEP_REPLAY_BATCH_CHANGES").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(BATCH_CHANGES))
}

/// … or when the batch takes about this much memory, whichever comes first:
/// the archived messages (values are slices of them) plus, per change,
/// [`CHANGE_BYTES`] and [`VALUE_BYTES`] per column for the maps and
/// vectors that hold them (measured: a batch of 4-column rows took about
/// twice its messages' size). A 2 GiB transaction of such rows replays at
/// the same rate with 48 MiB as with 64, and peaks at 155 MiB instead of
/// 186 (`benches/stream_bigtxn.sh`).
const BATCH_BYTES: u64 = 48 << 20;
/// Memory a recorded change takes besides its values: its map entry, key and row vectors.
const CHANGE_BYTES: u64 = 160;
/// Memory a recorded change takes per column besides the value's bytes.
const VALUE_BYTES: u64 = 40;
/// Oids below this are built-in types, equal on every server.
const FIRST_NORMAL_OID: u32 = 16384;

/// A relation as the target database has it.
#[derive(Debug, Clone)]
struct Target {
    /// Quoted `schema.name`.
    table: String,
    /// `schema.name` for messages.
    display: String,
    /// The relation's columns, in the archive's order, as the target types them.
    cols: Vec<TargetColumn>,
    /// Key columns (indexes into `cols`), when the table has one.
    key: Option<Vec<usize>>,
    /// Patched rows are rewritten whole (deleted, then copied back in with
    /// their unchanged values) instead of updated in place: the table has a
    /// unique or exclusion index besides its key, whose values a batch of
    /// in-place UPDATEs could collide on in hash order, or a `GENERATED
    /// ALWAYS` identity column, which UPDATE may not set (COPY may).
    rebuild: bool,
}

/// The pending changes of one relation.
#[derive(Debug)]
enum Pending {
    Keyed(KeyedBatch),
    Unkeyed(UnkeyedBatch),
}

/// A relation the archive described.
#[derive(Debug)]
struct RelationState {
    relation: Relation,
    /// Resolved on first use; cleared by DDL.
    target: Option<Target>,
}

/// Counters of a replay.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyStats {
    /// Row changes applied.
    pub changes: u64,
    /// Captured DDL statements run.
    pub ddl_statements: u64,
    /// TRUNCATEs run.
    pub truncates: u64,
    /// Batches written.
    pub batches: u64,
    /// Tables without a replica identity: only their inserts and truncates are archived.
    pub insert_only_tables: Vec<String>,
    /// Captured DDL messages not run because they are not signed by `pgkeep setup`.
    pub ddl_rejected: Vec<String>,
    /// Columns added with a non-immutable fast default given the source's value.
    pub fast_defaults: u64,
}

/// The writer.
pub struct Applier {
    client: Client,
    /// A second session on the same database for writing batches in
    /// parallel ([`lanes`]); `None` when it could not be prepared alike.
    lane: Option<Client>,
    db: String,
    relations: HashMap<Oid, RelationState>,
    pending: HashMap<Oid, Pending>,
    pending_changes: u64,
    pending_bytes: u64,
    /// Only these tables (`schema.name`) are replayed, when set.
    only: Option<Vec<(String, String)>>,
    /// Tables whose row changes are left out for now: a table image puts
    /// them in place later ([`super::image`]).
    skipped: Vec<(String, String)>,
    /// Where the current transaction committed (for messages).
    at: Lsn,
    /// The restored database's `pgkeep.ddl_key`, which signs captured DDL.
    ddl_key: Option<String>,
    /// The last captured query string and which of its transactions comes next.
    last_ddl: Option<(String, usize)>,
    /// Triggers and foreign keys suspended because the session may not be a replica.
    suspended: Option<super::suspend::Suspended>,
    /// Triggers set `ENABLE ALWAYS`/`REPLICA`, disabled for the replay.
    quieted: Vec<super::triggers::Quieted>,
    stats: ApplyStats,
}

impl Applier {
    /// Connect to the restored database `db` and prepare the session.
    pub async fn connect(db: &DbSettings, only: Option<Vec<(String, String)>>) -> Result<Applier> {
        let conn = connect::connect(db).await?;
        let client = conn.client;
        client.batch_execute(SESSION_SETUP).await.map_err(crate::pg::query_error(format!("preparing replay into {}", db.dbname)))?;
        // The replica role when permitted; else triggers and foreign keys suspended (checked first).
        let suspended = match super::suspend::try_replica_role(&client).await? {
            true => None,
            false => Some(super::suspend::Suspended::engage(&client, &db.dbname, only.clone()).await?),
        };
        client.batch_execute(REPLAY_SESSION).await.map_err(crate::pg::query_error(format!("preparing replay into {}", db.dbname)))?;
        // The key that signs captured DDL, restored with the base backup (absent: setup came later).
        let ddl_key = match client.query_opt("SELECT key FROM pgkeep.ddl_key LIMIT 1", &[]).await {
            Ok(row) => row.map(|r| r.get::<_, String>(0)),
            Err(_) => None,
        };
        let lane = lanes::second_session(db, suspended.is_none()).await;
        Ok(Applier {
            client,
            lane,
            ddl_key,
            last_ddl: None,
            suspended,
            quieted: Vec::new(),
            db: db.dbname.clone(),
            relations: HashMap::new(),
            pending: HashMap::new(),
            pending_changes: 0,
            pending_bytes: 0,
            only,
            skipped: Vec::new(),
            at: Lsn(0),
            stats: ApplyStats::default(),
        })
    }

    /// Disable the triggers that would fire during the replay ([`super::triggers`]).
    /// (Only in a replica session: without one, [`super::suspend`] has
    /// disabled the user triggers of the replayed tables already.)
    pub async fn quiet_triggers(&mut self) -> Result<()> {
        if self.suspended.is_some() {
            return Ok(());
        }
        super::triggers::quiet(&self.client, &mut self.quieted).await
    }

    /// The triggers disabled for the replay, to enable again at its end.
    pub fn quieted_triggers(&self) -> &[super::triggers::Quieted] {
        &self.quieted
    }

    /// The session (for the steps after the replay).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// After the replay: foreign keys and triggers suspended for it are put
    /// back (keys validated). Nothing to do in a replica session.
    pub async fn finish(&mut self) -> Result<()> {
        match self.suspended.take() {
            Some(s) => s.restore(&self.client, &self.db).await,
            None => Ok(()),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    /// A transaction that committed at `commit_lsn` begins.
    pub fn begin(&mut self, commit_lsn: Lsn) {
        self.at = commit_lsn;
    }

    /// Account `n` bytes of archived messages to the pending batch.
    pub fn note_bytes(&mut self, n: usize) {
        self.pending_bytes += n as u64;
    }

    /// A transaction ended: write the batches when they are big enough.
    pub async fn commit(&mut self) -> Result<()> {
        self.flush_if_full().await
    }

    /// Inside a transaction: write the batches when they are big enough, so
    /// a transaction of any size replays in bounded memory. Nothing reads the
    /// restored database before the replay ends, and a target never falls
    /// inside a transaction, so a partly written one is never seen.
    pub async fn flush_if_full(&mut self) -> Result<()> {
        if self.pending_changes >= batch_changes() || self.pending_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Apply one message of the archive.
    pub async fn message(&mut self, msg: PgOutputMessage) -> Result<()> {
        match msg {
            PgOutputMessage::Relation(r) => self.relation(r).await,
            PgOutputMessage::Insert(m) => {
                let Some(p) = self.pending_for(m.relation_id).await? else { return Ok(()) };
                let r = match p {
                    Pending::Keyed(b) => b.insert(&m.new_tuple),
                    Pending::Unkeyed(b) => b.insert(&m.new_tuple),
                };
                self.counted(m.relation_id, m.new_tuple.len(), r)
            }
            PgOutputMessage::Delete(m) => {
                let Some(p) = self.pending_for(m.relation_id).await? else { return Ok(()) };
                let r = match p {
                    Pending::Keyed(b) => b.delete(&m.old),
                    Pending::Unkeyed(b) => b.delete(&m.old),
                };
                let (OldTuple::Key(v) | OldTuple::Full(v)) = &m.old;
                self.counted(m.relation_id, v.len(), r)
            }
            PgOutputMessage::Update(m) => {
                let Some(p) = self.pending_for(m.relation_id).await? else { return Ok(()) };
                let r = match p {
                    Pending::Keyed(b) => b.update(m.old.as_ref(), &m.new_tuple),
                    Pending::Unkeyed(b) => b.update(m.old.as_ref(), &m.new_tuple).map(|_| Outcome::Done),
                };
                let (rel, width) = (m.relation_id, m.new_tuple.len());
                match r {
                    Ok(Outcome::Done) => self.counted(rel, width, Ok(())),
                    Ok(Outcome::Direct { old_key, values }) => {
                        self.flush().await?;
                        self.direct_update(rel, old_key, values).await
                    }
                    Err(e) => self.counted(rel, width, Err(e)),
                }
            }
            PgOutputMessage::Truncate(t) => self.truncate(t).await,
            PgOutputMessage::Message(m) if m.transactional && m.prefix == DDL_PREFIX => {
                let ddl = DdlMessage::parse(&m.content).ok_or_else(|| Error::corrupt(format!("a captured DDL message at LSN {} is not readable", m.lsn)))?;
                self.ddl(ddl, m.lsn).await
            }
            PgOutputMessage::Message(m) if m.transactional && m.prefix == MISSING_PREFIX => {
                let v = MissingValue::parse(&m.content).ok_or_else(|| Error::corrupt(format!("a captured default value at LSN {} is not readable", m.lsn)))?;
                self.missing_value(v, m.lsn).await
            }
            PgOutputMessage::Message(m) if m.transactional && m.prefix == PARTITION_PREFIX => {
                let p = PartitionMessage::parse(&m.content).ok_or_else(|| Error::corrupt(format!("a captured partition at LSN {} is not readable", m.lsn)))?;
                self.partition(p, m.lsn).await
            }
            // Begin, Commit, Origin, Type and other messages change no data.
            _ => Ok(()),
        }
    }

    /// Count a recorded change of `width` columns (or fail naming its table).
    fn counted(&mut self, rel: Oid, width: usize, r: std::result::Result<(), BatchError>) -> Result<()> {
        match r {
            Ok(()) => {
                self.pending_changes += 1;
                self.stats.changes += 1;
                self.pending_bytes += CHANGE_BYTES + VALUE_BYTES * width as u64;
                Ok(())
            }
            Err(e) => {
                let name = self.display(rel);
                Err(Error::corrupt(format!("cannot replay a change of table {name} committed at LSN {}: {e}", self.at)))
            }
        }
    }

    fn display(&self, rel: Oid) -> String {
        self.relations.get(&rel).map(|r| format!("{}.{}", r.relation.namespace, r.relation.name)).unwrap_or_else(|| format!("oid {rel}"))
    }

    /// A Relation message: new, the same as before, or changed.
    async fn relation(&mut self, r: Relation) -> Result<()> {
        if let Some(old) = self.relations.get(&r.id) {
            if old.relation == r {
                return Ok(());
            }
            // Pending changes were decoded with the old layout: write them first.
            if self.pending.contains_key(&r.id) {
                self.flush().await?;
            }
        }
        self.pending.remove(&r.id);
        self.relations.insert(r.id, RelationState { relation: r, target: None });
        Ok(())
    }

    /// The pending batch of `rel`, resolving it on first use; `None` when
    /// the table is not being restored.
    async fn pending_for(&mut self, rel: Oid) -> Result<Option<&mut Pending>> {
        let state = self
            .relations
            .get(&rel)
            .ok_or_else(|| Error::corrupt(format!("the archive has a change of relation {rel} before its Relation message (LSN {})", self.at)))?;
        if let Some(only) = &self.only
            && !only.iter().any(|(s, n)| *s == state.relation.namespace && *n == state.relation.name)
        {
            return Ok(None);
        }
        if self.skipped.iter().any(|(s, n)| *s == state.relation.namespace && *n == state.relation.name) {
            return Ok(None);
        }
        if state.target.is_none() {
            let target = self.resolve(&state.relation).await?;
            if target.key.is_none() && state.relation.replica_identity != ReplicaIdentity::Full && !self.stats.insert_only_tables.contains(&target.display) {
                tracing::warn!(table = %target.display, "no replica identity: only inserts and truncates of this table are archived and replayed");
                self.stats.insert_only_tables.push(target.display.clone());
            }
            self.relations.get_mut(&rel).expect("present").target = Some(target);
        }
        if !self.pending.contains_key(&rel) {
            let state = &self.relations[&rel];
            let target = state.target.as_ref().expect("resolved");
            let width = state.relation.columns.len();
            let p = match &target.key {
                Some(k) => Pending::Keyed(KeyedBatch::new(k.clone(), width)),
                None => Pending::Unkeyed(UnkeyedBatch::new(width)),
            };
            self.pending.insert(rel, p);
        }
        Ok(self.pending.get_mut(&rel))
    }

    /// Look the relation up in the target and check it has the archive's columns.
    async fn resolve(&self, r: &Relation) -> Result<Target> {
        let display = format!("{}.{}", r.namespace, r.name);
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::oid::int8, a.attgenerated::text, \
                        COALESCE((SELECT bool_or(i.indisprimary) FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey) AND i.indisprimary), false) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
                &[&r.namespace, &r.name],
            )
            .await
            .map_err(crate::pg::query_error(format!("looking up table {display} in {}", self.db)))?;
        let schema_change = |why: String| {
            Error::new(
                ErrorKind::CheckFailed,
                format!("table {display} changed at LSN {} without a captured DDL statement: {why}; the archive cannot be replayed past this point", self.at),
            )
            .with_hint("restore to a point before this change, or from a full backup taken after it; `pgkeep setup` captures DDL so that it replays")
        };
        if rows.is_empty() {
            return Err(schema_change(format!("the table does not exist in the restored database {}", self.db)));
        }
        struct Col {
            name: String,
            type_sql: String,
            type_oid: u32,
            generated: bool,
            primary: bool,
        }
        let have: Vec<Col> = rows
            .iter()
            .map(|row| Col {
                name: row.get(0),
                type_sql: row.get(1),
                type_oid: row.get::<_, i64>(2) as u32,
                generated: !row.get::<_, String>(3).is_empty(),
                primary: row.get(4),
            })
            .collect();
        let mut cols = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            let Some(h) = have.iter().find(|h| h.name == c.name && !h.generated) else {
                return Err(schema_change(format!("the archive has column {} that the restored table lacks", c.name)));
            };
            if c.type_oid < FIRST_NORMAL_OID && c.type_oid != h.type_oid {
                return Err(schema_change(format!(
                    "column {} has type oid {} in the archive and {} ({}) in the restored table",
                    c.name, c.type_oid, h.type_oid, h.type_sql
                )));
            }
            cols.push(TargetColumn { name: c.name.clone(), type_sql: h.type_sql.clone() });
        }
        if let Some(extra) = have.iter().find(|h| !h.generated && !r.columns.iter().any(|c| c.name == h.name)) {
            return Err(schema_change(format!("the restored table has column {} that the archive lacks", extra.name)));
        }
        // The key: the replica identity the archive flags (primary key or chosen
        // index); with REPLICA IDENTITY FULL, the target's primary key if it has one.
        let flagged: Vec<usize> = r.columns.iter().enumerate().filter(|(_, c)| c.is_key()).map(|(i, _)| i).collect();
        let key = match r.replica_identity {
            ReplicaIdentity::Default | ReplicaIdentity::Index if !flagged.is_empty() => Some(flagged),
            ReplicaIdentity::Full => {
                let pk: Vec<usize> = r.columns.iter().enumerate().filter(|(_, c)| have.iter().any(|h| h.name == c.name && h.primary)).map(|(i, _)| i).collect();
                let pk_cols = have.iter().filter(|h| h.primary).count();
                (!pk.is_empty() && pk.len() == pk_cols).then_some(pk)
            }
            _ => None,
        };
        let rebuild: bool = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)) > 1 \
                        OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attidentity = 'a' AND NOT a.attisdropped) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&r.namespace, &r.name],
            )
            .await
            .map_err(crate::pg::query_error(format!("looking up the indexes of table {display} in {}", self.db)))?
            .get(0);
        Ok(Target { table: qualified(&r.namespace, &r.name), display, cols, key, rebuild })
    }

    /// Write every pending batch: in one transaction, or, with a second
    /// session, in one transaction per session at once ([`lanes`]).
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending_changes == 0 {
            self.pending_bytes = 0;
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_changes = 0;
        self.pending_bytes = 0;
        let jobs: Vec<(Target, Pending)> =
            pending.into_iter().map(|(rel, p)| (self.relations[&rel].target.clone().expect("resolved before changes"), p)).collect();
        let started = std::time::Instant::now();
        self.write_lanes(&jobs).await?;
        self.stats.batches += 1;
        tracing::debug!(tables = jobs.len(), seconds = started.elapsed().as_secs_f64(), "wrote a batch");
        Ok(())
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        self.on(&self.client, sql).await
    }

    /// A key-changing UPDATE whose unchanged values only the database has.
    async fn direct_update(&mut self, rel: Oid, old_key: Key, values: Vec<PatchValue>) -> Result<()> {
        let t = self.relations[&rel].target.clone().expect("resolved");
        let key_idx = match self.pending.get(&rel) {
            Some(Pending::Keyed(b)) => b.key_cols().to_vec(),
            _ => t.key.clone().unwrap_or_default(),
        };
        let key_cols: Vec<&TargetColumn> = key_idx.iter().map(|&i| &t.cols[i]).collect();
        if t.rebuild {
            // Delete, then copy back in with the new key and values.
            self.exec("BEGIN").await?;
            let (rows, n) = self.rebuild_rows(&self.client, &t, &key_cols, &[(&old_key, &values)]).await?;
            self.copy_rows(&self.client, &t, rows, std::iter::empty(), n).await?;
            self.exec("COMMIT").await?;
            self.stats.changes += 1;
            return Ok(());
        }
        let set: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
        let set_cols: Vec<&TargetColumn> = set.iter().map(|&i| &t.cols[i]).collect();
        let mut params: Vec<Vec<Option<&str>>> = Vec::new();
        for k in &old_key {
            params.push(vec![Some(text(k)?)]);
        }
        for &i in &set {
            params.push(vec![values[i].as_ref().expect("set").as_deref().map(text).transpose()?]);
        }
        let n = self.run(&self.client, &sql::update_by_keys(&t.table, &key_cols, &set_cols), &params, &t).await?;
        self.expect(&t, "UPDATE", n, 1)?;
        self.stats.changes += 1;
        Ok(())
    }

    /// TRUNCATE the restored tables among the message's relations.
    async fn truncate(&mut self, t: Truncate) -> Result<()> {
        self.flush().await?;
        let mut tables = Vec::new();
        for rel in &t.relation_ids {
            if self.pending_for(*rel).await?.is_some() {
                tables.push(self.relations[rel].target.as_ref().expect("resolved").table.clone());
            }
            self.pending.remove(rel);
        }
        if tables.is_empty() {
            return Ok(());
        }
        let mut stmt = format!("TRUNCATE ONLY {}", tables.join(", "));
        if t.restart_identity() {
            stmt.push_str(" RESTART IDENTITY");
        }
        if t.cascade() {
            stmt.push_str(" CASCADE");
        }
        self.exec(&stmt).await.map_err(|e| e.context(format!("replaying a TRUNCATE at LSN {}", self.at)))?;
        self.stats.truncates += 1;
        Ok(())
    }

    /// Run a captured DDL statement where it happened: the schema
    /// statements of the captured query string (never its DML, which is in
    /// the archive already, nor its transaction control).
    async fn ddl(&mut self, ddl: DdlMessage, lsn: Lsn) -> Result<()> {
        self.flush().await?;
        // 1. Only what `pgkeep setup` signed: any role may emit a message with this prefix.
        let signed = self.ddl_key.as_deref().is_some_and(|k| ddl.is_signed_by(k));
        if !signed {
            let why = if self.ddl_key.is_none() { "the base backup predates `pgkeep setup` (no pgkeep.ddl_key)" } else { "its signature does not match" };
            tracing::warn!(lsn = %lsn, tag = %ddl.tag, "a captured DDL message is not replayed: {why}");
            self.stats.ddl_rejected.push(format!("LSN {lsn} ({}): {why}", ddl.tag));
            return Ok(());
        }
        // 2. The statements of this transaction of the captured string.
        let scripts = super::ddl::scripts_by_transaction(&ddl.sql);
        let index = match &self.last_ddl {
            Some((sql, next)) if *sql == ddl.sql && !scripts.is_empty() => next % scripts.len(),
            _ => 0,
        };
        self.last_ddl = Some((ddl.sql.clone(), index + 1));
        let Some(script) = scripts.get(index).cloned() else {
            tracing::warn!(lsn = %lsn, tag = %ddl.tag, "a captured DDL statement ran inside a function or DO block; its text cannot be replayed");
            return Ok(());
        };
        // Only the first words: statements may carry secrets (e.g. user mapping options).
        let preview: String = script.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        let fail = |e: Error| e.context(format!("the DDL statement captured at LSN {lsn} ({}) failed on the restore: {preview} …", ddl.tag));
        if !ddl.search_path.is_empty() {
            self.client
                .execute("SELECT set_config('search_path', $1, false)", &[&ddl.search_path])
                .await
                .map_err(crate::pg::query_error("setting search_path for a captured DDL statement"))
                .map_err(fail)?;
        }
        // Objects belong to the role that created them, when it exists here.
        if !ddl.role.is_empty() {
            let _ = self.client.batch_execute(&format!("SET ROLE {}", crate::pg::catalog::quote_ident(&ddl.role))).await;
        }
        let result = self.exec(&script).await;
        self.after_schema_sql(result.map_err(fail)).await?;
        self.stats.ddl_statements += 1;
        Ok(())
    }

    /// After schema SQL ran on this session (a captured statement, a table
    /// image put in place) with `result`: back to the replay's session
    /// whatever it set (role, search_path, …; temporary objects it created
    /// stay with it), its new triggers and foreign keys suspended or
    /// quieted too, and every table looked up again.
    pub async fn after_schema_sql(&mut self, result: Result<()>) -> Result<()> {
        let replica = if self.suspended.is_some() { "" } else { "SET session_replication_role = replica;" };
        self.exec(&format!("RESET ROLE; RESET ALL; DISCARD TEMP; {SESSION_SETUP}; {replica} {REPLAY_SESSION}")).await?;
        result?;
        if let Some(s) = self.suspended.as_mut() {
            s.catch_up(&self.client, &self.db).await?;
        }
        self.quiet_triggers().await?;
        for r in self.relations.values_mut() {
            r.target = None;
        }
        Ok(())
    }

    /// Leave the row changes of `tables` out until [`Applier::include`].
    pub fn skip(&mut self, tables: &[(String, String)]) {
        for t in tables {
            if !self.skipped.contains(t) {
                self.skipped.push(t.clone());
            }
        }
    }

    /// Replay the row changes of `tables` again.
    pub fn include(&mut self, tables: &[(String, String)]) {
        self.skipped.retain(|t| !tables.contains(t));
    }
}

impl Applier {
    /// A fast default's value as the source stored it, right after its
    /// `ALTER TABLE` ([`super::fast_default`]); only when signed.
    async fn missing_value(&mut self, v: MissingValue, lsn: Lsn) -> Result<()> {
        if !self.ddl_key.as_deref().is_some_and(|k| v.is_signed_by(k)) {
            tracing::warn!(lsn = %lsn, "a captured default value is not signed by `pgkeep setup`; not written");
            self.stats.ddl_rejected.push(format!("LSN {lsn} (default value of {}.{})", v.schema, v.table));
            return Ok(());
        }
        if let Some(only) = &self.only
            && !only.iter().any(|(s, n)| *s == v.schema && *n == v.table)
        {
            return Ok(());
        }
        self.flush().await?;
        let rows = super::fast_default::apply(&self.client, &v).await.map_err(|e| e.context(format!("at LSN {lsn}")))?;
        tracing::debug!(table = %v.table, rows, "wrote the source's fast default value");
        self.stats.fast_defaults += 1;
        Ok(())
    }

    /// A plain partition, created again from its bound when no captured
    /// statement did ([`super::partition`]); only when signed.
    async fn partition(&mut self, p: PartitionMessage, lsn: Lsn) -> Result<()> {
        if !self.ddl_key.as_deref().is_some_and(|k| p.is_signed_by(k)) {
            tracing::warn!(lsn = %lsn, "a captured partition is not signed by `pgkeep setup`; not created");
            self.stats.ddl_rejected.push(format!("LSN {lsn} (partition {})", p.name()));
            return Ok(());
        }
        self.flush().await?;
        if super::partition::create(&self.client, &p).await.map_err(|e| e.context(format!("at LSN {lsn}")))? {
            self.stats.ddl_statements += 1;
        }
        Ok(())
    }
}

/// The replay session's own settings, on top of [`SESSION_SETUP`].
const REPLAY_SESSION: &str = "SET synchronous_commit = off; SET lock_timeout = 0";

fn text(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| Error::corrupt("the archive holds a value that is not UTF-8 text"))
}

fn texts(row: &[Value]) -> Result<Vec<Option<&str>>> {
    row.iter().map(|v| v.as_deref().map(text).transpose()).collect()
}
