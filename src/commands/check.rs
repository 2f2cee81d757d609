//! `pgkeep check`: monitoring in the Nagios style. One finding per line
//! (`OK` / `ALERT`), exit 0 when all are OK and 3 when any alerts. Checks:
//! every repository reachable and writable; the newest full backup of the
//! database younger than `--max-full-age`; and replication slots — any slot
//! (pgkeep's or not) retaining more WAL than `--max-slot-lag`, any inactive
//! pgkeep slot, and any slot whose WAL was already removed or that the server
//! invalidated (17+: `invalidation_reason`; failover and synchronized state
//! are reported too), because a forgotten slot fills the server's disk; and
//! leftover `restore_temp_*` databases of interrupted restores; any
//! published table whose UPDATE/DELETE fails for want of a replica identity;
//! and any table a `stream` cannot put into its publications (not archived).
//! Optionally writes Prometheus textfile-collector metrics.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::commands::backup::human_bytes;
use crate::config::Settings;
use crate::error::Result;
use crate::pg::connect;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::BackupKind;
use crate::restore::source::open_repositories;

/// Thresholds of a check run.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Alert when the newest full backup is older than this.
    pub max_full_age: Duration,
    /// Alert when a slot retains more WAL than this many bytes.
    pub max_slot_lag: u64,
    /// Also write Prometheus textfile metrics here.
    pub prometheus_file: Option<std::path::PathBuf>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { max_full_age: Duration::from_secs(24 * 3600), max_slot_lag: 1 << 30, prometheus_file: None }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked, e.g. `repository`, `full-backup-age`, `slot`.
    pub check: String,
    /// OK or not.
    pub ok: bool,
    /// One line for humans.
    pub message: String,
}

/// The result of `pgkeep check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Every finding.
    pub findings: Vec<Finding>,
    /// Metrics (name, labels, value) for Prometheus.
    #[serde(skip)]
    pub metrics: Vec<(String, String, f64)>,
}

impl CheckReport {
    /// Whether every finding is OK.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    /// `OK …` / `ALERT …` lines.
    pub fn render(&self) -> String {
        self.findings.iter().map(|f| format!("{} {}: {}\n", if f.ok { "OK   " } else { "ALERT" }, f.check, f.message)).collect()
    }

    /// Prometheus textfile-collector format, with `pgkeep_check_ok{check}`:
    /// 1 when every finding of that check is OK.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut checks: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
        for f in &self.findings {
            *checks.entry(f.check.as_str()).or_insert(true) &= f.ok;
        }
        for (check, ok) in checks {
            out.push_str(&format!("pgkeep_check_ok{{check=\"{}\"}} {}\n", label(check), u8::from(ok)));
        }
        for (name, labels, value) in &self.metrics {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
        out
    }

    fn push(&mut self, check: &str, ok: bool, message: String) {
        self.findings.push(Finding { check: check.to_string(), ok, message });
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `restore_temp_*` databases nobody uses: left by an interrupted restore,
/// they hold a full copy of the data (disk) until dropped.
async fn leftover_temp_databases(settings: &Settings, report: &mut CheckReport) {
    match crate::restore::target::temp_databases(&settings.db).await {
        Err(e) => report.push("restore-temp", false, e.user_line()),
        Ok(all) => {
            let leftovers: Vec<String> = all.into_iter().filter(|t| t.is_leftover(Duration::ZERO)).map(|t| t.name).collect();
            report.metrics.push(("pgkeep_leftover_restore_temp_databases".into(), String::new(), leftovers.len() as f64));
            if leftovers.is_empty() {
                report.push("restore-temp", true, "no leftover restore_temp_* databases".into());
            } else {
                report.push(
                    "restore-temp",
                    false,
                    format!(
                        "{} leftover temporary restore database(s) on {}:{}: {} (from interrupted restores; `pgkeep restore` offers to drop them, or DROP DATABASE)",
                        leftovers.len(),
                        settings.db.host,
                        settings.db.port,
                        leftovers.join(", ")
                    ),
                );
            }
        }
    }
}

/// Published tables whose UPDATE and DELETE fail: a publication that
/// publishes updates or deletes includes a table without a usable replica
/// identity (any publication, pgkeep's or not). One ALERT per table.
async fn replica_identity(client: &tokio_postgres::Client, report: &mut CheckReport) {
    let sql = format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), string_agg(DISTINCT p.pubname::text, ', ')
         FROM pg_catalog.pg_publication p
         JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = p.pubname
         JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
         WHERE (p.pubupdate OR p.pubdelete) AND c.relkind = 'r' AND NOT {}
         GROUP BY 1 ORDER BY 1",
        crate::pg::catalog::USABLE_IDENTITY_SQL
    );
    match client.query(&sql, &[]).await {
        Err(e) => report.push("replica-identity", false, format!("cannot check the replica identities of published tables: {}", crate::pg::error_message(&e))),
        Ok(rows) if rows.is_empty() => report.push("replica-identity", true, "every table published for UPDATE/DELETE has a replica identity".into()),
        Ok(rows) => {
            for r in rows {
                let (table, pubs): (String, String) = (r.get(0), r.get(1));
                report.push(
                    "replica-identity",
                    false,
                    format!(
                        "table {table} has no usable replica identity but publication {pubs} publishes its updates and deletes: \
                         every UPDATE and DELETE on it fails now; fix: ALTER TABLE {table} REPLICA IDENTITY FULL (or add a primary key), \
                         or let `pgkeep stream` move it to its insert-only publication (`pgkeep setup` does it in the same transaction)"
                    ),
                );
            }
        }
    }
}

