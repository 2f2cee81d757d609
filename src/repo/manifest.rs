//! The backup manifest (docs/FORMAT.md, "Manifest"): what a backup contains,
//! with sizes and checksums of every object and chunk, and its own checksum.
//!
//! On disk a manifest is an envelope
//! `{"format":"pgkeep-manifest","version":1,"sha256":"<hex>","body":{…}}`
//! where `sha256` is the SHA-256 of the exact bytes of `body` as written.
//! [`decode`] is pure: bytes in, a checked manifest or a `Corrupt` error out.
//!
//! Version 1 is an unencrypted backup; version 2 is the same body with
//! `encryption` set, whose `manifest_mac` a reader with the key checks
//! (`repo::manifest_mac`). Old readers refuse version 2 instead of
//! misreading encrypted chunks. Version 3 is a manifest, encrypted or not,
//! in which a row larger than a chunk spans chunks (a chunk with
//! `continues`); backups without such a row keep versions 1 and 2, and
//! older readers refuse version 3 instead of loading half rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::layout::{BackupId, BackupKind, Lsn};
use crate::error::{Error, Result};

/// The manifest format version of an unencrypted backup.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest format version of an encrypted backup (`encryption` set).
pub const MANIFEST_VERSION_ENCRYPTED: u32 = 2;
/// The format version of a manifest with a row split across chunks
/// (`ChunkRef::continues`), encrypted or not.
pub const MANIFEST_VERSION_SPLIT_ROWS: u32 = 3;
/// The envelope's `format` marker.
pub const MANIFEST_FORMAT: &str = "pgkeep-manifest";

/// A complete backup description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    /// The backup id.
    pub backup_id: BackupId,
    /// Full, incremental or pre-restore.
    pub kind: BackupKind,
    /// The backup this one builds on (incrementals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BackupId>,
    /// Name of the database backed up.
    pub database: String,
    /// Encoding and locale of that database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_info: Option<DatabaseInfo>,
    /// The server it came from.
    pub server: ServerInfo,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the last object became durable.
    pub finished_at: DateTime<Utc>,
    /// How the consistent snapshot was taken.
    pub snapshot: SnapshotInfo,
    /// Who ran it.
    pub started_by: RunInfo,
    /// Compression of data objects.
    pub compression: CompressionInfo,
    /// Encryption of data objects; `None` when not encrypted.
    #[serde(default)]
    pub encryption: Option<EncryptionInfo>,
    /// Schema objects (pre-data, post-data, globals).
    pub schema: SchemaObjects,
    /// Every table's data.
    pub tables: Vec<TableEntry>,
    /// Sequence values at the snapshot.
    pub sequences: Vec<SequenceEntry>,
    /// Whether large objects are covered.
    pub large_objects: LargeObjects,
    /// Every stored object of the backup with its size.
    pub objects: Vec<ObjectEntry>,
    /// Totals.
    pub stats: BackupStats,
    /// Tables whose changes cannot be archived (no usable replica identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Incrementals: the archived changes since the parent that this backup pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeRange>,
    /// Table images: which table, and the changes it makes exact again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
}

/// What a table image ([`BackupKind::TableImage`]) is for. Its `tables`
/// hold the table (or, for a partitioned table, its leaf partitions) as
/// of `snapshot.consistent_lsn`: every transaction committed before that
/// point and none after. No tables: the table did not exist then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Schema of the table the image was asked for.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// The changes the archive could not reproduce that made it necessary.
    pub covers: Vec<ImageCover>,
}

impl ImageInfo {
    /// `schema.name`, as inexact marks name tables.
    pub fn table(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// One change a table image makes exact again: replay from a base before
/// `lsn` to a target at or after the image's consistent point puts the
/// image in place of the table there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCover {
    /// Why the archive could not reproduce the table.
    pub reason: String,
    /// Commit LSN of the transaction that made the change (for a late
    /// table: the server's WAL position before the publication check
    /// before the one that found it).
    pub lsn: Lsn,
    /// Its commit time, when known (for a late table: the server's clock at `lsn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// A change the archive never saw, made after `lsn` (0/0: unknown): a
    /// table that joined the publications late (its changes until then
    /// are not archived), or a definition change found only in the
    /// catalog. No base older than the image holds the table exactly from
    /// `lsn` on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unseen: bool,
}

/// The change archive an incremental backup stands for: every transaction
/// of stream `stream_id` with a commit end in `(start_lsn, end_lsn]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRange {
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// The parent's end: its consistent point, or its own range's end.
    pub start_lsn: Lsn,
    /// The end of the archive when the incremental was recorded.
    pub end_lsn: Lsn,
    /// Commit LSN of the last transaction in the range (restores stop after it).
    pub last_commit_lsn: Lsn,
    /// Its commit time.
    #[serde(default)]
    pub last_commit_time: Option<DateTime<Utc>>,
    /// Transactions in the range.
    pub transactions: u64,
    /// Row changes (inserts, updates, deletes, truncates) of those
    /// transactions; absent (0) in manifests written before it was counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub row_changes: u64,
    /// Commit time of the first transaction in the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_commit_time: Option<DateTime<Utc>>,
    /// Segments of the range, with their sizes.
    pub segments: Vec<ObjectEntry>,
    /// Whether a captured DDL statement is in the range.
    #[serde(default)]
    pub ddl: bool,
}

