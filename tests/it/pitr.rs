//! Point-in-time restore against a real cluster: `pgkeep stream` archives
//! while a workload commits transactions of every kind (updates with
//! unchanged TOAST values, key changes, composite keys, REPLICA IDENTITY
//! FULL without a key, generated columns, TRUNCATE … RESTART IDENTITY, bulk
//! changes); a full backup taken while streaming is then restored to the
//! moment after each of several transactions, by time and by LSN, and to
//! `latest`. Every table of the restored database must equal the source as
//! it was right after that transaction: exactly the transactions committed
//! at or before the target, no more, no less.

use crate::harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use harness::streaming;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::config::{RepoSpec, Settings};
use pgkeep::replay::RecoveryTarget;
use pgkeep::restore::source::BackupSelector;
use pgkeep::stream::{StreamOptions, StreamReport};

const TABLES: &[&str] = &["accounts", "pairs", "full_ident", "gen", "wipe", "parts", "typed", "typed_full"];

const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, doc text);
CREATE TABLE pairs (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE full_ident (x int, y text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE TABLE gen (id int PRIMARY KEY, v int, doubled int GENERATED ALWAYS AS (v * 2) STORED);
CREATE TABLE wipe (id serial PRIMARY KEY, v text);
INSERT INTO accounts SELECT g, 100, NULL FROM generate_series(1, 50) g;
-- An out-of-line TOASTed value: 40 kB of poorly compressible text.
UPDATE accounts SET doc = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 1250)) WHERE id = 1;
INSERT INTO full_ident VALUES (1, 'a'), (1, 'a'), (2, 'b');
INSERT INTO wipe (v) SELECT 'w' || g FROM generate_series(1, 10) g;
CREATE TABLE parts (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu');
CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us');
INSERT INTO parts VALUES (1, 'eu', 1), (2, 'us', 2);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE typed (id bigint PRIMARY KEY, j jsonb, b bytea, n numeric(20,6), ts timestamptz, m mood, arr text[], f float8);
INSERT INTO typed VALUES (1, '{\"a\": [1, 2]}', '\\x00ff', 1.5, '2026-01-01 00:00:00+00', 'ok', '{x,\"y z\"}', 0.1);
CREATE TABLE typed_full (j json, t text, ts timestamptz);
ALTER TABLE typed_full REPLICA IDENTITY FULL;
INSERT INTO typed_full VALUES ('{\"k\": 1}', E'tab\\there', '2026-01-01 12:00:00+05');
";

/// The workload: one transaction per entry.
const WORKLOAD: &[&str] = &[
    "UPDATE accounts SET balance = balance - 10 WHERE id = 2; UPDATE accounts SET balance = balance + 10 WHERE id = 3",
    // The TOASTed doc is not sent (unchanged): it must survive.
    "UPDATE accounts SET balance = 7 WHERE id = 1",
    "INSERT INTO accounts VALUES (51, 5, NULL); DELETE FROM accounts WHERE id = 4",
    "UPDATE accounts SET id = 52 WHERE id = 5",
    // Key change of the row with the unchanged TOASTed value.
    "UPDATE accounts SET id = 53, balance = 1 WHERE id = 1",
    "INSERT INTO pairs VALUES (1, 'x'), (2, 'y'); UPDATE pairs SET b = 'z' WHERE a = 1",
    "DELETE FROM full_ident WHERE ctid = (SELECT ctid FROM full_ident WHERE x = 1 LIMIT 1); UPDATE full_ident SET y = 'c' WHERE x = 2",
    "INSERT INTO gen VALUES (1, 21); UPDATE gen SET v = 22 WHERE id = 1",
    "TRUNCATE wipe RESTART IDENTITY; INSERT INTO wipe (v) VALUES ('after')",
    "INSERT INTO accounts SELECT g, g, NULL FROM generate_series(100, 5099) g; \
     UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN 100 AND 2000; \
     DELETE FROM accounts WHERE id BETWEEN 4000 AND 4500",
    "UPDATE accounts SET doc = 'small now' WHERE id = 53; DELETE FROM pairs WHERE a = 2",
    "INSERT INTO wipe (v) VALUES ('last')",
    // A row moving between partitions, types with their own text forms, and
    // whole-row matching of json (no equality operator) and timestamptz.
    "UPDATE parts SET region = 'us' WHERE id = 1; UPDATE parts SET v = 20 WHERE id = 2",
    "INSERT INTO typed VALUES (2, '[]', '\\xdead', -0.000001, now(), 'happy', '{}', 'NaN'); \
     UPDATE typed SET j = j || '{\"b\": null}', arr = arr || '{\"w\\tq\"}', f = 1e-300 WHERE id = 1",
    "UPDATE typed_full SET t = E'new\\nline' WHERE t = E'tab\\there'; INSERT INTO typed_full VALUES ('[1, 2]', NULL, NULL); \
     DELETE FROM typed_full WHERE t IS NULL",
];

/// The state right after a transaction: when, where, and every table's content hash.
#[derive(Debug, Clone)]
struct Mark {
    time: chrono::DateTime<chrono::Utc>,
    lsn: String,
    hashes: Vec<String>,
}

fn start_stream(settings: &Settings, slot: &str) -> streaming::Running {
    streaming::start(settings, StreamOptions { segment_seconds: 1, ..StreamOptions::new(slot, slot) })
}

async fn stop_stream(r: streaming::Running) -> StreamReport {
    streaming::stop(r).await
}

async fn wait_for_slot(client: &tokio_postgres::Client, slot: &str) {
    streaming::wait_for_slot(client, slot, None).await
}

async fn hashes(client: &tokio_postgres::Client, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let sql = format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t");
        out.push(client.query_one(&sql, &[]).await.unwrap().get(0));
    }
    out
}

