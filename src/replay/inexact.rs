//! Crossing a change the archive cannot reproduce (pure): the one-line
//! refusal that names the table, the reason and the window, or, when the
//! user accepted it (`--accept-inexact`), the warning line.
//!
//! The window of a mark ([`InexactMark`], recorded by `pgkeep stream`, see
//! [`crate::stream::inexact`]) runs from the commit of the transaction that
//! made the change to the consistent point of the next full backup: a
//! target at or after that point is replayed from that backup instead.
//!
//! A table the stream could not archive at all ([`UnarchivedWindow`], see
//! [`crate::stream::unarchived`]) is refused the same way by [`unarchived`],
//! for every target past the base inside its window; only a table image
//! taken once it was archived again brings it back (a later full backup
//! does not, while the table is still not archived).

use crate::error::{Error, ErrorKind, Result};
use crate::stream::inexact::InexactMark;
use crate::stream::unarchived::UnarchivedWindow;

use super::image::ImageWindows;
use super::{RecoveryTarget, ReplayPlan};

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
    let from = position(mark.lsn, mark.time);
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

/// Before replaying `plan`: every unarchived window of a restored table
/// that the replay would cross. When an image taken after the table was
/// archived again exists, that image's unseen cover makes the table wait
/// for it during the replay ([`ImageWindows`]); otherwise the restore is
/// refused naming the table, the reason and the window, or, accepted, the
/// warning lines are returned.
pub fn unarchived(plan: &ReplayPlan, images: &ImageWindows, only: Option<&[(String, String)]>) -> Result<Vec<String>> {
    let mut accepted = Vec::new();
    for w in plan.unarchived.iter().filter(|w| crosses(plan, w)) {
        if let Some(only) = only
            && !only.iter().any(|(s, n)| *s == w.schema && *n == w.name)
        {
            continue;
        }
        if w.until.is_some_and(|until| images.has_image_after(&w.table(), w.since, until)) {
            continue;
        }
        let at = |l: crate::repo::layout::Lsn, t| if l.0 == 0 { "the start of the stream".to_string() } else { position(l, t) };
        let until = match w.until {
            Some(u) => format!("{} (then a table image, none taken yet)", at(u, w.until_time)),
            None => "now (it is still not archived)".to_string(),
        };
        let line = format!("table {} is not archived from {} until {until}: {}", w.table(), at(w.since, w.since_time), w.reason);
        if plan.accept_inexact {
            tracing::warn!(table = %w.table(), "replaying past changes that were never archived (accepted): the table stays as the base backup has it");
            accepted.push(line);
            continue;
        }
        return Err(Error::new(
            ErrorKind::CheckFailed,
            format!("target {} is inside a window the archive cannot reproduce, so the restore stops (production untouched): {line}", plan.target),
        )
        .with_hint(
            "choose a target before that window, or restore the other tables with --table, or pass --accept-inexact to restore it as the base backup has it; \
             to archive the table, make the streaming role a member of its owner (or add it to the stream's publication as its owner)",
        ));
    }
    Ok(accepted)
}

