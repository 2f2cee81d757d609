//! The cross-version subset: run on every major from 14 to 18 by
//! `scripts/test.sh` (`PGKEEP_TEST_PG_MAJOR=<major>`; the default run uses
//! the default server, 15). pgkeep always runs with the newest installed
//! pg_dump, as on a mixed fleet, so a restore into 14–16 also proves that
//! pg_dump 17+'s settings those servers lack are left out.
//! - backup and restore fidelity: schema dump and every table equal;
//! - stream + point-in-time restore to `latest`, DDL captured through
//!   logical messages included; the stream's slot is a failover slot on 17+
//!   and `check` says so;
//! - a restore by a role with only LOGIN CREATEDB (not a superuser) that
//!   owns the database's objects.

mod harness;

use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::{PgCluster, newest_client_bindir, quote_ident};
use harness::streaming;
use harness::versions::{FIXTURE, pgkeep, run_ok, schema_dump, table_hashes};
use pgkeep::config::RepoSpec;
use pgkeep::stream::StreamOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_keep_schema_and_data_with_the_newest_pg_dump() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("mx_fidelity").await;
    cluster.execute(&db, FIXTURE).await;
    let repo = tempfile::tempdir().unwrap();

    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");
    let target = format!("{db}_copy");
    let out = run_ok(pgkeep(cluster, &db, repo.path()).args(["restore", "latest", "--target-db", &target, "--yes"]), "restore");

    assert_eq!(schema_dump(cluster, &db), schema_dump(cluster, &target), "schema dumps differ on PostgreSQL {}", cluster.major());
    let (source, restored) = (cluster.client(&db).await, cluster.client(&target).await);
    assert_eq!(table_hashes(&source).await, table_hashes(&restored).await);
    let next: i64 = restored.query_one("SELECT nextval('counter')", &[]).await.unwrap().get(0);
    assert_eq!(next, 101, "the sequence was set");
    let mv: i64 = restored.query_one("SELECT count(*) FROM mv_counts", &[]).await.unwrap().get(0);
    assert_eq!(mv, 7, "the materialized view was refreshed");
    // pg_dump 17+ writes `SET transaction_timeout`; servers before 17 do not have it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left_out = newest_client_bindir().0 >= 17 && cluster.major() < 17;
    assert_eq!(stderr.contains("transaction_timeout"), left_out, "PostgreSQL {}:\n{stderr}", cluster.major());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_point_in_time_restore_to_latest() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("mx_pitr").await;
    cluster.execute(&db, FIXTURE).await;
    cluster.execute(&db, "CREATE TABLE accounts (id int PRIMARY KEY, balance int, doc text); INSERT INTO accounts SELECT g, 100, NULL FROM generate_series(1, 100) g; UPDATE accounts SET doc = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1500) g) WHERE id = 1; \
         ALTER TABLE measurements_2025 REPLICA IDENTITY FULL; ALTER TABLE measurements_2026 REPLICA IDENTITY FULL;").await;
    let repo = tempfile::tempdir().unwrap();
    // DDL capture: its statements reach the stream as logical decoding messages.
    run_ok(pgkeep(cluster, &db, repo.path()).arg("setup"), "setup");
    let slot = format!("pgkeep_{db}");
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let running = streaming::start(&s, StreamOptions { segment_seconds: 1, ..StreamOptions::new(&slot, &slot) });
    let client = cluster.client(&db).await;
    streaming::wait_for_slot(&client, &slot, Some(true)).await;
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");

    for sql in [
        "UPDATE accounts SET balance = balance - 5 WHERE id = 1", // the TOASTed doc is unchanged
        "DELETE FROM accounts WHERE id BETWEEN 50 AND 60; INSERT INTO accounts VALUES (500, 1, 'new')",
        "UPDATE accounts SET id = 600 WHERE id = 2",
        "INSERT INTO measurements VALUES ('c9', '2026-06-01', 1); UPDATE measurements SET at = '2026-01-02' WHERE v = 3",
        "ALTER TABLE accounts ADD COLUMN note text DEFAULT 'n'",
        "UPDATE accounts SET note = 'after ddl' WHERE id = 3",
        "TRUNCATE no_pk; INSERT INTO no_pk VALUES (7, 'x')",
        "INSERT INTO everything (t, m) VALUES ('streamed', 'ok')",
    ] {
        client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    // Wait until the stream has confirmed everything, then stop it.
    let deadline = tokio::time::Instant::now() + streaming::WAIT;
    loop {
        let done: bool = client
            .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2", &[&end, &slot])
            .await
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stream never confirmed {end}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = streaming::stop(running).await;
    assert!(report.totals.transactions >= 8, "{report:?}");

    // 17+: the slot is a failover slot, and `check` says whether it is.
    let failover: Option<bool> =
        client.query_one("SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    let check = pgkeep(cluster, &db, repo.path()).arg("check").output().unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    if cluster.major() >= 17 {
        assert_eq!(failover, Some(true), "PostgreSQL {}", cluster.major());
        assert!(check_out.contains(&format!("slot {slot}")) && check_out.contains("failover yes, synchronized no"), "{check_out}");
    } else {
        assert_eq!(failover, None, "no failover column before 17");
        assert!(check_out.contains(&format!("slot {slot}")) && !check_out.contains("failover"), "{check_out}");
    }

    let target = format!("{db}_latest");
    let out = run_ok(
        pgkeep(cluster, &db, repo.path()).args(["restore", "latest", "--target-db", &target, "--target-time", "latest", "--yes"]),
        "restore --target-time latest",
    );
    let restored = cluster.client(&target).await;
    assert_eq!(table_hashes(&client).await, table_hashes(&restored).await, "PostgreSQL {}: {}", cluster.major(), String::from_utf8_lossy(&out.stdout));
    let note: String = restored.query_one("SELECT note FROM accounts WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(note, "after ddl", "the captured ALTER TABLE was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_by_a_role_with_createdb_but_not_superuser() {
    let cluster = PgCluster::shared();
    let role = format!("mx_owner_{}", std::process::id());
    cluster.create_role(&role, "owner-pw", "CREATEDB").await;
    let db = format!("mx_owned_{}", std::process::id());
    cluster.execute("postgres", &format!("CREATE DATABASE {} OWNER {}", quote_ident(&db), quote_ident(&role))).await;
    // Every object is created (and owned) by the role.
    cluster.execute(&db, &format!("SET ROLE {}; {FIXTURE}", quote_ident(&role))).await;
    let repo = tempfile::tempdir().unwrap();
    run_ok(pgkeep(cluster, &db, repo.path()).arg("backup"), "backup");

    let target = format!("{db}_restored");
    run_ok(
        pgkeep(cluster, &db, repo.path()).env("DB_USER", &role).env("DB_PASSWORD", "owner-pw").args(["restore", "latest", "--target-db", &target, "--yes"]),
        "restore as a CREATEDB role",
    );
    assert_eq!(schema_dump(cluster, &db), schema_dump(cluster, &target));
    let restored = cluster.client(&target).await;
    assert_eq!(table_hashes(&cluster.client(&db).await).await, table_hashes(&restored).await);
    let owners: Vec<String> = restored
        .query("SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![role.clone()], "objects owned by the restoring role");
    let super_: bool = restored.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap().get(0);
    assert!(!super_);
}
