//! Table images in a replay: where the archive cannot reproduce a table,
//! `pgkeep stream` took a copy of it at a known LSN
//! ([`BackupKind::TableImage`](crate::repo::layout::BackupKind::TableImage),
//! docs/FORMAT.md §5.3), and replay puts that copy in place of the table.
//!
//! The rule, for a table `T` and an image of it consistent at `C` (it
//! holds exactly the transactions committed before `C`):
//!
//! 1. replay crosses a change to `T` the archive cannot reproduce (an
//!    inexact mark at `L`, or an image cover from before the base): if an
//!    image of `T` with `C > L` exists, `T` is *pending*, and its row
//!    changes are left out from there (they are in the image);
//! 2. before the first transaction committed at or after `C`, or at the
//!    end of the replay when every transaction before `C` was applied,
//!    the image replaces `T` ([`ImageHook`]: its rows, and its definition
//!    where that differs), and `T`'s changes are replayed again;
//! 3. a target before `C` leaves `T` pending: the restore is refused,
//!    naming the table and the window from `L` to `C`, unless the user
//!    accepted inexact tables (`--accept-inexact`; then `T`'s changes
//!    were applied as archived, and the line is a warning).
//!
//! This module keeps that bookkeeping (pure); [`super::run`] drives it, and
//! the caller's [`ImageHook`] does the database work (it lives with
//! restore, which reads backups).

use std::future::Future;
use std::pin::Pin;

use tokio_postgres::Client;

use super::RecoveryTarget;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::layout::Lsn;
use crate::repo::manifest::BackupManifest;
use crate::stream::inexact::InexactMark;

/// Puts a table image in place of its table, on the replay's session
/// (outside any transaction; the hook commits or rolls back its own).
/// Returns one line for the report.
pub trait ImageHook: Send + Sync {
    /// Replace the image's table in the database `client` is connected to.
    fn put_in_place<'a>(&'a self, client: &'a Client, image: &'a BackupManifest) -> Pin<Box<dyn Future<Output = Result<String>> + Send + 'a>>;
}

/// Whether `image` is a table image a replay from `base` can use: the
/// same database and cluster, taken with a slot snapshot, consistent after
/// the base.
pub fn continues(image: &BackupManifest, base: &BackupManifest) -> bool {
    image.kind == crate::repo::layout::BackupKind::TableImage
        && image.image.is_some()
        && image.database == base.database
        && image.server.system_identifier == base.server.system_identifier
        && image.snapshot.method == crate::repo::manifest::SnapshotMethod::ReplicationSlot
        && image.snapshot.consistent_lsn > base.snapshot.consistent_lsn
}

/// A table waiting for its image.
#[derive(Debug, Clone, PartialEq)]
struct Waiting {
    /// Index into the plan's images.
    image: usize,
    /// The change that made it wait (table, reason, where).
    mark: InexactMark,
}

/// The tables of one replay that wait for an image.
#[derive(Debug, Default)]
pub struct ImageWindows {
    images: Vec<BackupManifest>,
    waiting: Vec<Waiting>,
    /// Images whose unseen covers were taken into account (once each).
    unseen_taken: Vec<usize>,
}

impl ImageWindows {
    /// The images of a plan, oldest first (consistent point after the base).
    pub fn new(mut images: Vec<BackupManifest>) -> ImageWindows {
        images.sort_by_key(|m| m.snapshot.consistent_lsn);
        ImageWindows { images, waiting: Vec::new(), unseen_taken: Vec::new() }
    }

    /// Unseen covers from before the base (`from`): a table that joined
    /// the publications late, or changed with nothing in the archive
    /// showing it, is not exact in the base. Returns the tables to skip.
    pub fn at_start(&mut self, from: Lsn, skip: bool) -> Vec<(String, String)> {
        self.unseen_where(|lsn, _| lsn <= from, from, skip)
    }

    /// Replay is about to apply a transaction committed at `position`:
    /// tables with an unseen change since before it wait for their image
    /// from here. Returns the tables to skip.
    pub fn reach(&mut self, position: Lsn, skip: bool) -> Vec<(String, String)> {
        self.unseen_where(|lsn, _| lsn <= position, Lsn(0), skip)
    }

