//! UPDATE and DELETE on tables without a replica identity, which the
//! archive does not hold (pure, with its query).
//!
//! A table without a usable replica identity is in the insert-only
//! publication: its inserts and truncates are archived, its UPDATE and
//! DELETE are not (publishing them would make them fail in production). A
//! replay past such a change would leave the table wrong, so the stream
//! watches the server's statistics (`n_tup_upd + n_tup_del` of
//! `pg_stat_user_tables`) at every publication check: when they grew for a
//! table that is in the insert-only publication now, the table changed in
//! a way the archive cannot show, and a table image of it is asked for,
//! with an unseen cover ([`super::autobackup`]). Replay then refuses
//! targets between the change and the image by name, and is exact after.
//!
//! The statistics reach the server's counters up to a minute after the
//! change (a busy backend flushes them at least every 60 s), so the cover
//! starts at the newest check at least [`STATS_LAG`] before the previous
//! reading (or the run's first check, when none is that old). A table
//! changed again within [`COOLDOWN`] of its last image request is asked for
//! once more when the cooldown ends: the image cost stays bounded for a
//! table updated all the time, and targets in between are refused by name.
//!
//! Not seen: changes made while no stream ran (the first reading of a run
//! is its baseline), and counters reset by `pg_stat_reset` or a crash at the
//! same time as a change (a reset alone counts as a change).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::unarchived::Point;

/// How long a change can take to show in the statistics.
pub const STATS_LAG: Duration = Duration::from_secs(65);
/// Least time between two image requests for one table.
pub const COOLDOWN: Duration = Duration::from_secs(300);

/// Every table's UPDATE + DELETE count, and whether the insert-only
/// publication (`$1`) publishes it now: `relid, schema, name, writes,
/// insert_only`.
pub const COUNTERS_SQL: &str = "SELECT s.relid::int8, s.schemaname::text, s.relname::text, (s.n_tup_upd + s.n_tup_del)::int8, io.tablename IS NOT NULL \
     FROM pg_catalog.pg_stat_user_tables s \
     LEFT JOIN (SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1) io \
            ON io.schemaname = s.schemaname AND io.tablename = s.relname";

/// One row of [`COUNTERS_SQL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// The table's oid.
    pub relid: i64,
    /// Schema (unquoted).
    pub schema: String,
    /// Table (unquoted).
    pub name: String,
    /// `n_tup_upd + n_tup_del`.
    pub writes: i64,
    /// In the insert-only publication now.
    pub insert_only: bool,
}

/// A change held back by the cooldown: schema, table, since when.
type Held = (String, String, Point);

/// What the watch remembers between checks.
#[derive(Debug, Default)]
pub struct WriteWatch {
    /// The previous reading, per table.
    last: HashMap<i64, i64>,
    /// Recent checks: when, and the server's position and clock then.
    checks: VecDeque<(Instant, Point)>,
    /// Per table: when its last image was asked for, and a change seen
    /// since that waits for the cooldown (since when).
    cooling: HashMap<i64, (Instant, Option<Held>)>,
    /// Per table with a change held back: its count before that change.
    held_from: HashMap<i64, i64>,
    /// The tables of the insert-only publication at the last reading.
    insert_only: std::collections::HashSet<i64>,
    /// An earlier run's cover start ([`WriteWatch::seed`]), used until this
    /// run's checks reach back [`STATS_LAG`].
    floor: Option<Point>,
}

impl WriteWatch {
    /// A reading at `now`, the server at `point` right after it. Returns
    /// the tables (`schema`, `name`) to take an image of, each with since
    /// when its changes may be missing.
    pub fn observe(&mut self, now: Instant, point: Point, counters: &[Counter]) -> Vec<Held> {
        let first = self.checks.is_empty() && self.floor.is_none();
        let since = self.since();
        let mut out = Vec::new();
        for c in counters {
            let before = self.last.insert(c.relid, c.writes);
            // A reset counts as a change; a table new since the last reading has no baseline
            // unless the run had one (then it was created since, and every write counts).
            let grew = match before {
                Some(b) => c.writes != b,
                None => !first && c.writes > 0,
            };
            if !(grew && c.insert_only) {
                continue;
            }
            match self.cooling.get_mut(&c.relid) {
                Some((asked, pending)) if now.duration_since(*asked) < COOLDOWN => {
                    if pending.is_none() {
                        *pending = Some((c.schema.clone(), c.name.clone(), since));
                        self.held_from.insert(c.relid, before.unwrap_or(0));
                    }
                }
                _ => {
                    self.cooling.insert(c.relid, (now, None));
                    out.push((c.schema.clone(), c.name.clone(), since));
                }
            }
        }
        // Changes that waited for the cooldown.
        for (relid, (asked, pending)) in self.cooling.iter_mut() {
            if now.duration_since(*asked) >= COOLDOWN
                && let Some(p) = pending.take()
            {
                *asked = now;
                self.held_from.remove(relid);
                out.push(p);
            }
        }
        self.last.retain(|relid, _| counters.iter().any(|c| c.relid == *relid));
        self.insert_only = counters.iter().filter(|c| c.insert_only).map(|c| c.relid).collect();
        self.checks.push_back((now, point));
        while self.checks.len() > 2 && self.checks.front().is_some_and(|(at, _)| now.duration_since(*at) > STATS_LAG * 3) {
            self.checks.pop_front();
        }
        out
    }

