//! The checks of one stored copy of a backup: its manifest and `.copy`
//! (format: envelope, checksum, version, which backup it describes), its
//! schema objects and table list, then every object (present, right size,
//! tiled exactly by its chunks) and every chunk read back through
//! [`BackupSource::read_chunk`] (stored SHA-256, decompression, raw XXH3 and
//! size). Problems are collected, not stopped at, and each names the
//! object key and the repository.
//!
//! An encrypted backup is opened with the configured keys
//! ([`open_source_with_keys`]): a wrong or missing key, or a manifest whose
//! MAC does not match (tampering), fails file integrity with a line that
//! names the backup and the repository.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use super::{Check, CheckResult, Status};
use crate::crypto::Keyring;
use crate::error::{ErrorKind, Result};
use crate::repo::layout::{BackupId, COPY_SUFFIX};
use crate::repo::manifest::{self, BackupManifest, ChunkRef};
use crate::restore::source::{BackupSelector, BackupSource};
use crate::storage::Storage;

/// What the two manifest objects of a backup in one repository hold.
#[derive(Debug)]
pub struct ManifestRead {
    /// The usable manifest: the main one, else the copy.
    pub manifest: Option<BackupManifest>,
    /// Neither object is usable (each reason names its key).
    pub problems: Vec<String>,
    /// One of the two is damaged or missing, the other intact.
    pub warnings: Vec<String>,
}

/// Read and decode `manifest.json` and its copy. `Ok(None)` when the
/// repository has neither (it does not hold the backup); `Err` when the
/// repository cannot be read.
pub async fn read_manifests(storage: &dyn Storage, id: &BackupId) -> Result<Option<ManifestRead>> {
    let key = id.manifest_key();
    let copy_key = format!("{key}{COPY_SUFFIX}");
    let main = read_one(storage, id, &key).await?;
    let copy = read_one(storage, id, &copy_key).await?;
    let missing = |k: &str| format!("manifest {k} is missing from {}", storage.location());
    let read = match (main, copy) {
        (None, None) => return Ok(None),
        (Some(Ok(m)), copy) => {
            let warnings = match copy {
                None => vec![missing(&copy_key)],
                Some(Err(e)) => vec![format!("{e}; the main manifest is intact")],
                Some(Ok(c)) if c != m => vec![format!("manifest {copy_key} in {} differs from the main manifest", storage.location())],
                Some(Ok(_)) => vec![],
            };
            ManifestRead { manifest: Some(m), problems: vec![], warnings }
        }
        (main, Some(Ok(c))) => {
            let why = match main {
                None => missing(&key),
                Some(Err(e)) => e,
                Some(Ok(_)) => unreachable!("handled above"),
            };
            ManifestRead { manifest: Some(c), problems: vec![], warnings: vec![format!("{why}; its copy is intact")] }
        }
        (main, copy) => {
            let why = |r: Option<std::result::Result<BackupManifest, String>>, k: &str| match r {
                None => missing(k),
                Some(Err(e)) => e,
                Some(Ok(_)) => unreachable!("handled above"),
            };
            ManifestRead { manifest: None, problems: vec![why(main, &key), why(copy, &copy_key)], warnings: vec![] }
        }
    };
    Ok(Some(read))
}

/// `None` when the object does not exist; `Some(Err(reason))` when it is not
/// a valid manifest of `id`.
async fn read_one(storage: &dyn Storage, id: &BackupId, key: &str) -> Result<Option<std::result::Result<BackupManifest, String>>> {
    let bytes = match storage.get(key, None).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let what = format!("{key} in {}", storage.location());
    Ok(Some(match manifest::decode(&bytes, &what) {
        Ok(m) if &m.backup_id == id => Ok(m),
        Ok(m) => Err(format!("manifest {what} describes another backup ({})", m.backup_id)),
        Err(e) => Err(e.user_line()),
    }))
}

/// Every chunk the manifest lists: schema objects first, then table data.
fn all_chunks(m: &BackupManifest) -> Vec<&ChunkRef> {
    [&m.schema.pre_data, &m.schema.post_data].into_iter().chain(m.schema.globals.iter()).chain(m.tables.iter().flat_map(|t| t.chunks.iter())).collect()
}

