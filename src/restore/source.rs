//! Where a restore reads from: finding a backup across the configured
//! repositories (local first, then S3), and reading chunks back with every
//! check on the way — stored SHA-256, decompression off the async runtime,
//! raw XXH3-128 and size — so a damaged object stops a restore, named, before
//! anything touches the target.
//!
//! An encrypted backup is opened right after its manifest is read, before
//! any approval gate or database step: the data key is unwrapped with the
//! configured identity file or passphrase, the manifest's MAC is checked,
//! and the first schema chunk is read and decrypted. A missing or wrong key
//! is one line naming the backup and the key source.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::Settings;
use crate::crypto::chunk::AAD_BACKUP_CHUNK;
use crate::crypto::{DataCipher, Keyring};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Compression;
use crate::pipeline::process::raw_checksum;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::{BackupId, BackupKind};
use crate::repo::manifest::{BackupManifest, ChunkRef};
use crate::repo::manifest_mac;
use crate::storage::{Storage, StorageKind};
use sha2::{Digest, Sha256};

/// A backup chosen for restore, and the repository it is read from.
pub struct BackupSource {
    /// The repository holding it.
    pub storage: Arc<dyn Storage>,
    /// Its manifest (checked).
    pub manifest: BackupManifest,
    compression: Compression,
    cipher: Option<Arc<DataCipher>>,
}

/// Open the configured repositories for reading, local ones first.
pub async fn open_repositories(settings: &Settings) -> Result<Vec<Arc<dyn Storage>>> {
    crate::repo::meta::open_all(&settings.repos, crate::repo::meta::Access::Read).await
}

