//! Crossing a change the archive cannot reproduce (pure): the one-line
//! refusal that names the table, the reason and the window, or, when the
//! user accepted it (`--accept-inexact`), the warning line.
//!
//! The window of a mark ([`InexactMark`], recorded by `pgkeep stream`, see
//! [`crate::stream::inexact`]) runs from the commit of the transaction that
//! made the change to the consistent point of the next full backup: a
//! target at or after that point is replayed from that backup instead.

use crate::error::{Error, ErrorKind, Result};
use crate::stream::inexact::InexactMark;

use super::ReplayPlan;

/// Replay is about to apply the transaction that made `mark`'s change.
/// `Ok(None)`: the table is not being restored. `Ok(Some(line))`: accepted,
/// the warning line. `Err`: refused.
pub fn crossing(plan: &ReplayPlan, mark: &InexactMark, only: Option<&[(String, String)]>) -> Result<Option<String>> {
    if mark.table != "*"
        && let Some(only) = only
        && !only.iter().any(|(s, n)| format!("{s}.{n}") == mark.table)
    {
        return Ok(None);
    }
    let table = if mark.table == "*" { "(every table)".to_string() } else { mark.table.clone() };
    let from = match mark.time {
        Some(t) => format!("LSN {} ({})", mark.lsn, t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
        None => format!("LSN {}", mark.lsn),
    };
    let until = match plan.later_bases.iter().find(|b| b.0 > mark.lsn) {
        Some((lsn, id, started)) => format!("LSN {lsn} (full backup {id}, started {})", started.format("%Y-%m-%d %H:%M:%S UTC")),
        None => "the next full backup (none yet; `pgkeep stream` takes one by itself)".to_string(),
    };
    let line = format!("table {table} is not exact from {from} until {until}: {}", mark.reason);
    if plan.accept_inexact {
        tracing::warn!(table = %mark.table, lsn = %mark.lsn, "replaying across a change the archive cannot reproduce (accepted)");
        return Ok(Some(line));
    }
    Err(Error::new(
        ErrorKind::CheckFailed,
        format!("target {} is inside a window the archive cannot reproduce, so the restore stops (production untouched): {line}", plan.target),
    )
    .with_hint("choose a target before the change or after the next full backup, or pass --accept-inexact to restore it anyway"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::RecoveryTarget;
    use crate::repo::layout::Lsn;

    fn plan(accept: bool, later: Option<u64>) -> ReplayPlan {
        let manifest: crate::repo::manifest::BackupManifest = crate::repo::manifest::tests::sample();
        ReplayPlan {
            base: manifest,
            stream_id: "s".into(),
            segments: Vec::new(),
            target: RecoveryTarget::Latest,
            later_bases: later.map(|l| (Lsn(l), "full_backup_x".to_string(), chrono::Utc::now())).into_iter().collect(),
            accept_inexact: accept,
            images: Vec::new(),
        }
    }

    fn mark(table: &str) -> InexactMark {
        InexactMark { table: table.into(), reason: "table rewrite (default value)".into(), lsn: Lsn(0x20), time: None }
    }

    #[test]
    fn refuses_naming_table_reason_and_window() {
        let e = crossing(&plan(false, Some(0x30)), &mark("public.t"), None).unwrap_err();
        let line = e.user_line();
        assert!(line.contains("public.t") && line.contains("0/20") && line.contains("0/30") && line.contains("full_backup_x"), "{line}");
        assert!(line.contains("table rewrite"), "{line}");
        let none = crossing(&plan(false, Some(0x10)), &mark("public.t"), None).unwrap_err().user_line();
        assert!(none.contains("none yet"), "a backup before the mark does not close it: {none}");
    }

    #[test]
    fn accepted_or_other_tables_pass() {
        assert!(crossing(&plan(true, None), &mark("public.t"), None).unwrap().unwrap().contains("public.t"));
        let only = [("public".to_string(), "u".to_string())];
        assert_eq!(crossing(&plan(false, None), &mark("public.t"), Some(&only)).unwrap(), None);
        assert!(crossing(&plan(false, None), &mark("*"), Some(&only)).is_err(), "an unknown table concerns every table");
    }
}
