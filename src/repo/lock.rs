//! Repository locks (docs/FORMAT.md §6) on object stores without
//! compare-and-swap: each holder writes its own object
//! `locks/<operation>-<token>.json`, then lists `locks/` and decides with the
//! pure [`decide`] whether it may proceed.
//!
//! Two modes. A **shared** lock (`backup`) conflicts only with exclusive
//! locks; an **exclusive** lock (`expire`) conflicts with every other live
//! lock. Because two writers may each see the other, a conflict is resolved by
//! who *yields*: an exclusive lock yields to any shared lock and to an
//! exclusive lock that started earlier (ordered by `(started_at, token)`); a
//! yielding acquirer deletes its object and fails at once with
//! [`ErrorKind::Locked`]. A non-yielding acquirer that sees a conflicting lock
//! waits (up to [`LockOptions::wait`]) for that lock to disappear, because its
//! owner is expected to yield; if it stays, the acquirer fails too. Whatever
//! the interleaving, two conflicting holders never both proceed, as long as
//! listing is read-after-write consistent (local disks, S3 since 2020).
//!
//! A held lock rewrites its object with a fresh `heartbeat_at` every
//! [`LockOptions::heartbeat`]; a lock whose last sign of life (the later of
//! `heartbeat_at` and the object's modification time) is older than
//! [`LockOptions::stale_after`] is stale: reported with a warning and deleted.
//! A lock of a process on this host (same host name) that no longer runs is
//! taken over at once, with a warning, without waiting for staleness.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::layout::LOCKS_PREFIX;
use super::manifest::RunInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{PutOptions, Storage};

/// How a lock coexists with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Many may hold it at once (`backup`); conflicts with exclusive locks.
    Shared,
    /// Conflicts with every other lock (`expire`).
    Exclusive,
}

/// The JSON content of a lock object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The command holding it: `backup`, `expire`.
    pub operation: String,
    /// Shared or exclusive. Readers treat a missing or unknown mode as exclusive.
    #[serde(default = "exclusive", deserialize_with = "mode_or_exclusive")]
    pub mode: LockMode,
    /// Random hex, unique per acquisition; part of the key.
    pub token: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Host of the holder.
    pub host: String,
    /// OS user of the holder.
    pub os_user: String,
    /// pgkeep version of the holder.
    pub pgkeep_version: String,
    /// When the lock was taken.
    pub started_at: DateTime<Utc>,
    /// Last refresh by the holder.
    pub heartbeat_at: DateTime<Utc>,
}

fn exclusive() -> LockMode {
    LockMode::Exclusive
}

fn mode_or_exclusive<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<LockMode, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s == "shared" { LockMode::Shared } else { LockMode::Exclusive })
}

impl LockRecord {
    /// A new record for this process.
    pub fn new(operation: &str, mode: LockMode, now: DateTime<Utc>) -> LockRecord {
        let run = RunInfo::current();
        LockRecord {
            operation: operation.to_string(),
            mode,
            token: hex::encode(rand::random::<[u8; 8]>()),
            pid: std::process::id(),
            host: run.host,
            os_user: run.os_user,
            pgkeep_version: run.pgkeep_version,
            started_at: now,
            heartbeat_at: now,
        }
    }

    /// The object key: `locks/<operation>-<token>.json`.
    pub fn key(&self) -> String {
        format!("{LOCKS_PREFIX}{}-{}.json", self.operation, self.token)
    }

    fn order(&self) -> (DateTime<Utc>, &str) {
        (self.started_at, &self.token)
    }
}

/// A lock object found by listing `locks/`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedLock {
    /// Its key.
    pub key: String,
    /// Its content. An unreadable object is represented as an exclusive
    /// `unknown` lock that started and last beat at its modification time.
    pub record: LockRecord,
    /// The object's modification time, when the store reports it.
    pub modified: Option<DateTime<Utc>>,
}

impl ListedLock {
    /// The later of `heartbeat_at` and the modification time: robust to a
    /// holder whose clock is behind.
    pub fn last_seen(&self) -> DateTime<Utc> {
        self.modified.map_or(self.record.heartbeat_at, |m| m.max(self.record.heartbeat_at))
    }