    /// At the end of a replay to `target`: as [`ImageWindows::reach`], for
    /// the target itself (an unseen change whose clock is unknown waits).
    pub fn reach_at_end(&mut self, target: RecoveryTarget, archive_end: Lsn) {
        self.unseen_where(
            |lsn, time| match target {
                RecoveryTarget::Latest => lsn <= archive_end,
                RecoveryTarget::Lsn(l) => lsn <= l,
                RecoveryTarget::Time(t) => time.is_none_or(|x| x <= t),
            },
            Lsn(0),
            false,
        );
    }

    /// Unseen covers of images after `after` for which `hit(lsn, time)`:
    /// their tables wait (once).
    fn unseen_where(&mut self, hit: impl Fn(Lsn, Option<chrono::DateTime<chrono::Utc>>) -> bool, after: Lsn, skip: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in 0..self.images.len() {
            let Some(info) = self.images[i].image.clone() else { continue };
            if self.unseen_taken.contains(&i) || self.images[i].snapshot.consistent_lsn <= after || self.waiting.iter().any(|w| w.mark.table == info.table()) {
                continue;
            }
            if let Some(c) = info.covers.iter().find(|c| c.unseen && hit(c.lsn, c.time)) {
                self.unseen_taken.push(i);
                let mark = InexactMark { table: info.table(), reason: c.reason.clone(), lsn: c.lsn, time: c.time };
                out.extend(self.wait(i, mark, skip));
            }
        }
        out
    }

    /// Replay crosses `mark`: when an image of its table comes later, the
    /// table waits for it (returns the tables to skip, maybe none); `None`
    /// when no image closes the window.
    pub fn crossing(&mut self, mark: &InexactMark, skip: bool) -> Option<Vec<(String, String)>> {
        if let Some(w) = self.waiting.iter().find(|w| w.mark.table == mark.table) {
            // Already waiting for an image after this change too?
            return (self.images[w.image].snapshot.consistent_lsn > mark.lsn).then(Vec::new);
        }
        let i = self.images.iter().position(|m| {
            m.snapshot.consistent_lsn > mark.lsn
                && m.image.as_ref().is_some_and(|info| info.table() == mark.table || m.tables.iter().any(|t| format!("{}.{}", t.schema, t.name) == mark.table))
        })?;
        Some(self.wait(i, mark.clone(), skip))
    }

    /// Whether an image of `table` consistent at or after `archived_again`
    /// (and after `since`) exists: it brings back a table whose changes
    /// from `since` are not in the archive (its unseen cover makes the
    /// table wait for it, [`ImageWindows::reach`]).
    pub fn has_image_after(&self, table: &str, since: Lsn, archived_again: Lsn) -> bool {
        self.images.iter().any(|m| {
            let c = m.snapshot.consistent_lsn;
            c >= archived_again && c > since && m.image.as_ref().is_some_and(|info| info.table() == table)
        })
    }

    fn wait(&mut self, image: usize, mark: InexactMark, skip: bool) -> Vec<(String, String)> {
        // Put in place once: its unseen covers must not make the table wait for it again.
        if !self.unseen_taken.contains(&image) {
            self.unseen_taken.push(image);
        }
        self.waiting.push(Waiting { image, mark });
        if skip { self.tables_of(image) } else { Vec::new() }
    }

    /// The tables whose changes an image stands for: the table asked for
    /// and the leaf tables it holds.
    pub fn tables_of(&self, image: usize) -> Vec<(String, String)> {
        let m = &self.images[image];
        let mut out: Vec<(String, String)> = m.tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
        if let Some(info) = &m.image
            && !out.iter().any(|(s, n)| *s == info.schema && *n == info.name)
        {
            out.push((info.schema.clone(), info.name.clone()));
        }
        out
    }

    /// Images due once replay has applied every transaction committed
    /// before `position`: removed from waiting, oldest first.
    pub fn due(&mut self, position: Lsn) -> Vec<usize> {
        self.due_where(|m| m.snapshot.consistent_lsn <= position)
    }

    /// Images due at the end of a replay to `target` that stopped at
    /// `archive_end` (every archived transaction up to the target applied):
    /// an image holds only transactions at or before the target — for an
    /// LSN, its consistent point is not after it; for a time, the server
    /// took its snapshot by then (an image may hold transactions the
    /// archive never saw, such as those of a table not yet published, so
    /// the next archived commit proves nothing); for `latest`, the archive
    /// reaches its consistent point.
    pub fn due_at_end(&mut self, target: RecoveryTarget, archive_end: Lsn) -> Vec<usize> {
        self.due_where(|m| {
            let c = m.snapshot.consistent_lsn;
            c <= archive_end
                && match target {
                    RecoveryTarget::Latest => true,
                    RecoveryTarget::Lsn(l) => c <= l,
                    RecoveryTarget::Time(t) => m.snapshot.server_time.is_some_and(|st| st <= t),
                }
        })
    }

