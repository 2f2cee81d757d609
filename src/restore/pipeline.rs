//! The restore pipeline into an empty database: load, build and verify
//! overlapped, table by table, on `--jobs` workers.
//!
//! - **Load.** A table is loaded whole on one connection, in the
//!   transaction that truncates it, with `COPY … FREEZE`
//!   ([`load::load_table_whole`]): its rows are written frozen and its
//!   pages all-visible, so the read-back, the index builds and every later
//!   `VACUUM` write nothing to it, and no anti-wraparound vacuum follows
//!   the restore. The biggest tables go first. A table bigger than a
//!   worker's fair share (more than 1.25 × the data / `jobs`) would be a
//!   one-connection tail; it is loaded chunk by chunk on every worker
//!   instead, unfrozen.
//! - **Build.** As soon as a table's data is in, its indexes and
//!   constraints (pg_dump's INDEX and CONSTRAINT blocks, matched to their
//!   table by [`schema::block_table`]) become ready; blocks naming no table
//!   wait for every load.
//! - **Verify.** Also as soon as its data is in, the table is read back
//!   and compared with the manifest ([`verify::check_table`]), while its
//!   pages are still cached.
//!
//! Ready builds and verifications go before the next load, so what is left
//! when the last table is in is that table's own work. Every worker keeps
//! up to three sessions (load, build, read-back), opened when first needed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{Mutex, Notify};
use tracing::Instrument;

use crate::config::DbSettings;
use crate::error::{Error, Result};
use crate::progress::ProgressCounters;
use crate::replication::ReplicationConnection;
use crate::restore::load::{self, LoadTask};
use crate::restore::schema::{self, Block};
use crate::restore::source::BackupSource;
use crate::restore::verify::{self, VerifyReport};

/// Worker-seconds spent on each kind of work (they overlap in wall time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BusySeconds {
    /// Loading data.
    pub load: f64,
    /// Building indexes and constraints.
    pub build: f64,
    /// Reading tables back.
    pub verify: f64,
    /// Tables with rows loaded frozen (`COPY … FREEZE`).
    pub frozen_tables: usize,
    /// Tables with rows loaded some other way (split across workers, or not truncatable).
    pub unfrozen_tables: usize,
}

/// When the pipeline's stages ended, in seconds from its start.
#[derive(Debug, Clone, Default)]
pub struct PipelineTimes {
    /// The last table's data was in.
    pub loaded: f64,
    /// The last index or constraint was built.
    pub built: f64,
    /// The last table was read back.
    pub verified: f64,
    /// Worker-seconds per kind.
    pub busy: BusySeconds,
}

/// One unit of work.
enum Item {
    /// A whole table, frozen where possible.
    Whole(usize),
    /// Part of a table split across workers.
    Part(LoadTask),
    /// An index or constraint block.
    Build(Block),
    /// Read a table back.
    Verify(usize),
}

/// What is left to do, shared by the workers.
#[derive(Default)]
struct Board {
    /// Loads in order, biggest first.
    loads: VecDeque<Item>,
    /// Builds and read-backs whose table is in.
    ready: VecDeque<Item>,
    /// Builds by table, until the table is in.
    builds: HashMap<usize, Vec<Block>>,
    /// Builds naming no table of the restore: after every load.
    after_all: Vec<Block>,
    /// Parts still loading, per split table.
    parts_left: HashMap<usize, usize>,
    /// Load items taken and not finished.
    loading: usize,
}

impl Board {
    /// The next item, or `None` when nothing is available now.
    fn take(&mut self) -> Option<Item> {
        if let Some(item) = self.ready.pop_front() {
            return Some(item);
        }
        if let Some(item) = self.loads.pop_front() {
            self.loading += 1;
            return Some(item);
        }
        if self.loading == 0 && !self.after_all.is_empty() {
            self.ready.extend(self.after_all.drain(..).map(Item::Build));
            return self.ready.pop_front();
        }
        None
    }

    /// Whether an item may still become available.
    fn more_may_come(&self) -> bool {
        self.loading > 0 || !self.ready.is_empty() || !self.loads.is_empty() || !self.after_all.is_empty()
    }

