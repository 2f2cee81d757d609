//! `pgkeep stream` as the command line runs it: the slot and publication
//! named after the database unless given, the segment limits and metrics
//! asked for, the full backups the stream takes by itself (on unless turned
//! off, each followed by the caller's step), then [`stream::run`] until
//! shutdown; or, with `--remove`, the slot and both publications dropped.
//! The archiving itself is the [`stream`] capability.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Settings;
use crate::error::Result;
use crate::stream::autobackup::{AfterBackup, AutoBackupOptions};
use crate::stream::{self, StreamOptions, StreamReport};

/// What `pgkeep stream` was asked to do, its flags parsed.
#[derive(Debug, Clone)]
pub struct StreamCommand {
    /// `--slot` (default `pgkeep_<database>`).
    pub slot: Option<String>,
    /// `--publication` (default `pgkeep_<database>`).
    pub publication: Option<String>,
    /// `--segment-seconds`.
    pub segment_seconds: u64,
    /// `--segment-bytes`.
    pub segment_bytes: u64,
    /// `--transaction-memory`.
    pub transaction_memory: u64,
    /// Full backups the stream takes by itself (off with `--no-auto-full-backup`).
    pub auto_full_backup: bool,
    /// `--full-backup-every`.
    pub full_backup_every: Option<Duration>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// Run after each automatic full backup (the CLI: retention, as after `pgkeep backup`).
    pub after_backup: Option<AfterBackup>,
}

/// The slot and publication: each `pgkeep_<database>` unless named.
fn names(settings: &Settings, slot: Option<String>, publication: Option<String>) -> (String, String) {
    let slot = slot.unwrap_or_else(|| stream::default_name(&settings.db.dbname));
    let publication = publication.unwrap_or_else(|| stream::default_name(&settings.db.dbname));
    (slot, publication)
}

/// Archive changes until `shutdown` resolves or a fatal error.
pub async fn run(settings: &Settings, cmd: StreamCommand, shutdown: impl Future<Output = ()>) -> Result<StreamReport> {
    // 1. The slot and publication.
    let (slot, publication) = names(settings, cmd.slot, cmd.publication);
    // 2. Segment limits and metrics.
    let mut opts = StreamOptions::new(slot, publication);
    opts.segment_seconds = cmd.segment_seconds;
    opts.segment_bytes = cmd.segment_bytes;
    opts.transaction_memory = cmd.transaction_memory;
    opts.metrics_addr = cmd.metrics_addr;
    // 3. The full backups the stream takes by itself, each followed by the caller's step.
    opts.auto_backup = match cmd.auto_full_backup {
        true => AutoBackupOptions::enabled(),
        false => AutoBackupOptions::default(),
    };
    opts.auto_backup.every = cmd.full_backup_every;
    opts.auto_backup.after_backup = cmd.after_backup;
    // 4. Archive until shutdown.
    stream::run(settings, &opts, shutdown).await
}

/// `--remove`: drop the slot (so the server stops retaining WAL for it) and
/// both publications. Returns what was removed.
pub async fn remove(settings: &Settings, slot: Option<String>, publication: Option<String>) -> Result<Vec<String>> {
    let (slot, publication) = names(settings, slot, publication);
    stream::remove(settings, &slot, &publication).await
}
