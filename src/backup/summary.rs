//! What a finished backup holds, in words: the one summary line printed
//! after `pgkeep backup` (and sent in notifications), and the description
//! `pgkeep list` shows under each backup. A full or pre-restore backup
//! holds tables, rows and bytes; an incremental holds transactions and row
//! changes over an LSN and time range on top of its parent; a table image
//! holds one table and the changes it makes exact again. Pure: no I/O.

use chrono::{DateTime, Utc};

use crate::backup::engine::human_bytes;
use crate::repo::layout::BackupKind;
use crate::repo::manifest::{BackupManifest, ChangeRange, ImageInfo};

/// One human line: kind, id, duration, and what the backup holds.
pub(crate) fn line(m: &BackupManifest, repositories: &[String]) -> String {
    let s = &m.stats;
    let secs = (s.duration_ms as f64 / 1000.0).max(0.001);
    let to = repositories.join(", ");
    if let (BackupKind::Incremental, Some(c)) = (m.kind, &m.changes) {
        let parent = m.parent.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "?".to_string());
        return format!(
            "incremental backup {} done in {secs:.1}s: {}, on top of {parent}; {} segment(s), {} stored, to {to}",
            m.backup_id,
            changes_held(c),
            c.segments.len(),
            human_bytes(s.stored_bytes),
        );
    }
    let lo = &m.large_objects;
    let lo_note = if lo.covered { String::new() } else { format!("; WARNING: {} large object(s) not covered", lo.count) };
    let ratio = ratio(m).map(|r| format!(" (ratio {r:.2})")).unwrap_or_default();
    let sizes = format!(
        "{} rows, {} raw, {} stored{ratio}, {}/s",
        s.rows,
        human_bytes(s.raw_bytes),
        human_bytes(s.stored_bytes),
        human_bytes((s.raw_bytes as f64 / secs) as u64)
    );
    let what = match (m.kind, &m.image) {
        (BackupKind::TableImage, Some(i)) => format!("table image {} of {} done in {secs:.1}s: {sizes}; {}", m.backup_id, i.table(), image_held(m, i)),
        (BackupKind::PreRestore, _) => format!("pre-restore backup {} done in {secs:.1}s: {} tables, {sizes}", m.backup_id, m.tables.len()),
        _ => format!("backup {} done in {secs:.1}s: {} tables, {sizes}", m.backup_id, m.tables.len()),
    };
    format!("{what}, to {to}{lo_note}")
}

/// For `list`: what an incremental or a table image holds (a full backup's
/// tables and sizes are in the listing's columns already).
pub(crate) fn held(m: &BackupManifest) -> Option<String> {
    match (m.kind, &m.changes, &m.image) {
        (BackupKind::Incremental, Some(c), _) => Some(changes_held(c)),
        (BackupKind::TableImage, _, Some(i)) => Some(format!("table {}, {}", i.table(), image_held(m, i))),
        _ => None,
    }
}

/// Raw / stored bytes, for kinds that copy table data (`None` for an
/// incremental, which stores change segments, not table data).
pub(crate) fn ratio(m: &BackupManifest) -> Option<f64> {
    (m.kind != BackupKind::Incremental && m.stats.raw_bytes > 0 && m.stats.stored_bytes > 0).then(|| m.stats.raw_bytes as f64 / m.stats.stored_bytes as f64)
}

/// `12 transaction(s), 345 row change(s), LSN 0/A to 0/B, commits from … to … UTC`.
fn changes_held(c: &ChangeRange) -> String {
    let commits = match (c.first_commit_time, c.last_commit_time) {
        (_, None) => String::new(),
        (Some(a), Some(b)) if a != b => format!(", commits from {} to {} UTC", utc(a), utc(b)),
        (_, Some(b)) => format!(", last commit {} UTC", utc(b)),
    };
    format!("{} transaction(s), {} row change(s), LSN {} to {}{commits}", c.transactions, c.row_changes, c.start_lsn, c.end_lsn)
}