    /// A load item finished: when its table is now in, its builds and its
    /// read-back become ready. Returns whether the table is in.
    fn loaded(&mut self, table: usize, part: bool) -> bool {
        self.loading -= 1;
        if part {
            let left = self.parts_left.get_mut(&table).expect("a split table has a part count");
            *left -= 1;
            if *left > 0 {
                return false;
            }
        }
        self.ready.extend(self.builds.remove(&table).unwrap_or_default().into_iter().map(Item::Build));
        self.ready.push_back(Item::Verify(table));
        true
    }
}

/// Everything the workers share.
struct Shared {
    source: Arc<BackupSource>,
    db: DbSettings,
    jobs: usize,
    preamble: Arc<String>,
    board: Mutex<Board>,
    wake: Notify,
    progress: Arc<ProgressCounters>,
    report: Mutex<VerifyReport>,
    times: Mutex<PipelineTimes>,
    start: Instant,
}

/// Load `selected` (indexes into the manifest's tables) into the empty
/// database `db`, building the `parallel` post-data blocks (whose sessions
/// run `preamble` first) and reading every table back as it goes. Returns
/// the per-table verification and the stage times. Foreign keys and the
/// other serial post-data blocks are the caller's, after this.
pub async fn run(
    source: &Arc<BackupSource>,
    db: &DbSettings,
    selected: &[usize],
    parallel: &[Block],
    preamble: &Arc<String>,
    jobs: usize,
    progress: &Arc<ProgressCounters>,
) -> Result<(VerifyReport, PipelineTimes)> {
    let jobs = jobs.max(1);
    let board = plan(source, selected, parallel, jobs)?;
    let shared = Arc::new(Shared {
        source: source.clone(),
        db: db.clone(),
        jobs,
        preamble: preamble.clone(),
        board: Mutex::new(board),
        wake: Notify::new(),
        progress: progress.clone(),
        report: Mutex::new(VerifyReport::default()),
        times: Mutex::new(PipelineTimes::default()),
        start: Instant::now(),
    });
    let mut set = tokio::task::JoinSet::new();
    for i in 0..jobs {
        set.spawn(worker(shared.clone()).instrument(tracing::info_span!("restore_worker", worker = i + 1)));
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined.map_err(|e| Error::internal(format!("restore worker crashed: {e}"))).and_then(|r| r) {
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(e);
        }
    }
    let report = std::mem::take(&mut *shared.report.lock().await);
    let times = std::mem::take(&mut *shared.times.lock().await);
    Ok((report, times))
}

/// The board at the start: loads biggest first (split tables' parts
/// first of all), builds waiting for their table.
fn plan(source: &BackupSource, selected: &[usize], parallel: &[Block], jobs: usize) -> Result<Board> {
    let m = &source.manifest;
    let size = |t: usize| -> u64 { m.tables[t].chunks.iter().map(|c| c.raw_size).sum() };
    let total: u64 = selected.iter().map(|&t| size(t)).sum();
    let share = total / jobs as u64;
    let mut order = selected.to_vec();
    order.sort_by_key(|&t| std::cmp::Reverse(size(t)));
    let mut board = Board::default();
    let mut wholes = VecDeque::new();
    for t in order {
        if jobs > 1 && size(t) > share + share / 4 && m.tables[t].chunks.len() > 1 {
            let parts = load::table_tasks(&m.tables[t], t)?;
            board.parts_left.insert(t, parts.len());
            board.loads.extend(parts.into_iter().map(Item::Part));
        } else {
            wholes.push_back(Item::Whole(t));
        }
    }
    board.loads.extend(wholes);
    let by_name: HashMap<(&str, &str), usize> = selected.iter().map(|&t| ((m.tables[t].schema.as_str(), m.tables[t].name.as_str()), t)).collect();
    for block in parallel {
        match schema::block_table(block).and_then(|(s, n)| by_name.get(&(s.as_str(), n.as_str())).copied()) {
            Some(t) => board.builds.entry(t).or_default().push(block.clone()),
            None => board.after_all.push(block.clone()),
        }
    }
    Ok(board)
}

/// A worker's sessions, opened when first needed.
#[derive(Default)]
struct Sessions {
    load: Option<crate::pg::Connection>,
    build: Option<crate::pg::Connection>,
    verify: Option<ReplicationConnection>,
}

