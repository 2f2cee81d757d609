//! Expiry of per-run log files (`logs/`) and audit records (`audit/`), the
//! last step of `pgkeep expire`. Each has its own retention
//! (`log_retention_days`, default 90; `audit_retention_days`, default 365),
//! independent of the backups'.
//!
//! A record's age is the timestamp in its name (`<verb>_YYYYMMDD_HHMMSS.log`,
//! `YYYYMMDD_HHMMSS_<operation>_<nonce>.json`), else the store's modification
//! time; a record with neither is never removed. The pure [`plan`] picks
//! what goes; a retention of 0 days keeps everything (0 means "off", so a
//! typo never wipes the audit trail).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::storage::ObjectMeta;

/// Prefix of per-run log files (written by the CLI into the first local repository).
pub(crate) const LOGS_PREFIX: &str = "logs/";

/// When a log file or audit record was written: from its name, else its modification time.
pub(crate) fn written_at(o: &ObjectMeta) -> Option<DateTime<Utc>> {
    let name = o.key.rsplit('/').next().unwrap_or(&o.key);
    name_timestamp(name).or(o.modified)
}

/// The first `YYYYMMDD_HHMMSS` run of a file name, if any.
fn name_timestamp(name: &str) -> Option<DateTime<Utc>> {
    let b = name.as_bytes();
    (0..b.len().saturating_sub(14)).find_map(|i| {
        let s = name.get(i..i + 15)?;
        let digits = |r: std::ops::Range<usize>| s.as_bytes()[r].iter().all(u8::is_ascii_digit);
        if !(digits(0..8) && s.as_bytes()[8] == b'_' && digits(9..15)) {
            return None;
        }
        let t = NaiveDateTime::parse_from_str(s, "%Y%m%d_%H%M%S").ok()?;
        Some(Utc.from_utc_datetime(&t))
    })
}

/// The keys among `objects` older than `days` at `now`. `days == 0` keeps everything.
pub(crate) fn plan(objects: &[ObjectMeta], now: DateTime<Utc>, days: u32) -> Vec<String> {
    if days == 0 {
        return Vec::new();
    }
    let cutoff = now - chrono::Duration::days(days.into());
    objects.iter().filter(|o| !o.key.ends_with('/')).filter(|o| written_at(o).is_some_and(|t| t < cutoff)).map(|o| o.key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, modified: Option<DateTime<Utc>>) -> ObjectMeta {
        ObjectMeta { key: key.into(), size: 1, modified }
    }

    #[test]
    fn age_comes_from_the_name_then_the_modification_time() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap();
        let objects = vec![
            obj("logs/backup_20260101_020000.log", Some(now)),
            obj("logs/backup_20261201_020000.log", None),
            obj("audit/20250101_000000_restore_abcdef.json", None),
            obj("logs/odd-name.log", Some(now - chrono::Duration::days(100))),
            obj("logs/no-date.log", None),
        ];
        assert_eq!(plan(&objects, now, 90), vec!["logs/backup_20260101_020000.log", "audit/20250101_000000_restore_abcdef.json", "logs/odd-name.log"]);
        assert!(plan(&objects, now, 0).is_empty());
        assert_eq!(plan(&objects, now, 400), vec!["audit/20250101_000000_restore_abcdef.json"]);
    }
}
