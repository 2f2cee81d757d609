//! The checks behind `pgkeep verify` and the report they produce. Each check
//! ends as one [`CheckResult`] (per repository for the checks that read
//! stored objects): pass, warn, fail or skipped with the reason.
//! `commands::verify::run` calls them in order; the pieces live in
//! [`integrity`] (manifest, schema objects, objects and chunks of one
//! repository), [`scratch`] (`--deep`: a restore into a scratch database that
//! is always dropped) and [`production`] (`--compare-production` row counts).

pub mod chains;
pub mod images; // table images a point-in-time restore would use
pub mod integrity;
pub mod legacy; // legacy `*.dump.gz` archives
pub mod production;
pub mod scratch;

use serde::Serialize;

use crate::error::{Error, ErrorKind};

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything it looked at is as the manifest says.
    Pass,
    /// A finding that is not data loss (e.g. a damaged manifest with an intact copy).
    Warn,
    /// A problem: the backup, or this copy of it, cannot be trusted.
    Fail,
    /// Not run; `summary` says why.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// The checks, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Manifest envelope, checksum, version, copy; schema objects; table list.
    Format,
    /// Every object present with its size; every chunk's checksums and compression.
    FileIntegrity,
    /// Named tables present and not empty.
    CriticalTables,
    /// `--deep`: restored into a scratch database, counts and fingerprints equal.
    Completeness,
    /// `--compare-production`: live row counts against the manifest.
    Production,
    /// Backup age against `--max-age`.
    Metadata,
    /// Incremental chains and change segments.
    Chains,
}

impl Check {
    /// The check's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::FileIntegrity => "file-integrity",
            Check::CriticalTables => "critical-tables",
            Check::Completeness => "completeness",
            Check::Production => "production",
            Check::Metadata => "metadata",
            Check::Chains => "chains",
        }
    }
}

/// The outcome of one check (in one repository, for the stored-object checks).
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Which check.
    pub check: Check,
    /// The repository it looked at, for the checks run per repository.
    pub repository: Option<String>,
    /// Its conclusion.
    pub status: Status,
    /// One line: what was checked, or why it was skipped.
    pub summary: String,
    /// Every problem (failures) and finding (warnings), each naming its object.
    pub problems: Vec<String>,
    /// Further facts (per-table differences and the like), for `--json`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl CheckResult {
    /// A result with `status` and `summary`, no problems.
    pub fn new(check: Check, repository: Option<String>, status: Status, summary: impl Into<String>) -> Self {
        CheckResult { check, repository, status, summary: summary.into(), problems: Vec::new(), details: Vec::new() }
    }

    /// Fail when `problems` is not empty, else pass with `summary`.
    pub fn from_problems(check: Check, repository: Option<String>, summary: impl Into<String>, problems: Vec<String>) -> Self {
        let status = if problems.is_empty() { Status::Pass } else { Status::Fail };
        CheckResult { problems, ..CheckResult::new(check, repository, status, summary) }
    }

    /// The report line: `PASS file-integrity s3://b/p: 42 objects, 180 chunks`.
    pub fn line(&self) -> String {
        let place = self.repository.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        let text = match self.status {
            Status::Fail | Status::Warn if !self.problems.is_empty() => {
                const SHOWN: usize = 3;
                let mut t = self.problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
                if self.problems.len() > SHOWN {
                    t.push_str(&format!("; and {} more", self.problems.len() - SHOWN));
                }
                t
            }
            _ => self.summary.clone(),
        };
        format!("{} {}{place}: {}", self.status.label(), self.check.name(), text.replace('\n', " "))
    }
}

/// Everything `pgkeep verify` found about one backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerification {
    /// The backup checked.
    pub backup_id: String,
    /// Repositories that hold it and were checked.
    pub repositories: Vec<String>,
    /// The scratch database of `--deep` (dropped afterwards).
    pub scratch_database: Option<String>,
    /// One result per check (per repository where it applies).
    pub checks: Vec<CheckResult>,
    /// Whether no check failed.
    pub passed: bool,
}

impl BackupVerification {
    /// Results of the checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// The human report, one line per check per repository.
    pub fn render(&self) -> String {
        let mut out = format!("verify {}\n", self.backup_id);
        for c in &self.checks {
            out.push_str(&c.line());
            out.push('\n');
        }
        out
    }

    /// `Ok` when every check passed (warnings and skips allowed), else a
    /// one-line [`ErrorKind::CheckFailed`] error naming the failed checks.
    pub fn into_result(self) -> crate::Result<BackupVerification> {
        if self.passed {
            return Ok(self);
        }
        let failed: Vec<String> = self
            .failures()
            .map(|c| match &c.repository {
                Some(r) => format!("{} in {r}", c.check.name()),
                None => c.check.name().to_string(),
            })
            .collect();
        Err(Error::new(ErrorKind::CheckFailed, format!("backup {} failed verification: {}", self.backup_id, failed.join(", ")))
            .with_hint("the report above names each problem and object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_result() {
        let ok = CheckResult::from_problems(Check::FileIntegrity, Some("s3://b/p".into()), "42 objects, 180 chunks", vec![]);
        assert_eq!(ok.line(), "PASS file-integrity s3://b/p: 42 objects, 180 chunks");
        let bad = CheckResult::from_problems(Check::FileIntegrity, Some("/var/backups".into()), "x", (0..5).map(|i| format!("p{i}\nx")).collect());
        assert_eq!(bad.line(), "FAIL file-integrity /var/backups: p0 x; p1 x; p2 x; and 2 more");
        let skip = CheckResult::new(Check::Chains, None, Status::Skip, "none yet");
        assert_eq!(skip.line(), "SKIP chains: none yet");
        let v = BackupVerification {
            backup_id: "full_backup_20260101_000000".into(),
            repositories: vec![],
            scratch_database: None,
            passed: false,
            checks: vec![ok, bad, skip],
        };
        assert_eq!(v.render().lines().count(), 4);
        let e = v.into_result().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CheckFailed);
        assert!(e.user_line().contains("file-integrity in /var/backups"), "{}", e.user_line());
        assert!(!e.user_line().contains('\n'));
    }
}
