//! [`Event`]: what happened, in the words every channel uses.
//!
//! An event names the operation and its outcome, the database, the backup id,
//! the size and duration, a summary line and, for failures, the error with its
//! hint. It is built from a [`BackupReport`] or an
//! [`Error`], serializes to the JSON the generic webhook receives, and renders
//! the subject and the plain-text lines that Slack and email show.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::{BackupReport, human_bytes};
use crate::error::Error;

/// The pgkeep operation an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Operation {
    /// `pgkeep backup`.
    Backup,
    /// `pgkeep restore`.
    Restore,
    /// `pgkeep verify`.
    Verify,
    /// `pgkeep expire`.
    Expire,
    /// `pgkeep stream`.
    Stream,
    /// `pgkeep check`.
    Check,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Backup => "backup",
            Operation::Restore => "restore",
            Operation::Verify => "verify",
            Operation::Expire => "expire",
            Operation::Stream => "stream",
            Operation::Check => "check",
        })
    }
}

/// Whether the operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did what was asked.
    Success,
    /// It failed; the event carries the error.
    Failure,
}

/// One notification-worthy happening. Build it with the constructors, then
/// add what is known with the `with_*` methods.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The operation.
    pub operation: Operation,
    /// Success or failure.
    pub outcome: Outcome,
    /// The database backed up, restored or checked.
    pub database: Option<String>,
    /// The backup involved.
    pub backup_id: Option<String>,
    /// Bytes stored (backup) or loaded (restore).
    pub size_bytes: Option<u64>,
    /// Wall time in milliseconds.
    pub duration_ms: Option<u64>,
    /// The one-line summary the CLI prints on success.
    pub summary: Option<String>,
    /// The error's one line (message and cause, without the hint).
    pub error: Option<String>,
    /// What the user should do about the error.
    pub hint: Option<String>,
    /// The error's kind, e.g. `Connect`, `Storage`.
    pub error_kind: Option<String>,
    /// The machine pgkeep ran on.
    pub host: String,
    /// When the event was created.
    pub at: DateTime<Utc>,
}

impl Event {
    /// A bare event on this host, now.
    pub fn new(operation: Operation, outcome: Outcome) -> Self {
        Event {
            operation,
            outcome,
            database: None,
            backup_id: None,
            size_bytes: None,
            duration_ms: None,
            summary: None,
            error: None,
            hint: None,
            error_kind: None,
            host: crate::config::notify::local_hostname(),
            at: Utc::now(),
        }
    }

    /// A failed `operation`: error line, hint and kind taken from `error`.
    pub fn failure(operation: Operation, error: &Error) -> Self {
        let mut e = Event::new(operation, Outcome::Failure);
        let line = error.user_line();
        let hint = error.hint().map(str::to_string);
        // `user_line` ends with " (hint: …)"; the hint travels in its own field.
        let without_hint = match &hint {
            Some(h) => {
                let suffix = format!(" (hint: {})", h.replace(['\n', '\r'], " "));
                line.strip_suffix(&suffix).unwrap_or(&line).to_string()
            }
            None => line,
        };
        e.error = Some(without_hint);
        e.hint = hint;
        e.error_kind = Some(format!("{:?}", error.kind()));
        e
    }

    /// A finished backup: id, database, stored size, duration and summary.
    pub fn backup_succeeded(report: &BackupReport) -> Self {
        let m = &report.manifest;
        Event::new(Operation::Backup, Outcome::Success)
            .with_database(&m.database)
            .with_backup_id(m.backup_id.as_str())
            .with_size(m.stats.stored_bytes)
            .with_duration(Duration::from_millis(m.stats.duration_ms))
            .with_summary(report.summary_line())
    }

    /// Set the database.
    pub fn with_database(mut self, db: impl Into<String>) -> Self {
        self.database = Some(db.into());
        self
    }

    /// Set the backup id.
    pub fn with_backup_id(mut self, id: impl Into<String>) -> Self {
        self.backup_id = Some(id.into());
        self
    }

    /// Set the size in bytes.
    pub fn with_size(mut self, bytes: u64) -> Self {
        self.size_bytes = Some(bytes);
        self
    }