/// Run every check. Errors only when the check itself cannot run at all.
pub async fn run(settings: &Settings, opts: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport { findings: Vec::new(), metrics: Vec::new() };
    let database = &settings.db.dbname;

    // 1. Repositories: reachable and writable; the newest full backup's age; the last drill.
    let repos = open_repositories(settings).await?;
    let newest_full = repositories(&repos, database, &mut report).await;
    if let Some(repo) = repos.first() {
        last_drill(repo.as_ref(), &mut report).await;
    }
    full_backup_age(newest_full, database, opts.max_full_age, &mut report);
    if let Some(repo) = repos.first() {
        unarchived(repo, &mut report).await;
    }

    // 2. The server: leftover restore databases, replication slots, replica identities.
    match connect(&settings.db).await {
        Err(e) => report.push("database", false, e.user_line()),
        Ok(conn) => {
            leftover_temp_databases(settings, &mut report).await;
            slots(&conn.client, opts.max_slot_lag, &mut report).await;
            replica_identity(&conn.client, &mut report).await;
        }
    }

    // 3. Prometheus textfile metrics, when asked for.
    if let Some(path) = &opts.prometheus_file {
        write_prometheus(path, &mut report);
    }
    Ok(report)
}

/// Tables a `pgkeep stream` of this repository cannot archive (not in its
/// publications, [`crate::stream::unarchived`]): one ALERT per table; one
/// OK when streams recorded none. Nothing when no stream ever ran.
async fn unarchived(repo: &std::sync::Arc<dyn crate::storage::Storage>, report: &mut CheckReport) {
    let Ok(objects) = repo.list(crate::repo::layout::STREAM_STATE_PREFIX).await else { return };
    let mut streams = 0;
    for o in objects.iter().filter(|o| o.key.ends_with(".unarchived.json")) {
        let base = o.key.trim_start_matches(crate::repo::layout::STREAM_STATE_PREFIX).trim_end_matches(".unarchived.json");
        streams += 1;
        match crate::stream::unarchived::UnarchivedLog::new(std::slice::from_ref(repo), base).load().await {
            Ok(windows) => {
                for w in windows.open() {
                    report.push("unarchived", false, format!("table {} is not archived by stream {base} since LSN {}: {}", w.table(), w.since, w.reason));
                }
            }
            Err(e) => report.push("unarchived", false, e.user_line()),
        }
    }
    if streams > 0 && !report.findings.iter().any(|f| f.check == "unarchived") {
        report.push("unarchived", true, "every table is in a stream's publications".into());
    }
}

/// Every repository reachable and writable, and its manifests readable;
/// returns when the newest full backup of `database` in any of them finished.
async fn repositories(repos: &[std::sync::Arc<dyn crate::storage::Storage>], database: &str, report: &mut CheckReport) -> Option<chrono::DateTime<Utc>> {
    let mut newest_full: Option<chrono::DateTime<Utc>> = None;
    for repo in repos {
        let loc = repo.location();
        match repo.check_writable().await {
            Ok(()) => report.push("repository", true, format!("{loc} is reachable and writable")),
            Err(e) => {
                report.push("repository", false, e.user_line());
                report.metrics.push(("pgkeep_repository_up".into(), format!("repository=\"{}\"", label(&loc)), 0.0));
                continue;
            }
        }
        report.metrics.push(("pgkeep_repository_up".into(), format!("repository=\"{}\"", label(&loc)), 1.0));
        match catalog::list_backups(repo.as_ref()).await {
            Ok(entries) => {
                let newest = entries
                    .iter()
                    .filter_map(|e| match e {
                        CatalogEntry::Valid(m) if m.database == *database && m.kind == BackupKind::Full => Some(m.finished_at),
                        _ => None,
                    })
                    .max();
                let damaged = entries.iter().filter(|e| matches!(e, CatalogEntry::Invalid(..))).count();
                if damaged > 0 {
                    report.push("manifests", false, format!("{loc} holds {damaged} backup(s) with damaged manifests (run pgkeep list)"));
                }
                if let Some(t) = newest {
                    newest_full = Some(newest_full.map_or(t, |n| n.max(t)));
                    report.metrics.push((
                        "pgkeep_last_full_backup_timestamp_seconds".into(),
                        format!("repository=\"{}\",database=\"{}\"", label(&loc), label(database)),
                        t.timestamp() as f64,
                    ));
                }
            }
            Err(e) => report.push("repository", false, e.user_line()),
        }
    }
    newest_full
}

