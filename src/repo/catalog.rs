//! The catalog of backups in one repository: writing a manifest last (and its
//! copy), loading a manifest with fallback to the copy, and listing the backups
//! that exist — those with a valid manifest. A folder without one is an
//! incomplete run, invisible to `list`, `restore` and `verify`.

use bytes::Bytes;

use super::layout::{self, BackupId, COPY_SUFFIX};
use super::manifest::{self, BackupManifest};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{PutOptions, Storage};

/// Write `m` as the backup's manifest, then its copy. Call only when every
/// object the manifest lists is durable in this repository.
pub async fn write_manifest(storage: &dyn Storage, m: &BackupManifest) -> Result<()> {
    let bytes = Bytes::from(manifest::encode(m)?);
    let key = m.backup_id.manifest_key();
    let opts = PutOptions { metadata: vec![("pgkeep-kind".into(), m.kind.to_string())] };
    storage.put(&key, bytes.clone(), opts.clone()).await?;
    storage.put(&format!("{key}{COPY_SUFFIX}"), bytes, opts).await?;
    Ok(())
}

/// Load and check the manifest of `id`, falling back to the copy when the
/// main object is missing or corrupt.
pub async fn load_manifest(storage: &dyn Storage, id: &BackupId) -> Result<BackupManifest> {
    let key = id.manifest_key();
    let copy = format!("{key}{COPY_SUFFIX}");
    let main = read_manifest(storage, &key).await;
    match main {
        Ok(m) if &m.backup_id == id => Ok(m),
        Ok(_) => Err(Error::corrupt(format!("manifest {key} in {} describes another backup", storage.location()))),
        Err(e) if e.kind() == ErrorKind::Corrupt || e.kind() == ErrorKind::NotFound => match read_manifest(storage, &copy).await {
            Ok(m) if &m.backup_id == id => {
                if e.kind() == ErrorKind::Corrupt {
                    tracing::warn!(key = %key, error = %e.user_line(), "manifest damaged, using its copy");
                }
                Ok(m)
            }
            _ if e.kind() == ErrorKind::NotFound => Err(Error::new(ErrorKind::NotFound, format!("backup {id} not found in {}", storage.location()))
                .with_hint("run `pgkeep list` to see the backups in each repository")),
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

async fn read_manifest(storage: &dyn Storage, key: &str) -> Result<BackupManifest> {
    let bytes = storage.get(key, None).await?;
    manifest::decode(&bytes, &format!("{key} in {}", storage.location()))
}

/// A backup found in a repository, or the reason its manifest is unusable.
#[derive(Debug)]
pub enum CatalogEntry {
    /// A complete, checked backup.
    Valid(Box<BackupManifest>),
    /// A manifest exists but neither it nor its copy is valid.
    Invalid(BackupId, Error),
}

/// Every backup in the repository, oldest first. Folders without a manifest
/// (interrupted runs) are not listed.
pub async fn list_backups(storage: &dyn Storage) -> Result<Vec<CatalogEntry>> {
    let objects = storage.list(layout::BACKUPS_PREFIX).await?;
    let mut ids: Vec<BackupId> =
        objects.iter().filter_map(|o| layout::manifest_key_id(&o.key).or_else(|| o.key.strip_suffix(COPY_SUFFIX).and_then(layout::manifest_key_id))).collect();
    ids.sort_by_key(|id| (id.timestamp(), id.clone()));
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match load_manifest(storage, &id).await {
            Ok(m) => out.push(CatalogEntry::Valid(Box::new(m))),
            Err(e) => out.push(CatalogEntry::Invalid(id, e)),
        }
    }
    Ok(out)
}

/// Ids of backup folders that have objects but no manifest: leftovers of
/// interrupted runs, removable by `expire`.
pub async fn incomplete_backups(storage: &dyn Storage) -> Result<Vec<BackupId>> {
    let objects = storage.list(layout::BACKUPS_PREFIX).await?;
    let mut with_manifest = std::collections::BTreeSet::new();
    let mut all = std::collections::BTreeSet::new();
    for o in &objects {
        let Some(rest) = o.key.strip_prefix(layout::BACKUPS_PREFIX) else { continue };
        let Some((id, name)) = rest.split_once('/') else { continue };
        let Ok(id) = id.parse::<BackupId>() else { continue };
        if name == layout::MANIFEST_NAME || name == format!("{}{COPY_SUFFIX}", layout::MANIFEST_NAME) {
            with_manifest.insert(id.clone());
        }
        all.insert(id);
    }
    Ok(all.difference(&with_manifest).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::tests::sample;
    use crate::storage::local::LocalStorage;

    #[tokio::test]
    async fn manifest_last_and_copy_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let m = sample();
        // A data object without manifest: not a backup.
        s.put(&m.backup_id.key("data/000001.pack"), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
        assert!(list_backups(&s).await.unwrap().is_empty());
        assert_eq!(incomplete_backups(&s).await.unwrap(), vec![m.backup_id.clone()]);

        write_manifest(&s, &m).await.unwrap();
        let listed = list_backups(&s).await.unwrap();
        assert!(matches!(&listed[..], [CatalogEntry::Valid(x)] if **x == m));
        assert!(incomplete_backups(&s).await.unwrap().is_empty());

        // Damage the main manifest: the copy is used.
        let key = m.backup_id.manifest_key();
        let mut bytes = s.get(&key, None).await.unwrap().to_vec();
        let n = bytes.len() / 2;
        bytes[n] ^= 0x20;
        s.put(&key, Bytes::from(bytes), PutOptions::default()).await.unwrap();
        assert_eq!(load_manifest(&s, &m.backup_id).await.unwrap(), m);

        // Damage the copy too: the error names the key and says corrupt.
        s.put(&format!("{key}.copy"), Bytes::from_static(b"{}"), PutOptions::default()).await.unwrap();
        let e = load_manifest(&s, &m.backup_id).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.user_line().contains(&key), "{}", e.user_line());

        let missing: BackupId = "full_backup_20200101_000000".parse().unwrap();
        let e = load_manifest(&s, &missing).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.user_line().contains("full_backup_20200101_000000"));
    }
}
