//! The table images a point-in-time restore of a full backup would put in
//! place (docs/FORMAT.md §3.1): every image of the backup's database and
//! cluster consistent after its snapshot, in each repository, read back
//! like a backup — every object present with its size, every chunk's
//! checksums and decompression (and decryption, with keys). A damaged or
//! unreadable image fails, named: a restore would refuse the window it
//! should close.

use std::sync::Arc;

use super::integrity::{check_files, open_source_with_keys};
use super::{Check, CheckResult};
use crate::crypto::Keyring;
use crate::repo::catalog::{self, CatalogEntry};
use crate::repo::layout::BackupKind;
use crate::repo::manifest::{BackupManifest, SnapshotMethod};
use crate::storage::Storage;

/// One result per repository holding table images after `m`; none when no
/// repository holds any (or `m` is not a full backup a stream continues).
pub async fn check_images(repos: &[Arc<dyn Storage>], m: &BackupManifest, keys: &Keyring, jobs: usize) -> Vec<CheckResult> {
    if m.kind != BackupKind::Full || m.snapshot.method != SnapshotMethod::ReplicationSlot {
        return Vec::new();
    }
    let mut out = Vec::new();
    for repo in repos {
        let loc = repo.location();
        let entries = match catalog::list_backups(repo.as_ref()).await {
            Ok(e) => e,
            Err(e) => {
                out.push(CheckResult::from_problems(Check::Chains, Some(loc), "", vec![e.user_line()]));
                continue;
            }
        };
        let mut problems = Vec::new();
        let mut images = Vec::new();
        for e in entries {
            match e {
                CatalogEntry::Valid(image) if crate::replay::image::continues(&image, m) => images.push(*image),
                CatalogEntry::Invalid(id, e) if id.kind() == BackupKind::TableImage => {
                    problems.push(format!("table image {id} in {loc} has no valid manifest: {}", e.user_line()));
                }
                _ => {}
            }
        }
        if images.is_empty() && problems.is_empty() {
            continue;
        }
        let mut tables = Vec::new();
        for image in &images {
            let what = image.image.as_ref().map(|i| i.table()).unwrap_or_default();
            let read = match open_source_with_keys(repo, image, keys).await {
                Ok(source) => check_files(repo.as_ref(), image, &source, jobs).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(r) => problems.extend(r.problems.into_iter().map(|p| format!("table image {} of {what}: {p}", image.backup_id))),
                Err(e) => problems.push(format!("table image {} of {what} in {loc} cannot be read: {}", image.backup_id, e.user_line())),
            }
            tables.push(what);
        }
        tables.sort();
        tables.dedup();
        let summary = format!("{} table image(s) after it read back ({})", images.len(), tables.join(", "));
        out.push(CheckResult::from_problems(Check::Chains, Some(loc), summary, problems));
    }
    out
}
