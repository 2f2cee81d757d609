//! Backup edge cases on real clusters: thousands of tables, a value over
//! 100 MB, a non-superuser role, wal_level=replica, a killed process at
//! failpoints, and a database connection lost mid-COPY.

use crate::harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::backup_check::{read_back, settings};
use harness::postgres::{PgCluster, PgOptions, WalLevel};
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::config::{RepoSpec, Secret};
use pgkeep::repo::catalog;
use pgkeep::repo::manifest::SnapshotMethod;
use pgkeep::storage::local::LocalStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tables() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_many").await;
    let mut sql = String::new();
    for i in 0..2000 {
        sql.push_str(&format!("CREATE TABLE t_{i} (id int PRIMARY KEY, v text); INSERT INTO t_{i} VALUES ({i}, 'row');\n"));
    }
    cluster.execute(&db, &sql).await;
    let repo = tempfile::tempdir().unwrap();
    let report = backup::run(&settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]), &BackupOptions::default()).await.unwrap();
    let m = &report.manifest;
    assert_eq!(m.tables.len(), 2000);
    assert!(m.tables.iter().all(|t| t.rows == 1 && t.chunks.len() == 1));
    // Thousands of tables must not mean thousands of objects.
    assert!(m.objects.len() <= 4, "{} objects", m.objects.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_value_over_100_mb() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_toast").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE big (id int PRIMARY KEY, payload text); INSERT INTO big SELECT 1, repeat(md5('x'), 3300000); INSERT INTO big VALUES (2, 'small');",
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let report = backup::run(&settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]), &BackupOptions::default()).await.unwrap();
    let t = report.manifest.tables.iter().find(|t| t.name == "big").unwrap();
    assert_eq!(t.rows, 2);
    assert!(t.raw_bytes > 100_000_000, "{}", t.raw_bytes);
    // The huge row is split across chunks of about the chunk size (8 MiB).
    assert!(t.chunks.iter().all(|c| c.raw_size < 9 << 20), "chunks stay bounded");
    assert!(t.chunks.iter().filter(|c| c.continues).count() >= 10, "the huge row spans chunks");
    assert!(!t.chunks.last().unwrap().continues);
    assert_eq!(t.chunks.iter().map(|c| c.rows).sum::<u64>(), 2);
    // Read back whole: the fingerprint hashed across chunk boundaries is the one of the whole rows.
    read_back(&LocalStorage::new(repo.path()), &report.manifest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_superuser_role_with_read_all_data() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_role").await;
    cluster.execute(&db, "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 100); CREATE SEQUENCE s; SELECT nextval('s');").await;
    cluster.create_role("bk_reader", "reader-pw", "REPLICATION").await;
    cluster.execute("postgres", "GRANT pg_read_all_data TO bk_reader;").await;
    let mut db_settings = cluster.superuser_settings(&db);
    db_settings.user = "bk_reader".into();
    db_settings.password = Some(Secret::new("reader-pw"));
    let repo = tempfile::tempdir().unwrap();
    let report = backup::run(&settings(db_settings, vec![RepoSpec::Local(repo.path().into())]), &BackupOptions::default()).await.unwrap();
    assert_eq!(report.manifest.tables[0].rows, 100);
    assert_eq!(report.manifest.sequences[0].last_value, 1);
    assert_eq!(report.manifest.snapshot.method, SnapshotMethod::ReplicationSlot, "REPLICATION role uses the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_falls_back_to_exported_snapshot() {
    let cluster = PgCluster::start_with(PgOptions { wal_level: WalLevel::Replica, ..PgOptions::default() });
    let db = cluster.fresh_db("bk_replica").await;
    cluster.execute(&db, "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 10);").await;
    let repo = tempfile::tempdir().unwrap();
    let report = backup::run(&settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]), &BackupOptions::default()).await.unwrap();
    assert_eq!(report.manifest.snapshot.method, SnapshotMethod::ExportedSnapshot);
    assert_eq!(report.manifest.snapshot.slot_name, None);
    assert_eq!(report.manifest.tables[0].rows, 10);
}

