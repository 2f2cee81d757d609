//! Writing a batch on two sessions at once: the server's work on a batch
//! (finding rows by key, deleting, inserting, index upkeep) is most of a
//! replay's time, and one session uses one core.
//!
//! Each session writes its share in its own transaction, and both commit
//! once both succeeded (a failure rolls both back, and the replay fails,
//! so the half-written work database is dropped). Sharing is safe because
//! nothing in a batch depends across sessions while the replay runs:
//! - foreign keys do not fire (both sessions are replicas, or the keys are
//!   suspended for the replay, [`super::super::suspend`]), nor do user
//!   triggers;
//! - tables are written whole by one session, except a keyed table with no
//!   other unique or exclusion index and no `GENERATED ALWAYS` identity
//!   (`Target::rebuild` false), which is split by key: each key's DELETE,
//!   UPDATE and COPY stay in one session, and its only unique index is the
//!   key, so the two never wait on each other's rows; and a batch of
//!   inserts only into a table without a key, cut into runs of rows: every
//!   row it inserts exists at the batch's end, so no two can collide on a
//!   unique index.

use super::*;
use crate::replay::batch::Entry;

/// A keyed table is split between the sessions from this many keys, or
/// from an eighth of the batch limit when that is lower.
const SPLIT_KEYS: usize = 4096;

fn split_keys() -> usize {
    SPLIT_KEYS.min((super::batch_changes() / 8).max(2) as usize)
}

/// The server's work for one keyed entry, in units of one COPY row into a
/// table without indexes (measured on pgbench's accounts and history: a
/// row found by key, deleted and copied back in costs about six).
fn keyed_cost(e: &Entry) -> u64 {
    match (&e.state, e.existed) {
        (RowState::Upsert(_), true) => 6,
        (RowState::Upsert(_), false) => 2,
        (RowState::Patch(_), _) => 5,
        (RowState::Delete, true) => 4,
        (RowState::Delete, false) => 0,
    }
}

/// The server's work for a table's batch, in the units of [`keyed_cost`]:
/// an unkeyed change other than an insert is a statement of its own.
fn cost(p: &Pending) -> u64 {
    match p {
        Pending::Keyed(b) => b.entries().values().map(keyed_cost).sum(),
        Pending::Unkeyed(b) => b.changes.iter().map(|c| if matches!(c, UnkeyedChange::Insert(_)) { 1 } else { 50 }).sum(),
    }
}

/// A second session prepared as the first: `replica` when the first runs
/// as a replica (`session_replication_role`); `None` when it cannot be.
pub(super) async fn second_session(db: &DbSettings, replica: bool) -> Option<Client> {
    let client = connect::connect(db).await.ok()?.client;
    client.batch_execute(SESSION_SETUP).await.ok()?;
    if replica && !super::super::suspend::try_replica_role(&client).await.ok()? {
        return None;
    }
    client.batch_execute(REPLAY_SESSION).await.ok()?;
    Some(client)
}

/// One piece of work: a table, or a part of it when it is split.
struct Job<'a> {
    target: &'a Target,
    batch: &'a Pending,
    part: Part<'a>,
}

/// Which of a table's batch a [`Job`] writes.
#[derive(Debug)]
enum Part<'a> {
    /// All of it.
    Whole,
    /// These keys of a keyed batch.
    Keys(Vec<(&'a Key, &'a Entry)>),
    /// These rows of a batch of inserts only, into a table without a key.
    Rows(std::ops::Range<usize>),
}

