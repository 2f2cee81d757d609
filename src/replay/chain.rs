//! Which change segments a point-in-time restore replays: the archive of
//! this cluster's streams in every repository, the chain that reaches back
//! to the base backup's consistent point without a gap, and reading its
//! segments and the parts of their large transactions (from any repository
//! that has them) ahead of the replay.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::crypto::Keyring;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::layout::{CHANGES_PREFIX, Lsn, parse_segment_key, part_key};
use crate::storage::Storage;
use crate::stream::segment::part::TransactionPart;
use crate::stream::segment::{self, ChangeSegment};

/// One segment of a chain, and the repositories holding it.
#[derive(Debug, Clone)]
pub struct SegmentRef {
    /// Its key.
    pub key: String,
    /// Start of its range (the previous segment's end).
    pub start: Lsn,
    /// End of its range.
    pub end: Lsn,
    /// When it was stored (newest copy), when the store says.
    pub stored_at: Option<DateTime<Utc>>,
    /// Its size in bytes, as listed.
    pub size: u64,
    /// Repositories that have it, in configuration order.
    pub repos: Vec<usize>,
}

/// The archive of one stream: its segments sorted by start.
#[derive(Debug, Clone)]
pub struct StreamArchive {
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Segments, sorted by start LSN.
    pub segments: Vec<SegmentRef>,
}

impl StreamArchive {
    /// The contiguous run of segments that starts at or before `from` and
    /// contains it, as far as it goes without a gap. Empty when no segment
    /// reaches back to `from`.
    pub fn chain_from(&self, from: Lsn) -> &[SegmentRef] {
        let Some(first) = self.segments.iter().position(|s| s.start <= from && from <= s.end) else {
            return &[];
        };
        // A segment that ends exactly at `from` holds nothing after it; start with the next
        // one when it continues the chain.
        let mut first = first;
        while first + 1 < self.segments.len() && self.segments[first].end == from && self.segments[first + 1].start == from {
            first += 1;
        }
        let mut last = first;
        while last + 1 < self.segments.len() && self.segments[last + 1].start == self.segments[last].end {
            last += 1;
        }
        &self.segments[first..=last]
    }

    /// Where the first gap after `from` is, if the archive continues after one.
    pub fn gap_after(&self, from: Lsn) -> Option<(Lsn, Lsn)> {
        let chain = self.chain_from(from);
        let end = chain.last()?.end;
        self.segments.iter().find(|s| s.start > end).map(|s| (end, s.start))
    }
}

/// Every stream of cluster `system_identifier` in `repos`, merged.
pub async fn list_streams(repos: &[Arc<dyn Storage>], system_identifier: &str) -> Result<Vec<StreamArchive>> {
    let mut streams: BTreeMap<String, BTreeMap<(Lsn, Lsn), SegmentRef>> = BTreeMap::new();
    let prefix = format!("{system_identifier}-");
    let mut problems = Vec::new();
    for (i, repo) in repos.iter().enumerate() {
        let objects = match repo.list(CHANGES_PREFIX).await {
            Ok(o) => o,
            Err(e) => {
                problems.push(e.user_line());
                continue;
            }
        };
        for o in objects {
            let Some((stream, start, end)) = parse_segment_key(&o.key) else { continue };
            if !stream.starts_with(&prefix) {
                continue;
            }
            let seg = streams.entry(stream).or_default().entry((start, end)).or_insert_with(|| SegmentRef {
                key: o.key.clone(),
                start,
                end,
                stored_at: None,
                size: o.size,
                repos: Vec::new(),
            });
            seg.repos.push(i);
            seg.stored_at = seg.stored_at.max(o.modified);
        }
    }
    if streams.is_empty() && !problems.is_empty() {
        return Err(Error::new(ErrorKind::Storage, format!("cannot list change segments: {}", problems.join("; "))));
    }
    Ok(streams.into_iter().map(|(stream_id, segs)| StreamArchive { stream_id, segments: segs.into_values().collect() }).collect())
}

