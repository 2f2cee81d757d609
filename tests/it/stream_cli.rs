//! `pgkeep stream` as an operator runs it: a daemon that archives segments
//! until SIGTERM, flushes, exits 0; then `--remove` drops the slot and the
//! publication so no forgotten slot retains WAL.

use crate::harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;

fn pgkeep(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Command {
    harness::streaming::pgkeep_cli(cluster, db, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_daemon_flushes_on_sigterm_and_remove_cleans_up() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("streamcli").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    let repo = tempfile::tempdir().unwrap();
    let child = pgkeep(&cluster, &db, repo.path()).args(["stream", "--segment-seconds", "60"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the slot is active, then write.
    let client = cluster.client(&db).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active AND {}", harness::streaming::SLOT_READY),
                &[&format!("pgkeep_{db}")],
            )
            .await
            .unwrap()
            .get(0);
        if active == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "stream never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One simple-query batch: one implicit transaction with 109 row changes.
    client.batch_execute("INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i; UPDATE t SET v = 'y' WHERE id < 10;").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    // SIGTERM: the open segment (60 s limit not reached) must be flushed before exit.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 transaction(s)") && stdout.contains("109 change(s)"), "{stdout}");
    let segs: Vec<_> = walk(repo.path()).into_iter().filter(|p| p.ends_with(".seg")).collect();
    assert_eq!(segs.len(), 1, "{segs:?}");

    // Stop using it: slot and publication are removed, so no WAL is retained.
    let out = pgkeep(&cluster, &db, repo.path()).args(["stream", "--remove"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left: i64 = client.query_one("SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)", &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_still_advances_the_slot_with_heartbeat_segments() {
    // Keepalives every second or so.
    let cluster = PgCluster::start_with(harness::postgres::PgOptions { extra_conf: vec!["wal_sender_timeout = '2s'".into()], ..Default::default() });
    let db = cluster.fresh_db("streamhb").await;
    cluster.execute(&db, "CREATE TABLE published (id int PRIMARY KEY);").await;
    let repo = tempfile::tempdir().unwrap();
    let child = pgkeep(&cluster, &db, repo.path()).args(["stream"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let client = cluster.client(&db).await;
    let slot = format!("pgkeep_{db}");
    let confirmed = || async {
        let r = client
            .query_opt(
                &format!(
                    "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1 AND active AND {}",
                    harness::streaming::SLOT_READY
                ),
                &[&slot],
            )
            .await
            .unwrap();
        r.map(|r| r.get::<_, i64>(0))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = loop {
        if let Some(c) = confirmed().await {
            break c;
        }
        assert!(Instant::now() < deadline, "stream never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Only another database changes (every table of this one is published, those without a
    // key in the insert-only publication): ~30 MB of WAL the slot would otherwise retain.
    let other = cluster.fresh_db("streamcli_other").await;
    cluster.execute(&other, "CREATE TABLE unpublished (v text); INSERT INTO unpublished SELECT repeat('x', 100) FROM generate_series(1, 200000);").await;
    let target: i64 = client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now_at = start;
    while Instant::now() < deadline {
        now_at = confirmed().await.unwrap_or(now_at);
        // A heartbeat is due every 16 MiB of WAL (or 60 s): the first one suffices.
        if now_at - start > 16 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(now_at - start > 16 << 20, "the slot stayed behind: {start} -> {now_at} (WAL at {target})");
    // The WAL that exists now (insert position, read after the confirmation): with
    // asynchronous commit the write position sampled earlier may lag behind it.
    let exists: i64 = client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8", &[]).await.unwrap().get(0);
    assert!(now_at <= exists, "confirmed {now_at}, beyond the WAL that exists ({exists})");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The archive stays contiguous: verify-style check of the keys.
    let mut ranges: Vec<(u64, u64)> = walk(repo.path())
        .into_iter()
        .filter_map(|p| {
            let name = p.rsplit('/').next()?.strip_suffix(".seg")?.to_string();
            let (a, b) = name.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    ranges.sort();
    assert!(!ranges.is_empty());
    // The slot moved by heartbeats: segments without a transaction, each with
    // the server's clock at its end (what target times are planned on).
    let heartbeats: Vec<_> = walk(repo.path())
        .into_iter()
        .filter(|p| p.ends_with(".seg"))
        .map(|p| pgkeep::stream::segment::decode_meta(&std::fs::read(&p).unwrap(), &p).unwrap())
        .filter(|m| m.transactions == 0)
        .collect();
    assert!(!heartbeats.is_empty(), "no heartbeat segment");
    let now = chrono::Utc::now();
    for m in &heartbeats {
        let t = m.server_time.expect("a heartbeat carries the server's time");
        assert!(t <= now && now - t < chrono::Duration::minutes(10), "{t}");
    }
    assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{ranges:?}");
}

/// `--metrics-addr`: a session the server cuts (its walsender terminated)
/// is retried, and `pgkeep_stream_errors_total{kind}` says where the
/// failure came from; every kind is exposed, the others at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_errors_behind_each_reconnect_by_kind() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("streamerrors").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY);").await;
    let repo = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = pgkeep(cluster, &db, repo.path())
        .args(["-q", "stream", "--segment-seconds", "1", "--metrics-addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = cluster.client(&db).await;
    let slot = format!("pgkeep_{db}");
    harness::streaming::wait_for_slot(&client, &slot, Some(true)).await;
    let metrics = || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or_else(|| panic!("{series} in\n{text}"))
    };
    let kinds = ["connection", "server", "server_ended", "repository", "other"];
    let before = metrics();
    for k in kinds {
        assert_eq!(value(&before, &format!("pgkeep_stream_errors_total{{kind=\"{k}\"}}")), 0.0, "{before}");
    }

    // The server cuts the session: the stream reconnects, and counts why.
    client.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics();
        if value(&text, "pgkeep_stream_reconnects_total") >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no reconnect counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let errors: f64 = kinds.iter().map(|k| value(&text, &format!("pgkeep_stream_errors_total{{kind=\"{k}\"}}"))).sum();
    assert_eq!(errors, value(&text, "pgkeep_stream_reconnects_total"), "every retried session has its kind:\n{text}");
    assert_eq!(value(&text, "pgkeep_stream_errors_total{kind=\"repository\"}"), 0.0, "{text}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let out = pgkeep(cluster, &db, repo.path()).args(["stream", "--remove"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