    /// "backup (pid 12 on host db1, since 2026-…)".
    pub fn describe(&self) -> String {
        let r = &self.record;
        format!("{} (pid {} on host {}, since {})", r.operation, r.pid, r.host, r.started_at.to_rfc3339())
    }
}

/// What an acquirer should do, given what it listed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No live conflicting lock: proceed.
    Acquired,
    /// A live conflicting lock whose owner should yield to us: wait for it to vanish.
    Wait(ListedLock),
    /// A live conflicting lock we must yield to: delete our lock and fail.
    Conflict(ListedLock),
}

/// The verdict plus the stale locks to report and delete.
#[derive(Debug, Clone, PartialEq)]
pub struct LockDecision {
    /// Proceed, wait or yield.
    pub verdict: Verdict,
    /// Locks whose last sign of life is older than the stale timeout.
    pub stale: Vec<ListedLock>,
}

/// Whether `own` must yield to the live lock `other`. Only called for
/// conflicting pairs (at least one exclusive).
fn yields_to(own: &LockRecord, other: &LockRecord) -> bool {
    match (own.mode, other.mode) {
        (LockMode::Exclusive, LockMode::Shared) => true,
        (LockMode::Shared, LockMode::Exclusive) => false,
        _ => other.order() < own.order(),
    }
}

/// Decide, purely, whether `own` may proceed given every listed lock (own
/// included or not) at `now`.
pub fn decide(own: &LockRecord, listed: &[ListedLock], now: DateTime<Utc>, stale_after: Duration) -> LockDecision {
    let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let mut stale = Vec::new();
    let mut wait: Option<&ListedLock> = None;
    let mut conflict: Option<&ListedLock> = None;
    for l in listed.iter().filter(|l| l.record.token != own.token) {
        if now - l.last_seen() > stale_after {
            stale.push(l.clone());
            continue;
        }
        if own.mode == LockMode::Shared && l.record.mode == LockMode::Shared {
            continue;
        }
        let slot = if yields_to(own, &l.record) { &mut conflict } else { &mut wait };
        // Report the oldest holder: the one the user most likely wants to know about.
        if slot.is_none_or(|c| l.record.order() < c.record.order()) {
            *slot = Some(l);
        }
    }
    let verdict = match (conflict, wait) {
        (Some(c), _) => Verdict::Conflict(c.clone()),
        (None, Some(w)) => Verdict::Wait(w.clone()),
        (None, None) => Verdict::Acquired,
    };
    LockDecision { verdict, stale }
}

/// Timing of lock acquisition and upkeep.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// A lock silent for longer than this is stale (default 10 minutes).
    pub stale_after: Duration,
    /// How often a held lock refreshes its heartbeat (default 60 s).
    pub heartbeat: Duration,
    /// How long to wait for a conflicting lock expected to yield (default 30 s).
    pub wait: Duration,
    /// Pause between listings while waiting (default 500 ms).
    pub poll: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            stale_after: Duration::from_secs(600),
            heartbeat: Duration::from_secs(60),
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// A held repository lock. Release it with [`RepoLock::release`]; dropping
/// it removes it best-effort in the background.
#[derive(Debug)]
pub struct RepoLock {
    storage: Arc<dyn Storage>,
    key: String,
    record: LockRecord,
    heartbeat: Option<JoinHandle<()>>,
}

