//! The clusters [`PgCluster::shared`] hands out: one per test file, as when
//! every file was its own test binary, each stopped once the run has moved
//! past its file, so that a run does not keep every file's cluster (its
//! memory, its databases and WAL on disk) until the binary exits.
//!
//! libtest starts tests in name order (`file::test`), so once a test of a
//! later file has asked for a cluster, no new test of an earlier file
//! starts: an earlier file's cluster is stopped as soon as no thread that
//! asked for it is alive (each thread's registrations are given back by a
//! thread-local destructor when it ends, after its test and that test's
//! runtime). A cluster asked for again after that (another order, or a file
//! whose tests call it late) is a new one. Threads not named after a test
//! stop nothing, so their clusters stay until the binary exits.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::postgres::PgCluster;

/// Every file's cluster, and how far the run has got.
struct Clusters {
    by_file: BTreeMap<&'static str, FileCluster>,
    /// The latest test module (`name::`, in libtest's order) that asked for a cluster.
    latest_module: String,
}

/// One file's cluster.
#[derive(Default)]
struct FileCluster {
    running: Option<&'static PgCluster>,
    /// Live threads that asked for it.
    users: usize,
    /// The latest test module that asked for it; empty when no thread named one.
    module: String,
}

impl Clusters {
    /// Stop the clusters no live thread asked for, of files the run has moved past.
    fn stop_idle(&mut self) {
        let latest = &self.latest_module;
        for file in self.by_file.values_mut() {
            if file.users == 0
                && !file.module.is_empty()
                && file.module < *latest
                && let Some(cluster) = file.running.take()
            {
                cluster.stop_shared();
            }
        }
    }
}

fn clusters() -> MutexGuard<'static, Clusters> {
    static CLUSTERS: Mutex<Clusters> = Mutex::new(Clusters { by_file: BTreeMap::new(), latest_module: String::new() });
    CLUSTERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The files this thread asked for clusters of, given back when it ends.
struct Registrations(RefCell<Vec<&'static str>>);

impl Drop for Registrations {
    fn drop(&mut self) {
        let mut clusters = clusters();
        for file in self.0.borrow().iter() {
            if let Some(f) = clusters.by_file.get_mut(file) {
                f.users -= 1;
            }
        }
        clusters.stop_idle();
    }
}

thread_local! {
    static REGISTERED: Registrations = const { Registrations(RefCell::new(Vec::new())) };
}

/// The running cluster of `file`, started if there is none, registered for
/// this thread. Holds the lock while a cluster starts (a second or two).
pub(super) fn for_file(file: &'static str) -> &'static PgCluster {
    // libtest names a test's thread after the test: `module::…::test`.
    let module = std::thread::current().name().and_then(|n| n.split_once("::")).map(|(m, _)| format!("{m}::"));
    let mut clusters = clusters();
    let entry = clusters.by_file.entry(file).or_default();
    let first_ask = REGISTERED
        .try_with(|r| {
            let mut files = r.0.borrow_mut();
            let first = !files.contains(&file);
            if first {
                files.push(file);
            }
            first
        })
        .unwrap_or(false);
    if first_ask {
        entry.users += 1;
    }
    if let Some(m) = &module
        && *m > entry.module
    {
        entry.module = m.clone();
    }
    let cluster = *entry.running.get_or_insert_with(|| Box::leak(Box::new(PgCluster::start())));
    if let Some(m) = module
        && m > clusters.latest_module
    {
        clusters.latest_module = m;
    }
    clusters.stop_idle();
    cluster
}
