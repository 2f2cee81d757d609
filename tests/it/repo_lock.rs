//! Repository locks on a real local repository: shared locks coexist, an
//! exclusive lock is refused while any other lock lives (and vice versa),
//! stale locks are broken, heartbeats refresh, and release/drop remove the
//! lock object.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::Utc;
use pgkeep::error::ErrorKind;
use pgkeep::repo::lock::{self, LockMode, LockOptions, LockRecord, RepoLock};
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::{PutOptions, Storage};

fn repo() -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
    (dir, s)
}

fn fast() -> LockOptions {
    LockOptions { stale_after: Duration::from_secs(600), heartbeat: Duration::from_secs(60), wait: Duration::from_millis(300), poll: Duration::from_millis(50) }
}

async fn lock_keys(s: &dyn Storage) -> Vec<String> {
    s.list("locks/").await.unwrap().into_iter().map(|o| o.key).collect()
}

/// Write a foreign lock record as another process would.
async fn plant(s: &dyn Storage, r: &LockRecord) {
    s.put(&r.key(), Bytes::from(serde_json::to_vec(r).unwrap()), PutOptions::default()).await.unwrap();
}

#[tokio::test]
async fn shared_locks_coexist_and_exclude_expire() {
    let (_dir, s) = repo();
    let a = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &fast()).await.unwrap();
    let b = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &fast()).await.unwrap();
    assert_eq!(lock_keys(s.as_ref()).await.len(), 2);
    assert!(a.key().starts_with("locks/backup-") && a.key().ends_with(".json"));

    let e = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    let line = e.user_line();
    assert!(line.contains(&format!("repository {} is locked by backup (pid {}", s.location(), std::process::id())), "{line}");
    assert!(line.contains("hint:") && line.contains("locks/backup-"), "{line}");
    // The refused acquirer removed its own object.
    assert_eq!(lock_keys(s.as_ref()).await.len(), 2);

    a.release().await.unwrap();
    b.release().await.unwrap();
    assert!(lock_keys(s.as_ref()).await.is_empty());
    let x = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap();
    x.release().await.unwrap();
}

#[tokio::test]
async fn a_running_expire_makes_backups_wait_then_refuse() {
    let (_dir, s) = repo();
    let x = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap();
    let started = std::time::Instant::now();
    let e = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &fast()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    assert!(e.user_line().contains("locked by expire"), "{}", e.user_line());
    assert!(started.elapsed() >= Duration::from_millis(300), "waited only {:?}", started.elapsed());
    let e = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    x.release().await.unwrap();
    assert!(lock_keys(s.as_ref()).await.is_empty());
}

#[tokio::test]
async fn a_backup_waits_for_an_expire_that_yields() {
    let (_dir, s) = repo();
    // An expire caught between writing its lock and listing: it will see our
    // shared lock and delete its own; the backup must wait for that, not fail.
    let ex = LockRecord::new("expire", LockMode::Exclusive, Utc::now());
    plant(s.as_ref(), &ex).await;
    let s2 = s.clone();
    let key = ex.key();
    let yielder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s2.delete(&key).await.unwrap();
    });
    let opts = LockOptions { wait: Duration::from_secs(5), ..fast() };
    let b = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &opts).await.unwrap();
    yielder.await.unwrap();
    b.release().await.unwrap();
}

#[tokio::test]
async fn stale_locks_are_broken_and_fresh_unreadable_ones_block() {
    let (dir, s) = repo();
    let mut dead = LockRecord::new("backup", LockMode::Shared, Utc::now() - chrono::Duration::hours(2));
    dead.heartbeat_at = dead.started_at;
    plant(s.as_ref(), &dead).await;
    // The object time counts as a sign of life too: age it as well.
    let old = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(dir.path().join(dead.key())).unwrap().set_modified(old).unwrap();
    let x = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap();
    assert_eq!(lock_keys(s.as_ref()).await, vec![x.key().to_string()], "stale lock removed");
    x.release().await.unwrap();

    // Garbage under locks/ that is fresh is treated as a live exclusive lock.
    s.put("locks/mystery.json", Bytes::from_static(b"not json"), PutOptions::default()).await.unwrap();
    let e = RepoLock::acquire(s.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    assert!(e.user_line().contains("locks/mystery.json"), "{}", e.user_line());
}

#[tokio::test]
async fn heartbeat_refreshes_and_drop_removes_the_lock() {
    let (_dir, s) = repo();
    let opts = LockOptions { heartbeat: Duration::from_millis(100), ..fast() };
    let l = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &opts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let now: LockRecord = serde_json::from_slice(&s.get(l.key(), None).await.unwrap()).unwrap();
    assert!(now.heartbeat_at > l.record().heartbeat_at, "heartbeat not refreshed");
    assert_eq!(now.started_at, l.record().started_at);
    drop(l);
    for _ in 0..50 {
        if lock_keys(s.as_ref()).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lock_keys(s.as_ref()).await.is_empty(), "dropped lock not removed");
}

#[tokio::test]
async fn acquire_all_releases_what_it_took_when_one_repository_is_locked() {
    let (_d1, s1) = repo();
    let (_d2, s2) = repo();
    let held = RepoLock::acquire(s2.clone(), "expire", LockMode::Exclusive, &fast()).await.unwrap();
    let e = lock::acquire_all(&[s1.clone(), s2.clone()], "backup", LockMode::Shared, &fast()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
    assert!(lock_keys(s1.as_ref()).await.is_empty());
    held.release().await.unwrap();
    let all = lock::acquire_all(&[s1.clone(), s2.clone()], "backup", LockMode::Shared, &fast()).await.unwrap();
    assert_eq!(all.len(), 2);
    lock::release_all(all).await;
    assert!(lock_keys(s1.as_ref()).await.is_empty() && lock_keys(s2.as_ref()).await.is_empty());
}
