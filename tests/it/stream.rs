//! `pgkeep::stream::run` against a real cluster (one per test: slots are
//! cluster-wide) and two local repositories:
//! - every committed transaction lands in exactly one segment, in commit
//!   order, segments are LSN-contiguous and identical in both repositories,
//!   and the slot is confirmed exactly up to the last segment's end;
//! - stop and start again: no gap and no duplicate across runs;
//! - kill -9 between the puts and the confirmation (failpoint
//!   `stream.after_segment_put`, in a child process): the next run resends
//!   and drops the archived transactions, no duplicate;
//! - a table without replica identity stays out of the publication, and
//!   UPDATE/DELETE on it keep working while streaming.

use crate::harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use harness::streaming;
use pgkeep::config::{DbSettings, RepoSpec, Secret, Settings, SslMode};
use pgkeep::replication::pgoutput::{self, PgOutputMessage};
use pgkeep::repo::layout::{Lsn, parse_segment_key};
use pgkeep::stream::{StreamOptions, StreamReport, segment};

const WAIT: Duration = Duration::from_secs(60);
const SLOT: &str = "pgkeep_stream_test";
const PUBLICATION: &str = "pgkeep_stream_test";

/// One committed transaction as seen in the archive: (xid, commit end LSN).
type Archived = (u32, Lsn);

fn options() -> StreamOptions {
    StreamOptions { segment_seconds: 1, ..StreamOptions::new(SLOT, PUBLICATION) }
}

fn start(settings: &Settings) -> streaming::Running {
    streaming::start(settings, options())
}

async fn stop(running: streaming::Running) -> StreamReport {
    streaming::stop(running).await
}

async fn wait_for_slot(client: &tokio_postgres::Client) {
    streaming::wait_for_slot(client, SLOT, None).await
}

/// Commit `n` transactions inserting into `table`; their xids in commit order.
async fn workload(client: &mut tokio_postgres::Client, table: &str, n: usize) -> Vec<u32> {
    let mut xids = Vec::new();
    for i in 0..n {
        let txn = client.transaction().await.unwrap();
        txn.execute(&format!("INSERT INTO {table} (v) VALUES ($1)"), &[&format!("row {i}")]).await.unwrap();
        let xid: String = txn.query_one("SELECT pg_current_xact_id()::text", &[]).await.unwrap().get(0);
        txn.commit().await.unwrap();
        xids.push(xid.parse::<u64>().unwrap() as u32);
    }
    xids
}

/// Decode every segment of both repositories; check they are identical and
/// contiguous; return the archived transactions in order and the chain's
/// (start, end).
async fn read_archive(repos: &[PathBuf]) -> (Vec<Archived>, Option<(Lsn, Lsn)>) {
    let mut per_repo = Vec::new();
    for dir in repos {
        let storage = pgkeep::storage::open(&RepoSpec::Local(dir.clone())).await.unwrap();
        let keys: Vec<String> = storage.list("changes/").await.unwrap().into_iter().map(|m| m.key).collect();
        let mut txns = Vec::new();
        let mut chain: Option<(Lsn, Lsn)> = None;
        for key in &keys {
            let (_, start, end) = parse_segment_key(key).unwrap_or_else(|| panic!("bad key {key}"));
            let seg = segment::decode(&storage.get(key, None).await.unwrap(), key).unwrap();
            assert_eq!((seg.meta.start_lsn, seg.meta.end_lsn), (start, end), "{key}");
            if let Some((_, prev_end)) = chain {
                assert_eq!(prev_end, start, "gap before {key}");
            }
            chain = Some((chain.map_or(start, |c| c.0), end));
            // Heartbeat segments (no transactions) carry no relations.
            assert!(seg.transactions.is_empty() || !seg.schema.is_empty(), "{key} carries its relations");
            for t in &seg.transactions {
                let Ok(PgOutputMessage::Begin(begin)) = pgoutput::decode(&t.messages[0]) else { panic!("no Begin") };
                let Ok(PgOutputMessage::Commit(commit)) = pgoutput::decode(t.messages.last().unwrap()) else { panic!("no Commit") };
                txns.push((begin.xid, commit.end_lsn));
            }
        }
        per_repo.push((keys, txns, chain));
    }
    if per_repo.len() > 1 {
        assert_eq!(per_repo[0].0, per_repo[1].0, "both repositories hold the same segments");
    }
    let (_, txns, chain) = per_repo.swap_remove(0);
    (txns, chain)
}

/// Wait until the archive holds `n` transactions.
async fn wait_archived(repos: &[PathBuf], n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Only the first repository while the stream runs: a segment may be
        // in one repository and not yet the other between its puts.
        if read_archive(&repos[..1]).await.0.len() >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never archived {n} transactions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn confirmed_flush(client: &tokio_postgres::Client) -> Lsn {
    let row = client.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&SLOT]).await.unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

struct Setup {
    cluster: PgCluster,
    db: String,
    _dirs: tempfile::TempDir,
    repos: Vec<PathBuf>,
    settings: Settings,
}

async fn setup(schema: &str) -> Setup {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("stream").await;
    cluster.execute(&db, schema).await;
    let dirs = tempfile::tempdir().unwrap();
    let repos: Vec<PathBuf> = ["a", "b"].iter().map(|n| dirs.path().join(n)).collect();
    for r in &repos {
        std::fs::create_dir_all(r).unwrap();
    }
    let settings = settings(cluster.superuser_settings(&db), repos.iter().cloned().map(RepoSpec::Local).collect());
    Setup { cluster, db, _dirs: dirs, repos, settings }
}