/// Server identity and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18`.
    pub version: String,
    /// `server_version_num`, e.g. `150018`.
    pub version_num: u32,
    /// `system_identifier` of the cluster, as decimal text.
    pub system_identifier: String,
    /// Timeline at the snapshot.
    pub timeline: u32,
}

/// How the backup's consistent snapshot was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// `replication_slot` (exported by CREATE_REPLICATION_SLOT) or `exported_snapshot` (pg_export_snapshot).
    pub method: SnapshotMethod,
    /// The LSN the snapshot is consistent at: replaying changes committed after it
    /// yields later states. For `exported_snapshot`, the insert LSN at export (informational).
    pub consistent_lsn: Lsn,
    /// The logical replication slot, when one was created.
    #[serde(default)]
    pub slot_name: Option<String>,
    /// Whether the slot was kept for change archiving.
    #[serde(default)]
    pub slot_kept: bool,
    /// The server's clock when the snapshot transaction began (`now()` in
    /// it), at or after the consistent point: a point-in-time restore to an
    /// earlier time never starts from this backup. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Snapshot methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMethod {
    /// Exported by `CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')`.
    ReplicationSlot,
    /// `pg_export_snapshot()` in a REPEATABLE READ transaction (no PITR continuation).
    ExportedSnapshot,
}

/// Who and what ran an operation (audit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// OS user.
    pub os_user: String,
    /// Host name.
    pub host: String,
    /// pgkeep version.
    pub pgkeep_version: String,
}

impl RunInfo {
    /// Information about the current process.
    pub fn current() -> RunInfo {
        RunInfo {
            os_user: whoami::username().unwrap_or_else(|_| "unknown".into()),
            host: hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into()),
            pgkeep_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Compression of data objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionInfo {
    /// `zstd`, `gzip` or `none`.
    pub algorithm: String,
    /// Level used.
    pub level: i32,
}

/// How a backup is encrypted (docs/FORMAT.md §8). Never a usable key: the
/// data key is here only wrapped with age, for the recipients or the passphrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionInfo {
    /// Scheme: `age+xchacha20poly1305`.
    pub scheme: String,
    /// `recipients` (age X25519 public keys) or `passphrase` (age scrypt).
    pub mode: crate::crypto::EncryptionMode,
    /// Public `age1…` recipients (never identities or passphrases); empty for a passphrase.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// The backup's data key as an age file (base64), for those recipients or that passphrase.
    pub wrapped_key: String,
    /// The sealed-chunk format of every chunk.
    pub chunk_format: String,
    /// `hmac-sha256:<hex>` over the canonical body with this field empty.
    pub manifest_mac: String,
}

/// Schema objects of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaObjects {
    /// Types, tables, functions… (before data).
    pub pre_data: ChunkRef,
    /// Indexes, constraints, triggers, policies (after data).
    pub post_data: ChunkRef,
    /// Roles and other globals the database needs.
    #[serde(default)]
    pub globals: Option<ChunkRef>,
}

/// One compressed chunk stored at a byte range of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// Object key relative to the backup folder, e.g. `data/000001.pack`.
    pub object: String,
    /// Offset of the chunk in the object.
    pub offset: u64,
    /// Stored (compressed, encrypted) length.
    pub stored_size: u64,
    /// Raw (uncompressed) length.
    pub raw_size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub stored_sha256: String,
    /// SHA-256 of the raw bytes, hex.
    pub raw_xxh3: String,
    /// Rows that end in this chunk (COPY text lines); 0 for non-row data.
    #[serde(default)]
    pub rows: u64,
    /// The chunk ends inside a row larger than a chunk; the table's next
    /// chunk continues it. Written only when true, so manifests without
    /// split rows are unchanged and older readers refuse (unknown field)
    /// any manifest that has one instead of misloading it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnEntry {
    /// Column name.
    pub name: String,
    /// `format_type()` of the column.
    pub type_name: String,
    /// NOT NULL.
    pub not_null: bool,
}

/// One table's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// OID at backup time.
    pub oid: u32,
    /// Columns in COPY order (generated columns excluded).
    pub columns: Vec<ColumnEntry>,
    /// Rows copied.
    pub rows: u64,
    /// Raw COPY bytes.
    pub raw_bytes: u64,
    /// Order-independent content fingerprint of the COPY text rows (see FORMAT.md).
    pub fingerprint: String,
    /// Chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// For an extension's configuration table: the extension and its
    /// registered row filter. Only the rows the filter selects are in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<ExtensionConfig>,
}

