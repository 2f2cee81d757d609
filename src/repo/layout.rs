//! Object keys of the repository format (docs/FORMAT.md, "Layout") and
//! backup ids (`full_backup_YYYYMMDD_HHMMSS`).
//!
//! Every key the rest of pgkeep writes or reads is built here, so the layout
//! lives in one place.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
pub use crate::lsn::Lsn; // a leaf type; re-exported so `repo::layout::Lsn` keeps working

/// Repository metadata object.
pub const REPO_META_KEY: &str = "pgkeep.repo.json";
/// Prefix of all backups.
pub const BACKUPS_PREFIX: &str = "backups/";
/// Prefix of change segments.
pub const CHANGES_PREFIX: &str = "changes/";
/// Prefix of what `pgkeep stream` keeps between runs besides the archive
/// (the table images it still has to take).
pub const STREAM_STATE_PREFIX: &str = "stream-state/";
/// Prefix of locks.
pub const LOCKS_PREFIX: &str = "locks/";
/// Prefix of audit records.
pub const AUDIT_PREFIX: &str = "audit/";
/// Name of the manifest inside a backup's folder.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Suffix of the second copy of a metadata object.
pub const COPY_SUFFIX: &str = ".copy";

/// What a backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// A complete logical copy of one database.
    Full,
    /// Changes since a parent backup.
    Incremental,
    /// A full backup taken automatically before a restore replaced the database.
    PreRestore,
    /// One table's definition and rows at a known LSN, taken by `pgkeep
    /// stream` where the change archive cannot reproduce the table
    /// (docs/FORMAT.md §5.3). Never restored alone: point-in-time replay
    /// puts it in place of the table at its consistent point.
    TableImage,
}

impl BackupKind {
    /// The id prefix of this kind.
    pub fn id_prefix(self) -> &'static str {
        match self {
            BackupKind::Full => "full_backup_",
            BackupKind::Incremental => "incr_backup_",
            BackupKind::PreRestore => "pre_restore_backup_",
            BackupKind::TableImage => "table_image_",
        }
    }

    /// Whether a backup of this kind can be restored without a parent.
    pub fn is_self_contained(self) -> bool {
        !matches!(self, BackupKind::Incremental | BackupKind::TableImage)
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
            BackupKind::PreRestore => "pre-restore",
            BackupKind::TableImage => "table image",
        })
    }
}

/// A backup id: `<kind prefix>YYYYMMDD_HHMMSS_<db tag>` in UTC, with a
/// `_N` suffix when the id was already claimed (docs/FORMAT.md §2). Ids
/// written before format 2 have no tag (`full_backup_20261124_020005`,
/// `…_020005_2`) and are still read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

const TS_FORMAT: &str = "%Y%m%d_%H%M%S";

impl BackupId {
    /// A new id for a backup of `kind` started at `at`, with collision suffix `seq` (0 = none).
    pub fn new(kind: BackupKind, at: DateTime<Utc>, seq: u32) -> BackupId {
        let base = format!("{}{}", kind.id_prefix(), at.format(TS_FORMAT));
        if seq == 0 { BackupId(base) } else { BackupId(format!("{base}_{seq}")) }
    }

    /// A new id for a backup of `database` (format 2): the seed's id with the
    /// database's tag ([`database_tag`]) and collision suffix `seq` (0 = none).
    pub fn for_database(kind: BackupKind, at: DateTime<Utc>, database: &str, seq: u32) -> BackupId {
        let base = format!("{}{}_{}", kind.id_prefix(), at.format(TS_FORMAT), database_tag(database));
        if seq == 0 { BackupId(base) } else { BackupId(format!("{base}_{seq}")) }
    }

