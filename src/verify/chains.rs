//! The chains check: change segments in each repository, per stream of the
//! backup's cluster, must be LSN-contiguous (each segment starts where the
//! previous one ended); the first and last segments are read to report the
//! archived window (LSNs and commit times) and whether it reaches back to the
//! backup's consistent point. Encrypted segments keep their metadata in
//! plaintext, so this works without a key; with keys
//! ([`check_chains_with_keys`]) the first and last segments are also
//! decrypted and fully decoded, so a wrong key or an edited segment fails.

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
                let problems = holes
                    .iter()
                    .map(|(a, b)| format!("stream {stream}: change segments missing for {a}..{b}"))
                    .collect();
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
            if keys.is_configured() {
                let mut problems = Vec::new();
                for key in [&first.2, &last.2] {
                    let decoded = match repo.get(key, None).await {
                        Ok(bytes) => crate::stream::segment::decode_with(&bytes, key, keys).map(|_| ()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = decoded {
                        problems.push(format!("stream {stream}: {}", e.user_line()));
                    }
                }
                if !problems.is_empty() {
                    out.push(CheckResult::from_problems(Check::Chains, Some(loc.clone()), "", problems));
                    continue;
                }
            }
            let from = time(&first.2).await.and_then(|t| t.0).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
            let to = time(&last.2).await.and_then(|t| t.1).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
            let covers = first.0 <= m.snapshot.consistent_lsn && m.snapshot.consistent_lsn <= last.1;
            out.push(CheckResult::new(
                Check::Chains,
                Some(loc.clone()),
                Status::Pass,
                format!(
                    "stream {stream}: {} contiguous segment(s), {}..{} (commits {} to {}){}",
                    segs.len(),
                    first.0,
                    last.1,
                    from.unwrap_or_else(|| "?".into()),
                    to.unwrap_or_else(|| "?".into()),
                    if covers { "; covers this backup's consistent point" } else { "; does not reach this backup's consistent point" }
                ),
            ));
        }
    }
    out
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