fn run_binary(cluster: &PgCluster, db: &str, repo: &Path, failpoint: Option<&str>) -> std::process::Output {
    let s = cluster.superuser_settings(db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.args(["backup", "--chunk-size", "64KiB"])
        .env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("DB_SSLMODE", "disable")
        .env("BACKUP_DIR", repo);
    if let Some(f) = failpoint {
        cmd.env("PGKEEP_FAILPOINT", f);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backup_is_never_visible_and_rerun_succeeds() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_kill").await;
    cluster.execute(&db, "CREATE TABLE a (id int, v text); INSERT INTO a SELECT i, md5(i::text) FROM generate_series(1, 50000) i;").await;
    let repo = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(repo.path());
    for point in ["backup.after_chunk", "backup.before_manifest"] {
        let out = run_binary(cluster, &db, repo.path(), Some(point));
        assert!(!out.status.success(), "{point}: the process must die");
        assert!(String::from_utf8_lossy(&out.stderr).contains(point));
        assert!(catalog::list_backups(&storage).await.unwrap().is_empty(), "{point}: no visible backup");
    }
    // Both killed runs had claimed their ids (docs/FORMAT.md §2.2) and the
    // second left complete packs: two incomplete backups, not backups.
    assert_eq!(catalog::incomplete_backups(&storage).await.unwrap().len(), 2);
    // Make sure the rerun gets a new second-resolution id or a suffix.
    let out = run_binary(cluster, &db, repo.path(), None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = catalog::list_backups(&storage).await.unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connection_fails_cleanly() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_lost").await;
    cluster.execute(&db, "CREATE TABLE a (id int, v text); INSERT INTO a SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 1500000) i;").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    let opts = BackupOptions { chunk_size: 64 << 10, ..BackupOptions::default() };
    let backup = tokio::spawn(async move { backup::run(&s, &opts).await });
    let killer = cluster.client("postgres").await;
    let mut killed = 0;
    for _ in 0..1000 {
        let row = killer
            .query_one(
                "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity WHERE application_name = 'pgkeep' AND datname = $1 AND query LIKE 'COPY%' AND state = 'active'",
                &[&db],
            )
            .await
            .unwrap();
        killed += row.get::<_, i64>(0);
        if killed > 0 || backup.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = backup.await.unwrap();
    assert!(killed > 0, "the COPY should still have been running");
    let err = result.unwrap_err();
    assert!(err.user_line().contains("backup full_backup_"), "{}", err.user_line());
    let storage = LocalStorage::new(repo.path());
    assert!(catalog::list_backups(&storage).await.unwrap().is_empty());
    assert!(catalog::incomplete_backups(&storage).await.unwrap().is_empty(), "a failed run cleans up after itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transaction_blocking_slot_creation_falls_back_with_a_consistent_backup() {
    // Own cluster: the open transaction would block slot creation for every test sharing one.
    let cluster = PgCluster::start_with(PgOptions::default());
    let db = cluster.fresh_db("bk_blocked").await;
    cluster.execute(&db, "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 10);").await;
    let blocker = cluster.client(&db).await;
    blocker.batch_execute("BEGIN; SELECT txid_current();").await.unwrap();
    let repo = tempfile::tempdir().unwrap();
    let opts = BackupOptions { lock_timeout: Duration::from_secs(2), ..BackupOptions::default() };
    let started = std::time::Instant::now();
    let report = backup::run(&settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]), &opts).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(report.manifest.snapshot.method, SnapshotMethod::ExportedSnapshot);
    assert_eq!(report.manifest.tables[0].rows, 10);
    let slots: i64 = cluster.client("postgres").await.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(slots, 0, "a cancelled slot creation leaves no slot behind");
    blocker.batch_execute("COMMIT").await.unwrap();
}
