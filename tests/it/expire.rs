//! `pgkeep expire` on real local repositories filled with manifests and fake
//! data objects (fast, no database), plus one real backup to check that
//! expire never touches a backup that holds its shared lock.

use crate::harness;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use harness::backup_check::{read_back, settings};
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::expire::{self, ExpireOptions};
use pgkeep::config::{DbSettings, RepoSpec, Settings};
use pgkeep::repo::catalog;
use pgkeep::repo::layout::{BackupId, BackupKind, Lsn};
use pgkeep::repo::lock::{LockMode, LockOptions, RepoLock};
use pgkeep::repo::manifest::*;
use pgkeep::repo::meta;
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::{PutOptions, Storage};

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

fn manifest(kind: BackupKind, at: DateTime<Utc>, parent: Option<&BackupId>) -> BackupManifest {
    let chunk = ChunkRef {
        object: "data/w01-000001.pack".into(),
        offset: 0,
        stored_size: 4,
        raw_size: 4,
        stored_sha256: "aa".into(),
        raw_xxh3: "bb".into(),
        rows: 1,
        continues: false,
    };
    BackupManifest {
        backup_id: BackupId::new(kind, at, 0),
        kind,
        parent: parent.cloned(),
        database: "app".into(),
        database_info: None,
        server: ServerInfo { version: "15.18".into(), version_num: 150018, system_identifier: "1".into(), timeline: 1 },
        started_at: at,
        finished_at: at,
        snapshot: SnapshotInfo { method: SnapshotMethod::ExportedSnapshot, consistent_lsn: Lsn(1), slot_name: None, slot_kept: false, server_time: None },
        started_by: RunInfo::current(),
        compression: CompressionInfo { algorithm: "none".into(), level: 0 },
        encryption: None,
        schema: SchemaObjects { pre_data: chunk.clone(), post_data: chunk.clone(), globals: None },
        tables: vec![],
        sequences: vec![],
        large_objects: LargeObjects { count: 0, covered: true },
        objects: vec![ObjectEntry { key: chunk.object.clone(), size: 4 }],
        stats: BackupStats::default(),
        warnings: vec![],
        changes: None,
        image: None,
    }
}

/// Store a backup: a fake data object, a schema object, then the manifest.
async fn store(s: &dyn Storage, m: &BackupManifest) {
    for k in ["data/w01-000001.pack", "schema/schema-000001.pack"] {
        s.put(&m.backup_id.key(k), Bytes::from_static(b"data"), PutOptions::default()).await.unwrap();
    }
    catalog::write_manifest(s, m).await.unwrap();
}