/// Every lock object under `locks/`.
pub async fn list_locks(storage: &dyn Storage) -> Result<Vec<ListedLock>> {
    let mut out = Vec::new();
    for o in storage.list(LOCKS_PREFIX).await? {
        if !o.key.ends_with(".json") {
            continue;
        }
        let record = match storage.get(&o.key, None).await {
            Ok(bytes) => serde_json::from_slice::<LockRecord>(&bytes).ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        let record = record.unwrap_or_else(|| {
            tracing::warn!(key = %o.key, "unreadable lock object, treated as an exclusive lock");
            let at = o.modified.unwrap_or_else(Utc::now);
            LockRecord {
                operation: "unknown".into(),
                mode: LockMode::Exclusive,
                token: o.key.clone(),
                pid: 0,
                host: "unknown".into(),
                os_user: "unknown".into(),
                pgkeep_version: "unknown".into(),
                started_at: at,
                heartbeat_at: at,
            }
        });
        out.push(ListedLock { key: o.key, record, modified: o.modified });
    }
    Ok(out)
}

/// Whether process `pid` of this host is gone. Where that cannot be told
/// (not Linux), every process counts as alive and only staleness applies.
fn process_is_gone(pid: u32) -> bool {
    cfg!(target_os = "linux") && pid != 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A lock held by a process of this host that no longer exists is taken over
/// at once, with a warning: deleted, and left out of the decision. A pid
/// reused by another process keeps the lock until it turns stale.
async fn take_over_dead(storage: &dyn Storage, own: &LockRecord, listed: Vec<ListedLock>) -> Vec<ListedLock> {
    let mut live = Vec::with_capacity(listed.len());
    for l in listed {
        let r = &l.record;
        if r.token != own.token && r.host == own.host && r.pid != own.pid && process_is_gone(r.pid) {
            tracing::warn!(repo = %storage.location(), key = %l.key, "taking over the lock of {}: that process no longer runs on this host", l.describe());
            let _ = storage.delete(&l.key).await;
            continue;
        }
        live.push(l);
    }
    live
}

async fn put_record(storage: &dyn Storage, record: &LockRecord) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::internal(format!("cannot serialize lock: {e}")))?;
    storage.put(&record.key(), Bytes::from(bytes), PutOptions::default()).await?;
    Ok(())
}

fn locked_error(storage: &dyn Storage, other: &ListedLock, opts: &LockOptions) -> Error {
    Error::new(ErrorKind::Locked, format!("repository {} is locked by {}", storage.location(), other.describe())).with_hint(format!(
        "wait for it to finish; if no pgkeep runs there, the lock turns stale {} min after its last heartbeat and is removed, or delete {}",
        opts.stale_after.as_secs().div_ceil(60),
        other.key
    ))
}

impl RepoLock {
    /// Take a lock of `mode` for `operation` in `storage`, or fail with
    /// [`ErrorKind::Locked`] naming the holder.
    pub async fn acquire(storage: Arc<dyn Storage>, operation: &str, mode: LockMode, opts: &LockOptions) -> Result<RepoLock> {
        let record = LockRecord::new(operation, mode, Utc::now());
        let key = record.key();
        put_record(storage.as_ref(), &record).await?;
        let waiting_since = tokio::time::Instant::now();
        loop {
            let listed = match list_locks(storage.as_ref()).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = storage.delete(&key).await;
                    return Err(e);
                }
            };
            let listed = take_over_dead(storage.as_ref(), &record, listed).await;
            let decision = decide(&record, &listed, Utc::now(), opts.stale_after);
            for s in &decision.stale {
                tracing::warn!(repo = %storage.location(), key = %s.key, last_seen = %s.last_seen(), "removing stale lock of {}", s.describe());
                let _ = storage.delete(&s.key).await;
            }
            let blocker = match decision.verdict {
                Verdict::Acquired => break,
                Verdict::Wait(w) if waiting_since.elapsed() < opts.wait => {
                    tracing::info!(repo = %storage.location(), "waiting for lock of {}", w.describe());
                    tokio::time::sleep(opts.poll).await;
                    continue;
                }
                Verdict::Wait(l) | Verdict::Conflict(l) => l,
            };
            let _ = storage.delete(&key).await;
            return Err(locked_error(storage.as_ref(), &blocker, opts));
        }
        tracing::debug!(repo = %storage.location(), key = %key, ?mode, "lock acquired");
        let heartbeat = tokio::spawn(heartbeat_loop(storage.clone(), record.clone(), opts.heartbeat));
        Ok(RepoLock { storage, key, record, heartbeat: Some(heartbeat) })
    }

    /// The lock's object key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock's content as first written.
    pub fn record(&self) -> &LockRecord {
        &self.record
    }

    /// Stop the heartbeat and delete the lock object.
    pub async fn release(mut self) -> Result<()> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
            let _ = h.await;
        }
        self.storage.delete(&self.key).await
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let Some(h) = self.heartbeat.take() else { return };
        h.abort();
        let storage = self.storage.clone();
        let key = std::mem::take(&mut self.key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = h.await;
                let _ = storage.delete(&key).await;
            });
        }
    }
}