/// `LSN x/y (time)`, or without the time when it is not known.
fn position(lsn: crate::repo::layout::Lsn, time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match time {
        Some(t) => format!("LSN {lsn} ({})", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
        None => format!("LSN {lsn}"),
    }
}

/// Whether a replay of `plan` crosses window `w`: the window is still open
/// after the base's consistent point, and the target is past both.
fn crosses(plan: &ReplayPlan, w: &UnarchivedWindow) -> bool {
    let from = plan.from();
    if w.until.is_some_and(|u| u <= from) {
        return false;
    }
    let start = w.since.max(from);
    match plan.target {
        RecoveryTarget::Latest => plan.archive_end() > start,
        RecoveryTarget::Lsn(l) => l > start,
        // The base was chosen for the target, so it is past the base; past
        // the window's start unless that is known to be later.
        RecoveryTarget::Time(t) => w.since <= from || w.since_time.is_none_or(|st| t > st),
    }
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
            unarchived: Vec::new(),
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

    fn window(since: u64, until: Option<u64>) -> UnarchivedWindow {
        UnarchivedWindow {
            schema: "public".into(),
            name: "t".into(),
            reason: "must be owner of table t".into(),
            since: Lsn(since),
            since_time: None,
            until: until.map(Lsn),
            until_time: None,
        }
    }

    fn check(plan: &ReplayPlan, only: Option<&[(String, String)]>) -> Result<Vec<String>> {
        unarchived(plan, &ImageWindows::new(plan.images.clone()), only)
    }

    #[test]
    fn unarchived_tables_are_refused_by_name_inside_their_window() {
        let base = |p: &ReplayPlan| p.from().0;
        let mut p = plan(false, None);
        let c = base(&p);
        // Open since before the base: any target past the base.
        p.unarchived = vec![window(0, None)];
        p.target = RecoveryTarget::Lsn(Lsn(c + 1));
        let line = check(&p, None).unwrap_err().user_line();
        assert!(line.contains("public.t") && line.contains("not archived") && line.contains("must be owner") && line.contains("still not archived"), "{line}");
        // The base itself is exact.
        p.target = RecoveryTarget::Lsn(Lsn(c));
        assert!(check(&p, None).is_ok());
        // Opened after the target, or closed before the base: not crossed.
        p.unarchived = vec![window(c + 10, None)];
        p.target = RecoveryTarget::Lsn(Lsn(c + 5));
        assert!(check(&p, None).is_ok());
        p.unarchived = vec![window(1, Some(c))];
        p.target = RecoveryTarget::Latest;
        assert!(check(&p, None).is_ok());
        // Closed after the base without an image: still refused (a later base does not help).
        p.unarchived = vec![window(1, Some(c + 2))];
        p.target = RecoveryTarget::Lsn(Lsn(c + 100));
        p.later_bases = vec![(Lsn(c + 50), "full_backup_y".into(), chrono::Utc::now())];
        assert!(check(&p, None).unwrap_err().user_line().contains("none taken yet"));
        // Other tables restored alone pass; accepted, a warning line.
        assert!(check(&p, Some(&[("public".to_string(), "u".to_string())])).unwrap().is_empty());
        p.accept_inexact = true;
        assert!(check(&p, None).unwrap()[0].contains("public.t"));
    }

    #[test]
    fn an_image_after_the_table_was_archived_again_brings_it_back() {
        let mut p = plan(false, None);
        let c = p.from().0;
        p.unarchived = vec![window(1, Some(c + 20))];
        p.target = RecoveryTarget::Lsn(Lsn(c + 100));
        let image = |at: u64| {
            let mut m: crate::repo::manifest::BackupManifest = crate::repo::manifest::tests::sample();
            m.kind = crate::repo::layout::BackupKind::TableImage;
            m.snapshot.consistent_lsn = Lsn(at);
            m.image = Some(crate::repo::manifest::ImageInfo { schema: "public".into(), name: "t".into(), covers: Vec::new() });
            m
        };
        // An image from before the table was archived again does not.
        p.images = vec![image(c + 10)];
        assert!(check(&p, None).is_err());
        p.images = vec![image(c + 10), image(c + 30)];
        assert!(check(&p, None).unwrap().is_empty());
        // Two windows of one table, each with its own image after it.
        p.unarchived.push(UnarchivedWindow { since: Lsn(c + 40), until: Some(Lsn(c + 50)), ..window(0, None) });
        assert!(check(&p, None).is_err(), "the second window has no image yet");
        p.images.push(image(c + 60));
        assert!(check(&p, None).unwrap().is_empty());
    }

    #[test]
    fn accepted_or_other_tables_pass() {
        assert!(crossing(&plan(true, None), &mark("public.t"), None).unwrap().unwrap().contains("public.t"));
        let only = [("public".to_string(), "u".to_string())];
        assert_eq!(crossing(&plan(false, None), &mark("public.t"), Some(&only)).unwrap(), None);
        assert!(crossing(&plan(false, None), &mark("*"), Some(&only)).is_err(), "an unknown table concerns every table");
    }
}