    /// The database tag in the id, if it has one (ids written before format 2 do not).
    pub fn database_tag(&self) -> Option<&str> {
        let rest = &self.0[self.kind().id_prefix().len() + 15..];
        let first = rest.strip_prefix('_')?.split('_').next()?;
        first.starts_with(|c: char| c.is_ascii_lowercase()).then_some(first)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kind encoded in the id.
    pub fn kind(&self) -> BackupKind {
        parse_id(&self.0).expect("validated at construction").0
    }

    /// The start time encoded in the id (second precision).
    pub fn timestamp(&self) -> DateTime<Utc> {
        parse_id(&self.0).expect("validated at construction").1
    }

    /// Folder of this backup: `backups/<id>/`.
    pub fn prefix(&self) -> String {
        format!("{BACKUPS_PREFIX}{}/", self.0)
    }

    /// Key of an object inside this backup's folder.
    pub fn key(&self, rel: &str) -> String {
        format!("{BACKUPS_PREFIX}{}/{rel}", self.0)
    }

    /// Key of the manifest.
    pub fn manifest_key(&self) -> String {
        self.key(MANIFEST_NAME)
    }
}

/// Longest database tag in an id.
const TAG_MAX: usize = 40;

/// The database name as it appears in ids: lower-case ASCII letters, digits
/// and `-` (every other character becomes `-`, runs collapse), at most 40
/// characters, starting with a letter (`db-` is put in front otherwise).
/// Two databases may share a tag (`My_App`, `my-app`): the tag is for
/// people; which database a backup holds is in its manifest, and the id
/// claim keeps the ids apart.
pub fn database_tag(database: &str) -> String {
    let mut tag = String::new();
    for c in database.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            tag.push(c);
        } else if !tag.ends_with('-') {
            tag.push('-');
        }
    }
    let mut tag = tag.trim_matches('-').to_string();
    if !tag.starts_with(|c: char| c.is_ascii_lowercase()) {
        tag = format!("db-{tag}").trim_end_matches('-').to_string();
    }
    tag.truncate(TAG_MAX);
    tag.trim_end_matches('-').to_string()
}

