//! Full backups against a real PostgreSQL cluster from the harness: what the
//! manifest says must match what is stored and what the database held.

use crate::harness;

use std::sync::Arc;

use harness::backup_check::{read_back, settings};
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::config::RepoSpec;
use pgkeep::pipeline::{Compression, TableFingerprint};
use pgkeep::repo::catalog::{self, CatalogEntry};
use pgkeep::storage::Storage;
use pgkeep::storage::local::LocalStorage;

/// The fingerprint of a live table computed the same way a restore will.
async fn live_fingerprint(cluster: &PgCluster, db: &str, qualified: &str) -> TableFingerprint {
    use futures::StreamExt;
    let conn = pgkeep::pg::connect(&cluster.superuser_settings(db)).await.unwrap();
    conn.client.batch_execute(pgkeep::pg::catalog::SESSION_SETUP).await.unwrap();
    let stream = conn.client.copy_out(format!("COPY {qualified} TO STDOUT").as_str()).await.unwrap();
    futures::pin_mut!(stream);
    let mut all = Vec::new();
    while let Some(b) = stream.next().await {
        all.extend_from_slice(&b.unwrap());
    }
    TableFingerprint::of_rows(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_covers_awkward_schemas_and_checks_out() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_shapes").await;
    cluster
        .execute(
            &db,
            r#"
            CREATE SCHEMA "Sales Data";
            CREATE TABLE "Sales Data"."Order ""Lines""" (id bigint PRIMARY KEY, "Ünïcode" text, note text);
            INSERT INTO "Sales Data"."Order ""Lines""" SELECT i, 'ü' || i, E'tab\there\nnewline \\ backslash' FROM generate_series(1, 30000) i;
            CREATE TABLE empty_table (x int);
            CREATE TABLE no_pk (a int, b text);
            INSERT INTO no_pk SELECT i % 10, 'dup' FROM generate_series(1, 1000) i;
            CREATE TABLE gen (a int, b int GENERATED ALWAYS AS (a * 2) STORED);
            INSERT INTO gen (a) SELECT generate_series(1, 100);
            CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k);
            CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (500);
            CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (500) TO (1000);
            INSERT INTO parted SELECT i, 'v' FROM generate_series(0, 999) i;
            CREATE SEQUENCE counter START 40; SELECT nextval('counter'), nextval('counter');
            CREATE VIEW v AS SELECT * FROM no_pk;
            "#,
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    let opts = BackupOptions { chunk_size: 64 << 10, ..BackupOptions::default() };
    let report = backup::run(&s, &opts).await.unwrap();
    let m = &report.manifest;
    assert!(m.backup_id.as_str().starts_with("full_backup_"));
    // wal_level=logical and a replication-capable role: the slot's exported snapshot.
    assert_eq!(m.snapshot.method, pgkeep::repo::manifest::SnapshotMethod::ReplicationSlot);
    let slot = m.snapshot.slot_name.clone().expect("slot name recorded");
    assert!(m.snapshot.consistent_lsn.0 > 0);
    let left = cluster.client("postgres").await.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap();
    assert!(left.is_empty(), "the temporary slot {slot} must not outlive the backup");

    let names: Vec<String> = m.tables.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
    for want in ["Sales Data.Order \"Lines\"", "public.empty_table", "public.no_pk", "public.gen", "public.parted_1", "public.parted_2"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n == "public.parted" || n == "public.v"), "parents and views have no data: {names:?}");
    let lines = m.tables.iter().find(|t| t.name == "Order \"Lines\"").unwrap();
    assert_eq!(lines.rows, 30000);
    assert!(lines.chunks.len() > 1, "64 KiB chunks should split 30k rows");
    assert_eq!(m.tables.iter().find(|t| t.name == "empty_table").unwrap().rows, 0);
    let gen_cols: Vec<&str> = m.tables.iter().find(|t| t.name == "gen").unwrap().columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(gen_cols, vec!["a"], "generated columns are not copied");
    let seq = m.sequences.iter().find(|q| q.name == "counter").unwrap();
    assert_eq!((seq.last_value, seq.is_called), (41, true));

    let storage = LocalStorage::new(repo.path());
    read_back(&storage, m).await;
    let live = live_fingerprint(cluster, &db, r#""Sales Data"."Order ""Lines""""#).await;
    assert_eq!(live.to_hex(), lines.fingerprint);

    // The schema holds the DDL sections.
    let comp = Compression::from_manifest(&m.compression.algorithm, m.compression.level).unwrap();
    let pre = &m.schema.pre_data;
    let stored = storage.get(&m.backup_id.key(&pre.object), Some(pre.offset..pre.offset + pre.stored_size)).await.unwrap();
    let pre_sql = String::from_utf8(comp.decompress(&stored, pre.raw_size as usize, "pre").unwrap()).unwrap();
    assert!(pre_sql.contains("CREATE TABLE \"Sales Data\".\"Order \"\"Lines\"\"\""), "pre-data lacks the table");
    assert!(!pre_sql.contains("PRIMARY KEY"), "constraints belong to post-data");
    let post = &m.schema.post_data;
    let stored = storage.get(&m.backup_id.key(&post.object), Some(post.offset..post.offset + post.stored_size)).await.unwrap();
    let post_sql = String::from_utf8(comp.decompress(&stored, post.raw_size as usize, "post").unwrap()).unwrap();
    assert!(post_sql.contains("PRIMARY KEY"));

    // The catalog lists exactly this backup.
    let listed = catalog::list_backups(&storage).await.unwrap();
    assert!(matches!(&listed[..], [CatalogEntry::Valid(x)] if x.backup_id == m.backup_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_one_snapshot_under_concurrent_transfers() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_consistency").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE acct_a (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE acct_b (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO acct_a SELECT i, 1000 FROM generate_series(1, 20000) i;
             INSERT INTO acct_b SELECT i, 1000 FROM generate_series(1, 20000) i;",
        )
        .await;
    let total: i64 = 2 * 20000 * 1000;

    // A workload moving money from acct_a to acct_b in single transactions.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut movers = Vec::new();
    for w in 0..2 {
        let client = cluster.client(&db).await;
        let stop = stop.clone();
        movers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = ((n * 7919 + w * 13) % 20000 + 1) as i32;
                client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE acct_a SET balance = balance - 5 WHERE id = {id}; \
                         UPDATE acct_b SET balance = balance + 5 WHERE id = {id}; COMMIT;"
                    ))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let repo = tempfile::tempdir().unwrap();
    let opts = BackupOptions { chunk_size: 64 << 10, ..BackupOptions::default() };
    let report = backup::run(&settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]), &opts).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut moved = 0;
    for m in movers {
        moved += m.await.unwrap();
    }
    assert!(moved > 0, "the workload ran");

    let storage = LocalStorage::new(repo.path());
    let rows = read_back(&storage, &report.manifest).await;
    let mut sum = 0i64;
    for (t, raw) in report.manifest.tables.iter().zip(rows) {
        assert!(t.name == "acct_a" || t.name == "acct_b");
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let text = std::str::from_utf8(line).unwrap();
            let balance: i64 = text.split('\t').nth(1).unwrap().parse().unwrap();
            sum += balance;
        }
    }
    assert_eq!(sum, total, "balances from one snapshot must add up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backup_leaves_nothing_visible_and_rerun_succeeds() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bk_fail").await;
    cluster.execute(&db, "CREATE TABLE ok (id int); INSERT INTO ok SELECT generate_series(1, 1000); CREATE TABLE secret_t (id int);").await;
    cluster.create_role("bk_limited", "limited-pw", "").await;
    cluster.execute(&db, "GRANT SELECT ON ok TO bk_limited;").await;
    let repo = tempfile::tempdir().unwrap();
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    s.db.user = "bk_limited".into();
    s.db.password = Some(pgkeep::config::Secret::new("limited-pw"));
    let err = backup::run(&s, &BackupOptions::default()).await.unwrap_err();
    let line = err.user_line();
    assert!(line.contains("secret_t") && line.contains("bk_limited"), "{line}");
    assert!(!line.contains("limited-pw"));
    let storage = LocalStorage::new(repo.path());
    assert!(catalog::list_backups(&storage).await.unwrap().is_empty());
    assert!(catalog::incomplete_backups(&storage).await.unwrap().is_empty());

    cluster.execute(&db, "GRANT SELECT ON secret_t TO bk_limited;").await;
    let report = backup::run(&s, &BackupOptions::default()).await.unwrap();
    assert_eq!(report.manifest.tables.iter().map(|t| t.rows).sum::<u64>(), 1000);
    assert_eq!(catalog::list_backups(&storage).await.unwrap().len(), 1);
}