/// `consistent at LSN 0/A; covers <reason> at LSN 0/B (<time>), …`.
fn image_held(m: &BackupManifest, i: &ImageInfo) -> String {
    let covers: Vec<String> = i
        .covers
        .iter()
        .map(|c| {
            let when = c.time.map(|t| format!(" ({} UTC)", utc(t))).unwrap_or_default();
            format!("{} at LSN {}{when}", c.reason, c.lsn)
        })
        .collect();
    let covers = if covers.is_empty() { String::new() } else { format!("; covers {}", covers.join(", ")) };
    format!("consistent at LSN {}{covers}", m.snapshot.consistent_lsn)
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::{BackupId, Lsn};
    use crate::repo::manifest::{BackupStats, ImageCover, ObjectEntry};

    fn manifest(kind: BackupKind) -> BackupManifest {
        let mut m = crate::repo::manifest::tests::sample();
        m.kind = kind;
        m.backup_id = BackupId::new(kind, "2026-12-05T03:00:00Z".parse().unwrap(), 0);
        m.stats = BackupStats { database_size: 1 << 20, raw_bytes: 0, stored_bytes: 4096, rows: 0, duration_ms: 1500 };
        m
    }

    #[test]
    fn an_incremental_says_what_it_holds_and_has_no_ratio() {
        let mut m = manifest(BackupKind::Incremental);
        m.parent = Some(BackupId::new(BackupKind::Full, "2026-12-05T02:00:00Z".parse().unwrap(), 0));
        m.changes = Some(ChangeRange {
            stream_id: "1-s".into(),
            start_lsn: Lsn(0x100),
            end_lsn: Lsn(0x2000),
            last_commit_lsn: Lsn(0x1f00),
            last_commit_time: Some("2026-12-05T02:59:00Z".parse().unwrap()),
            transactions: 12,
            row_changes: 345,
            first_commit_time: Some("2026-12-05T02:10:00Z".parse().unwrap()),
            segments: vec![ObjectEntry { key: "changes/1-s/a.seg".into(), size: 4000 }],
            ddl: false,
        });
        let l = line(&m, &["/repo".into()]);
        assert!(l.starts_with("incremental backup incr_backup_"), "{l}");
        for want in
            ["12 transaction(s)", "345 row change(s)", "LSN 0/100 to 0/2000", "from 2026-12-05 02:10:00 to 2026-12-05 02:59:00 UTC", "on top of full_backup_"]
        {
            assert!(l.contains(want), "{want} missing: {l}");
        }
        assert!(!l.contains("ratio") && !l.contains("0 tables"), "{l}");
        assert_eq!(ratio(&m), None);
        assert!(held(&m).is_some_and(|h| h.contains("345 row change(s)")));
    }

    #[test]
    fn a_table_image_names_its_table_and_what_it_covers() {
        let mut m = manifest(BackupKind::TableImage);
        m.stats.raw_bytes = 8192;
        m.stats.rows = 10;
        m.image = Some(ImageInfo {
            schema: "public".into(),
            name: "t".into(),
            covers: vec![ImageCover { reason: "ALTER TABLE rewrote it".into(), lsn: Lsn(0x300), time: None, unseen: false }],
        });
        let l = line(&m, &["/repo".into()]);
        assert!(l.starts_with("table image table_image_") && l.contains(" of public.t "), "{l}");
        assert!(l.contains("covers ALTER TABLE rewrote it at LSN 0/300") && l.contains("(ratio 2.00)"), "{l}");
        assert!(held(&m).is_some_and(|h| h.starts_with("table public.t, consistent at LSN")));
    }

    #[test]
    fn a_full_backup_reads_as_before() {
        let mut m = manifest(BackupKind::Full);
        m.stats.raw_bytes = 0;
        let l = line(&m, &["/repo".into()]);
        assert!(l.starts_with("backup full_backup_") && l.contains(" tables, 0 rows, 0 B raw, 4.0 KiB stored, 0 B/s, to /repo"), "{l}");
        assert_eq!(held(&m), None);
    }
}