async fn worker(shared: Arc<Shared>) -> Result<()> {
    let mut sessions = Sessions::default();
    loop {
        // Registered before looking, so a wake-up between the look and the wait is not lost.
        let wake = shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (item, more) = {
            let mut board = shared.board.lock().await;
            let item = board.take();
            (item, board.more_may_come())
        };
        match item {
            Some(item) => run_item(&shared, &mut sessions, item).await?,
            None if more => wake.await,
            None => return Ok(()),
        }
    }
}

/// Run one item and record what it unblocks.
async fn run_item(shared: &Shared, sessions: &mut Sessions, item: Item) -> Result<()> {
    let started = Instant::now();
    match item {
        Item::Whole(t) | Item::Part(LoadTask { table: t, .. }) => {
            let part = matches!(item, Item::Part(_));
            if sessions.load.is_none() {
                sessions.load = Some(load::load_session(&shared.db).await?);
            }
            let client = &sessions.load.as_ref().expect("opened above").client;
            let frozen = match item {
                Item::Part(task) => {
                    load::load_part(client, &shared.source, task, &shared.progress).await?;
                    false
                }
                _ => load::load_table_whole(client, &shared.source, t, &shared.progress).await?,
            };
            let in_now = shared.board.lock().await.loaded(t, part);
            let mut times = shared.times.lock().await;
            times.busy.load += started.elapsed().as_secs_f64();
            if in_now {
                times.loaded = shared.start.elapsed().as_secs_f64();
                match (frozen, shared.source.manifest.tables[t].chunks.is_empty()) {
                    (_, true) => {}
                    (true, false) => times.busy.frozen_tables += 1,
                    (false, false) => times.busy.unfrozen_tables += 1,
                }
                shared.progress.tables_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(times);
            shared.wake.notify_waiters();
        }
        Item::Build(block) => {
            if sessions.build.is_none() {
                sessions.build = Some(schema::build_session(&shared.db, shared.jobs, &shared.preamble).await?);
            }
            schema::run_parallel_block(&sessions.build.as_ref().expect("opened above").client, &block, None).await?;
            let mut times = shared.times.lock().await;
            times.busy.build += started.elapsed().as_secs_f64();
            times.built = shared.start.elapsed().as_secs_f64();
        }
        Item::Verify(t) => {
            if sessions.verify.is_none() {
                sessions.verify = Some(verify::verify_session(&shared.db).await?);
            }
            let conn = sessions.verify.as_mut().expect("opened above");
            let (rows, problem) = verify::check_table(conn, &shared.source.manifest.tables[t]).await?;
            shared.report.lock().await.add(rows, problem);
            let mut times = shared.times.lock().await;
            times.busy.verify += started.elapsed().as_secs_f64();
            times.verified = shared.start.elapsed().as_secs_f64();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(table: &str) -> Block {
        Block { kind: "INDEX".into(), sql: format!("CREATE INDEX i ON {table} USING btree (v);\n") }
    }

    #[test]
    fn a_table_in_readies_its_builds_then_its_read_back() {
        let mut board = Board::default();
        board.loads.extend([Item::Whole(0), Item::Whole(1)]);
        board.builds.insert(0, vec![block("public.a"), block("public.a")]);
        board.after_all.push(block("public.parent"));
        assert!(matches!(board.take(), Some(Item::Whole(0))));
        assert!(matches!(board.take(), Some(Item::Whole(1))));
        // Both loading: nothing now, more to come; the parent's index waits.
        assert!(board.take().is_none() && board.more_may_come());
        assert!(board.loaded(0, false));
        assert!(matches!(board.take(), Some(Item::Build(_))));
        assert!(matches!(board.take(), Some(Item::Build(_))));
        assert!(matches!(board.take(), Some(Item::Verify(0))));
        assert!(board.take().is_none() && board.more_may_come());
        assert!(board.loaded(1, false));
        assert!(matches!(board.take(), Some(Item::Verify(1))));
        // Every load done: the blocks naming no table.
        assert!(matches!(board.take(), Some(Item::Build(b)) if b.sql.contains("parent")));
        assert!(board.take().is_none() && !board.more_may_come());
    }

    #[test]
    fn a_split_table_is_in_when_its_last_part_is() {
        let mut board = Board::default();
        board.parts_left.insert(3, 2);
        board.loading = 2;
        assert!(!board.loaded(3, true));
        assert!(board.ready.is_empty());
        assert!(board.loaded(3, true));
        assert!(matches!(board.take(), Some(Item::Verify(3))));
    }
}