impl Applier {
    /// Write `jobs` (each table's batch) in one transaction per session.
    pub(super) async fn write_lanes(&self, jobs: &[(Target, Pending)]) -> Result<()> {
        let sessions: Vec<&Client> = std::iter::once(&self.client).chain(self.lane.as_ref()).collect();
        let plan = plan(jobs, sessions.len());
        // Deferrable constraints are checked at the commit, on the final state.
        // Rows are found by key through the index: a batch's keys are often a
        // tenth of a table, where the planner would scan all of it (twice as
        // slow cached, and a whole scan per batch where it is not).
        for c in &sessions {
            self.on(c, "BEGIN; SET CONSTRAINTS ALL DEFERRED; SET LOCAL enable_seqscan = off").await?;
        }
        let written = futures::future::join_all(sessions.iter().zip(&plan).map(|(c, lane)| self.write_all(c, lane))).await;
        if let Some(e) = written.into_iter().find_map(|r| r.err()) {
            for c in &sessions {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            return Err(e);
        }
        for c in &sessions {
            self.on(c, "COMMIT").await?;
        }
        Ok(())
    }

    async fn write_all(&self, client: &Client, lane: &[Job<'_>]) -> Result<()> {
        for job in lane {
            match (job.batch, &job.part) {
                (Pending::Keyed(b), Part::Keys(keys)) => self.write_keyed(client, job.target, b, Some(keys)).await?,
                (Pending::Keyed(b), _) => self.write_keyed(client, job.target, b, None).await?,
                (Pending::Unkeyed(b), Part::Rows(rows)) => self.write_unkeyed(client, job.target, &b.changes[rows.clone()]).await?,
                (Pending::Unkeyed(b), _) => self.write_unkeyed(client, job.target, &b.changes).await?,
            }
        }
        Ok(())
    }

    pub(super) async fn on(&self, client: &Client, sql: &str) -> Result<()> {
        client.batch_execute(sql).await.map_err(crate::pg::query_error(format!("replay into {}", self.db)))
    }
}

/// The jobs of each of `lanes` sessions, balanced by the server's work
/// ([`cost`]): the tables written whole go first, biggest first, each to
/// the session with the least work; then each big table that may be split
/// tops every session up to an even share. A keyed table's keys are taken
/// in the map's (random) order, so no key is hashed again; a batch of
/// inserts only into a table without a key is cut into runs of rows (they
/// all exist at the end of the batch, so no two of them can collide).
fn plan(jobs: &[(Target, Pending)], lanes: usize) -> Vec<Vec<Job<'_>>> {
    let mut out: Vec<Vec<Job<'_>>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut load = vec![0u64; lanes];
    let splits = |(t, p): &(Target, Pending)| {
        lanes > 1
            && match p {
                Pending::Keyed(b) => !t.rebuild && b.entries().len() >= split_keys(),
                Pending::Unkeyed(b) => b.changes.len() >= split_keys() && b.changes.iter().all(|c| matches!(c, UnkeyedChange::Insert(_))),
            }
    };
    let mut whole: Vec<(&(Target, Pending), u64)> = jobs.iter().filter(|j| !splits(j)).map(|j| (j, cost(&j.1))).collect();
    whole.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
    for ((target, batch), c) in whole {
        let i = (0..lanes).min_by_key(|&i| load[i]).unwrap_or(0);
        out[i].push(Job { target, batch, part: Part::Whole });
        load[i] += c;
    }
    for (target, batch) in jobs.iter().filter(|j| splits(j)) {
        let share = (load.iter().sum::<u64>() + cost(batch)).div_ceil(lanes as u64);
        match batch {
            Pending::Keyed(b) => {
                let mut parts: Vec<Vec<(&Key, &Entry)>> = (0..lanes).map(|_| Vec::new()).collect();
                let mut lane = 0;
                for (k, e) in b.entries() {
                    while lane + 1 < lanes && load[lane] >= share {
                        lane += 1;
                    }
                    parts[lane].push((k, e));
                    load[lane] += keyed_cost(e);
                }
                for (i, part) in parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                    out[i].push(Job { target, batch, part: Part::Keys(part) });
                }
            }
            Pending::Unkeyed(b) => {
                // Inserts only: each costs one.
                let mut start = 0;
                for (i, lane) in out.iter_mut().enumerate() {
                    let room = if i + 1 == lanes { b.changes.len() - start } else { share.saturating_sub(load[i]) as usize };
                    let end = (start + room).min(b.changes.len());
                    if end > start {
                        lane.push(Job { target, batch, part: Part::Rows(start..end) });
                        load[i] += (end - start) as u64;
                    }
                    start = end;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::TupleValue;

    fn target(name: &str, rebuild: bool) -> Target {
        let cols = vec![TargetColumn { name: "id".into(), type_sql: "integer".into() }];
        Target { table: name.into(), display: name.into(), cols, key: Some(vec![0]), rebuild }
    }

    fn keyed(rows: u32) -> Pending {
        let mut b = KeyedBatch::new(vec![0], 1);
        for i in 0..rows {
            b.insert(&[TupleValue::Text(Bytes::from(i.to_string()))]).unwrap();
        }
        Pending::Keyed(b)
    }

    fn unkeyed_inserts(rows: u32) -> Pending {
        let mut b = UnkeyedBatch::new(1);
        for i in 0..rows {
            b.insert(&[TupleValue::Text(Bytes::from(i.to_string()))]).unwrap();
        }
        Pending::Unkeyed(b)
    }

    fn names(l: &[Job<'_>]) -> Vec<(String, Option<usize>)> {
        l.iter().map(|j| (j.target.table.clone(), part_len(&j.part))).collect()
    }

    fn part_len(p: &Part<'_>) -> Option<usize> {
        match p {
            Part::Whole => None,
            Part::Keys(k) => Some(k.len()),
            Part::Rows(r) => Some(r.len()),
        }
    }

    fn lane_cost(l: &[Job<'_>]) -> u64 {
        l.iter()
            .map(|j| match &j.part {
                Part::Whole => cost(j.batch),
                Part::Keys(k) => k.iter().map(|(_, e)| keyed_cost(e)).sum(),
                Part::Rows(r) => r.len() as u64,
            })
            .sum()
    }

    fn keys_of<'a>(lane: &'a [Job<'_>], table: &str) -> Option<&'a Vec<(&'a Key, &'a Entry)>> {
        lane.iter().find(|j| j.target.table == table).and_then(|j| match &j.part {
            Part::Keys(k) => Some(k),
            _ => None,
        })
    }

    #[test]
    fn big_keyed_tables_split_by_key_and_the_rest_balance() {
        let jobs = vec![
            (target("big", false), keyed(10_000)),
            (target("unique_too", true), keyed(6_000)),
            (target("small_a", false), keyed(100)),
            (target("small_b", false), keyed(90)),
        ];
        let lanes = plan(&jobs, 2);
        // The one with another unique index whole, in one session.
        let whole: Vec<_> = lanes.iter().flat_map(|l| names(l)).filter(|(t, _)| t == "unique_too").collect();
        assert_eq!(whole, vec![("unique_too".to_string(), None)]);
        // The big one in both sessions, every key exactly once.
        let mut keys: Vec<&Key> = Vec::new();
        for lane in &lanes {
            let part = keys_of(lane, "big").unwrap_or_else(|| panic!("the big table is split over both sessions: {:?}", names(lane)));
            keys.extend(part.iter().map(|(k, _)| *k));
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10_000);
        // Both sessions get the same work, to a key.
        let costs: Vec<u64> = lanes.iter().map(|l| lane_cost(l)).collect();
        assert!(costs[0].abs_diff(costs[1]) <= 6, "{costs:?}");
        // One session: everything whole, in one lane.
        let one = plan(&jobs, 1);
        assert!(one[0].iter().all(|j| matches!(j.part, Part::Whole)) && one[0].len() == 4);
    }

    #[test]
    fn cheap_inserts_weigh_less_than_rows_found_by_key() {
        // pgbench: 100,000 inserts into history (no key), 95,000 updated accounts.
        let jobs = vec![(target("history", false), unkeyed_inserts(100_000)), (target("accounts", false), keyed(95_000))];
        let lanes = plan(&jobs, 2);
        let costs: Vec<u64> = lanes.iter().map(|l| lane_cost(l)).collect();
        assert!(costs[0].abs_diff(costs[1]) <= 6, "{costs:?}");
        // Both tables split; history's rows cut into runs that cover each row once.
        let mut rows: Vec<std::ops::Range<usize>> = lanes
            .iter()
            .flat_map(|l| l.iter())
            .filter_map(|j| match &j.part {
                Part::Rows(r) if j.target.table == "history" => Some(r.clone()),
                _ => None,
            })
            .collect();
        rows.sort_by_key(|r| r.start);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].start, rows[0].end, rows[1].end), (0, rows[1].start, 100_000));
        let accounts: usize = lanes.iter().map(|l| keys_of(l, "accounts").map_or(0, Vec::len)).sum();
        assert_eq!(accounts, 95_000);
    }

    #[test]
    fn a_batch_without_a_key_that_deletes_stays_whole() {
        let mut b = UnkeyedBatch::new(1);
        for i in 0..10_000u32 {
            b.insert(&[TupleValue::Text(Bytes::from(i.to_string()))]).unwrap();
        }
        b.changes.push(UnkeyedChange::Delete(vec![Some(Bytes::from_static(b"7"))]));
        let jobs = vec![(target("log", false), Pending::Unkeyed(b)), (target("other", false), keyed(10_000))];
        let lanes = plan(&jobs, 2);
        let log: Vec<_> = lanes.iter().flat_map(|l| names(l)).filter(|(t, _)| t == "log").collect();
        assert_eq!(log, vec![("log".to_string(), None)], "its order matters: written whole, by one session");
    }
}