fn age_files(dir: &Path, days: u64) {
    let old = SystemTime::now() - Duration::from_secs(days * 86400);
    for e in walk(dir) {
        std::fs::File::options().write(true).open(&e).unwrap().set_modified(old).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn local_settings(repo: &Path, local_days: u32) -> Settings {
    let db = DbSettings {
        host: "localhost".into(),
        port: 5432,
        user: "unused".into(),
        password: None,
        dbname: "app".into(),
        sslmode: pgkeep::config::SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(1),
    };
    let mut s = settings(db, vec![RepoSpec::Local(repo.into())]);
    s.local_retention_days = local_days;
    s
}

async fn exists(s: &dyn Storage, id: &BackupId) -> bool {
    !s.list(&id.prefix()).await.unwrap().is_empty()
}

#[tokio::test]
async fn expire_applies_the_plan_and_cleans_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(dir.path());
    meta::ensure(&s).await.unwrap();
    let old_full = manifest(BackupKind::Full, ago(40), None);
    let old_incr = manifest(BackupKind::Incremental, ago(39), Some(&old_full.backup_id));
    let chain_full = manifest(BackupKind::Full, ago(20), None);
    let chain_incr = manifest(BackupKind::Incremental, ago(2), Some(&chain_full.backup_id));
    let pre_restore = manifest(BackupKind::PreRestore, ago(30), None);
    let newest = manifest(BackupKind::Full, ago(1), None);
    for m in [&old_full, &old_incr, &chain_full, &chain_incr, &pre_restore, &newest] {
        store(&s, m).await;
    }
    // A backup whose manifest and copy are both damaged.
    let damaged = manifest(BackupKind::Full, ago(50), None);
    store(&s, &damaged).await;
    for k in [damaged.backup_id.manifest_key(), format!("{}.copy", damaged.backup_id.manifest_key())] {
        s.put(&k, Bytes::from_static(b"{}"), PutOptions::default()).await.unwrap();
    }
    // Leftovers: an old interrupted run, and a recent one (maybe still running).
    let stale_run = BackupId::new(BackupKind::Full, ago(3), 0);
    s.put(&stale_run.key("data/w01-000001.pack"), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
    age_files(&dir.path().join(stale_run.prefix()), 3);
    let recent_run = BackupId::new(BackupKind::Full, Utc::now() - chrono::Duration::hours(1), 0);
    s.put(&recent_run.key("data/w01-000001.pack"), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();

    let settings = local_settings(dir.path(), 7);

    // Dry run: the plan, nothing touched, no lock taken.
    let dry = expire::run(&settings, &ExpireOptions { dry_run: true, keep_full: 1 }).await.unwrap();
    assert!(dry.is_complete());
    let r = &dry.repositories[0];
    assert_eq!(r.retention_days, 7);
    let deleted: Vec<&str> = r.deleted.iter().map(|b| b.backup_id.as_str()).collect();
    assert_eq!(deleted, vec![pre_restore.backup_id.as_str(), old_incr.backup_id.as_str(), old_full.backup_id.as_str()]);
    assert_eq!(r.incomplete_removed, vec![stale_run.to_string()]);
    assert!(r.problems.iter().any(|p| p.contains(damaged.backup_id.as_str())), "{:?}", r.problems);
    let text = dry.render();
    assert!(text.contains("would delete") && text.contains("needed by") && text.contains("newest full backup"), "{text}");
    assert!(exists(&s, &old_full.backup_id).await && exists(&s, &stale_run).await);
    serde_json::to_value(&dry).unwrap();

    // The real run deletes exactly that.
    let report = expire::run(&settings, &ExpireOptions { dry_run: false, keep_full: 1 }).await.unwrap();
    assert!(report.is_complete(), "{}", report.render());
    for gone in [&old_full.backup_id, &old_incr.backup_id, &pre_restore.backup_id, &stale_run] {
        assert!(!exists(&s, gone).await, "{gone} should be gone");
    }
    for kept in [&chain_full.backup_id, &chain_incr.backup_id, &newest.backup_id, &damaged.backup_id, &recent_run] {
        assert!(exists(&s, kept).await, "{kept} should be kept");
    }
    let kept = &report.repositories[0].kept;
    assert!(kept.iter().any(|b| b.backup_id == chain_full.backup_id.as_str() && b.reason.contains("needed by")));
    assert!(s.list("locks/").await.unwrap().is_empty(), "expire lock released");

    // A second run has nothing left to do.
    let again = expire::run(&settings, &ExpireOptions::default()).await.unwrap();
    assert!(again.repositories[0].deleted.is_empty() && again.repositories[0].incomplete_removed.is_empty());
}

#[tokio::test]
async fn an_interrupted_expire_leaves_an_incomplete_folder_that_the_next_run_removes() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(dir.path());
    meta::ensure(&s).await.unwrap();
    let old = manifest(BackupKind::Full, ago(30), None);
    let newest = manifest(BackupKind::Full, ago(1), None);
    store(&s, &old).await;
    store(&s, &newest).await;
    age_files(&dir.path().join(old.backup_id.prefix()), 30);
    // Interrupted right after the manifests went: invisible, data still there.
    s.delete(&old.backup_id.manifest_key()).await.unwrap();
    s.delete(&format!("{}.copy", old.backup_id.manifest_key())).await.unwrap();
    assert_eq!(catalog::list_backups(&s).await.unwrap().len(), 1);
    let report = expire::run(&local_settings(dir.path(), 7), &ExpireOptions::default()).await.unwrap();
    assert_eq!(report.repositories[0].incomplete_removed, vec![old.backup_id.to_string()]);
    assert!(!exists(&s, &old.backup_id).await);
    assert!(exists(&s, &newest.backup_id).await);
}

#[tokio::test]
async fn expire_refuses_while_a_backup_holds_its_lock_and_skips_empty_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
    meta::ensure(s.as_ref()).await.unwrap();
    let old = manifest(BackupKind::Full, ago(30), None);
    store(s.as_ref(), &old).await;
    store(s.as_ref(), &manifest(BackupKind::Full, ago(1), None)).await;
    let held = RepoLock::acquire(s.clone(), "backup", LockMode::Shared, &LockOptions::default()).await.unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut settings = local_settings(dir.path(), 7);
    settings.repos.push(RepoSpec::Local(empty.path().into()));
    let report = expire::run(&settings, &ExpireOptions::default()).await.unwrap();
    assert!(!report.is_complete());
    let err = report.repositories[0].error.as_deref().unwrap();
    assert!(err.contains("is locked by backup"), "{err}");
    assert!(exists(s.as_ref(), &old.backup_id).await, "nothing deleted under a shared lock");
    assert!(report.repositories[1].error.is_none());
    assert!(report.repositories[1].problems[0].contains("nothing to expire"));
    held.release().await.unwrap();
    let report = expire::run(&settings, &ExpireOptions::default()).await.unwrap();
    assert!(report.is_complete(), "{}", report.render());
    assert!(!exists(s.as_ref(), &old.backup_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_never_touches_a_running_backup() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("expire_running").await;
    cluster.execute(&db, "CREATE TABLE big (id bigint, pad text); INSERT INTO big SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 400000) i;").await;
    let repo = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(repo.path());
    let bs = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    let opts = BackupOptions { chunk_size: 64 << 10, pack_size: 256 << 10, ..BackupOptions::default() };
    let running = tokio::spawn({
        let bs = bs.clone();
        async move { backup::run(&bs, &opts).await }
    });
    // Wait until the backup has written data objects (its folder has no manifest yet).
    let mut seen = false;
    for _ in 0..2000 {
        if s.list("backups/").await.unwrap().iter().any(|o| o.key.ends_with(".pack")) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "backup wrote no data object");
    // Ten days in the future with zero retention, the unfinished folder would
    // be an old leftover: only the backup's shared lock protects it.
    let mut es = bs.clone();
    es.local_retention_days = 0;
    let future = Utc::now() + chrono::Duration::days(10);
    let report = expire::run_with(&es, &ExpireOptions::default(), future, &LockOptions::default()).await.unwrap();
    let err = report.repositories[0].error.as_deref().expect("expire must be refused while the backup runs");
    assert!(err.contains("locked by backup"), "{err}");
    let done = running.await.unwrap().unwrap();
    read_back(&s, &done.manifest).await;
    assert!(s.list("locks/").await.unwrap().is_empty(), "backup lock released");
}

#[tokio::test]
async fn change_segments_go_once_no_kept_backup_replays_them() {
    use pgkeep::repo::layout::{part_key, segment_key};
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(dir.path());
    meta::ensure(&s).await.unwrap();
    let slot_backup = |at, lsn| {
        let mut m = manifest(BackupKind::Full, at, None);
        m.snapshot = SnapshotInfo { method: SnapshotMethod::ReplicationSlot, consistent_lsn: Lsn(lsn), slot_name: None, slot_kept: false, server_time: None };
        m
    };
    let old = slot_backup(ago(40), 150);
    let kept = slot_backup(ago(1), 250);
    for m in [&old, &kept] {
        store(&s, m).await;
    }
    // Cluster 1's stream; cluster 2 has no backup here, so its segments stay.
    let segs: Vec<String> = [(100, 200), (200, 300), (300, 400)].iter().map(|(a, b)| segment_key("1-pgkeep_app", Lsn(*a), Lsn(*b))).collect();
    let other = segment_key("2-pgkeep_app", Lsn(1), Lsn(2));
    // Parts of large transactions: committed at 180 (in the kept backup) and at 260 (replayed).
    let (old_part, new_part) = (part_key("1-pgkeep_app", Lsn(180), 1), part_key("1-pgkeep_app", Lsn(260), 1));
    for k in segs.iter().chain([&other, &old_part, &new_part]) {
        s.put(k, Bytes::from_static(b"seg"), PutOptions::default()).await.unwrap();
    }
    let settings = local_settings(dir.path(), 7);
    let dry = expire::run(&settings, &ExpireOptions { dry_run: true, keep_full: 1 }).await.unwrap();
    assert_eq!(dry.repositories[0].segments_removed, 1, "{}", dry.render());
    assert!(s.head(&segs[0]).await.unwrap().is_some(), "a dry run deletes nothing");
    assert!(s.head(&old_part).await.unwrap().is_some(), "a dry run deletes nothing");

    let report = expire::run(&settings, &ExpireOptions { dry_run: false, keep_full: 1 }).await.unwrap();
    assert!(report.render().contains("1 change segment(s) older than every kept backup"), "{}", report.render());
    // The old backup went; its segment (100..200) went with it; 200..300 holds the kept backup's point.
    assert!(!exists(&s, &old.backup_id).await);
    assert!(s.head(&segs[0]).await.unwrap().is_none());
    for k in segs[1..].iter().chain([&other, &new_part]) {
        assert!(s.head(k).await.unwrap().is_some(), "{k} kept");
    }
    assert!(s.head(&old_part).await.unwrap().is_none(), "the part of a transaction in the kept backup went");
}
