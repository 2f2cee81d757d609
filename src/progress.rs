//! Progress counters: the library only counts (atomics updated by workers);
//! front ends decide how to show them — the CLI draws a bar on a TTY, a
//! daemon could export metrics. Nothing here prints.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a running backup or restore (and of its replay).
#[derive(Debug, Default)]
pub struct ProgressCounters {
    /// Raw bytes processed.
    pub bytes: AtomicU64,
    /// Rows processed.
    pub rows: AtomicU64,
    /// Tables finished.
    pub tables_done: AtomicU64,
    /// Tables in total (0 until known).
    pub tables_total: AtomicU64,
    /// Estimated raw bytes in total (0 until known).
    pub bytes_total: AtomicU64,
    /// A replay: stored bytes of the change segments applied so far.
    pub replay_bytes: AtomicU64,
    /// A replay: stored bytes of all its segments (0 until a replay starts).
    pub replay_bytes_total: AtomicU64,
    /// A replay: row changes applied so far.
    pub changes: AtomicU64,
}

/// A consistent-enough snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressView {
    /// Raw bytes processed.
    pub bytes: u64,
    /// Rows processed.
    pub rows: u64,
    /// Tables finished.
    pub tables_done: u64,
    /// Tables in total.
    pub tables_total: u64,
    /// Estimated raw bytes in total.
    pub bytes_total: u64,
    /// Replay: segment bytes applied.
    pub replay_bytes: u64,
    /// Replay: segment bytes in total.
    pub replay_bytes_total: u64,
    /// Replay: row changes applied.
    pub changes: u64,
}

impl ProgressCounters {
    /// Read all counters.
    pub fn view(&self) -> ProgressView {
        ProgressView {
            bytes: self.bytes.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            tables_done: self.tables_done.load(Ordering::Relaxed),
            tables_total: self.tables_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            replay_bytes: self.replay_bytes.load(Ordering::Relaxed),
            replay_bytes_total: self.replay_bytes_total.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }
}
