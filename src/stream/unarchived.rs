//! Tables `pgkeep stream` cannot archive, and since when (docs/FORMAT.md
//! §5.4).
//!
//! A table's changes reach the archive only while it is in one of the
//! stream's publications. When the streaming role cannot put it there (on
//! a managed service, a table owned by a role the streaming role is not a
//! member of: `must be owner of table …`; or a table without a replica
//! identity when the insert-only publication could not be created), none
//! of its changes are archived, and a point-in-time restore past that
//! point would leave the table as its base backup had it: silently wrong.
//!
//! So each such table gets an *unarchived window* ([`UnarchivedWindow`]):
//! - it opens at the check before the one that first found the table
//!   outside the publications (the table may have changed since), or at
//!   `0/0` when that is the first check of a run (nothing known before);
//! - it closes at the check that finds the table in a publication (placed
//!   by pgkeep or by its owner) or gone. The stream then asks for a table
//!   image of it ([`super::autobackup`], `LateTable` since the window
//!   opened), which brings it back for replay.
//!
//! [`UnarchivedLog`] keeps the windows in every repository as
//! `stream-state/<system-id>-<slot>.unarchived.json`, rewritten when they
//! change and never emptied (a closed window still concerns replays from
//! bases before it). Replay refuses a target inside a window, naming the
//! table and the reason ([`crate::replay::inexact::unarchived`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::repo::layout::{Lsn, STREAM_STATE_PREFIX};
use crate::storage::Storage;

/// A server position and its clock (unknown: `None`).
pub type Point = (Lsn, Option<DateTime<Utc>>);

/// One table's stretch of WAL whose changes to it are not archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnarchivedWindow {
    /// The table's schema (unquoted).
    pub schema: String,
    /// The table (unquoted).
    pub name: String,
    /// Why it is not archived (the server's refusal, in one line).
    pub reason: String,
    /// Changes committed after this are not archived (`0/0`: any).
    pub since: Lsn,
    /// The server's clock at `since`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_time: Option<DateTime<Utc>>,
    /// Archived again for changes committed after this (`None`: still not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Lsn>,
    /// The server's clock at `until`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_time: Option<DateTime<Utc>>,
}

impl UnarchivedWindow {
    /// `schema.name`, as inexact marks and images name tables.
    pub fn table(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether the window is still open.
    pub fn is_open(&self) -> bool {
        self.until.is_none()
    }
}

/// The windows of one stream, and what a check changes in them (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows {
    /// Every window, oldest first.
    pub all: Vec<UnarchivedWindow>,
}

impl Windows {
    /// A check found `failing` (`(schema, name, reason)`) outside the
    /// publications; the check before was at `since`, and the server is at
    /// `now` after this one. Opens a window for each failing table without
    /// an open one, and closes the open windows of tables no longer failing
    /// (none when `now` is unknown). Returns the windows closed now.
    pub fn observe(&mut self, failing: &[(String, String, String)], since: Point, now: Option<Point>) -> Vec<UnarchivedWindow> {
        let mut closed = Vec::new();
        for w in self.all.iter_mut().filter(|w| w.is_open()) {
            let Some(now) = now else { break };
            if !failing.iter().any(|(s, n, _)| *s == w.schema && *n == w.name) {
                w.until = Some(now.0.max(w.since));
                w.until_time = now.1;
                closed.push(w.clone());
            }
        }
        for (schema, name, reason) in failing {
            if !self.all.iter().any(|w| w.is_open() && w.schema == *schema && w.name == *name) {
                self.all.push(UnarchivedWindow {
                    schema: schema.clone(),
                    name: name.clone(),
                    reason: reason.clone(),
                    since: since.0,
                    since_time: since.1,
                    until: None,
                    until_time: None,
                });
            }
        }
        closed
    }

    /// A change the archive does not show, found at `until`, made after
    /// `since` (a table that joined the publications late, a definition
    /// change found only in the catalog, an UPDATE or DELETE of a table
    /// without a replica identity): a closed window, so that only a table
    /// image taken after `until` (or a base after it) gets replay past it.
    pub fn record(&mut self, schema: &str, name: &str, reason: &str, since: Point, until: Point) {
        let w = UnarchivedWindow {
            schema: schema.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
            since: since.0,
            since_time: since.1,
            until: Some(until.0.max(since.0)),
            until_time: until.1,
        };
        if !self.all.iter().any(|o| o.schema == w.schema && o.name == w.name && o.since == w.since) {
            self.all.push(w);
        }
    }

    /// The open windows.
    pub fn open(&self) -> impl Iterator<Item = &UnarchivedWindow> {
        self.all.iter().filter(|w| w.is_open())
    }

    /// Merge windows read from several repositories: each once.
    pub(crate) fn merge(&mut self, more: Vec<UnarchivedWindow>) {
        for w in more {
            match self.all.iter_mut().find(|o| o.schema == w.schema && o.name == w.name && o.since == w.since) {
                // The same window, closed in one copy: closed.
                Some(o) if o.until.is_none() => *o = w,
                Some(_) => {}
                None => self.all.push(w),
            }
        }
        self.all.sort_by_key(|w| w.since);
    }
}

