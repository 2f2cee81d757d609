//! `pgkeep stream` as an operator runs it: a daemon that archives segments
//! until SIGTERM, flushes, exits 0; then `--remove` drops the slot and the
//! publication so no forgotten slot retains WAL.

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;

fn pgkeep(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Command {
    let s = cluster.superuser_settings(db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("BACKUP_DIR", repo);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_daemon_flushes_on_sigterm_and_remove_cleans_up() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("streamcli").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    let repo = tempfile::tempdir().unwrap();
    let child = pgkeep(&cluster, &db, repo.path())
        .args(["stream", "--segment-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the slot is active, then write.
    let client = cluster.client(&db).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = client
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&format!("pgkeep_{db}")])
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
