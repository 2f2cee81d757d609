//! The repositories one backup writes to, and which of them have failed.
//!
//! A backup goes to every configured repository at once. When a write to one
//! of them fails (a full disk, a store that stalls), that repository is
//! dropped from the backup, loudly, and the others carry on: the backup
//! completes wherever it can, and only there does it get a manifest. The
//! backup as a whole fails (and is removed everywhere) only when no
//! repository is left, or for a reason that is not a repository's (the
//! database). Every pack sink of the backup shares one [`BackupTargets`], so
//! a repository that failed for one worker is skipped by all of them.

use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;

/// Why a repository was dropped from the backup.
#[derive(Debug, Clone)]
pub struct RepoFailure {
    /// Where the repository lives.
    pub location: String,
    /// The error's kind.
    pub kind: ErrorKind,
    /// The error's one line.
    pub line: String,
}

/// The repositories of one backup and their state.
#[derive(Debug)]
pub struct BackupTargets {
    repos: Vec<Arc<dyn Storage>>,
    failed: Mutex<Vec<Option<RepoFailure>>>,
}

impl BackupTargets {
    /// Every repository healthy.
    pub fn new(repos: Vec<Arc<dyn Storage>>) -> Arc<BackupTargets> {
        let failed = Mutex::new(vec![None; repos.len()]);
        Arc::new(BackupTargets { repos, failed })
    }

    /// Every repository, healthy or not, by index.
    pub fn all(&self) -> &[Arc<dyn Storage>] {
        &self.repos
    }

    /// Whether repository `i` has failed.
    pub fn is_failed(&self, i: usize) -> bool {
        self.failed.lock().expect("not poisoned")[i].is_some()
    }

    /// The repositories still healthy, with their indexes.
    pub fn healthy(&self) -> Vec<(usize, Arc<dyn Storage>)> {
        let failed = self.failed.lock().expect("not poisoned");
        self.repos.iter().enumerate().filter(|(i, _)| failed[*i].is_none()).map(|(i, r)| (i, r.clone())).collect()
    }

    /// Drop repository `i` from the backup because of `e`. `Ok` while another
    /// repository is still healthy; `Err(e)` when none is left.
    pub fn fail(&self, i: usize, e: Error) -> Result<()> {
        let left = {
            let mut failed = self.failed.lock().expect("not poisoned");
            if failed[i].is_none() {
                failed[i] = Some(RepoFailure { location: self.repos[i].location(), kind: e.kind(), line: e.user_line() });
            }
            failed.iter().filter(|f| f.is_none()).count()
        };
        if left == 0 {
            return Err(e);
        }
        tracing::error!(repo = %self.repos[i].location(), error = %e.user_line(), healthy = left, "repository failed; the backup continues in the other repositories and will not be complete in this one");
        Ok(())
    }

    /// `Err` naming the first failed repository, if any failed: for writers
    /// that must succeed everywhere or nowhere.
    pub fn require_all(&self) -> Result<()> {
        match self.failures().into_iter().next() {
            None => Ok(()),
            Some(f) => Err(Error::new(f.kind, format!("repository {} failed: {}", f.location, f.line))),
        }
    }

    /// The repositories that failed, in configuration order.
    pub fn failures(&self) -> Vec<RepoFailure> {
        self.failed.lock().expect("not poisoned").iter().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;

    #[test]
    fn the_last_healthy_repository_failing_fails_the_backup() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let t = BackupTargets::new(vec![Arc::new(LocalStorage::new(a.path())), Arc::new(LocalStorage::new(b.path()))]);
        assert_eq!(t.healthy().len(), 2);
        t.fail(1, Error::new(ErrorKind::Storage, "disk full")).unwrap();
        assert!(t.is_failed(1) && !t.is_failed(0));
        assert_eq!(t.healthy().iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0]);
        // A second failure of the same repository keeps the first reason.
        t.fail(1, Error::new(ErrorKind::Storage, "again")).unwrap();
        let f = t.failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].line.contains("disk full") && f[0].location == b.path().display().to_string(), "{f:?}");
        let e = t.fail(0, Error::new(ErrorKind::StorageTransient, "stalled")).unwrap_err();
        assert_eq!(e.message(), "stalled");
        assert!(t.healthy().is_empty());
    }
}