    /// Since when a change found now may be missing: the newest check at
    /// least [`STATS_LAG`] before the previous one, else an earlier run's
    /// floor, else the oldest known.
    pub fn since(&self) -> Point {
        let Some((prev, _)) = self.checks.back() else { return self.floor.unwrap_or((crate::repo::layout::Lsn(0), None)) };
        match self.checks.iter().rev().find(|(at, _)| prev.checked_duration_since(*at).is_some_and(|d| d >= STATS_LAG)) {
            Some((_, p)) => *p,
            None => self.floor.or(self.checks.front().map(|(_, p)| *p)).expect("not empty"),
        }
    }

    /// The counts to keep for the next run ([`super::watch_state`]): of the
    /// tables of the insert-only publication at the last reading, a table
    /// whose change waits for the cooldown at its count before that change
    /// (so the next run finds it again). Empty before the first reading.
    pub fn baseline(&self) -> HashMap<i64, i64> {
        self.last
            .iter()
            .filter(|(relid, _)| self.insert_only.contains(relid))
            .map(|(relid, n)| (*relid, self.held_from.get(relid).copied().unwrap_or(*n)))
            .collect()
    }

    /// Start from an earlier run's counts, `since` being its cover start:
    /// the first reading compares with them instead of only learning.
    pub fn seed(&mut self, counts: HashMap<i64, i64>, since: Point) {
        if self.checks.is_empty() {
            self.last = counts;
            self.floor = Some(since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::Lsn;

    fn c(relid: i64, writes: i64, insert_only: bool) -> Counter {
        Counter { relid, schema: "public".into(), name: format!("t{relid}"), writes, insert_only }
    }

    #[test]
    fn writes_to_insert_only_tables_ask_for_an_image_from_a_point_before_the_statistics_lag() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut w = WriteWatch::default();
        // The first reading is the baseline.
        assert!(w.observe(s(0), (Lsn(100), None), &[c(1, 5, true), c(2, 0, false)]).is_empty());
        for i in 1..=20u64 {
            assert!(w.observe(s(i * 5), (Lsn(100 + i), None), &[c(1, 5, true), c(2, 3 * i as i64, false)]).is_empty(), "archived tables never");
        }
        // At 105 s: an update shows. The previous reading was at 100 s; at least 65 s before that: 35 s.
        let got = w.observe(s(105), (Lsn(200), None), &[c(1, 6, true), c(2, 60, false)]);
        assert_eq!(got, vec![("public".to_string(), "t1".to_string(), (Lsn(107), None))]);
        // Again within the cooldown: held back, then asked for once, since the first held change.
        assert!(w.observe(s(110), (Lsn(201), None), &[c(1, 7, true)]).is_empty());
        assert!(w.observe(s(115), (Lsn(202), None), &[c(1, 9, true)]).is_empty());
        let later = w.observe(s(405), (Lsn(300), None), &[c(1, 9, true)]);
        assert_eq!(later.len(), 1);
        assert!(later[0].2.0 >= Lsn(107) && later[0].2.0 < Lsn(201), "{later:?}");
    }

    #[test]
    fn a_seeded_run_finds_what_changed_while_no_stream_ran() {
        let t0 = Instant::now();
        let mut w = WriteWatch::default();
        w.seed([(1, 5), (2, 7)].into(), (Lsn(0x40), None));
        // Table 1 was updated while no stream ran; table 3 is new since (no baseline, but counted).
        let got = w.observe(t0, (Lsn(0x90), None), &[c(1, 6, true), c(2, 7, true), c(3, 1, true)]);
        assert_eq!(got.iter().map(|g| (g.1.as_str(), g.2.0)).collect::<Vec<_>>().len(), 2);
        assert!(got.iter().all(|g| g.2 == (Lsn(0x40), None)), "{got:?}");
        // A change held by the cooldown is kept at its count before it.
        assert!(w.observe(t0 + Duration::from_secs(5), (Lsn(0x95), None), &[c(1, 9, true), c(2, 7, true), c(3, 1, true)]).is_empty());
        let kept = w.baseline();
        assert_eq!((kept[&1], kept[&2]), (6, 7));
        w.observe(t0 + Duration::from_secs(10), (Lsn(0x99), None), &[c(1, 9, true), c(2, 7, false), c(3, 1, true)]);
        assert!(!w.baseline().contains_key(&2), "only the insert-only tables");
    }

    #[test]
    fn a_table_moved_to_insert_only_with_writes_since_the_last_reading_counts() {
        let t0 = Instant::now();
        let mut w = WriteWatch::default();
        w.observe(t0, (Lsn(1), None), &[c(1, 4, false)]);
        // It lost its identity and was updated in the same transaction.
        let got = w.observe(t0 + Duration::from_secs(5), (Lsn(2), None), &[c(1, 5, true)]);
        assert_eq!(got.len(), 1);
        // Created after the baseline, already updated: counts; a reset counts too.
        let got = w.observe(t0 + Duration::from_secs(400), (Lsn(3), None), &[c(1, 0, true), c(3, 2, true)]);
        assert_eq!(got.len(), 2, "{got:?}");
        // Unchanged: nothing.
        assert!(w.observe(t0 + Duration::from_secs(800), (Lsn(4), None), &[c(1, 0, true), c(3, 2, true)]).is_empty());
    }
}