    fn due_where(&mut self, ready: impl Fn(&BackupManifest) -> bool) -> Vec<usize> {
        let mut due: Vec<usize> = self.waiting.iter().filter(|w| ready(&self.images[w.image])).map(|w| w.image).collect();
        due.sort_by_key(|&i| self.images[i].snapshot.consistent_lsn);
        due.dedup();
        self.waiting.retain(|w| !due.contains(&w.image));
        due
    }

    /// The image at `i`.
    pub fn image(&self, i: usize) -> &BackupManifest {
        &self.images[i]
    }

    /// Whether any table waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// At the end: tables still waiting (the target is before their
    /// image). Refused, naming table and window, unless `accept`; then
    /// the warning lines.
    pub fn unreached(&self, target: &str, accept: bool) -> Result<Vec<String>> {
        let lines: Vec<String> = self
            .waiting
            .iter()
            .map(|w| {
                let m = &self.images[w.image];
                let from = match (w.mark.lsn, w.mark.time) {
                    (Lsn(0), _) => "its first archived change".to_string(),
                    (l, Some(t)) => format!("LSN {l} ({})", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
                    (l, None) => format!("LSN {l}"),
                };
                let taken = m.snapshot.server_time.unwrap_or(m.started_at).format("%Y-%m-%d %H:%M:%S%.6f UTC");
                format!(
                    "table {} is not exact from {from} until LSN {} (table image {}, taken {taken}): {}",
                    w.mark.table, m.snapshot.consistent_lsn, m.backup_id, w.mark.reason
                )
            })
            .collect();
        if lines.is_empty() || accept {
            return Ok(lines);
        }
        Err(Error::new(
            ErrorKind::CheckFailed,
            format!("target {target} is inside a window the archive cannot reproduce, so the restore stops (production untouched): {}", lines.join("; ")),
        )
        .with_hint("choose a target at or after the table image, or before the change, or pass --accept-inexact to restore it anyway"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::{BackupId, BackupKind};
    use crate::repo::manifest::{ImageCover, ImageInfo};

    fn image(table: &str, at: u64, cover: u64) -> BackupManifest {
        let mut m = crate::repo::manifest::tests::sample();
        m.backup_id = BackupId::new(BackupKind::TableImage, chrono::Utc::now(), at as u32);
        m.kind = BackupKind::TableImage;
        m.snapshot.consistent_lsn = Lsn(at);
        let (schema, name) = table.split_once('.').unwrap();
        m.tables.truncate(1);
        m.tables[0].schema = schema.into();
        m.tables[0].name = name.into();
        let cover = ImageCover { reason: "rewrite".into(), lsn: Lsn(cover), time: None, unseen: false };
        m.image = Some(ImageInfo { schema: schema.into(), name: name.into(), covers: vec![cover] });
        m
    }

    fn mark(table: &str, lsn: u64) -> InexactMark {
        InexactMark { table: table.into(), reason: "table rewrite".into(), lsn: Lsn(lsn), time: None }
    }

    #[test]
    fn a_mark_waits_for_the_next_image_of_its_table() {
        let mut w = ImageWindows::new(vec![image("public.u", 0x40, 0x10), image("public.t", 0x50, 0x20), image("public.t", 0x18, 0x5)]);
        assert_eq!(w.crossing(&mark("public.x", 0x20), true), None, "no image of that table");
        let skip = w.crossing(&mark("public.t", 0x20), true).unwrap();
        assert_eq!(skip, vec![("public".to_string(), "t".to_string())]);
        assert!(w.due(Lsn(0x4f)).is_empty(), "the image of 0x18 is before the change");
        let due = w.due(Lsn(0x50));
        assert_eq!(w.image(due[0]).snapshot.consistent_lsn, Lsn(0x50));
        assert!(w.is_empty());
        assert!(w.unreached("latest", false).unwrap().is_empty());
    }

    #[test]
    fn at_the_end_an_image_is_due_only_when_it_holds_nothing_past_the_target() {
        let t0 = chrono::Utc::now();
        let mut m = image("public.t", 0x50, 0x20);
        m.snapshot.server_time = Some(t0);
        let waiting = |m: &BackupManifest| {
            let mut w = ImageWindows::new(vec![m.clone()]);
            w.crossing(&mark("public.t", 0x20), true).unwrap();
            w
        };
        let second = chrono::Duration::seconds(1);
        assert!(waiting(&m).due_at_end(RecoveryTarget::Time(t0 - second), Lsn(0x90)).is_empty(), "taken after the target time");
        assert_eq!(waiting(&m).due_at_end(RecoveryTarget::Time(t0), Lsn(0x90)).len(), 1);
        assert!(waiting(&m).due_at_end(RecoveryTarget::Lsn(Lsn(0x4f)), Lsn(0x90)).is_empty());
        assert_eq!(waiting(&m).due_at_end(RecoveryTarget::Lsn(Lsn(0x50)), Lsn(0x90)).len(), 1);
        assert!(waiting(&m).due_at_end(RecoveryTarget::Latest, Lsn(0x4f)).is_empty(), "the archive does not reach it");
        assert_eq!(waiting(&m).due_at_end(RecoveryTarget::Latest, Lsn(0x50)).len(), 1);
    }

    #[test]
    fn a_target_before_the_image_is_refused_naming_table_and_window() {
        let mut w = ImageWindows::new(vec![image("public.t", 0x50, 0x20)]);
        w.crossing(&mark("public.t", 0x20), true).unwrap();
        assert!(w.due(Lsn(0x4f)).is_empty());
        let e = w.unreached("2026-12-04 10:00:00", false).unwrap_err().user_line();
        assert!(e.contains("public.t") && e.contains("0/20") && e.contains("0/50") && e.contains("table rewrite"), "{e}");
        assert_eq!(w.unreached("x", true).unwrap().len(), 1, "accepted: a warning line");
    }

    #[test]
    fn an_image_waited_for_by_a_mark_is_never_put_in_place_twice() {
        // An image asked for twice (merged): a mark and an unseen cover before it.
        let mut m = image("public.t", 0x50, 0x20);
        m.image.as_mut().unwrap().covers.push(ImageCover { reason: "untracked".into(), lsn: Lsn(0x30), time: None, unseen: true });
        let mut w = ImageWindows::new(vec![m]);
        assert!(w.crossing(&mark("public.t", 0x20), true).is_some());
        assert_eq!(w.due(Lsn(0x50)).len(), 1);
        // Past the unseen cover, after the image was put in place: nothing waits again.
        assert!(w.reach(Lsn(0x60), true).is_empty());
        assert!(w.due(Lsn(0x70)).is_empty() && w.is_empty());
    }

    fn late(table: &str, at: u64, since: u64) -> BackupManifest {
        let mut m = image(table, at, since);
        m.image.as_mut().unwrap().covers[0].unseen = true;
        m
    }

    #[test]
    fn late_tables_wait_from_when_they_can_have_existed() {
        let t = vec![("public".to_string(), "t".to_string())];
        // A base after the table can have existed: from the start.
        let mut w = ImageWindows::new(vec![late("public.t", 0x50, 0x20), image("public.u", 0x60, 0x30)]);
        assert_eq!(w.at_start(Lsn(0x40), true), t);
        assert!(!w.is_empty());
        // A base before: from that point on.
        let mut w = ImageWindows::new(vec![late("public.t", 0x50, 0x20)]);
        assert!(w.at_start(Lsn(0x10), true).is_empty());
        assert!(w.reach(Lsn(0x1f), true).is_empty());
        assert_eq!(w.reach(Lsn(0x20), true), t);
        assert!(w.reach(Lsn(0x30), true).is_empty(), "once");
        assert_eq!(w.due(Lsn(0x50)).len(), 1);
        assert!(w.reach(Lsn(0x60), true).is_empty() && w.is_empty(), "put in place: never again");
        // A target before it: nothing waits.
        let mut w = ImageWindows::new(vec![late("public.t", 0x50, 0x20)]);
        w.reach_at_end(RecoveryTarget::Lsn(Lsn(0x1f)), Lsn(0x90));
        assert!(w.is_empty());
        w.reach_at_end(RecoveryTarget::Lsn(Lsn(0x20)), Lsn(0x90));
        assert!(!w.is_empty());
        // A base at the image needs none; an ordinary cover is a segment mark's business.
        let mut w = ImageWindows::new(vec![late("public.t", 0x50, 0), image("public.u", 0x60, 0)]);
        assert!(w.at_start(Lsn(0x50), true).is_empty());
    }
}
