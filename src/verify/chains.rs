//! The chains check: change segments in each repository, per stream of the
//! backup's cluster, must be LSN-contiguous (each segment starts where the
//! previous one ended), and every segment a restore of this backup would
//! replay — from the one holding its consistent point on — is read back
//! whole: its SHA-256 trailer, metadata and range. The first and last
//! segments report the archived window (LSNs and commit times) and whether
//! it reaches back to the backup's consistent point. Encrypted segments keep
//! their metadata in plaintext (authenticated with the payload), so this
//! works without a key; with keys ([`check_chains_with_keys`]) each segment
//! is also decrypted and fully decoded, so a wrong key or an edited segment
//! fails. A segment that continues parts of a large transaction has each of
//! them read back the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Check, CheckResult, Status};
use crate::crypto::Keyring;
use crate::repo::layout::{CHANGES_PREFIX, Lsn, parse_segment_key};
use crate::repo::manifest::BackupManifest;
use crate::storage::Storage;

/// Gaps in a sorted list of `[start, end)` ranges, as `(missing_from, missing_to)`.
pub fn gaps(ranges: &[(Lsn, Lsn)]) -> Vec<(Lsn, Lsn)> {
    ranges.windows(2).filter(|w| w[0].1 != w[1].0).map(|w| (w[0].1, w[1].0)).collect()
}

/// One result per repository (and stream of this cluster) holding segments.
pub async fn check_chains(repos: &[Arc<dyn Storage>], m: &BackupManifest) -> Vec<CheckResult> {
    check_chains_with_keys(repos, m, &Keyring::none()).await
}

/// [`check_chains`], decoding the first and last segment of each stream
/// in full (decrypting with `keys`) when `keys` holds a key.
pub async fn check_chains_with_keys(repos: &[Arc<dyn Storage>], m: &BackupManifest, keys: &Keyring) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for repo in repos {
        let loc = repo.location();
        let objects = match repo.list(CHANGES_PREFIX).await {
            Ok(o) => o,
            Err(e) => {
                out.push(CheckResult::from_problems(Check::Chains, Some(loc), "", vec![e.user_line()]));
                continue;
            }
        };
        let mut streams: BTreeMap<String, Vec<(Lsn, Lsn, String)>> = BTreeMap::new();
        for o in objects {
            if let Some((stream, start, end)) = parse_segment_key(&o.key) {
                streams.entry(stream).or_default().push((start, end, o.key));
            }
        }
        // Streams of other clusters may share a repository; only this cluster's count.
        let prefix = format!("{}-", m.server.system_identifier);
        streams.retain(|s, _| m.server.system_identifier.is_empty() || s.starts_with(&prefix));
        if streams.is_empty() {
            continue;
        }
        for (stream, mut segs) in streams {
            segs.sort();
            let ranges: Vec<(Lsn, Lsn)> = segs.iter().map(|s| (s.0, s.1)).collect();
            let holes = gaps(&ranges);
            if !holes.is_empty() {
                let problems = holes.iter().map(|(a, b)| format!("stream {stream}: change segments missing for {a}..{b}")).collect();
                out.push(CheckResult::from_problems(Check::Chains, Some(loc.clone()), "", problems));
                continue;
            }
            let (first, last) = (&segs[0], &segs[segs.len() - 1]);
            let time = |key: &str| {
                let repo = repo.clone();
                let key = key.to_string();
                async move {
                    let bytes = repo.get(&key, None).await.ok()?;
                    // The metadata line is plaintext even in encrypted segments: no key needed.
                    let meta = crate::stream::segment::decode_meta(&bytes, &key).ok()?;
                    Some((meta.first_commit_time, meta.last_commit_time))
                }
            };
            // Every segment a restore of this backup would replay (from the one holding its
            // consistent point on) is read back: SHA-256 trailer, metadata and range, and with
            // keys the whole payload decrypted and decoded.
            // An incremental replays its own range too, from its parent's end.
            let from = m.changes.as_ref().map_or(m.snapshot.consistent_lsn, |c| c.start_lsn);
            let from_index = segs.iter().position(|s| s.1 > from).unwrap_or(segs.len());
            let problems = check_segments(repo, &stream, &segs[from_index..], keys).await;
            if !problems.is_empty() {
                out.push(CheckResult::from_problems(Check::Chains, Some(loc.clone()), "", problems));
                continue;
            }
            let checked = segs.len() - from_index;
            let from = time(&first.2).await.and_then(|t| t.0).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
            let to = time(&last.2).await.and_then(|t| t.1).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
            let covers = first.0 <= m.snapshot.consistent_lsn && m.snapshot.consistent_lsn <= last.1;
            let mut result = CheckResult::new(
                Check::Chains,
                Some(loc.clone()),
                Status::Pass,
                format!(
                    "stream {stream}: {} contiguous segment(s), {}..{} (commits {} to {}), {checked} read back intact{}",
                    segs.len(),
                    first.0,
                    last.1,
                    from.unwrap_or_else(|| "?".into()),
                    to.unwrap_or_else(|| "?".into()),
                    if covers { "; covers this backup's consistent point" } else { "; does not reach this backup's consistent point" }
                ),
            );
            // Tables whose updates and deletes the archive does not hold (no replica identity).
            result.details.extend(m.warnings.iter().cloned());
            out.push(result);
        }
    }
    out
}