/// Backups of one database name from several clusters (system identifiers)
/// share a repository: `latest` takes the newest of all, and says so.
fn warn_if_several_clusters(candidates: &[BackupManifest], database: &str, location: &str) {
    let mut clusters: Vec<&str> = candidates.iter().map(|m| m.server.system_identifier.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    if clusters.len() > 1 {
        tracing::warn!(
            database,
            repo = location,
            clusters = %clusters.join(", "),
            "backups of database {database} from {} clusters are in this repository; `latest` is the newest of them all (name a backup id to choose; `pgkeep list` shows them)",
            clusters.len()
        );
    }
}

/// What the user asked to restore.
#[derive(Debug, Clone)]
pub enum BackupSelector {
    /// The newest self-contained backup of the configured database.
    Latest,
    /// A backup id.
    Id(BackupId),
}

impl BackupSelector {
    /// Parse `latest` or a backup id.
    pub fn parse(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("latest") { Ok(BackupSelector::Latest) } else { Ok(BackupSelector::Id(s.parse()?)) }
    }
}

impl BackupSource {
    /// Find a backup and check its manifest, without opening an encrypted
    /// one: its manifest is usable, its chunks are not (reads fail). To read
    /// chunks, use [`BackupSource::find_with_keys`].
    pub async fn find(repos: &[Arc<dyn Storage>], selector: &BackupSelector, database: &str) -> Result<BackupSource> {
        BackupSource::find_in(repos, selector, database, None).await
    }

    /// Find the backup in the first repository that has a valid copy of it.
    /// `database` restricts `latest` to backups of that database. An
    /// encrypted backup is opened with `keys` at once (see the module docs);
    /// a copy whose manifest fails its MAC is skipped for the next repository.
    pub async fn find_with_keys(repos: &[Arc<dyn Storage>], selector: &BackupSelector, database: &str, keys: &Keyring) -> Result<BackupSource> {
        BackupSource::find_in(repos, selector, database, Some(keys)).await
    }

    async fn find_in(repos: &[Arc<dyn Storage>], selector: &BackupSelector, database: &str, keys: Option<&Keyring>) -> Result<BackupSource> {
        let mut problems = Vec::new();
        let mut tampered = None;
        for repo in repos {
            let found = match selector {
                BackupSelector::Id(id) => match catalog::load_manifest(repo.as_ref(), id).await {
                    Ok(m) => Some(m),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => {
                        problems.push(e.user_line());
                        None
                    }
                },
                BackupSelector::Latest => match catalog::list_backups(repo.as_ref()).await {
                    Ok(entries) => {
                        let candidates: Vec<BackupManifest> = entries
                            .into_iter()
                            .filter_map(|e| match e {
                                CatalogEntry::Valid(m) => Some(*m),
                                CatalogEntry::Invalid(..) => None,
                            })
                            // `latest` is the newest regular full backup: never a pre-restore
                            // backup, which holds the state a restore replaced.
                            .filter(|m| m.database == database && m.kind == BackupKind::Full)
                            .collect();
                        warn_if_several_clusters(&candidates, database, &repo.location());
                        candidates.into_iter().max_by_key(|m| (m.started_at, m.backup_id.clone()))
                    }
                    Err(e) => {
                        problems.push(e.user_line());
                        None
                    }
                },
            };
            if let Some(manifest) = found {
                let compression = Compression::from_manifest(&manifest.compression.algorithm, manifest.compression.level)?;
                // An incremental's own objects are its schema; `restore` replays it from its
                // full ancestor (commands::restore), so reading it here is only for its schema.
                let mut source = BackupSource { storage: repo.clone(), manifest, compression, cipher: None };
                let Some(keys) = keys else { return Ok(source) };
                match source.open_encryption(keys).await {
                    Ok(()) => return Ok(source),
                    Err(e) if e.kind() == ErrorKind::Corrupt => {
                        problems.push(e.user_line());
                        tampered.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(e) = tampered {
            return Err(e);
        }
        let what = match selector {
            BackupSelector::Latest => format!("no backup of database {database} found"),
            BackupSelector::Id(id) => format!("backup {id} not found"),
        };
        let where_ = repos.iter().map(|r| r.location()).collect::<Vec<_>>().join(", ");
        let mut err = Error::new(ErrorKind::NotFound, format!("{what} in {where_}"));
        if !problems.is_empty() {
            err = err.context(problems.join("; "));
        }
        Err(err.with_hint("run `pgkeep list` to see the backups"))
    }

    /// For an encrypted backup: unwrap its data key with `keys`, check the
    /// manifest's MAC, and decrypt the first schema chunk. Errors name the
    /// backup and the key source.
    async fn open_encryption(&mut self, keys: &Keyring) -> Result<()> {
        let Some(info) = &self.manifest.encryption else { return Ok(()) };
        let subject = format!("backup {}", self.manifest.backup_id);
        let cipher = keys.cipher(&manifest_mac::envelope(info), &subject)?;
        manifest_mac::check(&cipher, &self.manifest).map_err(|e| e.context(format!("in {}", self.storage.location())))?;
        self.cipher = Some(cipher);
        let first = self.manifest.schema.pre_data.clone();
        self.read_chunk(&first).await.map(|_| ())
    }

    /// Whether the backup is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.manifest.encryption.is_some()
    }

    /// Whether the source is a local repository.
    pub fn is_local(&self) -> bool {
        self.storage.kind() == StorageKind::Local
    }

    /// Read one chunk, checking stored checksum, decompression and raw checksum.
    pub async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Bytes> {
        let key = self.manifest.backup_id.key(&chunk.object);
        let what = format!("chunk {}@{} of backup {} in {}", chunk.object, chunk.offset, self.manifest.backup_id, self.storage.location());
        let stored =
            self.storage.get(&key, Some(chunk.offset..chunk.offset + chunk.stored_size)).await.map_err(|e| e.context(format!("cannot read {what}")))?;
        if stored.len() as u64 != chunk.stored_size {
            return Err(Error::corrupt(format!("{what} is truncated: {} of {} bytes", stored.len(), chunk.stored_size)));
        }
        let compression = self.compression;
        let cipher = self.cipher.clone();
        if self.manifest.encryption.is_some() && cipher.is_none() {
            return Err(Error::config(format!("{what} is encrypted and was not opened with a key")).with_hint("set PGKEEP_IDENTITY_FILE or PGKEEP_PASSPHRASE"));
        }
        let expected_stored = chunk.stored_sha256.clone();
        let expected_raw = chunk.raw_xxh3.clone();
        let raw_size = chunk.raw_size as usize;
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let result = (|| {
                if hex::encode(Sha256::digest(&stored)) != expected_stored {
                    return Err(Error::corrupt(format!("{what} fails its checksum")));
                }
                let compressed = match &cipher {
                    Some(c) => std::borrow::Cow::Owned(c.open(&stored, AAD_BACKUP_CHUNK, &what)?),
                    None => std::borrow::Cow::Borrowed(&stored[..]),
                };
                let raw = compression.decompress(&compressed, raw_size, &what)?;
                if raw_checksum(&raw) != expected_raw {
                    return Err(Error::corrupt(format!("{what} decompresses to bytes that fail their checksum")));
                }
                Ok(Bytes::from(raw))
            })();
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| Error::internal("decompression worker vanished"))?
    }
}