async fn mark(client: &tokio_postgres::Client) -> Mark {
    tokio::time::sleep(Duration::from_millis(30)).await;
    let row = client.query_one("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text", &[]).await.unwrap();
    let m = Mark { time: row.get(0), lsn: row.get(1), hashes: hashes(client, TABLES).await };
    tokio::time::sleep(Duration::from_millis(30)).await;
    m
}

struct Setup {
    cluster: PgCluster,
    db: String,
    _dirs: tempfile::TempDir,
    settings: Settings,
}

async fn setup(schema: &str) -> Setup {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("pitr").await;
    cluster.execute(&db, schema).await;
    let dirs = tempfile::tempdir().unwrap();
    let repos: Vec<PathBuf> = ["a", "b"].iter().map(|n| dirs.path().join(n)).collect();
    for r in &repos {
        std::fs::create_dir_all(r).unwrap();
    }
    let settings = settings(cluster.superuser_settings(&db), repos.iter().cloned().map(RepoSpec::Local).collect());
    Setup { cluster, db, _dirs: dirs, settings }
}

async fn restore_to(s: &Setup, name: &str, target: RecoveryTarget) -> pgkeep::Result<restore::RestoreReport> {
    let opts = RestoreOptions { target_db: Some(name.to_string()), yes: true, point_in_time: Some(target), ..RestoreOptions::new(BackupSelector::Latest) };
    restore::run(&s.settings, &opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_exactly_the_transactions_committed_up_to_the_target() {
    let s = setup(SCHEMA).await;
    let client = s.cluster.client(&s.db).await;
    let running = start_stream(&s.settings, "pitr_slot");
    wait_for_slot(&client, "pitr_slot").await;
    let base = backup::run(&s.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("backup: {}", e.user_line()));
    let before_any = mark(&client).await;
    let mut marks = Vec::new();
    for sql in WORKLOAD {
        client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        marks.push(mark(&client).await);
    }
    // No wait: a stop archives every transaction committed before it.
    stop_stream(running).await;

    // `list` shows how far a point-in-time restore of the base can go.
    let listed = pgkeep::commands::list::run(&s.settings).await.unwrap();
    let base_item = listed.iter().find(|b| b.backup_id == base.manifest.backup_id.to_string()).unwrap();
    let until: chrono::DateTime<chrono::Utc> = base_item.recoverable_until.as_deref().expect("a recoverable window").parse().unwrap();
    assert!(until >= marks.last().unwrap().time - chrono::Duration::seconds(1), "{until} vs {:?}", marks.last().unwrap().time);
    assert!(pgkeep::commands::list::render(&listed).contains("point-in-time restore possible up to"));

    // By time, after several transactions, including the one that moved the TOASTed row.
    for i in [1usize, 4, 8, 10] {
        let name = format!("pitr_t{i}");
        let report =
            restore_to(&s, &name, RecoveryTarget::Time(marks[i].time)).await.unwrap_or_else(|e| panic!("restore to after transaction {i}: {}", e.user_line()));
        let pit = report.point_in_time.as_ref().expect("a replay report");
        assert_eq!(pit.base_backup, base.manifest.backup_id.to_string());
        assert_eq!(pit.transactions, i as u64 + 1, "transactions replayed up to {i}");
        let restored = s.cluster.client(&name).await;
        assert_eq!(hashes(&restored, TABLES).await, marks[i].hashes, "tables after transaction {i}");
    }

    // Table-level undo at a point in time: only `accounts`, as it was after transaction 4.
    let opts = RestoreOptions {
        target_db: Some("pitr_table".into()),
        yes: true,
        tables: vec!["public.accounts".into()],
        point_in_time: Some(RecoveryTarget::Time(marks[4].time)),
        ..RestoreOptions::new(BackupSelector::Latest)
    };
    restore::run(&s.settings, &opts).await.unwrap_or_else(|e| panic!("table-level PITR: {}", e.user_line()));
    let restored = s.cluster.client("pitr_table").await;
    assert_eq!(hashes(&restored, &["accounts"]).await[0], marks[4].hashes[0], "accounts after transaction 4");
    let others: i64 = restored.query_one("SELECT (SELECT count(*) FROM pairs) + (SELECT count(*) FROM wipe)", &[]).await.unwrap().get(0);
    assert_eq!(others, 0, "the other tables stay empty");

    // Before the first transaction: the backup alone.
    let report = restore_to(&s, "pitr_none", RecoveryTarget::Time(before_any.time)).await.unwrap();
    assert_eq!(report.point_in_time.unwrap().transactions, 0);
    assert_eq!(hashes(&s.cluster.client("pitr_none").await, TABLES).await, before_any.hashes);

    // By LSN: the position right after transaction 6.
    let lsn = RecoveryTarget::parse_lsn(&marks[6].lsn).unwrap();
    let report = restore_to(&s, "pitr_lsn", lsn).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    let pit = report.point_in_time.unwrap();
    assert_eq!(pit.transactions, 7, "{pit:?} {lsn:?}");
    assert_eq!(hashes(&s.cluster.client("pitr_lsn").await, TABLES).await, marks[6].hashes);

    // Latest: everything; the sequence is past every replayed id.
    let report = restore_to(&s, "pitr_latest", RecoveryTarget::Latest).await.unwrap();
    let pit = report.point_in_time.unwrap();
    assert_eq!(pit.transactions, WORKLOAD.len() as u64);
    assert!(pit.applied.changes >= 5000 + 1901 + 501, "bulk changes replayed: {}", pit.applied.changes);
    let restored = s.cluster.client("pitr_latest").await;
    assert_eq!(hashes(&restored, TABLES).await, marks[WORKLOAD.len() - 1].hashes);
    restored.batch_execute("INSERT INTO wipe (v) VALUES ('new after restore')").await.expect("the sequence was advanced past replayed rows");

    // A target after the end of the archive, and one before every backup: clear errors.
    let future = RecoveryTarget::Time(chrono::Utc::now() + chrono::Duration::hours(1));
    let e = restore_to(&s, "pitr_future", future).await.unwrap_err().user_line();
    assert!(e.contains("after the end of the change archive"), "{e}");
    let past = RecoveryTarget::Time(base.manifest.started_at - chrono::Duration::hours(1));
    let e = restore_to(&s, "pitr_past", past).await.unwrap_err().user_line();
    assert!(e.contains("no full backup can be brought to"), "{e}");
    assert!(e.contains(&base.manifest.backup_id.to_string()), "names the backup: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaptured_schema_change_stops_the_replay_with_a_clear_error() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;").await;
    let client = s.cluster.client(&s.db).await;
    let running = start_stream(&s.settings, "pitr_ddl");
    wait_for_slot(&client, "pitr_ddl").await;
    backup::run(&s.settings, &BackupOptions::default()).await.unwrap();
    client.batch_execute("UPDATE t SET v = 100 WHERE id = 1").await.unwrap();
    let before = mark_one(&client).await;
    client.batch_execute("ALTER TABLE t ADD COLUMN w int; UPDATE t SET w = 1 WHERE id = 2").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    stop_stream(running).await;

    let e = restore_to(&s, "pitr_ddl_latest", RecoveryTarget::Latest).await.unwrap_err().user_line();
    // Marked when the stream saw it: refused before the replay reaches it.
    assert!(e.contains("table public.t ") && e.contains("without captured DDL"), "{e}");
    assert!(e.contains("production untouched"), "{e}");
    // Before the change, the restore works.
    restore_to(&s, "pitr_ddl_before", RecoveryTarget::Time(before)).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    let v: i32 = s.cluster.client("pitr_ddl_before").await.query_one("SELECT v FROM t WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 100);
}

async fn mark_one(client: &tokio_postgres::Client) -> chrono::DateTime<chrono::Utc> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backups_pin_the_archive_and_restore_to_their_point() {
    use pgkeep::commands::incremental;
    use pgkeep::repo::layout::BackupKind;
    let s = setup("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;").await;
    let client = s.cluster.client(&s.db).await;
    let slot = pgkeep::stream::default_name(&s.db);

    // No slot yet: a full backup instead, and the slot exists afterwards.
    let first = incremental::run(&s.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(first.manifest.kind, BackupKind::Full);
    let n: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
    assert_eq!(n, 1, "the change-archiving slot was created");

    client.batch_execute("UPDATE t SET v = 100 WHERE id = 1; INSERT INTO t VALUES (11, 11)").await.unwrap();
    let incr = incremental::run(&s.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(incr.manifest.kind, BackupKind::Incremental);
    assert_eq!(incr.manifest.parent.as_ref(), Some(&first.manifest.backup_id));
    let range = incr.manifest.changes.clone().expect("a change range");
    assert!(range.transactions >= 2, "{range:?}");
    assert!(!range.segments.is_empty() && range.segments.iter().all(|s| s.size > 0), "{range:?}");
    let at_incr = hashes(&client, &["t"]).await;

    client.batch_execute("UPDATE t SET v = 200 WHERE id = 2; DELETE FROM t WHERE id = 3").await.unwrap();
    let incr2 = incremental::run(&s.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(incr2.manifest.parent.as_ref(), Some(&incr.manifest.backup_id));
    assert_eq!(incr2.manifest.changes.as_ref().unwrap().start_lsn, range.end_lsn);
    let at_incr2 = hashes(&client, &["t"]).await;
    client.batch_execute("UPDATE t SET v = 300 WHERE id = 4").await.unwrap();

    // Restoring an incremental: its full ancestor brought to exactly its point.
    for (m, want, name) in [(&incr.manifest, &at_incr, "incr_one"), (&incr2.manifest, &at_incr2, "incr_two")] {
        let opts = RestoreOptions { target_db: Some(name.into()), yes: true, ..RestoreOptions::new(BackupSelector::Id(m.backup_id.clone())) };
        let report = restore::run(&s.settings, &opts).await.unwrap_or_else(|e| panic!("restore {}: {}", m.backup_id, e.user_line()));
        assert_eq!(report.point_in_time.unwrap().base_backup, first.manifest.backup_id.to_string());
        assert_eq!(&hashes(&s.cluster.client(name).await, &["t"]).await, want, "state of {}", m.backup_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_ddl_replays_in_place() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;").await;
    let client = s.cluster.client(&s.db).await;
    pgkeep::stream::setup::install(&s.settings, "pitr_setup").await.unwrap_or_else(|e| panic!("setup: {}", e.user_line()));
    let running = start_stream(&s.settings, "pitr_setup");
    wait_for_slot(&client, "pitr_setup").await;
    backup::run(&s.settings, &BackupOptions::default()).await.unwrap();
    // DDL and DML in one query string: the DML must not run twice.
    client
        .batch_execute("BEGIN; UPDATE t SET v = v + 1000 WHERE id = 1; ALTER TABLE t ADD COLUMN w int DEFAULT 7; UPDATE t SET w = 1 WHERE id = 2; COMMIT")
        .await
        .unwrap();
    client.batch_execute("CREATE TABLE fresh (id int PRIMARY KEY, note text); INSERT INTO fresh VALUES (1, 'a'), (2, 'b')").await.unwrap();
    let after_create = mark_one(&client).await;
    let fresh_then = hashes(&client, &["t", "fresh"]).await;
    client.batch_execute("ALTER TABLE t RENAME TO t2; UPDATE t2 SET v = -1 WHERE id = 3; DROP TABLE fresh").await.unwrap();
    client.batch_execute("ALTER TABLE t2 DROP COLUMN w; UPDATE t2 SET v = -2 WHERE id = 4").await.unwrap();
    // Any role may emit a message with pgkeep's prefix: an unsigned one is never run.
    client
        .batch_execute(
            r#"SELECT pg_logical_emit_message(true, 'pgkeep.ddl', '{"sql": "DROP TABLE t2", "search_path": "", "tag": "DROP TABLE", "role": "postgres"}')"#,
        )
        .await
        .unwrap();
    // No wait: a stop archives every transaction committed before it.
    stop_stream(running).await;

    restore_to(&s, "ddl_mid", RecoveryTarget::Time(after_create)).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(hashes(&s.cluster.client("ddl_mid").await, &["t", "fresh"]).await, fresh_then);

    let report = restore_to(&s, "ddl_latest", RecoveryTarget::Latest).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    let pit = report.point_in_time.unwrap();
    assert!(pit.applied.ddl_statements >= 4, "{pit:?}");
    assert_eq!(pit.applied.ddl_rejected.len(), 1, "{pit:?}");
    let restored = s.cluster.client("ddl_latest").await;
    assert_eq!(hashes(&restored, &["t2"]).await, hashes(&client, &["t2"]).await);
    let fresh: i64 = restored.query_one("SELECT count(*) FROM pg_class WHERE relname = 'fresh'", &[]).await.unwrap().get(0);
    assert_eq!(fresh, 0, "the dropped table is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_archives_replay_with_the_key_and_not_without() {
    use pgkeep::config::{EncryptionSettings, Secret};
    let mut s = setup("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'secret row ' || g FROM generate_series(1, 20) g;").await;
    s.settings.encryption =
        EncryptionSettings { passphrase: Some(Secret::new("pitr passphrase")), passphrase_origin: Some("test".into()), ..Default::default() };
    let client = s.cluster.client(&s.db).await;
    let running = start_stream(&s.settings, "pitr_enc");
    wait_for_slot(&client, "pitr_enc").await;
    backup::run(&s.settings, &BackupOptions::default()).await.unwrap();
    client.batch_execute("UPDATE t SET v = 'changed secret' WHERE id = 1; DELETE FROM t WHERE id = 2").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    stop_stream(running).await;

    // Segments hold no readable row.
    let repo = match &s.settings.repos[0] {
        RepoSpec::Local(p) => p.clone(),
        _ => unreachable!(),
    };
    for e in walk(&repo.join("changes")) {
        assert!(!std::fs::read(&e).unwrap().windows(14).any(|w| w == b"changed secret"), "{e:?} is readable");
    }
    restore_to(&s, "enc_latest", RecoveryTarget::Latest).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(hashes(&s.cluster.client("enc_latest").await, &["t"]).await, hashes(&client, &["t"]).await);
    // Without the passphrase: a clear error, nothing restored.
    let no_key = Settings { encryption: EncryptionSettings::default(), ..s.settings.clone() };
    let opts = RestoreOptions {
        target_db: Some("enc_nokey".into()),
        yes: true,
        point_in_time: Some(RecoveryTarget::Latest),
        ..RestoreOptions::new(BackupSelector::Latest)
    };
    let e = restore::run(&no_key, &opts).await.unwrap_err().user_line();
    assert!(e.contains("full_backup_"), "names the backup: {e}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_deep_of_an_incremental_replays_it_in_a_scratch_database() {
    use pgkeep::commands::incremental;
    use pgkeep::commands::verify::{self, VerifyOptions};
    use pgkeep::verify::{Check, Status};
    let s = setup("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;").await;
    let client = s.cluster.client(&s.db).await;
    incremental::run(&s.settings, &BackupOptions::default()).await.unwrap(); // full (creates the slot)
    client.batch_execute("UPDATE t SET v = -1 WHERE id < 4; DELETE FROM t WHERE id = 9").await.unwrap();
    let incr = incremental::run(&s.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    let v = verify::run(&s.settings, &VerifyOptions { selector: BackupSelector::Id(incr.manifest.backup_id.clone()), deep: true, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert!(v.passed, "{v:?}");
    let deep = v.checks.iter().find(|c| c.check == Check::Completeness).unwrap();
    assert_eq!(deep.status, Status::Pass, "{deep:?}");
    assert!(deep.summary.contains("2 row change(s) replayed") || deep.summary.contains("4 row change(s) replayed"), "{}", deep.summary);
    let chain = v.checks.iter().find(|c| c.check == Check::Chains && c.repository.is_none()).unwrap();
    assert_eq!(chain.status, Status::Pass, "{chain:?}");
    // A missing ancestor fails the chain check, named.
    let parent = incr.manifest.parent.clone().unwrap();
    for repo in &s.settings.repos {
        let RepoSpec::Local(dir) = repo else { unreachable!() };
        std::fs::remove_dir_all(dir.join("backups").join(parent.to_string())).unwrap();
    }
    let v = verify::run(&s.settings, &VerifyOptions { selector: BackupSelector::Id(incr.manifest.backup_id.clone()), ..Default::default() }).await.unwrap();
    assert!(!v.passed);
    assert!(format!("{v:?}").contains(&parent.to_string()), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_from_an_s3_only_archive() {
    let garage = harness::garage::Garage::shared();
    let bucket = garage.unique_bucket("pitrs3");
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("pitrs3").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;").await;
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::S3(garage.settings(&bucket, "prod/db"))]);
    let client = cluster.client(&db).await;
    let running = start_stream(&s, "pitr_s3");
    wait_for_slot(&client, "pitr_s3").await;
    backup::run(&s, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    client.batch_execute("UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 45; INSERT INTO t VALUES (100, 'new')").await.unwrap();
    let at = mark_one(&client).await;
    let want = hashes(&client, &["t"]).await;
    client.batch_execute("DELETE FROM t").await.unwrap();
    // No wait: a stop archives every transaction committed before it.
    stop_stream(running).await;

    let opts = RestoreOptions {
        target_db: Some("pitrs3_restored".into()),
        yes: true,
        point_in_time: Some(RecoveryTarget::Time(at)),
        ..RestoreOptions::new(BackupSelector::Latest)
    };
    let report = restore::run(&s, &opts).await.unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert!(report.repository.starts_with("s3://"), "{}", report.repository);
    assert_eq!(hashes(&cluster.client("pitrs3_restored").await, &["t"]).await, want);
}
