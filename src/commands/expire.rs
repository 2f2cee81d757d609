//! `pgkeep expire [--dry-run]`: remove backups, change segments, log files
//! and audit records past their repository's retention. The rules and their
//! application are the [`expire`](crate::expire) capability; this verb runs
//! it now and records the outcome in the audit trail.

use chrono::Utc;

use crate::config::Settings;
use crate::error::Result;
use crate::repo::lock::LockOptions;

pub use crate::expire::{
    DeleteFailure, DeleteReason, ExpireInput, ExpireOptions, ExpirePlan, ExpireReport, INCOMPLETE_GRACE, KeepReason, PlannedBackup, RepoExpireReport,
    delete_backup, plan_expire, run_with,
};

/// Expire every configured repository. Per-repository failures (a lock held
/// by a running backup, an unreachable store) are recorded in that
/// repository's report and do not stop the others; see [`ExpireReport::is_complete`].
pub async fn run(settings: &Settings, opts: &ExpireOptions) -> Result<ExpireReport> {
    // 1. Every repository, as of now, each under its exclusive lock (none for a dry run).
    let result = run_with(settings, opts, Utc::now(), &LockOptions::default()).await;
    // 2. The outcome in the audit trail; a dry run changed nothing and leaves no record.
    if !opts.dry_run {
        crate::commands::restore::audit(settings, "expire", &result).await;
    }
    result
}