/// Where a stream's windows are kept: `stream-state/<base>.unarchived.json`
/// in every repository, `base` being `<system_identifier>-<slot>` (the same
/// for every epoch of the stream).
#[derive(Clone)]
pub struct UnarchivedLog {
    repos: Vec<Arc<dyn Storage>>,
    key: String,
}

impl UnarchivedLog {
    /// The log of stream `base` in `repos`.
    pub fn new(repos: &[Arc<dyn Storage>], base: &str) -> UnarchivedLog {
        UnarchivedLog { repos: repos.to_vec(), key: key(base) }
    }

    /// The log of the stream a replay reads (`stream_id` of any epoch).
    pub fn of_stream(repos: &[Arc<dyn Storage>], stream_id: &str) -> UnarchivedLog {
        UnarchivedLog::new(repos, base_of(stream_id))
    }

    /// Every window recorded in any repository. A repository that cannot
    /// be read, or holds an unreadable log, is an error naming the object:
    /// without it, a window could be missed and a replay be wrong.
    pub async fn load(&self) -> crate::error::Result<Windows> {
        let mut out = Windows::default();
        for repo in &self.repos {
            match repo.get(&self.key, None).await {
                Ok(bytes) => {
                    let windows: Vec<UnarchivedWindow> = serde_json::from_slice(&bytes)
                        .map_err(|e| crate::error::Error::corrupt(format!("{} in repository {} is unreadable: {e}", self.key, repo.location())))?;
                    out.merge(windows);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context(format!("cannot read {} in repository {}", self.key, repo.location()))),
            }
        }
        Ok(out)
    }

    /// Write `windows` to every repository. Returns whether every write
    /// succeeded; a failure is a warning (the caller writes again later).
    pub async fn save(&self, windows: &Windows) -> bool {
        let Ok(body) = serde_json::to_vec_pretty(&windows.all) else { return false };
        crate::repo::meta::put_all(&self.repos, &self.key, body.into(), "the tables that are not archived (again at the next check)").await
    }
}

/// The object key of stream `base`'s windows.
pub fn key(base: &str) -> String {
    format!("{STREAM_STATE_PREFIX}{base}.unarchived.json")
}

/// `<system_identifier>-<slot>` of a stream id (`base` or `base.N`; slot
/// names have no dots).
pub fn base_of(stream_id: &str) -> &str {
    stream_id.split('.').next().unwrap_or(stream_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> (String, String, String) {
        ("public".into(), name.into(), "must be owner of table".into())
    }

    #[test]
    fn windows_open_at_the_check_before_and_close_when_the_table_is_archived() {
        let mut w = Windows::default();
        assert!(w.observe(&[f("a")], (Lsn(0x10), None), Some((Lsn(0x20), None))).is_empty());
        assert_eq!(w.open().count(), 1);
        assert_eq!(w.all[0].since, Lsn(0x10));
        // Still failing: the same window, not a second one.
        assert!(w.observe(&[f("a"), f("b")], (Lsn(0x20), None), Some((Lsn(0x30), None))).is_empty());
        assert_eq!(w.all.len(), 2);
        assert_eq!(w.all[1].since, Lsn(0x20));
        // `a` placed: closed at the check that found it so.
        let closed = w.observe(&[f("b")], (Lsn(0x30), None), Some((Lsn(0x40), None)));
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].name.as_str(), closed[0].since, closed[0].until), ("a", Lsn(0x10), Some(Lsn(0x40))));
        // Failing again later: a new window, the closed one stays.
        w.observe(&[f("a"), f("b")], (Lsn(0x50), None), Some((Lsn(0x60), None)));
        assert_eq!(w.all.iter().filter(|x| x.name == "a").count(), 2);
        assert_eq!(w.open().count(), 2);
        // Position unknown: nothing closes.
        assert!(w.observe(&[], (Lsn(0x60), None), None).is_empty());
        assert_eq!(w.open().count(), 2);
    }

    #[test]
    fn a_change_the_archive_does_not_show_is_a_closed_window_once() {
        let mut w = Windows::default();
        w.record("public", "t", "joined late", (Lsn(5), None), (Lsn(9), None));
        w.record("public", "t", "joined late", (Lsn(5), None), (Lsn(12), None));
        assert_eq!(w.all.len(), 1);
        assert_eq!((w.all[0].since, w.all[0].until), (Lsn(5), Some(Lsn(9))));
        assert_eq!(w.open().count(), 0);
    }

    #[test]
    fn merge_keeps_each_window_once_and_prefers_closed() {
        let open =
            UnarchivedWindow { schema: "s".into(), name: "t".into(), reason: "r".into(), since: Lsn(5), since_time: None, until: None, until_time: None };
        let closed = UnarchivedWindow { until: Some(Lsn(9)), ..open.clone() };
        let mut w = Windows::default();
        w.merge(vec![open.clone()]);
        w.merge(vec![closed.clone(), open]);
        assert_eq!(w.all, vec![closed]);
    }

    #[test]
    fn base_of_any_epoch() {
        assert_eq!(base_of("7-pgkeep_app"), "7-pgkeep_app");
        assert_eq!(base_of("7-pgkeep_app.3"), "7-pgkeep_app");
        assert_eq!(key("7-s"), "stream-state/7-s.unarchived.json");
    }
}
