//! What a restore reports: [`RestoreReport`] and its [`PhaseTimes`]. Built
//! by `commands::restore` (and the legacy restore), read by notifications.

use serde::Serialize;

use crate::replay::ReplayReport;
use crate::restore::privileges::OwnershipReport;
use crate::restore::target::SwapOutcome;
use crate::restore::verify::VerifyReport;

/// Seconds spent in each phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseTimes {
    /// Pre-restore backup.
    pub pre_backup: f64,
    /// Roles and pre-data schema.
    pub schema: f64,
    /// Loading the data: until the last table's data is in. Index builds
    /// and verification of tables already in overlap with it (see `busy`).
    pub data: f64,
    /// Post-data (indexes, constraints, triggers…) and sequences: what they
    /// took after the data was in.
    pub indexes: f64,
    /// Verification: what it took after the data and indexes were in.
    pub verify: f64,
    /// Worker-seconds per kind of work, which overlap in wall time (restores
    /// into an empty database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<crate::restore::pipeline::BusySeconds>,
    /// Replay of archived changes (point in time).
    pub replay: f64,
    /// Swap.
    pub swap: f64,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup_id: String,
    /// Repository read from.
    pub repository: String,
    /// The database that now holds the restored data.
    pub restored_into: String,
    /// The pre-restore backup taken, if any.
    pub pre_restore_backup: Option<String>,
    /// The swap, if one happened.
    pub swap: Option<SwapOutcome>,
    /// Rows and raw bytes loaded.
    pub rows: u64,
    /// Raw bytes loaded.
    pub bytes: u64,
    /// Roles created on the server.
    pub roles_created: usize,
    /// Tables whose data was restored (all, or those asked for with --table).
    pub tables_restored: usize,
    /// Foreign keys skipped by a table-level restore, and event triggers and publications a non-superuser could not create.
    pub foreign_keys_skipped: Vec<String>,
    /// Objects whose owner the restoring role could not restore (it owns them
    /// instead), and default privileges it could not set.
    #[serde(default, skip_serializing_if = "OwnershipReport::is_empty")]
    pub ownership: OwnershipReport,
    /// Verification.
    pub verification: VerifyReport,
    /// The point-in-time replay, when a target was given (or by default for `latest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<ReplayReport>,
    /// Why `latest` restored only the backup: no change archive continues it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_replayed: Option<String>,
    /// Timings.
    pub seconds: PhaseTimes,
}

impl RestoreReport {
    /// Whether this restored a legacy archive (its repository names the `.dump.gz` object).
    pub fn is_legacy(&self) -> bool {
        crate::restore::legacy::archive_id(&self.repository).is_some()
    }

    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "restored {} from {} into database {}: {} rows, {} tables verified ({})",
            self.backup_id,
            self.repository,
            self.restored_into,
            self.rows,
            self.verification.tables_checked,
            if self.is_legacy() { "row counts equal the archive's" } else { "rows and fingerprints equal" }
        );
        if let Some(p) = &self.point_in_time {
            s.push_str(&format!("; {}", p.summary()));
        }
        if !self.ownership.is_empty() {
            s.push_str(&format!("; WARNING: {}", self.ownership.describe()));
        }
        if let Some(why) = &self.not_replayed {
            s.push_str(&format!("; restored to the backup's consistent point: {why}"));
        }
        if let Some(b) = &self.pre_restore_backup {
            s.push_str(&format!("; pre-restore backup {b}"));
        }
        if let Some(sw) = &self.swap {
            s.push_str(&format!("; {} session(s) terminated", sw.sessions_terminated));
            if let Some(old) = &sw.previous_renamed_to {
                s.push_str(&format!("; previous database kept as {old}"));
            }
            if let Some(older) = &sw.older_kept_as {
                s.push_str(&format!("; earlier {older} kept"));
            }
        }
        let t = &self.seconds;
        s.push_str(&format!(
            "; times: pre-backup {:.1}s, schema {:.1}s, data {:.1}s, indexes {:.1}s, verify {:.1}s, replay {:.1}s, swap {:.1}s",
            t.pre_backup, t.schema, t.data, t.indexes, t.verify, t.replay, t.swap
        ));
        s
    }
}
