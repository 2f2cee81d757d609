//! Transactions larger than `stream`'s memory (the `pgkeep` binary, as an
//! operator runs it, with `--transaction-memory 8MiB`): archived in parts
//! with the stream's peak RSS bounded, restored exactly at `latest` and at a
//! time before the transaction; and after `kill -9` while the parts are
//! being stored, the restarted stream archives it again and the restore is
//! still exact.

use crate::harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;

/// The transaction memory the tests give `stream`.
const BUDGET_MIB: u64 = 8;
/// Peak RSS allowed: the budget, the open segment and its encoding, and the
/// process itself (tokio, TLS, the SDKs) in a debug build.
const MAX_RSS_MIB: u64 = 100;

const SCHEMA: &str = "
CREATE TABLE big (id bigint PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
CREATE TABLE small (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO small SELECT g, g FROM generate_series(1, 100) g;
INSERT INTO big SELECT g, g % 7, 'seed' FROM generate_series(1, 1000) g;";

/// One transaction of `rows` inserts of ~140 bytes, updates and deletes of
/// some of them, and changes of another table.
fn big_transaction(rows: u64) -> String {
    format!(
        "BEGIN;
         INSERT INTO big SELECT g, g % 7, repeat(md5(g::text), 4) FROM generate_series(1001, {rows}) g;
         UPDATE big SET payload = 'u' || payload WHERE id % 10 = 0;
         DELETE FROM big WHERE id % 100 = 1;
         UPDATE small SET v = v + 1000 WHERE id <= 50;
         COMMIT;"
    )
}

fn pgkeep(cluster: &PgCluster, db: &str, repo: &Path) -> Command {
    let mut cmd = harness::streaming::pgkeep_cli(cluster, db, repo);
    cmd.env("EXPIRE_AFTER_BACKUP", "false");
    cmd
}

fn start_stream(cluster: &PgCluster, db: &str, repo: &Path, budget_mib: u64) -> Child {
    pgkeep(cluster, db, repo)
        .args(["-q", "stream", "--segment-seconds", "1", "--no-auto-full-backup", "--transaction-memory"])
        .arg(format!("{budget_mib}MiB"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Peak resident set of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmHWM");
    kb / 1024
}

/// The parts the stored segments name (their metadata's `parts`).
fn parts_named(repo: &Path) -> u64 {
    let mut n = 0;
    for stream in std::fs::read_dir(repo.join("changes")).unwrap().flatten() {
        for seg in std::fs::read_dir(stream.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".seg")) {
            let bytes = std::fs::read(seg.path()).unwrap();
            let line = &bytes[8..8 + bytes[8..].iter().position(|b| *b == b'\n').unwrap()];
            let meta: serde_json::Value = serde_json::from_slice(line).unwrap();
            n += meta["parts"].as_u64().unwrap_or(0);
        }
    }
    n
}

/// Every transaction part stored in the local repository.
fn part_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(streams) = std::fs::read_dir(repo.join("changes")) else { return out };
    for stream in streams.flatten() {
        for txn in std::fs::read_dir(stream.path()).into_iter().flatten().flatten() {
            if txn.file_name().to_string_lossy().ends_with(".txn") {
                out.extend(std::fs::read_dir(txn.path()).unwrap().flatten().map(|p| p.path()).filter(|p| p.extension().is_some_and(|e| e == "part")));
            }
        }
    }
    out
}

async fn wait_caught_up(client: &tokio_postgres::Client, slot: &str) {
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(300);
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

async fn hashes(client: &tokio_postgres::Client) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for t in ["big", "small"] {
        let sql = format!("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {t} t");
        let row = client.query_one(&sql, &[]).await.unwrap();
        out.push((t.to_string(), row.get(0), row.get(1)));
    }
    out
}

/// `restore latest` to `target` ("latest" or a time) into `into`; returns the JSON report.
fn restore(cluster: &PgCluster, db: &str, repo: &Path, target: &str, into: &str) -> serde_json::Value {
    let out = pgkeep(cluster, db, repo).args(["restore", "latest", "--target-time", target, "--target-db", into, "--yes", "--json"]).output().unwrap();
    assert!(out.status.success(), "restore to {target}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Fixture {
    cluster: PgCluster,
    db: String,
    repo: tempfile::TempDir,
    client: tokio_postgres::Client,
    slot: String,
}

/// A database with the schema, a stream on it, and the full backup it continues.
async fn fixture(prefix: &str) -> (Fixture, Child) {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db(prefix).await;
    cluster.execute(&db, SCHEMA).await;
    let repo = tempfile::tempdir().unwrap();
    let client = cluster.client(&db).await;
    let slot = format!("pgkeep_{db}");
    let stream = start_stream(&cluster, &db, repo.path(), BUDGET_MIB);
    harness::streaming::wait_for_slot(&client, &slot, Some(true)).await;
    let out = pgkeep(&cluster, &db, repo.path()).args(["-q", "backup"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (Fixture { cluster, db, repo, client, slot }, stream)
}

/// Stop the stream cleanly once it has archived everything written.
async fn stop_caught_up(f: &Fixture, mut stream: Child) -> u64 {
    wait_caught_up(&f.client, &f.slot).await;
    let rss = peak_rss_mib(stream.id());
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    rss
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_many_times_the_memory_budget_streams_in_bounded_memory_and_restores_exactly() {
    let (f, stream) = fixture("bigtxn").await;
    f.client.batch_execute("UPDATE small SET v = -1 WHERE id = 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before_time: chrono::DateTime<chrono::Utc> = f.client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    let before = hashes(&f.client).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // ~700k rows: about 100 MiB of changes, twelve times the budget.
    f.client.batch_execute(&big_transaction(700_000)).await.unwrap();
    f.client.batch_execute("INSERT INTO small VALUES (1000, 1); UPDATE big SET grp = 99 WHERE id = 5000").await.unwrap();
    let rss = stop_caught_up(&f, stream).await;
    let parts = part_files(f.repo.path()).len();
    eprintln!("stream peak RSS {rss} MiB with a {BUDGET_MIB} MiB budget; {parts} parts");
    assert!(parts >= 8, "the transaction went to parts: {parts}");
    assert!(rss <= MAX_RSS_MIB, "stream peak RSS {rss} MiB above {MAX_RSS_MIB} MiB");
    let after = hashes(&f.client).await;
    assert_eq!(after[0].1, 1000 + 699_000 - 7000, "source row count");

    // Latest: the source exactly.
    let report = restore(&f.cluster, &f.db, f.repo.path(), "latest", "bigtxn_latest");
    let replayed = report["point_in_time"]["applied"]["changes"].as_u64().unwrap();
    assert!(replayed >= 699_000 + 70_000, "replayed {replayed} changes");
    assert_eq!(hashes(&f.cluster.client("bigtxn_latest").await).await, after);
    // Before the big transaction: the state then.
    restore(&f.cluster, &f.db, f.repo.path(), &before_time.to_rfc3339(), "bigtxn_before");
    assert_eq!(hashes(&f.cluster.client("bigtxn_before").await).await, before);

    // verify reads every part back; a missing one fails, named.
    let out = pgkeep(&f.cluster, &f.db, f.repo.path()).args(["verify", "latest"]).output().unwrap();
    assert!(out.status.success(), "verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let gone = part_files(f.repo.path()).into_iter().max().unwrap();
    std::fs::remove_file(&gone).unwrap();
    let out = pgkeep(&f.cluster, &f.db, f.repo.path()).args(["verify", "latest"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let name = gone.file_name().unwrap().to_string_lossy().to_string();
    assert!(!out.status.success() && text.contains(&name), "verify without {name}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_large_transaction_is_stored_in_parts_then_restore_is_exact() {
    let (f, mut stream) = fixture("bigkill").await;
    f.client.batch_execute(&big_transaction(400_000)).await.unwrap();
    // With an 8 MiB budget, kill once four parts are stored (before the transaction's segment).
    let deadline = Instant::now() + Duration::from_secs(120);
    while part_files(f.repo.path()).len() < 4 {
        assert!(Instant::now() < deadline, "no parts were stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.kill().unwrap();
    stream.wait().unwrap();
    let confirmed_in_txn: bool = f
        .client
        .query_one("SELECT confirmed_flush_lsn < pg_current_wal_insert_lsn() FROM pg_replication_slots WHERE slot_name = $1", &[&f.slot])
        .await
        .unwrap()
        .get(0);
    assert!(confirmed_in_txn, "the slot was not confirmed past the unfinished transaction");
    harness::streaming::wait_for_slot(&f.client, &f.slot, Some(false)).await;
    f.client.batch_execute("INSERT INTO small VALUES (2000, 2)").await.unwrap();

    // The restarted stream gets the transaction again and archives it whole, here with
    // a larger budget: fewer parts, so the first run's extra ones must be removed.
    let stream = start_stream(&f.cluster, &f.db, f.repo.path(), 32);
    harness::streaming::wait_for_slot(&f.client, &f.slot, Some(true)).await;
    let rss = stop_caught_up(&f, stream).await;
    eprintln!("restarted stream peak RSS {rss} MiB with a 32 MiB budget");
    assert!(rss <= MAX_RSS_MIB + 48, "stream peak RSS {rss} MiB above {} MiB", MAX_RSS_MIB + 48);
    let (stored, named) = (part_files(f.repo.path()).len() as u64, parts_named(f.repo.path()));
    // Fewer than the first run had stored: the second run archived it, and the extra parts went.
    assert!((1..4).contains(&named) && stored == named, "{stored} parts stored, {named} named by segments");
    let report = restore(&f.cluster, &f.db, f.repo.path(), "latest", "bigkill_latest");
    assert!(report["point_in_time"]["transactions"].as_u64().unwrap() >= 2);
    assert_eq!(hashes(&f.cluster.client("bigkill_latest").await).await, hashes(&f.client).await);
}