/// Read back `segs` of `stream` (key order): each must be intact, with the
/// range its key names; with keys, it must also decrypt and decode.
async fn check_segments(repo: &Arc<dyn Storage>, stream: &str, segs: &[(Lsn, Lsn, String)], keys: &Keyring) -> Vec<String> {
    use futures::StreamExt;
    let results: Vec<Option<String>> = futures::stream::iter(segs.iter().cloned())
        .map(|(start, end, key)| async move {
            let bytes = match repo.get(&key, None).await {
                Ok(b) => b,
                Err(e) => return Some(format!("stream {stream}: {}", e.user_line())),
            };
            let checked = if keys.is_configured() {
                crate::stream::segment::decode_with(&bytes, &key, keys).map(|s| s.meta)
            } else {
                crate::stream::segment::decode_meta(&bytes, &key)
            };
            match checked {
                Ok(meta) if meta.start_lsn == start && meta.end_lsn == end => check_parts(repo, stream, &key, &meta, keys).await,
                Ok(meta) => Some(format!("stream {stream}: segment {key} covers {}..{}, its key says {start}..{end}", meta.start_lsn, meta.end_lsn)),
                Err(e) => Some(format!("stream {stream}: {}", e.user_line())),
            }
        })
        .buffered(4)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// The parts a segment continues: each present, intact, and the one it asks for.
async fn check_parts(repo: &Arc<dyn Storage>, stream: &str, key: &str, meta: &crate::stream::segment::SegmentMeta, keys: &Keyring) -> Option<String> {
    use crate::stream::segment::part;
    for index in 1..=meta.parts {
        let part_key = crate::repo::layout::part_key(stream, meta.last_commit_lsn, index);
        let bytes = match repo.get(&part_key, None).await {
            Ok(b) => b,
            Err(e) => return Some(format!("stream {stream}: segment {key} needs transaction part {part_key}: {}", e.user_line())),
        };
        let checked = if keys.is_configured() { part::decode_with(&bytes, &part_key, keys).map(|p| p.meta) } else { part::decode_meta(&bytes, &part_key) };
        match checked {
            Ok(p) if p.commit_lsn == meta.last_commit_lsn && p.index == index && p.stream_id == stream => {}
            Ok(_) => return Some(format!("stream {stream}: transaction part {part_key} is not the part its key names")),
            Err(e) => return Some(format!("stream {stream}: {}", e.user_line())),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_found_between_ranges() {
        let r = [(Lsn(10), Lsn(20)), (Lsn(20), Lsn(35)), (Lsn(40), Lsn(50))];
        assert_eq!(gaps(&r), vec![(Lsn(35), Lsn(40))]);
        assert!(gaps(&r[..2]).is_empty());
        assert!(gaps(&[]).is_empty());
    }
}