fn valid_tag(tag: &str) -> bool {
    tag.len() <= TAG_MAX
        && tag.starts_with(|c: char| c.is_ascii_lowercase())
        && !tag.ends_with('-')
        && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_seq(seq: &str) -> bool {
    !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && !seq.starts_with('0')
}

fn parse_id(s: &str) -> Option<(BackupKind, DateTime<Utc>)> {
    for kind in [BackupKind::Full, BackupKind::Incremental, BackupKind::PreRestore, BackupKind::TableImage] {
        if let Some(rest) = s.strip_prefix(kind.id_prefix()) {
            if rest.len() < 15 || !rest.is_char_boundary(15) {
                return None;
            }
            let (ts, tail) = rest.split_at(15);
            // Tail: "" | "_N" (format 1) | "_tag" | "_tag_N" (format 2).
            if !tail.is_empty() {
                let parts: Vec<&str> = tail.strip_prefix('_')?.split('_').collect();
                let ok = match parts[..] {
                    [one] => valid_seq(one) || valid_tag(one),
                    [tag, seq] => valid_tag(tag) && valid_seq(seq),
                    _ => false,
                };
                if !ok {
                    return None;
                }
            }
            let naive = NaiveDateTime::parse_from_str(ts, TS_FORMAT).ok()?;
            return Some((kind, Utc.from_utc_datetime(&naive)));
        }
    }
    None
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if parse_id(s).is_some() {
            Ok(BackupId(s.to_string()))
        } else {
            Err(Error::new(ErrorKind::Config, format!("`{s}` is not a backup id (expected e.g. full_backup_20260101_020000)")))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// If `key` is a backup manifest key (`backups/<id>/manifest.json`), its id.
pub fn manifest_key_id(key: &str) -> Option<BackupId> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let (id, name) = rest.split_once('/')?;
    if name != MANIFEST_NAME {
        return None;
    }
    id.parse().ok()
}

/// Key of a change segment covering `[start, end)` of stream `stream_id`:
/// `changes/<stream_id>/<start as 16 hex>-<end as 16 hex>.seg`. Fixed-width
/// hex makes lexical order equal LSN order.
pub fn segment_key(stream_id: &str, start: Lsn, end: Lsn) -> String {
    format!("{CHANGES_PREFIX}{stream_id}/{:016X}-{:016X}.seg", start.0, end.0)
}

/// Parse a segment key back into (stream id, start, end).
pub fn parse_segment_key(key: &str) -> Option<(String, Lsn, Lsn)> {
    let rest = key.strip_prefix(CHANGES_PREFIX)?;
    let (stream, file) = rest.rsplit_once('/')?;
    let file = file.strip_suffix(".seg")?;
    let (a, b) = file.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((stream.to_string(), Lsn(u64::from_str_radix(a, 16).ok()?), Lsn(u64::from_str_radix(b, 16).ok()?)))
}

/// Key of part `index` (from 1) of the transaction committed at
/// `commit_lsn`: the messages of a transaction too large for memory,
/// stored ahead of the segment that ends with its Commit (docs/FORMAT.md §5.2).
pub fn part_key(stream_id: &str, commit_lsn: Lsn, index: u32) -> String {
    format!("{CHANGES_PREFIX}{stream_id}/{:016X}.txn/{index:06}.part", commit_lsn.0)
}

/// Parse a part key back into (stream id, commit LSN, index).
pub fn parse_part_key(key: &str) -> Option<(String, Lsn, u32)> {
    let rest = key.strip_prefix(CHANGES_PREFIX)?;
    let (dir, file) = rest.rsplit_once('/')?;
    let (stream, txn) = dir.rsplit_once('/')?;
    let lsn = txn.strip_suffix(".txn").filter(|l| l.len() == 16)?;
    let index = file.strip_suffix(".part").filter(|i| i.len() == 6)?;
    Some((stream.to_string(), Lsn(u64::from_str_radix(lsn, 16).ok()?), index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_round_trip_and_are_not_segments() {
        let k = part_key("7-s", Lsn(0x1_0000_00A0), 12);
        assert_eq!(k, "changes/7-s/00000001000000A0.txn/000012.part");
        assert_eq!(parse_part_key(&k), Some(("7-s".to_string(), Lsn(0x1_0000_00A0), 12)));
        assert_eq!(parse_segment_key(&k), None);
        assert_eq!(parse_part_key(&segment_key("7-s", Lsn(1), Lsn(2))), None);
    }

    #[test]
    fn ids_round_trip() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 5).unwrap();
        let id = BackupId::new(BackupKind::Full, at, 0);
        assert_eq!(id.as_str(), "full_backup_20261124_020005");
        assert_eq!(id.kind(), BackupKind::Full);
        assert_eq!(id.timestamp(), at);
        assert_eq!(id.manifest_key(), "backups/full_backup_20261124_020005/manifest.json");
        assert_eq!(manifest_key_id(&id.manifest_key()), Some(id.clone()));
        let id2 = BackupId::new(BackupKind::Incremental, at, 2);
        assert_eq!(id2.as_str(), "incr_backup_20261124_020005_2");
        assert_eq!(id2.as_str().parse::<BackupId>().unwrap(), id2);
        for bad in [
            "full_backup_2026",
            "full_backup_20261324_020005",
            "x_backup_20261124_020005",
            "full_backup_20261124_020005_",
            "full_backup_20261124_020005_01",
            "../etc",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
        assert!(manifest_key_id("backups/full_backup_20261124_020005/data/1.pack").is_none());
    }

    #[test]
    fn ids_carry_a_database_tag() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 5).unwrap();
        let id = BackupId::for_database(BackupKind::Full, at, "orders", 0);
        assert_eq!(id.as_str(), "full_backup_20261124_020005_orders");
        assert_eq!(id.database_tag(), Some("orders"));
        let id = BackupId::for_database(BackupKind::Incremental, at, "My_App DB", 3);
        assert_eq!(id.as_str(), "incr_backup_20261124_020005_my-app-db_3");
        assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
        assert_eq!(id.kind(), BackupKind::Incremental);
        assert_eq!(id.timestamp(), at);
        assert_eq!(id.database_tag(), Some("my-app-db"));
        // Old ids (format 1) still parse and have no tag.
        let old: BackupId = "full_backup_20261124_020005_2".parse().unwrap();
        assert_eq!(old.database_tag(), None);
        for (db, tag) in [("2024", "db-2024"), ("_x_", "x"), ("", "db"), ("Ünïcode", "n-code"), (&"a".repeat(60)[..], &"a".repeat(40)[..])] {
            assert_eq!(database_tag(db), tag, "{db}");
            let id = BackupId::for_database(BackupKind::Full, at, db, 0);
            assert!(id.as_str().parse::<BackupId>().is_ok(), "{id}");
        }
        for bad in [
            "full_backup_20261124_020005_Orders",
            "full_backup_20261124_020005_a_b_1",
            "full_backup_20261124_020005_orders_",
            "full_backup_20261124_020005_orders-",
            "full_backup_20261124_020005_a/b",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lsn_and_segments() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("zz".parse::<Lsn>().is_err());
        let k = segment_key("s1", Lsn(0x10), Lsn(0x1_0000_0020));
        assert_eq!(k, "changes/s1/0000000000000010-0000000100000020.seg");
        assert_eq!(parse_segment_key(&k), Some(("s1".into(), Lsn(0x10), Lsn(0x1_0000_0020))));
    }
}
