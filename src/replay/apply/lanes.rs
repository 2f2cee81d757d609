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

use std::hash::{Hash, Hasher};

use super::*;

/// A keyed table is split between the sessions from this many keys.
const SPLIT_KEYS: usize = 4096;

/// The part (of `n`) the row with `key` belongs to.
pub(super) fn part_of(key: &Key, n: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() % n
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

/// One piece of work: a table (a part of its keys, when split).
struct Job<'a> {
    target: &'a Target,
    batch: &'a Pending,
    part: Option<(u64, u64)>,
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
                Pending::Keyed(b) => self.write_keyed(client, job.target, b, job.part).await?,
                Pending::Unkeyed(b) => self.write_unkeyed(client, job.target, b).await?,
            }
        }
        Ok(())
    }

    pub(super) async fn on(&self, client: &Client, sql: &str) -> Result<()> {
        client.batch_execute(sql).await.map_err(crate::pg::query_error(format!("replay into {}", self.db)))
    }
}

/// The jobs of each of `lanes` sessions: big keyed tables that may be
/// split are split by key over every session; the other tables go whole,
/// biggest first, to the session with the least work.
fn plan(jobs: &[(Target, Pending)], lanes: usize) -> Vec<Vec<Job<'_>>> {
    let mut out: Vec<Vec<Job<'_>>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut load = vec![0u64; lanes];
    let size = |p: &Pending| match p {
        Pending::Keyed(b) => b.entries().len() as u64,
        Pending::Unkeyed(b) => b.changes.len() as u64,
    };
    let mut order: Vec<&(Target, Pending)> = jobs.iter().collect();
    order.sort_by_key(|(_, p)| std::cmp::Reverse(size(p)));
    for (target, batch) in order {
        let n = size(batch);
        match batch {
            Pending::Keyed(b) if lanes > 1 && !target.rebuild && b.entries().len() >= SPLIT_KEYS => {
                for (i, lane) in out.iter_mut().enumerate() {
                    lane.push(Job { target, batch, part: Some((lanes as u64, i as u64)) });
                    load[i] += n / lanes as u64;
                }
            }
            _ => {
                let i = (0..lanes).min_by_key(|&i| load[i]).unwrap_or(0);
                out[i].push(Job { target, batch, part: None });
                load[i] += n;
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

    #[test]
    fn big_keyed_tables_split_by_key_and_the_rest_balance() {
        let jobs = vec![
            (target("big", false), keyed(10_000)),
            (target("unique_too", true), keyed(6_000)),
            (target("small_a", false), keyed(100)),
            (target("small_b", false), keyed(90)),
        ];
        let lanes = plan(&jobs, 2);
        let names = |l: &[Job<'_>]| l.iter().map(|j| (j.target.table.clone(), j.part)).collect::<Vec<_>>();
        // The big one in both, in halves; the one with another unique index whole.
        for (i, lane) in lanes.iter().enumerate() {
            assert!(names(lane).contains(&("big".to_string(), Some((2, i as u64)))), "{:?}", names(lane));
        }
        let whole: Vec<_> = lanes.iter().flat_map(|l| names(l)).filter(|(t, _)| t == "unique_too").collect();
        assert_eq!(whole, vec![("unique_too".to_string(), None)]);
        // Every key of the big table is written exactly once.
        let Pending::Keyed(b) = &jobs[0].1 else { unreachable!() };
        let per_part: Vec<usize> = (0..2).map(|i| b.entries().keys().filter(|k| part_of(k, 2) == i).count()).collect();
        assert_eq!(per_part.iter().sum::<usize>(), 10_000);
        assert!(per_part.iter().all(|&n| n > 4_000), "{per_part:?}");
        // One session: everything whole, in one lane.
        let one = plan(&jobs, 1);
        assert!(one[0].iter().all(|j| j.part.is_none()) && one[0].len() == 4);
    }
}