/// The format check of one repository: the manifest pair (already read),
/// schema objects that decompress to SQL, and a table list that is
/// non-empty unless the schema creates no table.
pub async fn check_format(location: &str, read: &ManifestRead, source: Option<&BackupSource>) -> CheckResult {
    let repo = Some(location.to_string());
    let Some(m) = &read.manifest else {
        return CheckResult::from_problems(Check::Format, repo, "", read.problems.clone());
    };
    let mut problems = Vec::new();
    let mut sql_bytes = 0usize;
    let mut creates_tables = false;
    match source {
        None => problems.push("the backup's chunks cannot be read (see file-integrity)".to_string()),
        Some(source) => {
            let schema = [("pre-data", Some(&m.schema.pre_data)), ("post-data", Some(&m.schema.post_data)), ("globals", m.schema.globals.as_ref())];
            for (name, chunk) in schema {
                let Some(chunk) = chunk else { continue };
                match source.read_chunk(chunk).await {
                    Ok(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(sql) => {
                            sql_bytes += sql.len();
                            if name == "pre-data" {
                                creates_tables = sql.contains("CREATE TABLE ");
                            }
                        }
                        Err(_) => {
                            problems.push(format!("{name} schema object {} in {location} does not decompress to SQL text", m.backup_id.key(&chunk.object)))
                        }
                    },
                    Err(e) => problems.push(format!("{name} schema object: {}", e.user_line())),
                }
            }
        }
    }
    // An incremental copies no table (its data is its parent chain and change range).
    if m.tables.is_empty() && creates_tables && m.kind != crate::repo::layout::BackupKind::Incremental {
        problems.push(format!("manifest {} in {location} lists no tables, but its schema creates tables", m.backup_id.manifest_key()));
    }
    let listed: HashSet<&str> = m.objects.iter().map(|o| o.key.as_str()).collect();
    for c in all_chunks(m) {
        if !listed.contains(c.object.as_str()) {
            problems.push(format!("manifest of backup {} references object {} it does not list", m.backup_id, m.backup_id.key(&c.object)));
        }
    }
    let sealed = match (&m.encryption, source) {
        (None, _) => String::new(),
        (Some(e), Some(_)) => format!(", encrypted ({:?}), MAC ok", e.mode).to_lowercase(),
        (Some(_), None) => ", encrypted".to_string(),
    };
    let summary = format!(
        "manifest version {} checksum ok{sealed}, {} tables, {} sequences, {} bytes of schema SQL",
        manifest::version_of(m),
        m.tables.len(),
        m.sequences.len(),
        sql_bytes
    );
    let mut r = CheckResult::from_problems(Check::Format, repo, summary, problems);
    if r.status == Status::Pass && !read.warnings.is_empty() {
        r.status = Status::Warn;
        r.problems = read.warnings.clone();
    } else {
        r.details = read.warnings.clone();
    }
    r
}

/// Open `m`'s backup in this one repository for chunk reads (unencrypted backups).
pub async fn open_source(storage: &Arc<dyn Storage>, m: &BackupManifest) -> Result<BackupSource> {
    open_source_with_keys(storage, m, &Keyring::none()).await
}

/// Open `m`'s backup in this one repository for chunk reads, decrypting
/// with `keys`: checks the key, the manifest's MAC and the first chunk.
pub async fn open_source_with_keys(storage: &Arc<dyn Storage>, m: &BackupManifest, keys: &Keyring) -> Result<BackupSource> {
    BackupSource::find_with_keys(std::slice::from_ref(storage), &BackupSelector::Id(m.backup_id.clone()), &m.database, keys).await
}

/// The file-integrity check of one repository: every object present with
/// its size and tiled by its chunks; every chunk read back and checked,
/// `jobs` at a time. Chunks of missing objects are not read again.
pub async fn check_files(storage: &dyn Storage, m: &BackupManifest, source: &BackupSource, jobs: usize) -> Result<CheckResult> {
    let location = storage.location();
    let mut problems = Vec::new();
    let mut missing = HashSet::new();
    for o in &m.objects {
        let key = m.backup_id.key(&o.key);
        match storage.head(&key).await? {
            Some(meta) if meta.size == o.size => {}
            Some(meta) => problems.push(format!("object {key} in {location} has {} bytes, the manifest says {}", meta.size, o.size)),
            None => {
                problems.push(format!("object {key} is missing from {location}"));
                missing.insert(o.key.as_str());
            }
        }
    }
    // The chunks of each object must tile it exactly, so their checksums cover every byte.
    let chunks = all_chunks(m);
    let mut by_object: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for c in &chunks {
        by_object.entry(c.object.as_str()).or_default().push((c.offset, c.stored_size));
    }
    for o in &m.objects {
        let mut spans = by_object.remove(o.key.as_str()).unwrap_or_default();
        spans.sort_unstable();
        let mut at = 0;
        let mut tiled = true;
        for (off, len) in spans {
            if off != at {
                problems.push(format!("chunks of object {} leave a gap or overlap at byte {at}", m.backup_id.key(&o.key)));
                tiled = false;
                break;
            }
            at = off + len;
        }
        if tiled && at != o.size {
            problems.push(format!("chunks of object {} cover {at} of its {} bytes", m.backup_id.key(&o.key), o.size));
        }
    }
    let to_read: Vec<&ChunkRef> = chunks.into_iter().filter(|c| !missing.contains(c.object.as_str())).collect();
    let read = to_read.len();
    let mut results = futures::stream::iter(to_read.into_iter().map(|c| async move { source.read_chunk(c).await.err() })).buffered(jobs.max(1));
    while let Some(err) = results.next().await {
        if let Some(e) = err {
            problems.push(e.user_line());
        }
    }
    let summary = format!("{} objects, {read} chunks", m.objects.len());
    Ok(CheckResult::from_problems(Check::FileIntegrity, Some(location), summary, problems))
}