async fn heartbeat_loop(storage: Arc<dyn Storage>, mut record: LockRecord, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Ok(None) = storage.head(&record.key()).await {
            tracing::error!(repo = %storage.location(), key = %record.key(), "our lock was removed by another process (it looked stale); rewriting it");
        }
        record.heartbeat_at = Utc::now();
        if let Err(e) = put_record(storage.as_ref(), &record).await {
            tracing::warn!(repo = %storage.location(), error = %e.user_line(), "cannot refresh lock heartbeat");
        }
    }
}

/// Take the same lock in every repository, in order; on failure release the
/// ones already taken.
pub async fn acquire_all(repos: &[Arc<dyn Storage>], operation: &str, mode: LockMode, opts: &LockOptions) -> Result<Vec<RepoLock>> {
    let mut held = Vec::with_capacity(repos.len());
    for r in repos {
        match RepoLock::acquire(r.clone(), operation, mode, opts).await {
            Ok(l) => held.push(l),
            Err(e) => {
                release_all(held).await;
                return Err(e);
            }
        }
    }
    Ok(held)
}

/// Release every lock, logging (not failing on) errors.
pub async fn release_all(locks: Vec<RepoLock>) {
    for l in locks {
        let location = l.storage.location();
        if let Err(e) = l.release().await {
            tracing::warn!(repo = %location, error = %e.user_line(), "cannot remove lock; it turns stale by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const STALE: Duration = Duration::from_secs(600);

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn rec(op: &str, mode: LockMode, token: &str, started: i64, beat: i64) -> LockRecord {
        LockRecord {
            operation: op.into(),
            mode,
            token: token.into(),
            pid: 7,
            host: "h".into(),
            os_user: "u".into(),
            pgkeep_version: "0".into(),
            started_at: t(started),
            heartbeat_at: t(beat),
        }
    }

    fn listed(r: &LockRecord) -> ListedLock {
        ListedLock { key: r.key(), record: r.clone(), modified: None }
    }

    fn verdict_token(d: &LockDecision) -> (&'static str, Option<String>) {
        match &d.verdict {
            Verdict::Acquired => ("acquired", None),
            Verdict::Wait(l) => ("wait", Some(l.record.token.clone())),
            Verdict::Conflict(l) => ("conflict", Some(l.record.token.clone())),
        }
    }

    #[test]
    fn alone_or_only_own_lock_is_acquired() {
        let own = rec("backup", LockMode::Shared, "aa", 0, 0);
        assert_eq!(decide(&own, &[], t(1), STALE).verdict, Verdict::Acquired);
        assert_eq!(decide(&own, &[listed(&own)], t(1), STALE).verdict, Verdict::Acquired);
    }

    #[test]
    fn shared_locks_coexist() {
        let own = rec("backup", LockMode::Shared, "bb", 5, 5);
        let other = rec("backup", LockMode::Shared, "aa", 0, 4);
        let d = decide(&own, &[listed(&own), listed(&other)], t(6), STALE);
        assert_eq!(d.verdict, Verdict::Acquired);
        assert!(d.stale.is_empty());
    }

    #[test]
    fn exclusive_yields_to_any_live_shared_lock() {
        let own = rec("expire", LockMode::Exclusive, "aa", 0, 0);
        // Even a shared lock that started later: the exclusive side always yields.
        let later = rec("backup", LockMode::Shared, "zz", 1, 1);
        let d = decide(&own, &[listed(&own), listed(&later)], t(2), STALE);
        assert_eq!(verdict_token(&d), ("conflict", Some("zz".into())));
    }

    #[test]
    fn shared_waits_for_a_live_exclusive_lock() {
        let own = rec("backup", LockMode::Shared, "bb", 5, 5);
        let ex = rec("expire", LockMode::Exclusive, "aa", 0, 4);
        let d = decide(&own, &[listed(&ex), listed(&own)], t(6), STALE);
        assert_eq!(verdict_token(&d), ("wait", Some("aa".into())));
    }

    #[test]
    fn exclusive_pairs_are_ordered_by_start_then_token() {
        let a = rec("expire", LockMode::Exclusive, "aa", 0, 0);
        let b = rec("expire", LockMode::Exclusive, "bb", 0, 0);
        let c = rec("expire", LockMode::Exclusive, "00", 1, 1);
        let all = [listed(&a), listed(&b), listed(&c)];
        // Same start: token decides; "aa" is first and waits for the others to yield.
        assert_eq!(verdict_token(&decide(&a, &all, t(2), STALE)).0, "wait");
        assert_eq!(verdict_token(&decide(&b, &all, t(2), STALE)), ("conflict", Some("aa".into())));
        assert_eq!(verdict_token(&decide(&c, &all, t(2), STALE)), ("conflict", Some("aa".into())));
    }

    #[test]
    fn every_conflicting_pair_has_exactly_one_yielder() {
        let modes = [LockMode::Shared, LockMode::Exclusive];
        for ma in modes {
            for mb in modes {
                if ma == LockMode::Shared && mb == LockMode::Shared {
                    continue;
                }
                for (sa, sb) in [(0, 0), (0, 1), (1, 0)] {
                    let a = rec("x", ma, "aa", sa, sa);
                    let b = rec("y", mb, "bb", sb, sb);
                    let both = [listed(&a), listed(&b)];
                    let ya = matches!(decide(&a, &both, t(2), STALE).verdict, Verdict::Conflict(_));
                    let yb = matches!(decide(&b, &both, t(2), STALE).verdict, Verdict::Conflict(_));
                    assert!(ya ^ yb, "{ma:?}@{sa} vs {mb:?}@{sb}: a yields {ya}, b yields {yb}");
                }
            }
        }
    }

    #[test]
    fn stale_locks_are_reported_and_ignored() {
        let own = rec("expire", LockMode::Exclusive, "bb", 30, 30);
        let dead = rec("backup", LockMode::Shared, "aa", 0, 15);
        let d = decide(&own, &[listed(&dead), listed(&own)], t(30), STALE);
        assert_eq!(d.verdict, Verdict::Acquired);
        assert_eq!(d.stale, vec![listed(&dead)]);
        // Exactly at the timeout it is still live.
        let d = decide(&own, &[listed(&dead), listed(&own)], t(25), STALE);
        assert_eq!(verdict_token(&d).0, "conflict");
        assert!(d.stale.is_empty());
    }

    #[test]
    fn a_recent_object_time_keeps_a_lock_with_a_lagging_clock_alive() {
        let own = rec("expire", LockMode::Exclusive, "bb", 30, 30);
        let skewed = rec("backup", LockMode::Shared, "aa", 0, 0);
        let l = ListedLock { modified: Some(t(29)), ..listed(&skewed) };
        let d = decide(&own, &[l], t(30), STALE);
        assert_eq!(verdict_token(&d).0, "conflict");
        assert!(d.stale.is_empty());
    }

    #[test]
    fn conflict_beats_wait_and_names_the_oldest_holder() {
        let own = rec("expire", LockMode::Exclusive, "mm", 5, 5);
        let later_ex = rec("expire", LockMode::Exclusive, "zz", 9, 9);
        let s1 = rec("backup", LockMode::Shared, "s1", 3, 9);
        let s2 = rec("backup", LockMode::Shared, "s2", 1, 9);
        let d = decide(&own, &[listed(&later_ex), listed(&s1), listed(&s2)], t(10), STALE);
        assert_eq!(verdict_token(&d), ("conflict", Some("s2".into())));
    }

    #[test]
    fn records_round_trip_and_unknown_modes_read_as_exclusive() {
        let r = LockRecord::new("backup", LockMode::Shared, t(0));
        assert!(r.key().starts_with("locks/backup-") && r.key().ends_with(".json"));
        assert_eq!(r.token.len(), 16);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"mode\":\"shared\""), "{json}");
        assert_eq!(serde_json::from_str::<LockRecord>(&json).unwrap(), r);
        let future = json.replace("\"shared\"", "\"fancy\"");
        assert_eq!(serde_json::from_str::<LockRecord>(&future).unwrap().mode, LockMode::Exclusive);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("mode");
        assert_eq!(serde_json::from_value::<LockRecord>(v).unwrap().mode, LockMode::Exclusive);
    }
}