/// Read and check one segment, from the first repository that has a good
/// copy; `keys` open encrypted segments (docs/FORMAT.md §8.5).
pub async fn fetch_segment(repos: &[Arc<dyn Storage>], seg: &SegmentRef, keys: &Arc<Keyring>) -> Result<ChangeSegment> {
    let mut last_err = None;
    for &i in &seg.repos {
        let repo = &repos[i];
        let what = format!("{} in {}", seg.key, repo.location());
        let bytes = match repo.get(&seg.key, None).await {
            Ok(b) => b,
            Err(e) => {
                last_err = Some(e.context(format!("cannot read change segment {what}")));
                continue;
            }
        };
        let keys = keys.clone();
        let decoded = tokio::task::spawn_blocking(move || segment::decode_with(&bytes, &what, &keys))
            .await
            .map_err(|e| Error::internal(format!("segment decoder task failed: {e}")))?;
        match decoded {
            Ok(s) if s.meta.start_lsn == seg.start && s.meta.end_lsn == seg.end => return Ok(s),
            Ok(s) => {
                last_err = Some(Error::corrupt(format!(
                    "change segment {} in {} covers {}..{}, its key says {}..{}",
                    seg.key,
                    repo.location(),
                    s.meta.start_lsn,
                    s.meta.end_lsn,
                    seg.start,
                    seg.end
                )))
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::new(ErrorKind::NotFound, format!("change segment {} is in no repository", seg.key))))
}

/// Read and check part `index` of the transaction of `stream_id` committed
/// at `commit_lsn`, the last one of segment `seg`, from the first of the
/// segment's repositories that has a good copy.
pub async fn fetch_part(
    repos: &[Arc<dyn Storage>],
    seg: &SegmentRef,
    stream_id: &str,
    commit_lsn: Lsn,
    index: u32,
    keys: &Arc<Keyring>,
) -> Result<TransactionPart> {
    let key = part_key(stream_id, commit_lsn, index);
    let mut last_err = None;
    for &i in &seg.repos {
        let repo = &repos[i];
        let what = format!("{key} in {}", repo.location());
        let bytes = match repo.get(&key, None).await {
            Ok(b) => b,
            Err(e) => {
                last_err = Some(e.context(format!("cannot read transaction part {what} (segment {} needs it)", seg.key)));
                continue;
            }
        };
        let keys = keys.clone();
        let w = what.clone();
        let decoded = tokio::task::spawn_blocking(move || segment::part::decode_with(&bytes, &w, &keys))
            .await
            .map_err(|e| Error::internal(format!("part decoder task failed: {e}")))?;
        match decoded {
            Ok(p) if p.meta.stream_id == stream_id && p.meta.commit_lsn == commit_lsn && p.meta.index == index => return Ok(p),
            Ok(p) => {
                last_err = Some(Error::corrupt(format!(
                    "transaction part {what} says it is part {} of the transaction committed at {} of stream {}",
                    p.meta.index, p.meta.commit_lsn, p.meta.stream_id
                )))
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::new(ErrorKind::NotFound, format!("transaction part {key} is in no repository"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: u64, b: u64) -> SegmentRef {
        SegmentRef { key: format!("{a}-{b}"), start: Lsn(a), end: Lsn(b), stored_at: None, size: 1, repos: vec![0] }
    }

    #[test]
    fn chain_starts_at_the_segment_holding_the_point_and_stops_at_a_gap() {
        let s = StreamArchive { stream_id: "x".into(), segments: vec![seg(10, 20), seg(20, 30), seg(30, 40), seg(50, 60)] };
        let keys = |c: &[SegmentRef]| c.iter().map(|s| s.start.0).collect::<Vec<_>>();
        assert_eq!(keys(s.chain_from(Lsn(25))), vec![20, 30]);
        assert_eq!(keys(s.chain_from(Lsn(10))), vec![10, 20, 30]);
        assert_eq!(keys(s.chain_from(Lsn(20))), vec![20, 30]);
        assert!(s.chain_from(Lsn(5)).is_empty());
        assert!(s.chain_from(Lsn(45)).is_empty());
        assert_eq!(s.gap_after(Lsn(25)), Some((Lsn(40), Lsn(50))));
        assert_eq!(s.gap_after(Lsn(55)), None);
    }
}
