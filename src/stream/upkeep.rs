//! The regular connection `pgkeep stream` keeps next to its replication
//! connection, and the catalog work done on it: publication upkeep
//! ([`super::publication::reconcile`]) and sequence samples for each sealed
//! segment.
//!
//! The connection is opened on first use and again after it broke, at most
//! once per [`RECONNECT_PAUSE`], so a database that is down slows no segment
//! down by more than one connect timeout. Its session carries
//! `pgkeep.maintenance = on` (the DDL capture of `pgkeep setup` ignores its
//! statements), a short `lock_timeout` and a `statement_timeout`, so upkeep
//! never keeps the stream from answering the server for long.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use tokio_postgres::Client;

use super::publication::{self, MAINTENANCE_SETTING, PublicationNames, ReconcileMode, Reconciled};
use super::segment::SequenceSample;
use super::unarchived::{Point, UnarchivedLog, UnarchivedWindow, Windows};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Connection;
use crate::repo::layout::Lsn;

/// Least time between two connection attempts after a failure.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(30);

/// Settings of the upkeep session, after `SET pgkeep.maintenance = 'on'`.
const SESSION_SETUP: &str = "SET lock_timeout = '5s'; SET statement_timeout = '60s'; \
     SET idle_in_transaction_session_timeout = '60s'";

/// The stream's regular connection.
pub struct Upkeep {
    db: DbSettings,
    conn: Option<Connection>,
    next_attempt: Option<Instant>,
    /// Sampling failed last time (warn once per streak of failures).
    sampling_failed: bool,
    /// Some sequences could not be read last time (warned once per streak).
    unreadable_sequences: bool,
    /// Tables whose placement failed before (warned about once).
    failing_tables: HashSet<String>,
    /// The server's WAL position and clock before the last reconcile that
    /// succeeded, and before the one that succeeded before it.
    checks: [Option<(Lsn, Option<DateTime<Utc>>)>; 2],
    /// Table definitions as the last check saw them ([`super::catalog_watch`]).
    catalog: super::catalog_watch::CatalogWatch,
    /// Tables not archived, and since when ([`super::unarchived`]).
    unarchived: Option<Unarchived>,
    /// UPDATE and DELETE counts, for tables without a replica identity ([`super::write_watch`]).
    writes: super::write_watch::WriteWatch,
    /// Where the watches' state is kept for the next run, and what was kept last.
    watch_log: Option<(super::watch_state::WatchLog, Option<Kept>)>,
}

/// What [`Upkeep::keep_watch`] wrote last: the catalog watch's generation
/// and the write counts.
type Kept = (u64, HashMap<i64, i64>);

/// The unarchived windows of the stream, and their record in the repositories.
struct Unarchived {
    log: UnarchivedLog,
    windows: Windows,
    /// The repositories' record was read (windows of earlier runs merged in).
    loaded: bool,
    /// Windows changed since they were last written to every repository.
    dirty: bool,
    /// Windows the last reconcile closed.
    closed: Vec<UnarchivedWindow>,
}

impl Upkeep {
    /// Not connected yet; connects on first use.
    pub fn new(db: DbSettings) -> Upkeep {
        Upkeep {
            db,
            conn: None,
            next_attempt: None,
            sampling_failed: false,
            unreadable_sequences: false,
            failing_tables: HashSet::new(),
            checks: [None, None],
            catalog: Default::default(),
            unarchived: None,
            writes: Default::default(),
            watch_log: None,
        }
    }

    /// Start the watches from what an earlier run's checks saw (kept in
    /// `log`, [`super::watch_state`]), and keep theirs there. Call before
    /// the first reconcile.
    pub async fn keep_watch_state(&mut self, log: super::watch_state::WatchLog) {
        let kept = log.load().await.map(|k| {
            tracing::info!(since = %k.at, tables = k.shapes.len(), "comparing the tables with what the last checks of an earlier run saw");
            self.catalog.seed(k.shapes);
            self.writes.seed(k.writes.clone(), (k.writes_since, k.writes_since_time));
            if self.checks[0].is_none() {
                self.checks[0] = Some((k.at, k.at_time));
            }
            (self.catalog.generation(), k.writes)
        });
        self.watch_log = Some((log, kept));
    }

