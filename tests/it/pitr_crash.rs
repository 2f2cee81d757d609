//! The archive survives crashes: `pgkeep stream` (the binary, as an
//! operator runs it) is killed with SIGKILL several times while pgbench
//! writes, and restarted each time. A point-in-time restore to `latest` of
//! the full backup taken at the start must then equal the source, table by
//! table: no transaction lost, none applied twice.

use crate::harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;

fn pgkeep(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Command {
    let mut cmd = harness::streaming::pgkeep_cli(cluster, db, repo);
    cmd.env("EXPIRE_AFTER_BACKUP", "false");
    cmd
}

fn start_stream(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Child {
    pgkeep(cluster, db, repo)
        .args(["-q", "stream", "--segment-seconds", "1", "--no-auto-full-backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_active(client: &tokio_postgres::Client, slot: &str, active: bool) {
    harness::streaming::wait_for_slot(client, slot, Some(active)).await
}

/// Wait until slot `slot` has confirmed everything written so far (the archive holds it all).
async fn wait_caught_up(client: &tokio_postgres::Client, slot: &str) {
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let caught_up: bool = client
            .query_one("SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $2", &[&end, &slot])
            .await
            .unwrap()
            .get(0);
        if caught_up {
            return;
        }
        assert!(Instant::now() < deadline, "the stream never caught up to {end}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `pgkeep list` shows at least `n` finished backups.
async fn wait_backups(cluster: &PgCluster, db: &str, repo: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = pgkeep(cluster, db, repo).args(["list", "--json"]).output().unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if listed.as_array().map_or(0, |a| a.len()) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "fewer than {n} finished backups");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn table_hashes(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"] {
        let sql = format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t");
        out.push((t.to_string(), client.query_one(&sql, &[]).await.unwrap().get(0)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pgbench_then_restore_latest_equals_the_source() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("crash").await;
    let repo = tempfile::tempdir().unwrap();
    let s = cluster.superuser_settings(&db);
    let pgbench = harness::postgres::bindir().join("pgbench");
    let bench = |args: &[&str]| {
        Command::new(&pgbench)
            .args(args)
            .args(["-h", &s.host, "-p", &s.port.to_string(), "-U", &s.user, &db])
            .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let init = bench(&["-i", "-s", "1", "-q"]).wait_with_output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let client = cluster.client(&db).await;
    let slot = format!("pgkeep_{db}");

    // Stream, then the full backup it continues.
    let mut stream = start_stream(&cluster, &db, repo.path());
    wait_active(&client, &slot, true).await;
    let out = pgkeep(&cluster, &db, repo.path()).args(["-q", "backup"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // pgbench_history has no primary key: list says its updates and deletes are not archived.
    let out = pgkeep(&cluster, &db, repo.path()).args(["list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("warning: table public.pgbench_history has no replica identity"), "{listing}");

    // pgbench for ~12 s; SIGKILL the stream every ~2.5 s and restart it.
    let mut run = bench(&["-n", "-c", "2", "-T", "12"]);
    let mut kills = 0;
    while run.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stream.kill().unwrap();
        stream.wait().unwrap();
        kills += 1;
        wait_active(&client, &slot, false).await;
        stream = start_stream(&cluster, &db, repo.path());
        wait_active(&client, &slot, true).await;
    }
    let bench_out = run.wait_with_output().unwrap();
    assert!(bench_out.status.success(), "{}", String::from_utf8_lossy(&bench_out.stderr));
    assert!(kills >= 3, "killed {kills} times");

    // Let the last stream catch up, then stop it cleanly.
    wait_caught_up(&client, &slot).await;
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());

    let out = pgkeep(&cluster, &db, repo.path())
        .args(["restore", "latest", "--target-time", "latest", "--target-db", "crash_restored", "--yes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let replayed = report["point_in_time"]["transactions"].as_u64().unwrap();
    assert!(replayed > 100, "replayed {replayed} transactions");
    let restored = cluster.client("crash_restored").await;
    let source = table_hashes(&client).await;
    assert_eq!(table_hashes(&restored).await, source);

    // Again in batches of 50 changes: batches end inside transactions, and
    // tables of a few keys are split between the two sessions.
    let out = pgkeep(&cluster, &db, repo.path())
        .env("PGKEEP_REPLAY_BATCH_CHANGES", "50")
        .args(["restore", "latest", "--target-time", "latest", "--target-db", "crash_small_batches", "--yes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore in small batches: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let batches = report["point_in_time"]["applied"]["batches"].as_u64().unwrap();
    let changes = report["point_in_time"]["applied"]["changes"].as_u64().unwrap();
    assert!(batches >= changes / 60 && batches > 10, "{batches} batches for {changes} changes");
    let restored = cluster.client("crash_small_batches").await;
    assert_eq!(table_hashes(&restored).await, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_mid_stream_lose_nothing() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("srvrestart").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g;").await;
    let repo = tempfile::tempdir().unwrap();
    let slot = format!("pgkeep_{db}");
    let mut stream = start_stream(&cluster, &db, repo.path());
    {
        let client = cluster.client(&db).await;
        wait_active(&client, &slot, true).await;
        let out = pgkeep(&cluster, &db, repo.path()).args(["-q", "backup"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Writes, a fast restart, writes, a crash (immediate), writes: the same stream process
    // reconnects by itself each time.
    for (round, mode) in [(0, "fast"), (1, "immediate"), (2, "")] {
        let client = cluster.client(&db).await;
        for i in 0..20 {
            client
                .batch_execute(&format!("UPDATE t SET v = v + 1 WHERE id = {}; INSERT INTO t VALUES ({}, {round})", i + 1, 1000 + round * 100 + i))
                .await
                .unwrap();
        }
        drop(client);
        if !mode.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.restart(mode);
        }
    }
    assert!(stream.try_wait().unwrap().is_none(), "the stream survives server restarts");
    let client = cluster.client(&db).await;
    wait_caught_up(&client, &slot).await;
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    let out = pgkeep(&cluster, &db, repo.path())
        .args(["restore", "latest", "--target-time", "latest", "--target-db", "srvrestart_restored", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let restored = cluster.client("srvrestart_restored").await;
    let q = "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM t";
    let want: String = client.query_one(q, &[]).await.unwrap().get(0);
    let got: String = restored.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_lost_its_wal_starts_a_new_covered_chain() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("lostslot").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before');").await;
    let repo = tempfile::tempdir().unwrap();
    let slot = format!("pgkeep_{db}");
    let client = cluster.client(&db).await;
    client.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").await.unwrap();
    client.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let mut stream = start_stream(&cluster, &db, repo.path());
    wait_active(&client, &slot, true).await;
    let out = pgkeep(&cluster, &db, repo.path()).args(["-q", "backup"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    client.batch_execute("UPDATE t SET v = 'streamed' WHERE id = 1").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    assert!(std::fs::read_dir(repo.path().join("changes")).unwrap().count() == 1, "the first chain exists");

    // While nothing streams, the server throws the slot's WAL away.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client.batch_execute("INSERT INTO t SELECT g, 'lost ' || g FROM generate_series(1000 + (random() * 1e6)::int, 1000 + (random() * 1e6)::int + 50) g ON CONFLICT DO NOTHING").await.unwrap();
        client.batch_execute("SELECT pg_switch_wal()").await.unwrap();
        client.batch_execute("CHECKPOINT").await.unwrap();
        let status: String = client.query_one("SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
        if status == "lost" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never lost its WAL (status {status})");
    }

    // Started again (with its automatic full backup): a new chain, covered by a new backup.
    let mut stream =
        pgkeep(&cluster, &db, repo.path()).args(["-q", "stream", "--segment-seconds", "1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_active(&client, &slot, true).await;
    wait_backups(&cluster, &db, repo.path(), 2).await;
    client.batch_execute("UPDATE t SET v = 'after' WHERE id = 1").await.unwrap();
    wait_caught_up(&client, &slot).await;
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    let streams: Vec<String> = std::fs::read_dir(repo.path().join("changes")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(streams.len(), 2, "old and new chains: {streams:?}");
    assert!(streams.iter().any(|s| s.ends_with(&format!("{slot}.1"))), "{streams:?}");

    let out = pgkeep(&cluster, &db, repo.path())
        .args(["restore", "latest", "--target-time", "latest", "--target-db", "lostslot_restored", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let q = "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM t";
    let want: String = client.query_one(q, &[]).await.unwrap().get(0);
    let got: String = cluster.client("lostslot_restored").await.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_swap_archiving_continues_for_the_live_database() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("swapstream").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');").await;
    let repo = tempfile::tempdir().unwrap();
    let slot = format!("pgkeep_{db}");
    {
        let client = cluster.client(&db).await;
        let mut stream = start_stream(&cluster, &db, repo.path());
        wait_active(&client, &slot, true).await;
        let out = pgkeep(&cluster, &db, repo.path()).args(["-q", "backup"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        client.batch_execute("INSERT INTO t VALUES (2, 'two')").await.unwrap();
        // No wait: a stop archives every transaction committed before it.
        unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
        assert!(stream.wait().unwrap().success());
    }
    // Restore (with the swap; `latest` replays the archive, so row 2 comes back too): the slot now belongs to <db>_old.
    let out = pgkeep(&cluster, &db, repo.path()).args(["restore", "latest", "--yes", "--no-pre-backup"]).output().unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let admin = cluster.client("postgres").await;
    let on: String = admin.query_one("SELECT database::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    assert_eq!(on, format!("{db}_old"));

    // stream again (with its automatic backup): a new slot and chain for the live database.
    let mut stream =
        pgkeep(&cluster, &db, repo.path()).args(["-q", "stream", "--segment-seconds", "1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let client = cluster.client(&db).await;
    wait_active(&client, &slot, true).await;
    let on: String = admin.query_one("SELECT database::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    assert_eq!(on, db, "the slot follows the live database");
    wait_backups(&cluster, &db, repo.path(), 2).await;
    client.batch_execute("INSERT INTO t VALUES (3, 'three')").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    let out = pgkeep(&cluster, &db, repo.path())
        .args(["restore", "latest", "--target-time", "latest", "--target-db", "swapstream_pitr", "--yes", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    // `restore latest` restored the latest data (the backup's row 1 and the archived row 2),
    // then row 3 came: the live database, exactly.
    let q = "SELECT string_agg(id::text, ',' ORDER BY id) FROM t";
    let live: String = client.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(live, "1,2,3");
    let got: String = cluster.client("swapstream_pitr").await.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(got, live, "{}", String::from_utf8_lossy(&out.stdout));
}