/// An extension configuration table's origin (`pg_extension_config_dump`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionConfig {
    /// Extension name.
    pub name: String,
    /// The filter it registered: a `WHERE …` clause, or empty for all rows.
    pub filter: String,
}

/// Facts about the database itself, needed to recreate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseInfo {
    /// Server encoding, e.g. `UTF8`.
    pub encoding: String,
    /// `datcollate`.
    pub lc_collate: String,
    /// `datctype`.
    pub lc_ctype: String,
    /// The database's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Database-level settings (`ALTER DATABASE … SET`), as `name=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// Database-level privileges (`GRANT … ON DATABASE`), as
    /// `grantee:privilege:grantable` (`PUBLIC` for everyone); `None` when the
    /// database has the default privileges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<String>>,
}

/// A sequence's state at the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceEntry {
    /// Schema name.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
}

/// Large-object coverage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeObjects {
    /// Number of large objects in the database at the snapshot.
    pub count: u64,
    /// Whether their contents are in this backup.
    pub covered: bool,
}

/// A stored object of the backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectEntry {
    /// Key relative to the backup folder.
    pub key: String,
    /// Size in bytes. The chunks that reference the object tile it exactly,
    /// so their stored checksums cover every byte of it.
    pub size: u64,
}

/// Totals of a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStats {
    /// `pg_database_size()` at the start.
    pub database_size: u64,
    /// Raw bytes of all chunks.
    pub raw_bytes: u64,
    /// Stored bytes of all objects.
    pub stored_bytes: u64,
    /// Rows of all tables.
    pub rows: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'static str,
    version: u32,
    sha256: String,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    format: String,
    version: u32,
    sha256: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// Serialize a manifest into its checksummed envelope.
pub fn encode(manifest: &BackupManifest) -> Result<Vec<u8>> {
    let body = serde_json::to_string(manifest).map_err(|e| Error::internal(format!("cannot serialize manifest: {e}")))?;
    let sha256 = hex::encode(Sha256::digest(body.as_bytes()));
    let raw = RawValue::from_string(body).map_err(|e| Error::internal(format!("manifest body: {e}")))?;
    let version = version_of(manifest);
    let mut out = serde_json::to_vec(&EnvelopeOut { format: MANIFEST_FORMAT, version, sha256, body: &raw })
        .map_err(|e| Error::internal(format!("cannot serialize manifest: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Parse and check a manifest. `what` names it in errors (the object key).
pub fn decode(bytes: &[u8], what: &str) -> Result<BackupManifest> {
    let env: EnvelopeIn<'_> = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("manifest {what} is not a pgkeep manifest: {e}")))?;
    if env.format != MANIFEST_FORMAT {
        return Err(Error::corrupt(format!("manifest {what} has unknown format `{}`", env.format)));
    }
    if ![MANIFEST_VERSION, MANIFEST_VERSION_ENCRYPTED, MANIFEST_VERSION_SPLIT_ROWS].contains(&env.version) {
        return Err(Error::corrupt(format!(
            "manifest {what} has format version {}, this pgkeep reads versions {MANIFEST_VERSION} to {MANIFEST_VERSION_SPLIT_ROWS}",
            env.version
        ))
        .with_hint("use a pgkeep release that supports this repository format"));
    }
    let actual = hex::encode(Sha256::digest(env.body.get().as_bytes()));
    if actual != env.sha256 {
        return Err(Error::corrupt(format!("manifest {what} fails its checksum (stored {}, computed {actual})", env.sha256)));
    }
    let m: BackupManifest = serde_json::from_str(env.body.get()).map_err(|e| Error::corrupt(format!("manifest {what} has an invalid body: {e}")))?;
    if has_split_rows(&m) != (env.version == MANIFEST_VERSION_SPLIT_ROWS) {
        return Err(Error::corrupt(format!(
            "manifest {what} has format version {} but {} row split across chunks",
            env.version,
            if has_split_rows(&m) { "a" } else { "no" }
        )));
    }
    if env.version != MANIFEST_VERSION_SPLIT_ROWS && m.encryption.is_some() != (env.version == MANIFEST_VERSION_ENCRYPTED) {
        return Err(Error::corrupt(format!(
            "manifest {what} has format version {} but {} encryption section",
            env.version,
            if m.encryption.is_some() { "an" } else { "no" }
        )));
    }
    Ok(m)
}

/// The format version a manifest is written with.
pub fn version_of(m: &BackupManifest) -> u32 {
    if has_split_rows(m) {
        MANIFEST_VERSION_SPLIT_ROWS
    } else if m.encryption.is_some() {
        MANIFEST_VERSION_ENCRYPTED
    } else {
        MANIFEST_VERSION
    }
}

/// Whether a row larger than a chunk spans chunks somewhere in the backup.
fn has_split_rows(m: &BackupManifest) -> bool {
    m.tables.iter().any(|t| t.chunks.iter().any(|c| c.continues))
}

/// Serde: leave a zero count out (manifests written before it existed stay byte-identical).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
pub(crate) mod tests;
