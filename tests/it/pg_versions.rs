//! Tests that need particular majors, whatever `PGKEEP_TEST_PG_MAJOR` says:
//! - the upgrade path: a backup of PostgreSQL 15 restores onto 17 (schema
//!   and every table equal), and a backup of 17 is refused by a 15 server
//!   with one line naming both versions, before anything is created;
//! - on 17, a stream slot made before failover slots existed (by an older
//!   pgkeep, or before an upgrade) becomes one when `stream` starts;
//! - PostgreSQL 18's `idle_replication_slot_timeout`: the stream's slot,
//!   invalidated for `idle_timeout`, is reported by `check`, and the next
//!   `stream` archives as a new epoch (`<stream id>.1`), as after a lost slot.

use crate::harness;

use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::{PgCluster, PgOptions};
use harness::streaming;
use harness::versions::{FIXTURE, pgkeep, run_ok, schema_dump, table_hashes};
use pgkeep::config::RepoSpec;
use pgkeep::stream::StreamOptions;

async fn databases(cluster: &PgCluster) -> Vec<String> {
    let c = cluster.client("postgres").await;
    c.query("SELECT datname::text FROM pg_database ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_15_restores_onto_17_and_not_the_other_way() {
    let (old, new) = (PgCluster::start_major(15), PgCluster::start_major(17));
    assert_eq!((old.major(), new.major()), (15, 17));

    // The fixture made natively on 17: what the upgraded schema must look like
    // (17 prints view definitions differently from 15, so not the 15 dump).
    new.execute("postgres", "CREATE DATABASE shop17").await;
    new.execute("shop17", FIXTURE).await;

    // 15 -> 17: DB_* name the source database on the new cluster, restored with --target-db.
    old.execute("postgres", "CREATE DATABASE shop").await;
    old.execute("shop", FIXTURE).await;
    let repo = tempfile::tempdir().unwrap();
    run_ok(pgkeep(&old, "shop", repo.path()).arg("backup"), "backup on 15");
    // The new cluster does not have `shop`: the restore creates only shop_upgraded.
    run_ok(pgkeep(&new, "shop", repo.path()).args(["restore", "latest", "--target-db", "shop_upgraded", "--yes"]), "restore onto 17");
    assert_eq!(schema_dump(&new, "shop17"), schema_dump(&new, "shop_upgraded"), "schema after 15 -> 17");
    assert_eq!(table_hashes(&old.client("shop").await).await, table_hashes(&new.client("shop_upgraded").await).await);

    // 17 -> 15: refused up front, naming both versions; nothing created on 15.
    let repo17 = tempfile::tempdir().unwrap();
    run_ok(pgkeep(&new, "shop17", repo17.path()).arg("backup"), "backup on 17");
    old.execute("postgres", "CREATE DATABASE shop17").await;
    let before = databases(&old).await;
    let out = pgkeep(&old, "shop17", repo17.path()).args(["restore", "latest", "--target-db", "shop17_down", "--yes"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("older major")).unwrap_or_else(|| panic!("no refusal line: {stderr}"));
    assert!(line.contains("PostgreSQL 17.") && line.contains("PostgreSQL 15"), "{line}");
    assert_eq!(databases(&old).await, before, "nothing created on the older server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_18_an_idle_timeout_invalidation_starts_a_new_epoch() {
    let cluster = PgCluster::start_with(PgOptions { major: Some(18), extra_conf: vec!["idle_replication_slot_timeout = 1".into()], ..PgOptions::default() });
    cluster.execute("postgres", "CREATE DATABASE app").await;
    cluster.execute("app", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings("app"), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let client = cluster.client("app").await;
    let opts = || StreamOptions { segment_seconds: 1, ..StreamOptions::new("pgkeep_app", "pgkeep_app") };

    // A first run archives one transaction as epoch 0.
    let running = streaming::start(&s, opts());
    streaming::wait_for_slot(&client, "pgkeep_app", Some(true)).await;
    client.batch_execute("INSERT INTO t VALUES (1, 'a')").await.unwrap();
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = tokio::time::Instant::now() + streaming::WAIT;
    while !client
        .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pgkeep_app'", &[&end])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(tokio::time::Instant::now() < deadline, "the stream never confirmed {end}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = streaming::stop(running).await;
    assert!(!first.stream_id.contains('.'), "epoch 0: {}", first.stream_id);

    // Idle for more than a second, then a checkpoint invalidates the slot.
    let deadline = tokio::time::Instant::now() + streaming::WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        client.batch_execute("CHECKPOINT").await.unwrap();
        let reason: Option<String> =
            client.query_one("SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'pgkeep_app'", &[]).await.unwrap().get(0);
        if reason.as_deref() == Some("idle_timeout") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never invalidated: {reason:?}");
    }
    let check = pgkeep(&cluster, "app", repo.path()).arg("check").output().unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(check_out.contains("slot pgkeep_app") && check_out.contains("invalidated (idle_timeout)"), "{check_out}");
    assert_eq!(check.status.code(), Some(3), "an invalidated slot is an alert");

    // The next run drops it and archives as a new epoch, from a new slot.
    let running = streaming::start(&s, opts());
    streaming::wait_for_slot(&client, "pgkeep_app", Some(true)).await;
    client.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    let second = streaming::stop(running).await;
    assert_eq!(second.stream_id, format!("{}.1", first.stream_id));
    let reason: Option<String> =
        client.query_one("SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'pgkeep_app'", &[]).await.unwrap().get(0);
    assert_eq!(reason, None, "a fresh slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_17_an_existing_slot_becomes_a_failover_slot() {
    let cluster = PgCluster::start_major(17);
    cluster.execute("postgres", "CREATE DATABASE app").await;
    cluster.execute("app", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let client = cluster.client("app").await;
    client.batch_execute("SELECT pg_create_logical_replication_slot('pgkeep_app', 'pgoutput')").await.unwrap();
    let failover = async || -> bool { client.query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = 'pgkeep_app'", &[]).await.unwrap().get(0) };
    assert!(!failover().await, "made without failover");

    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings("app"), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let running = streaming::start(&s, StreamOptions::new("pgkeep_app", "pgkeep_app"));
    streaming::wait_for_slot(&client, "pgkeep_app", Some(true)).await;
    streaming::stop(running).await;
    assert!(failover().await, "stream made the existing slot a failover slot");
}