    /// Set the duration.
    pub fn with_duration(mut self, took: Duration) -> Self {
        self.duration_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Set the summary line.
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(one_line(&summary.into()));
        self
    }

    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        self.outcome == Outcome::Failure
    }

    /// The duration as text, e.g. `3m 2s`, rounded to whole seconds above a minute.
    pub fn duration_text(&self) -> Option<String> {
        self.duration_ms
            .map(|ms| if ms < 60_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { humantime::format_duration(Duration::from_secs(ms / 1000)).to_string() })
    }

    /// The size as text, e.g. `1.2 GiB`.
    pub fn size_text(&self) -> Option<String> {
        self.size_bytes.map(human_bytes)
    }

    /// One line: `backup FAILED on shop: cannot connect …` or `backup ok: 20250101T…`.
    pub fn headline(&self) -> String {
        let op = self.operation;
        match self.outcome {
            Outcome::Failure => {
                let on = self.database.as_deref().map(|d| format!(" on {d}")).unwrap_or_default();
                let err = self.error.as_deref().unwrap_or("unknown error");
                format!("{op} FAILED{on}: {}", truncate(err, 160))
            }
            Outcome::Success => match (&self.backup_id, &self.database) {
                (Some(id), _) => format!("{op} ok: {id}"),
                (None, Some(db)) => format!("{op} ok on {db}"),
                (None, None) => format!("{op} ok"),
            },
        }
    }

    /// The mail subject: `[pgkeep] ` and the headline.
    pub fn subject(&self) -> String {
        format!("[pgkeep] {}", self.headline())
    }

    /// Labelled facts in display order: (label, value), only those known.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("Operation", self.operation.to_string())];
        out.push(("Outcome", if self.is_failure() { "FAILED".into() } else { "ok".into() }));
        let mut push = |label, v: Option<String>| {
            if let Some(v) = v {
                out.push((label, v));
            }
        };
        push("Database", self.database.clone());
        push("Backup id", self.backup_id.clone());
        push("Size", self.size_text());
        push("Duration", self.duration_text());
        push("Host", Some(self.host.clone()));
        push("Time", Some(self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        out
    }

    /// The plain-text body of an email: headline, facts, error and hint, summary.
    pub fn text_body(&self) -> String {
        let mut body = format!("pgkeep {}\n\n", self.headline());
        for (label, value) in self.facts() {
            body.push_str(&format!("{:<10} {value}\n", format!("{label}:")));
        }
        if let Some(err) = &self.error {
            body.push_str(&format!("\nError: {err}\n"));
        }
        if let Some(hint) = &self.hint {
            body.push_str(&format!("Hint: {hint}\n"));
        }
        if let Some(s) = &self.summary {
            body.push_str(&format!("\n{s}\n"));
        }
        body
    }
}

/// Collapse line breaks so a value stays on one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn failure_splits_error_and_hint() {
        let err = Error::new(ErrorKind::Connect, "cannot connect to db.internal:5432")
            .with_source(std::io::Error::other("connection refused"))
            .with_hint("check DB_HOST");
        let e = Event::failure(Operation::Backup, &err).with_database("shop").with_duration(Duration::from_millis(1500));
        assert_eq!(e.error.as_deref(), Some("cannot connect to db.internal:5432: connection refused"));
        assert_eq!(e.hint.as_deref(), Some("check DB_HOST"));
        assert_eq!(e.error_kind.as_deref(), Some("Connect"));
        assert_eq!(e.subject(), "[pgkeep] backup FAILED on shop: cannot connect to db.internal:5432: connection refused");
        let body = e.text_body();
        assert!(body.contains("Database:  shop") && body.contains("Duration:  1.5s"), "{body}");
        assert!(body.contains("Hint: check DB_HOST"));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["operation"], "backup");
        assert_eq!(json["outcome"], "failure");
        assert_eq!(json["duration_ms"], 1500);
    }

    #[test]
    fn success_headline_and_texts() {
        let e = Event::new(Operation::Backup, Outcome::Success)
            .with_backup_id("20250101T000000Z")
            .with_size(3 << 30)
            .with_duration(Duration::from_secs(182))
            .with_summary("line one\nline two");
        assert_eq!(e.subject(), "[pgkeep] backup ok: 20250101T000000Z");
        assert_eq!(e.size_text().unwrap(), "3.0 GiB");
        assert_eq!(e.duration_text().unwrap(), "3m 2s");
        assert_eq!(e.summary.as_deref(), Some("line one line two"));
        assert_eq!(Event::new(Operation::Expire, Outcome::Success).headline(), "expire ok");
    }

    #[test]
    fn long_errors_are_cut_in_the_subject_only() {
        let err = Error::new(ErrorKind::Storage, "x".repeat(500));
        let e = Event::failure(Operation::Verify, &err);
        assert!(e.subject().chars().count() < 200);
        assert_eq!(e.error.as_ref().unwrap().len(), 500);
    }
}