const SCHEMA: &str = "CREATE TABLE items (id serial PRIMARY KEY, v text)";

fn xids(archived: &[Archived]) -> Vec<u32> {
    archived.iter().map(|a| a.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_archived_once_in_order_and_confirmed() {
    let s = setup(SCHEMA).await;
    let mut client = s.cluster.client(&s.db).await;
    let running = start(&s.settings);
    wait_for_slot(&client).await;
    let expected = workload(&mut client, "items", 25).await;
    wait_archived(&s.repos, expected.len()).await;
    let report = stop(running).await;

    let (archived, chain) = read_archive(&s.repos).await;
    assert_eq!(xids(&archived), expected);
    let (start, end) = chain.unwrap();
    assert_eq!(report.durable_end, end);
    assert_eq!(report.start_lsn, start);
    assert_eq!(report.totals.transactions, 25);
    assert_eq!(report.totals.changes, 25);
    assert_eq!(confirmed_flush(&client).await, end);
    assert!(archived.windows(2).all(|w| w[0].1 < w[1].1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_leaves_no_gap_and_no_duplicate() {
    let s = setup(SCHEMA).await;
    let mut client = s.cluster.client(&s.db).await;
    let running = start(&s.settings);
    wait_for_slot(&client).await;
    let mut expected = workload(&mut client, "items", 10).await;
    wait_archived(&s.repos, 10).await;
    let first = stop(running).await;

    // Changes made while nothing streams wait in the slot.
    expected.extend(workload(&mut client, "items", 10).await);
    let running = start(&s.settings);
    expected.extend(workload(&mut client, "items", 5).await);
    wait_archived(&s.repos, 25).await;
    let second = stop(running).await;

    assert_eq!(second.start_lsn, first.durable_end);
    let (archived, chain) = read_archive(&s.repos).await;
    assert_eq!(xids(&archived), expected);
    assert_eq!(confirmed_flush(&client).await, chain.unwrap().1);
}

/// The child half of [`kill_after_put_before_confirm_leaves_no_duplicate`]:
/// does nothing unless `PGKEEP_STREAM_CHILD` holds `port db repo_a repo_b`.
#[tokio::test]
#[ignore = "run as a child process by kill_after_put_before_confirm_leaves_no_duplicate"]
async fn child_streamer() {
    let Ok(spec) = std::env::var("PGKEEP_STREAM_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let db = DbSettings {
        host: "127.0.0.1".to_string(),
        port: parts[0].parse().unwrap(),
        user: harness::postgres::SUPERUSER.to_string(),
        password: Some(Secret::new(harness::postgres::SUPERUSER_PASSWORD)),
        dbname: parts[1].to_string(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(10),
    };
    let repos = parts[2..].iter().map(|p| RepoSpec::Local(PathBuf::from(p))).collect();
    let settings = settings(db, repos);
    let _ = pgkeep::stream::run(&settings, &options(), std::future::pending()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_put_before_confirm_leaves_no_duplicate() {
    let s = setup(SCHEMA).await;
    let mut client = s.cluster.client(&s.db).await;
    // Create slot and publication first (a short clean run).
    let running = start(&s.settings);
    wait_for_slot(&client).await;
    let first = stop(running).await;
    let expected = workload(&mut client, "items", 5).await;

    let spec = format!("{} {} {} {}", s.cluster.port(), s.db, path(&s.repos[0]), path(&s.repos[1]));
    let status = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stream::child_streamer", "--ignored", "--nocapture"])
        .env("PGKEEP_STREAM_CHILD", spec)
        .env("PGKEEP_FAILPOINT", "stream.after_segment_put")
        .status();
    let status = tokio::time::timeout(WAIT, status).await.expect("child ends").unwrap();
    assert!(!status.success(), "the child must die at the failpoint");

    let (archived, chain) = read_archive(&s.repos).await;
    assert_eq!(xids(&archived), expected, "the segment was stored before the crash");
    let end = chain.unwrap().1;
    let confirmed = confirmed_flush(&client).await;
    assert!(confirmed >= first.durable_end && confirmed < end, "confirmed {confirmed}, segment end {end}");

    // The server resends the five transactions; they are dropped.
    let running = start(&s.settings);
    let more = workload(&mut client, "items", 3).await;
    wait_archived(&s.repos, 8).await;
    let report = stop(running).await;
    assert_eq!(report.start_lsn, end);
    let (archived, _) = read_archive(&s.repos).await;
    assert_eq!(xids(&archived), [expected, more].concat());
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_identity_stay_out_and_keep_working() {
    let s = setup(&format!("{SCHEMA}; CREATE TABLE loose (a int, b text); INSERT INTO loose VALUES (1, 'x'), (2, 'y')")).await;
    let mut client = s.cluster.client(&s.db).await;
    let running = start(&s.settings);
    wait_for_slot(&client).await;
    let published: Vec<String> = client
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", &[&PUBLICATION])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["items"]);
    assert_eq!(client.execute("UPDATE loose SET b = 'z' WHERE a = 1", &[]).await.unwrap(), 1);
    assert_eq!(client.execute("DELETE FROM loose WHERE a = 2", &[]).await.unwrap(), 1);
    let expected = workload(&mut client, "items", 2).await;
    wait_archived(&s.repos, 2).await;
    let report = stop(running).await;
    assert_eq!(report.tables_without_identity, [r#""public"."loose""#]);
    assert_eq!(xids(&read_archive(&s.repos).await.0), expected);
}