    /// Keep what the last checks saw, when it changed (`force`: always, with
    /// the newest position; when the stream stops).
    pub async fn keep_watch(&mut self, force: bool) {
        let Some((log, kept)) = self.watch_log.as_mut() else { return };
        let (generation, writes) = (self.catalog.generation(), self.writes.baseline());
        if !force && kept.as_ref().is_some_and(|(g, w)| *g == generation && *w == writes) {
            return;
        }
        let (Some(at), Some(shapes)) = (self.checks[0], self.catalog.baseline()) else { return };
        let (writes_since, writes_since_time) = self.writes.since();
        let state = super::watch_state::WatchState { at: at.0, at_time: at.1, writes_since, writes_since_time, shapes, writes };
        if log.save(&state).await {
            *kept = Some((generation, state.writes));
        }
    }

    /// Keep the windows of tables the stream cannot archive in `log` (and
    /// read those of earlier runs from it at the first reconcile).
    pub fn track_unarchived(&mut self, log: UnarchivedLog) {
        self.unarchived = Some(Unarchived { log, windows: Windows::default(), loaded: false, dirty: false, closed: Vec::new() });
    }

    /// The client, connecting first if needed (and allowed yet).
    pub async fn client(&mut self) -> Result<&Client> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            tracing::warn!("the stream's regular connection closed; reconnecting");
            self.conn = None;
        }
        if self.conn.is_none() {
            if let Some(at) = self.next_attempt
                && Instant::now() < at
            {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!("no connection to database {} (next attempt in {} s)", self.db.dbname, at.duration_since(Instant::now()).as_secs()),
                ));
            }
            self.next_attempt = Some(Instant::now() + RECONNECT_PAUSE);
            let conn = crate::pg::connect(&self.db).await?;
            conn.client
                .batch_execute(&format!("SET {MAINTENANCE_SETTING} = 'on'; {SESSION_SETUP}"))
                .await
                .map_err(crate::pg::query_error("cannot set up the stream's regular connection"))?;
            self.next_attempt = None;
            self.conn = Some(conn);
        }
        match &self.conn {
            Some(conn) => Ok(&conn.client),
            None => Err(Error::internal("upkeep connection missing")),
        }
    }

    /// Both publications present (when `mode.create`) and every table in
    /// the right one.
    pub async fn reconcile(&mut self, names: &PublicationNames, mode: ReconcileMode) -> Result<Reconciled> {
        let quiet = std::mem::take(&mut self.failing_tables);
        // Where the server was before this check: a table found now that is
        // in no publication was created after the previous check's point.
        let point = self.point().await;
        let client = self.client().await?;
        let done = publication::reconcile(client, names, mode, &quiet).await;
        if done.is_ok() {
            self.checks = [point, self.checks[0]];
        }
        self.failing_tables = match &done {
            Ok(done) => done.failed.iter().cloned().collect(),
            Err(_) => quiet,
        };
        if let Ok(done) = &done {
            self.track(done).await;
        }
        done
    }

    /// After a reconcile: open and close unarchived windows, and record
    /// them in every repository when they changed (a failed write is tried
    /// again at the next check).
    async fn track(&mut self, done: &Reconciled) {
        let since = self.late_since();
        let Some(u) = self.unarchived.as_ref() else { return };
        // Closed at a position after this reconcile's placements committed.
        let now = if u.windows.open().next().is_some() || !done.unarchived.is_empty() { self.point().await } else { None };
        let Some(u) = self.unarchived.as_mut() else { return };
        if !u.loaded {
            match u.log.load().await {
                Ok(earlier) => {
                    u.windows.merge(earlier.all);
                    u.loaded = true;
                }
                Err(e) => tracing::warn!(error = %e.user_line(), "cannot read the record of tables that are not archived; retrying at the next check"),
            }
        }
        let failing: Vec<(String, String, String)> =
            done.unarchived.iter().filter_map(|(t, why)| crate::pg::catalog::split_table_name(t).map(|(s, n)| (s, n, why.clone()))).collect();
        let before = u.windows.clone();
        u.closed = u.windows.observe(&failing, since, now);
        for w in u.windows.all.iter().filter(|w| w.is_open() && !before.all.contains(w)) {
            tracing::error!(
                table = %w.table(),
                since = %w.since,
                reason = %w.reason,
                "table is not archived: a point-in-time restore past this point refuses it by name until it is in the stream's publication \
                 (make the streaming role a member of the table's owner, or add it to the publication as its owner)"
            );
        }
        for w in &u.closed {
            tracing::info!(table = %w.table(), since = %w.since, until = ?w.until, "table is archived again; a table image brings it back for replay");
        }
        u.dirty |= u.windows != before;
        if u.dirty && u.loaded {
            u.dirty = !u.log.save(&u.windows).await;
        }
    }

    /// Tables of the insert-only publication `insert_only` that an UPDATE
    /// or DELETE changed since the last check (the archive does not hold
    /// those), each `"schema"."name"` with since when. A failure is a
    /// warning and finds nothing.
    pub async fn watch_writes(&mut self, insert_only: &str) -> Vec<(String, Point)> {
        let rows = match self.client().await {
            Ok(client) => {
                client.query(super::write_watch::COUNTERS_SQL, &[&insert_only]).await.map_err(crate::pg::query_error("cannot read the table statistics"))
            }
            Err(e) => Err(e),
        };
        // Every write the counts show was made before this.
        let (rows, Some(point)) = (rows, self.point().await) else { return Vec::new() };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e.user_line(), "cannot read the table statistics; retrying at the next check");
                return Vec::new();
            }
        };
        let counters: Vec<super::write_watch::Counter> = rows
            .iter()
            .map(|r| super::write_watch::Counter { relid: r.get(0), schema: r.get(1), name: r.get(2), writes: r.get(3), insert_only: r.get(4) })
            .collect();
        self.writes.observe(Instant::now(), point, &counters).into_iter().map(|(s, n, since)| (crate::pg::catalog::qualified(&s, &n), since)).collect()
    }

    /// Record in every repository that table `schema`.`name` changed after
    /// `since` in a way the archive does not show, found now
    /// ([`Windows::record`]): replay refuses targets past it until a table
    /// image taken after now brings the table back. Call before asking for
    /// that image. Without a position now, only a base after every position
    /// does.
    pub async fn record_unseen(&mut self, schema: &str, name: &str, reason: &str, since: Point) {
        let now = self.point().await;
        let Some(u) = self.unarchived.as_mut() else { return };
        let until = now.unwrap_or((Lsn(u64::MAX), None));
        u.windows.record(schema, name, reason, since, until);
        u.dirty = true;
        if u.loaded {
            u.dirty = !u.log.save(&u.windows).await;
        }
    }

    /// The server's WAL position and clock now; `None` when unreadable.
    async fn point(&mut self) -> Option<Point> {
        let client = self.client().await.ok()?;
        let row = client.query_one("SELECT pg_current_wal_lsn()::text, now()", &[]).await.ok()?;
        Some((row.get::<_, String>(0).parse::<Lsn>().ok()?, row.try_get::<_, DateTime<Utc>>(1).ok()))
    }

    /// Tables whose earlier changes are not in the archive after the last
    /// reconcile, each with since when: the tables it added to a
    /// publication (since the check before the previous one, or since
    /// their unarchived window opened) and the tables whose unarchived
    /// window it closed otherwise (their owner published them, or they
    /// are gone). Each needs a table image.
    pub fn late_tables(&self, done: &Reconciled) -> Vec<(String, Point)> {
        let closed: &[UnarchivedWindow] = self.unarchived.as_ref().map(|u| u.closed.as_slice()).unwrap_or_default();
        let window_of = |table: &str| {
            let (s, n) = crate::pg::catalog::split_table_name(table)?;
            closed.iter().find(|w| w.schema == s && w.name == n)
        };
        let mut out: Vec<(String, Point)> =
            done.late_additions().map(|t| (t.to_string(), window_of(t).map(|w| (w.since, w.since_time)).unwrap_or_else(|| self.late_since()))).collect();
        for w in closed {
            let table = crate::pg::catalog::qualified(&w.schema, &w.name);
            if !out.iter().any(|(t, _)| *t == table) {
                out.push((table, (w.since, w.since_time)));
            }
        }
        out
    }

    /// The tables not archived now, `schema.name`.
    pub fn unarchived_tables(&self) -> Vec<String> {
        self.unarchived.as_ref().map(|u| u.windows.open().map(UnarchivedWindow::table).collect()).unwrap_or_default()
    }

    /// Since when the tables the last reconcile added late can have
    /// existed: the server's WAL position (and clock) before the check
    /// before it; `(0/0, None)` when unknown (the first check of a run).
    pub fn late_since(&self) -> (Lsn, Option<DateTime<Utc>>) {
        self.checks[1].unwrap_or((Lsn(0), None))
    }

    /// Compare every table's definition with the last check's; return the
    /// changes found a check ago (`settle`) that no captured DDL command
    /// explains (`captured(schema.name, after)`). Call right after
    /// [`Upkeep::reconcile`]. A failure is a warning and finds nothing.
    pub async fn watch_catalog(&mut self, settle: Duration, decoded: Lsn, captured: impl Fn(&str, Instant) -> bool) -> Vec<super::catalog_watch::Suspect> {
        let since = self.late_since();
        match self.read_shapes().await {
            Ok((signatures, fresh, seen_at)) => self.catalog.observe(&signatures, fresh, Instant::now(), seen_at, since),
            Err(e) => tracing::warn!(error = %e.user_line(), "cannot compare the table definitions; retrying at the next check"),
        }
        self.catalog.confirm(Instant::now(), settle, decoded, captured)
    }

    /// Every table's signature now, the shapes of the tables whose catalog
    /// rows changed (only those are fingerprinted again), and the server's
    /// WAL insert position right after (whatever they show was committed
    /// before it).
    async fn read_shapes(&mut self) -> Result<(Vec<(u32, i64, i64)>, HashMap<u32, super::catalog_watch::Shape>, Lsn)> {
        let fail = || crate::pg::query_error("cannot read the table definitions");
        let signatures: Vec<(u32, i64, i64)> = self
            .client()
            .await?
            .query(super::catalog_watch::SIGNATURES_SQL, &[])
            .await
            .map_err(fail())?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let stale = self.catalog.stale(&signatures);
        let client = self.client().await?;
        let rows = if stale.is_empty() { Vec::new() } else { client.query(&super::catalog_watch::shapes_of_sql(), &[&stale]).await.map_err(fail())? };
        let seen_at: Lsn = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(crate::pg::query_error("cannot read the server's WAL position"))?
            .get::<_, String>(0)
            .parse()?;
        let fresh = rows
            .iter()
            .map(|r| {
                let ancestors: String = r.get(4);
                let ancestors = ancestors.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
                (r.get::<_, u32>(0), (r.get(1), r.get(2), r.get(3), ancestors))
            })
            .collect();
        Ok((signatures, fresh, seen_at))
    }

    /// WAL the slot `slot` holds back on the server (bytes); `None` when it
    /// cannot be read (no warning: metrics only).
    pub async fn slot_retained(&mut self, slot: &str) -> Option<u64> {
        let client = self.client().await.ok()?;
        let row =
            client.query_opt("SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.ok()??;
        row.try_get::<_, Option<i64>>(0).ok().flatten().map(|b| b.max(0) as u64)
    }

    /// Every sequence's `last_value` and `is_called` now. A failure is
    /// logged and yields no samples: it never stops archiving. A sequence
    /// that cannot be read is left out alone (warned once per streak).
    pub async fn sample_sequences(&mut self) -> Vec<SequenceSample> {
        let sampled = async {
            let client = self.client().await?;
            crate::pg::catalog::sequence_values_each(client).await
        }
        .await;
        let sampled = sampled.map(|(values, failed)| {
            if failed.is_empty() {
                self.unreadable_sequences = false;
            } else if !std::mem::replace(&mut self.unreadable_sequences, true) {
                tracing::warn!(
                    sequences = %failed.join("; "),
                    "cannot read some sequences; the others are sampled, these are not restored to their values (the role needs SELECT on every sequence)"
                );
            }
            values
        });
        match sampled {
            Ok(values) => {
                if std::mem::take(&mut self.sampling_failed) {
                    tracing::info!(sequences = values.len(), "sampling sequence values again");
                }
                values.into_iter().map(|s| SequenceSample { schema: s.schema, name: s.name, last_value: s.last_value, is_called: s.is_called }).collect()
            }
            Err(e) if self.sampling_failed => {
                tracing::debug!(error = %e.user_line(), "cannot sample sequence values");
                Vec::new()
            }
            Err(e) => {
                self.sampling_failed = true;
                tracing::warn!(
                    error = %e.user_line(),
                    "cannot sample sequence values; segments carry none until this works again (the role needs SELECT on every sequence)"
                );
                Vec::new()
            }
        }
    }

    /// The end of the last WAL record written so far: every transaction
    /// committed by now ends there or before (with `synchronous_commit =
    /// off` too, whose commits a walsender sends once the WAL writer flushed
    /// them). On a standby, where 16+ decodes too, the replay position.
    pub async fn last_record_end(&mut self) -> Result<Lsn> {
        let client = self.client().await?;
        let text: String = client
            .query_one(
                "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                 ELSE pg_catalog.pg_current_wal_insert_lsn() END)::text",
                &[],
            )
            .await
            .map_err(crate::pg::query_error("cannot read the WAL position"))?
            .get(0);
        text.parse()
    }

    /// The server's current WAL insert position.
    pub async fn current_wal_lsn(&mut self) -> Result<Lsn> {
        let client = self.client().await?;
        let text: String = client
            .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
            .await
            .map_err(crate::pg::query_error("cannot read the current WAL position"))?
            .get(0);
        text.parse()
    }
}
