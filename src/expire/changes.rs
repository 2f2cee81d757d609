//! Expiry of change segments (`changes/`), the step of `pgkeep expire` after
//! the backups: a segment is removed once no kept backup in the same
//! repository can need it.
//!
//! A restore of a full backup replays transactions committed at or after its
//! consistent point; an incremental's range starts at its parent's end. So
//! per cluster (system identifier) the repository needs every segment that
//! ends after the *oldest* such point among its kept backups. The pure
//! [`plan`] keeps, per stream:
//!
//! - everything, when the repository holds no backup of that cluster that a
//!   change archive continues (nothing says what is still needed);
//! - every segment ending after the oldest needed point;
//! - always the newest segment (it is where `stream` resumes).
//!
//! Parts of large transactions ([`stale_parts`]) go once their transaction
//! committed before the oldest needed point: replay never reads those (they
//! are logged, not counted with the segments).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::repo::catalog::CatalogEntry;
use crate::repo::layout::{Lsn, parse_part_key, parse_segment_key};
use crate::repo::manifest::SnapshotMethod;
use crate::storage::ObjectMeta;

/// A stored segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentObject {
    /// Its key.
    pub key: String,
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Range start.
    pub start: Lsn,
    /// Range end.
    pub end: Lsn,
    /// Last modification, when known.
    pub modified: Option<DateTime<Utc>>,
}

impl SegmentObject {
    /// From a listing entry, when it is a segment key.
    pub(crate) fn from_meta(o: &ObjectMeta) -> Option<SegmentObject> {
        let (stream_id, start, end) = parse_segment_key(&o.key)?;
        Some(SegmentObject { key: o.key.clone(), stream_id, start, end, modified: o.modified })
    }

    fn system_identifier(&self) -> &str {
        self.stream_id.split_once('-').map_or("", |(s, _)| s)
    }
}

/// Per cluster, the oldest point a kept backup replays from.
pub(crate) fn oldest_needed(entries: &[CatalogEntry]) -> BTreeMap<String, Lsn> {
    let mut out: BTreeMap<String, Lsn> = BTreeMap::new();
    for e in entries {
        let CatalogEntry::Valid(m) = e else { continue };
        if m.snapshot.method != SnapshotMethod::ReplicationSlot || m.server.system_identifier.is_empty() {
            continue;
        }
        let from = m.changes.as_ref().map_or(m.snapshot.consistent_lsn, |c| c.start_lsn);
        let slot = out.entry(m.server.system_identifier.clone()).or_insert(from);
        *slot = (*slot).min(from);
    }
    out
}

/// The segments to remove (see the module documentation).
pub(crate) fn plan<'a>(segments: &'a [SegmentObject], needed: &BTreeMap<String, Lsn>) -> Vec<&'a SegmentObject> {
    let mut newest: BTreeMap<&str, Lsn> = BTreeMap::new();
    for s in segments {
        let e = newest.entry(s.stream_id.as_str()).or_insert(s.end);
        *e = (*e).max(s.end);
    }
    segments
        .iter()
        .filter(|s| match needed.get(s.system_identifier()) {
            Some(from) => s.end <= *from && newest.get(s.stream_id.as_str()) != Some(&s.end),
            None => false,
        })
        .collect()
}

/// The transaction parts to remove: those of transactions committed before
/// the oldest point a kept backup of their cluster replays from.
pub(crate) fn stale_parts<'a>(objects: &'a [ObjectMeta], needed: &BTreeMap<String, Lsn>) -> Vec<&'a ObjectMeta> {
    objects
        .iter()
        .filter(|o| {
            parse_part_key(&o.key).is_some_and(|(stream, commit, _)| {
                let system = stream.split_once('-').map_or("", |(s, _)| s);
                needed.get(system).is_some_and(|from| commit < *from)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_go_once_their_transaction_is_in_every_kept_backup() {
        use crate::repo::layout::part_key;
        let meta = |key: String| ObjectMeta { key, size: 1, modified: None };
        let objects = vec![meta(part_key("7-s", Lsn(20), 1)), meta(part_key("7-s", Lsn(30), 1)), meta(part_key("9-s", Lsn(1), 1))];
        let needed = BTreeMap::from([("7".to_string(), Lsn(25))]);
        let gone: Vec<&str> = stale_parts(&objects, &needed).iter().map(|o| o.key.as_str()).collect();
        assert_eq!(gone, [part_key("7-s", Lsn(20), 1)]);
    }

    fn seg(stream: &str, a: u64, b: u64) -> SegmentObject {
        SegmentObject { key: format!("{stream}/{a}-{b}"), stream_id: stream.into(), start: Lsn(a), end: Lsn(b), modified: None }
    }

    #[test]
    fn removes_only_what_no_kept_backup_needs() {
        let segs = vec![seg("7-s", 0, 10), seg("7-s", 10, 20), seg("7-s", 20, 30), seg("7-s", 30, 40), seg("9-s", 0, 5)];
        let needed = BTreeMap::from([("7".to_string(), Lsn(25))]);
        let gone: Vec<&str> = plan(&segs, &needed).iter().map(|s| s.key.as_str()).collect();
        // (20,30) holds the point 25; cluster 9 has no backup here: untouched.
        assert_eq!(gone, ["7-s/0-10", "7-s/10-20"]);
        // A point past the end never removes the newest segment.
        let needed = BTreeMap::from([("7".to_string(), Lsn(100))]);
        let gone: Vec<&str> = plan(&segs, &needed).iter().map(|s| s.key.as_str()).collect();
        assert_eq!(gone, ["7-s/0-10", "7-s/10-20", "7-s/20-30"]);
        assert!(plan(&segs, &BTreeMap::new()).is_empty());
    }
}
