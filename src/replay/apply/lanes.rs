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
//!   key, so the two never wait on each other's rows.

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

/// One piece of work: a table, or some of its keys when it is split.
struct Job<'a> {
    target: &'a Target,
    batch: &'a Pending,
    /// The keys of this part; `None`: the whole batch.
    part: Option<Vec<(&'a Key, &'a Entry)>>,
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
            match job.batch {
                Pending::Keyed(b) => self.write_keyed(client, job.target, b, job.part.as_deref()).await?,
                Pending::Unkeyed(b) => self.write_unkeyed(client, job.target, b).await?,
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
/// the session with the least work; then each big keyed table that may be
/// split tops every session up to an even share, its keys taken in the
/// map's (random) order, so no key is hashed again.
fn plan(jobs: &[(Target, Pending)], lanes: usize) -> Vec<Vec<Job<'_>>> {
    let mut out: Vec<Vec<Job<'_>>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut load = vec![0u64; lanes];
    let splits = |(t, p): &(Target, Pending)| matches!(p, Pending::Keyed(b) if lanes > 1 && !t.rebuild && b.entries().len() >= split_keys());
    let mut whole: Vec<(&(Target, Pending), u64)> = jobs.iter().filter(|j| !splits(j)).map(|j| (j, cost(&j.1))).collect();
    whole.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
    for ((target, batch), c) in whole {
        let i = (0..lanes).min_by_key(|&i| load[i]).unwrap_or(0);
        out[i].push(Job { target, batch, part: None });
        load[i] += c;
    }
    for (target, batch) in jobs.iter().filter(|j| splits(j)) {
        let Pending::Keyed(b) = batch else { continue };
        let share = (load.iter().sum::<u64>() + cost(batch)).div_ceil(lanes as u64);
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
            out[i].push(Job { target, batch, part: Some(part) });
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
        l.iter().map(|j| (j.target.table.clone(), j.part.as_ref().map(Vec::len))).collect()
    }

    fn lane_cost(l: &[Job<'_>]) -> u64 {
        l.iter().map(|j| j.part.as_ref().map_or_else(|| cost(j.batch), |p| p.iter().map(|(_, e)| keyed_cost(e)).sum())).sum()
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
            let part = lane.iter().find(|j| j.target.table == "big").and_then(|j| j.part.as_ref());
            let part = part.unwrap_or_else(|| panic!("the big table is split over both sessions: {:?}", names(lane)));
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
        assert!(one[0].iter().all(|j| j.part.is_none()) && one[0].len() == 4);
    }

    #[test]
    fn cheap_inserts_weigh_less_than_rows_found_by_key() {
        // pgbench: 100,000 inserts into history, 95,000 updated accounts.
        let jobs = vec![(target("history", false), unkeyed_inserts(100_000)), (target("accounts", false), keyed(95_000))];
        let lanes = plan(&jobs, 2);
        let costs: Vec<u64> = lanes.iter().map(|l| lane_cost(l)).collect();
        assert!(costs[0].abs_diff(costs[1]) <= 6, "{costs:?}");
        // History stays whole, in the session that then gets fewer accounts.
        let with_history = lanes.iter().position(|l| l.iter().any(|j| j.target.table == "history")).unwrap();
        let accounts = |l: &[Job<'_>]| l.iter().filter_map(|j| j.part.as_ref()).map(Vec::len).sum::<usize>();
        assert!(accounts(&lanes[with_history]) < accounts(&lanes[1 - with_history]), "{:?}", lanes.iter().map(|l| names(l)).collect::<Vec<_>>());
        assert_eq!(accounts(&lanes[0]) + accounts(&lanes[1]), 95_000);
    }
}
