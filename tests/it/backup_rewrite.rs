//! A table rewritten (ALTER TABLE … TYPE) after a backup's snapshot and
//! before its table locks: its rows in the new file are invisible to the
//! snapshot, so copying it would yield an empty table. The backup notices
//! (the snapshot's relfilenode differs from the current one), takes a new
//! snapshot and copies every row.

use crate::harness;

use std::time::{Duration, Instant};

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::config::{RepoSpec, Secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_between_snapshot_and_locks_makes_the_backup_take_a_new_snapshot() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rewrite").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;").await;
    // A role without REPLICATION: an exported snapshot, which does not wait for the rewrite.
    let role = format!("bk_{db}");
    cluster.create_role(&role, "bk-pass", "").await;
    cluster.execute(&db, &format!("GRANT pg_read_all_data TO {role}")).await;
    let repo = tempfile::tempdir().unwrap();
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    s.db.user = role.clone();
    s.db.password = Some(Secret::new("bk-pass"));

    // The rewrite is in progress (and holds its lock) when the backup takes its snapshot.
    let rewriter = cluster.client(&db).await;
    rewriter.batch_execute("BEGIN; ALTER TABLE t ALTER COLUMN v TYPE bigint").await.unwrap();
    let backup = tokio::spawn(async move { backup::run(&s, &BackupOptions::default()).await });
    let watcher = cluster.client(&db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: bool =
            watcher.query_one("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 't'::regclass AND NOT granted)", &[]).await.unwrap().get(0);
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the backup never waited for the table");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rewriter.batch_execute("COMMIT").await.unwrap();

    let report = backup.await.unwrap().unwrap_or_else(|e| panic!("backup: {}", e.user_line()));
    let t = report.manifest.tables.iter().find(|t| t.name == "t").unwrap();
    assert_eq!(t.rows, 1000, "every row of the rewritten table");
}