/// The last drill (test restore), if one was recorded.
async fn last_drill(repo: &dyn crate::storage::Storage, report: &mut CheckReport) {
    match crate::commands::drill::last_record(repo).await {
        Ok(Some(d)) => report.push(
            "drill",
            d.passed,
            format!(
                "last drill {} of {}: {} (RTO {:.1}s){}",
                d.at.format("%Y-%m-%d %H:%M UTC"),
                d.backup_id,
                if d.passed { "passed" } else { "FAILED" },
                d.rto_seconds,
                d.problems.first().map(|p| format!("; {p}")).unwrap_or_default()
            ),
        ),
        Ok(None) => report.push("drill", true, "no drill recorded yet (pgkeep drill)".into()),
        Err(e) => report.push("drill", false, e.user_line()),
    }
}

/// The newest full backup is younger than `max_full_age`.
fn full_backup_age(newest_full: Option<chrono::DateTime<Utc>>, database: &str, max_full_age: Duration, report: &mut CheckReport) {
    match newest_full {
        Some(t) => {
            let age = (Utc::now() - t).to_std().unwrap_or_default();
            let ok = age <= max_full_age;
            report.push(
                "full-backup-age",
                ok,
                format!(
                    "newest full backup of {database} finished {} ago (limit {})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max_full_age)
                ),
            );
        }
        None => report.push("full-backup-age", false, format!("no full backup of {database} in any repository")),
    }
}

/// Replication slots on the server: retained WAL, lost or invalidated
/// slots, and inactive pgkeep slots. One finding per permanent slot.
async fn slots(client: &tokio_postgres::Client, max_slot_lag: u64, report: &mut CheckReport) {
    let rows = client
        .query(
            "SELECT slot_name::text, slot_type, active, coalesce(wal_status, ''), \
             CASE WHEN restart_lsn IS NULL OR pg_is_in_recovery() THEN NULL \
                  ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END, temporary, \
             (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool, to_jsonb(s) ->> 'invalidation_reason' \
             FROM pg_replication_slots s ORDER BY 1",
            &[],
        )
        .await;
    let rows = match rows {
        Err(e) => return report.push("slots", false, format!("cannot read pg_replication_slots: {e}")),
        Ok(rows) => rows,
    };
    let mut any = false;
    for r in rows {
        let temporary: bool = r.get(5);
        if temporary {
            continue;
        }
        any = true;
        slot(&r, max_slot_lag, report);
    }
    if !any {
        report.push("slot", true, "no permanent replication slots".into());
    }
}

/// The finding and metrics of one permanent slot (a row of [`slots`]' query).
fn slot(r: &tokio_postgres::Row, max_slot_lag: u64, report: &mut CheckReport) {
    let (name, kind, active, status): (String, String, bool, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    let retained: Option<i64> = r.get(4);
    // 17+: failover slots (kept by a managed failover), synced copies on a standby, and why a slot was invalidated.
    let (failover, synced, reason): (Option<bool>, Option<bool>, Option<String>) = (r.get(6), r.get(7), r.get(8));
    let retained = retained.unwrap_or(0).max(0) as u64;
    report.metrics.push(("pgkeep_slot_retained_wal_bytes".into(), format!("slot=\"{}\"", label(&name)), retained as f64));
    let ours = name.starts_with("pgkeep");
    let lost = status == "lost" || reason.is_some();
    let too_big = retained > max_slot_lag;
    let idle_ours = ours && !active;
    let ok = !lost && !too_big && !idle_ours;
    let mut msg = format!("{kind} slot {name} retains {} of WAL ({}, wal_status {status})", human_bytes(retained), if active { "active" } else { "inactive" });
    if let Some(failover) = failover {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        msg.push_str(&format!("; failover {}, synchronized {}", yes_no(failover), yes_no(synced.unwrap_or(false))));
        report.metrics.push(("pgkeep_slot_failover".into(), format!("slot=\"{}\"", label(&name)), if failover { 1.0 } else { 0.0 }));
    }
    if let Some(reason) = &reason {
        msg.push_str(&format!("; invalidated ({reason}): a new full backup is needed and the slot should be dropped"));
    } else if lost {
        msg.push_str("; its WAL was removed: a new full backup is needed and the slot should be dropped");
    } else if too_big {
        msg.push_str(&format!("; above the {} limit: consume or drop it before the disk fills (see max_slot_wal_keep_size)", human_bytes(max_slot_lag)));
    } else if idle_ours {
        msg.push_str("; nothing is consuming this pgkeep slot: start `pgkeep stream` or drop the slot");
    }
    report.push("slot", ok, msg);
}

/// The Prometheus textfile, written whole (temporary file, then rename);
/// failing to write it is an ALERT.
fn write_prometheus(path: &std::path::Path, report: &mut CheckReport) {
    let tmp = path.with_extension("prom.tmp");
    let text = report.prometheus();
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        report.push("metrics", false, format!("cannot write {}: {e}", path.display()));
    }
}
