//! Recovery targets: where a point-in-time restore stops (pure parsing and
//! the stop rule).
//!
//! - `latest`: the end of the archive;
//! - a time: RFC 3339 (`2026-11-24T10:15:00Z`, `…+01:00`) or
//!   `YYYY-MM-DD HH:MM:SS[.ffffff]` followed by an optional zone (`Z`,
//!   `UTC`, `+01`, `+0100`, `+01:00`); UTC when there is none;
//! - an LSN: `16/B374D848`.
//!
//! The rule follows PostgreSQL's `recovery_target_*` with
//! `recovery_target_inclusive = on`: transactions are replayed in commit
//! order, and replay stops before the first one committed *after* the
//! target time, or whose commit record starts after the target LSN.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::layout::Lsn;

/// Where a point-in-time restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryTarget {
    /// Every archived transaction.
    Latest,
    /// Transactions committed at or before this time.
    Time(DateTime<Utc>),
    /// Transactions whose commit record starts at or before this LSN.
    Lsn(Lsn),
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Time(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

impl RecoveryTarget {
    /// Parse `--target-time`: `latest` or a time.
    pub fn parse_time(s: &str) -> Result<RecoveryTarget> {
        if s.trim().eq_ignore_ascii_case("latest") {
            return Ok(RecoveryTarget::Latest);
        }
        parse_time(s).map(RecoveryTarget::Time)
    }

    /// Parse `--target-lsn`: `latest` or an LSN.
    pub fn parse_lsn(s: &str) -> Result<RecoveryTarget> {
        if s.trim().eq_ignore_ascii_case("latest") {
            return Ok(RecoveryTarget::Latest);
        }
        Ok(RecoveryTarget::Lsn(s.parse()?))
    }

    /// Whether a transaction committed at `commit_lsn` and `commit_time` is
    /// past the target (replay stops before it).
    pub fn is_past(&self, commit_lsn: Lsn, commit_time: Option<DateTime<Utc>>) -> bool {
        match self {
            RecoveryTarget::Latest => false,
            RecoveryTarget::Lsn(l) => commit_lsn > *l,
            // A commit time that cannot be represented is far in the future or past;
            // treat it as past the target only when it is not known to be before.
            RecoveryTarget::Time(t) => commit_time.is_none_or(|c| c > *t),
        }
    }
}

/// Parse a target time (see the module documentation).
pub fn parse_time(input: &str) -> Result<DateTime<Utc>> {
    let s = input.trim();
    let bad = || {
        Error::config(format!("`{input}` is not a target time"))
            .with_hint("use RFC 3339 (2026-11-24T10:15:00Z) or `YYYY-MM-DD HH:MM:SS` with an optional zone such as UTC or +01:00")
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    // `YYYY-MM-DD HH:MM:SS[.f]` (or with `T`), then an optional zone.
    let s = match s.as_bytes().get(10) {
        Some(b'T' | b't') => format!("{} {}", &s[..10], &s[11..]),
        _ => s.to_string(),
    };
    let (datetime, zone) = split_zone(&s);
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(datetime.trim(), f).ok())
        .ok_or_else(bad)?;
    let offset = parse_offset(zone.trim()).ok_or_else(bad)?;
    offset.from_local_datetime(&naive).single().map(|t| t.with_timezone(&Utc)).ok_or_else(bad)
}

/// Split `2026-11-24 10:15:00+01:00` / `… UTC` / `…Z` into date-time and zone.
fn split_zone(s: &str) -> (&str, &str) {
    // A zone starts after the time part: the first `+`, `-`, `Z` or space after position 10.
    let time_start = s.find(' ').map(|i| i + 1).unwrap_or(s.len());
    match s[time_start..].find(|c: char| c == '+' || c == '-' || c == ' ' || c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(time_start + i),
        None => (s, ""),
    }
}

/// `""`, `Z`, `UTC`, `GMT`, `+01`, `+0100`, `+01:00`, `-05:30`.
fn parse_offset(zone: &str) -> Option<FixedOffset> {
    if zone.is_empty() || ["z", "utc", "gmt"].contains(&zone.to_ascii_lowercase().as_str()) {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (digits[..2].parse::<i32>().ok()?, digits[2..].parse::<i32>().ok()?),
        _ => return None,
    };
    if h > 15 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn times_in_every_accepted_form() {
        let want = utc("2026-11-24T10:15:00Z");
        for s in [
            "2026-11-24T10:15:00Z",
            "2026-11-24T11:15:00+01:00",
            "2026-11-24 10:15:00",
            "2026-11-24 10:15:00 UTC",
            "2026-11-24 10:15:00Z",
            "2026-11-24 11:15:00+01",
            "2026-11-24 11:15:00 +0100",
            "2026-11-24 05:15:00-05:00",
            "2026-11-24 10:15",
            " 2026-11-24 10:15:00 ",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        assert_eq!(parse_time("2026-11-24 10:15:00.123456").unwrap(), utc("2026-11-24T10:15:00.123456Z"));
    }

    #[test]
    fn bad_times_name_the_input() {
        for s in ["yesterday", "2026-13-01 00:00:00", "2026-11-24 10:15:00 +99", "2026-11-24 10:15:00 Mars/Base"] {
            let e = parse_time(s).unwrap_err();
            assert!(e.user_line().contains(s.trim()), "{}", e.user_line());
        }
    }

    #[test]
    fn stop_rule_is_inclusive() {
        let t = utc("2026-11-24T10:15:00Z");
        let target = RecoveryTarget::Time(t);
        assert!(!target.is_past(Lsn(5), Some(t)));
        assert!(target.is_past(Lsn(5), Some(t + chrono::Duration::microseconds(1))));
        assert!(target.is_past(Lsn(5), None));
        let target = RecoveryTarget::Lsn(Lsn(100));
        assert!(!target.is_past(Lsn(100), None));
        assert!(target.is_past(Lsn(101), None));
        assert!(!RecoveryTarget::Latest.is_past(Lsn(u64::MAX), None));
        assert_eq!(RecoveryTarget::parse_time("latest").unwrap(), RecoveryTarget::Latest);
        assert_eq!(RecoveryTarget::parse_lsn("0/10").unwrap(), RecoveryTarget::Lsn(Lsn(16)));
    }
}
