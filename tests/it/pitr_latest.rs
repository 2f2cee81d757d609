//! `pgkeep restore latest` through the binary, with `pgkeep setup` and
//! `pgkeep stream` running: without a target it restores the latest data
//! (the newest backup plus the whole archive after it) and says how far it
//! replayed; `--target backup` stops at the backup; a target time beyond
//! the archive fails saying how far the archive reaches. Every table and
//! the publication membership are compared with the source.

use crate::harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;

fn pgkeep(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Command {
    let mut cmd = harness::streaming::pgkeep_cli(cluster, db, repo);
    cmd.env("EXPIRE_AFTER_BACKUP", "false");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn start_stream(cluster: &PgCluster, db: &str, repo: &std::path::Path) -> Child {
    pgkeep(cluster, db, repo)
        .args(["-q", "stream", "--segment-seconds", "1", "--no-auto-full-backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until `slot` confirmed everything written so far.
async fn wait_caught_up(client: &tokio_postgres::Client, slot: &str) {
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done: bool = client
            .query_one("SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $2", &[&end, &slot])
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the stream never caught up to {end}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every user table's rows, as `table: md5 of the sorted rows`.
async fn contents(client: &tokio_postgres::Client) -> Vec<String> {
    harness::pitr_db::state(client).await.rows.into_iter().map(|(t, h)| format!("{t}: {h}")).collect()
}

/// `publication: table` for every table of every publication.
async fn membership(client: &tokio_postgres::Client) -> Vec<String> {
    client.query("SELECT pubname || ': ' || tablename FROM pg_publication_tables ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_latest_replays_the_whole_archive_and_target_backup_stops_at_the_backup() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rlatest").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE acct (id int PRIMARY KEY, v int); INSERT INTO acct SELECT g, g FROM generate_series(1, 100) g; \
             CREATE TABLE by_index (id int NOT NULL, v text); CREATE UNIQUE INDEX by_index_u ON by_index (id); \
             ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_u; INSERT INTO by_index VALUES (1, 'a'), (2, 'b'); \
             CREATE TABLE audit (id serial PRIMARY KEY, note text); \
             CREATE FUNCTION log_acct() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO audit (note) VALUES ('acct ' || NEW.id); RETURN NEW; END$$; \
             CREATE TRIGGER acct_always AFTER UPDATE ON acct FOR EACH ROW EXECUTE FUNCTION log_acct(); \
             ALTER TABLE acct ENABLE ALWAYS TRIGGER acct_always; \
             CREATE TRIGGER by_index_replica AFTER INSERT ON by_index FOR EACH ROW EXECUTE FUNCTION log_acct(); \
             ALTER TABLE by_index ENABLE REPLICA TRIGGER by_index_replica; \
             CREATE SEQUENCE free_seq;",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let slot = pgkeep::stream::default_name(&db);
    let client = cluster.client(&db).await;
    let (ok, _, err) = run(pgkeep(cluster, &db, repo).args(["-q", "setup"]));
    assert!(ok, "setup: {err}");
    let mut stream = start_stream(cluster, &db, repo);
    harness::streaming::wait_for_slot(&client, &slot, Some(true)).await;
    let (ok, _, err) = run(pgkeep(cluster, &db, repo).args(["-q", "backup"]));
    assert!(ok, "backup: {err}");
    let at_backup = contents(&client).await;

    // After the backup: row changes, a new table, and a table losing its replica identity.
    client
        .batch_execute(
            "UPDATE acct SET v = -v WHERE id <= 10; DELETE FROM acct WHERE id > 90; \
             CREATE TABLE born (id int PRIMARY KEY, note text); INSERT INTO born VALUES (1, 'new'); \
             DROP INDEX by_index_u; UPDATE by_index SET v = 'changed' WHERE id = 1; INSERT INTO by_index VALUES (3, 'c'); \
             SELECT nextval('free_seq') FROM generate_series(1, 5);",
        )
        .await
        .unwrap();
    // Temporary tables across transactions of one session: never captured, never replayed.
    for sql in [
        "CREATE TEMP TABLE scratch AS SELECT id, v FROM acct WHERE id <= 3",
        "INSERT INTO born SELECT id + 100, 'from scratch' FROM scratch",
        "ALTER TABLE scratch ADD COLUMN w int",
        "DROP TABLE scratch",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    wait_caught_up(&client, &slot).await;
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    assert!(stream.wait().unwrap().success());
    let source = contents(&client).await;
    let source_membership = membership(&client).await;
    assert!(source_membership.contains(&format!("{slot}_insert_only: by_index")), "{source_membership:?}");
    assert_ne!(source, at_backup);

    // 1. `restore latest`: the latest data, and how far it replayed.
    let (ok, out, err) = run(pgkeep(cluster, &db, repo).args(["restore", "latest", "--target-db", "rlatest_latest", "--yes"]));
    assert!(ok, "restore latest: {err}");
    assert!(out.contains("point in time latest: replayed") && out.contains("the archive ends at LSN"), "{out}");
    let restored = cluster.client("rlatest_latest").await;
    // by_index lost its identity: its UPDATE is not archived (insert-only), everything else is exact.
    let mut want = source.clone();
    let by_index_restored = contents(&restored).await.into_iter().find(|l| l.starts_with("public.by_index")).unwrap();
    for l in want.iter_mut().filter(|l| l.starts_with("public.by_index")) {
        *l = by_index_restored.clone();
    }
    assert_eq!(contents(&restored).await, want);
    let rows: Vec<String> = restored.query("SELECT id || '=' || v FROM by_index ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(rows, ["1=a", "2=b", "3=c"], "the insert after the move is archived, the update is not");
    assert_eq!(membership(&restored).await, source_membership, "publication membership as on the source");
    // Triggers set ENABLE ALWAYS / REPLICA did not fire again (audit is exact above) and keep their mode.
    let modes: Vec<String> = restored
        .query("SELECT tgname || '=' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(modes, ["acct_always=A", "by_index_replica=R"]);
    // A sequence no column owns is at least where the source left it.
    let v: i64 = restored.query_one("SELECT last_value FROM free_seq", &[]).await.unwrap().get(0);
    assert!(v >= 5, "free_seq at {v}");

    // 2. `--target backup`: the backup alone.
    let (ok, out, err) = run(pgkeep(cluster, &db, repo).args(["restore", "latest", "--target", "backup", "--target-db", "rlatest_backup", "--yes"]));
    assert!(ok, "restore --target backup: {err}");
    assert!(!out.contains("point in time"), "{out}");
    assert_eq!(contents(&cluster.client("rlatest_backup").await).await, at_backup);

    // 3. A target time beyond the archive: an error saying how far it reaches, nothing restored.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (ok, _, err) = run(pgkeep(cluster, &db, repo).args(["restore", "latest", "--target-time", &future, "--target-db", "rlatest_future", "--yes"]));
    assert!(!ok);
    assert!(err.contains("is after the end of the change archive: it reaches 20"), "{err}");
    let admin = cluster.client("postgres").await;
    let n: i64 = admin.query_one("SELECT count(*) FROM pg_database WHERE datname = 'rlatest_future'", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}
