//! Restores against real clusters: a fidelity round trip over every common
//! type and object, swap and rollback with live sessions, approval refusal,
//! a corrupt object refused before anything is swapped, `--temp-only`, and a
//! restore onto another cluster.

use crate::harness;

use std::process::Command;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::config::{DbSettings, RepoSpec};
use pgkeep::error::ErrorKind;
use pgkeep::restore::source::BackupSelector;

const FIDELITY_SQL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE SCHEMA "Other Schema";
CREATE TABLE everything (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n numeric, f double precision, r real,
    ts timestamp, tstz timestamptz, d date, iv interval,
    arr int[], arr2 text[][], j json, jb jsonb, b bytea, t text,
    m mood, p posint, c pair, rng int4range, tsr tstzrange,
    u uuid, ip inet, cidr_ cidr, bits bit varying(16), tsv tsvector,
    doubled integer GENERATED ALWAYS AS (coalesce(p, 0) * 2) STORED
);
INSERT INTO everything (n, f, r, ts, tstz, d, iv, arr, arr2, j, jb, b, t, m, p, c, rng, tsr, u, ip, cidr_, bits, tsv) VALUES
 ('NaN', 'Infinity', '-Infinity', 'infinity', '-infinity', 'infinity', '1 year 2 mons 3 days 04:05:06.789', '{1,2,NULL}', '{{a,b},{c,"d e"}}',
  '{"k": [1, 2.50, "x"]}', '{"b": {"c": null}}', E'\\x00ff00', E'tab\there\nnewline\\backslash ünïcode ☃', 'happy', 5, ROW(1, 'x'), '[1,10)', '[2026-01-01,2026-02-01)',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8', B'1011', to_tsvector('english', 'the quick brown foxes')),
 (123456789012345678901234567890.123456789, 1.5e-300, 3.25, '2026-11-24 02:00:00.123456', '2026-11-24 02:00:00+05:30', '0001-01-01 BC', '-1 day', '{}', '{}',
  'null', '[]', '', '', 'sad', 1, ROW(NULL, NULL), 'empty', '(,)', '00000000-0000-0000-0000-000000000000', '::1', '::/0', B'', ''),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE measurements (city text, at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements SELECT 'c' || (i % 7), date '2025-01-01' + i, i FROM generate_series(0, 700) i;
CREATE TABLE parent_t (id int, kind text);
CREATE TABLE child_t (extra text) INHERITS (parent_t);
INSERT INTO parent_t VALUES (1, 'parent');
INSERT INTO child_t VALUES (2, 'child', 'x');
CREATE TABLE no_pk (a int, b text);
INSERT INTO no_pk SELECT i % 3, 'dup' FROM generate_series(1, 50) i;
CREATE TABLE "Other Schema"."Mixed Case ""Quoted""" ("Ünï Col" text PRIMARY KEY);
INSERT INTO "Other Schema"."Mixed Case ""Quoted""" VALUES ('ä'), ('b');
CREATE TABLE a_cycle (id int PRIMARY KEY, b_id int);
CREATE TABLE b_cycle (id int PRIMARY KEY, a_id int REFERENCES a_cycle DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE a_cycle ADD FOREIGN KEY (b_id) REFERENCES b_cycle DEFERRABLE INITIALLY DEFERRED;
BEGIN; INSERT INTO a_cycle VALUES (1, 1); INSERT INTO b_cycle VALUES (1, 1); COMMIT;
CREATE VIEW v_everything AS SELECT id, t FROM everything;
CREATE MATERIALIZED VIEW mv_counts AS SELECT city, count(*) FROM measurements GROUP BY city;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.b := NEW.b || '!'; RETURN NEW; END $$;
CREATE TRIGGER no_pk_touch BEFORE INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE no_pk ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_a ON no_pk USING (a > 0);
COMMENT ON TABLE everything IS 'all the types';
CREATE ROLE fidelity_reader NOLOGIN;
GRANT SELECT ON everything TO fidelity_reader;
CREATE INDEX measurements_city ON measurements (city);
CREATE SEQUENCE counter START 100; SELECT nextval('counter');
"#;

fn opts(selector: BackupSelector) -> RestoreOptions {
    RestoreOptions { yes: true, ..RestoreOptions::new(selector) }
}

fn pg_dump_schema(cluster: &PgCluster, db: &str) -> String {
    let s = cluster.superuser_settings(db);
    let out = Command::new(cluster.bindir().join("pg_dump"))
        .args(["--schema-only", "--no-owner", "-h", &s.host, "-p", &s.port.to_string(), "-U", &s.user, db])
        .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The \restrict key is random per run.
    String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")).collect::<Vec<_>>().join("\n")
}

async fn table_fingerprints(cluster: &PgCluster, db: &str) -> Vec<(String, u64, String)> {
    // Compare through the same path a restore verifies with: the backup's own manifest of each side.
    let repo = tempfile::tempdir().unwrap();
    let r = backup::run(&settings(cluster.superuser_settings(db), vec![RepoSpec::Local(repo.path().to_path_buf())]), &BackupOptions::default()).await.unwrap();
    let mut v: Vec<_> = r.manifest.tables.iter().map(|t| (format!("{}.{}", t.schema, t.name), t.rows, t.fingerprint.clone())).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fidelity_round_trip_of_types_and_objects() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_fidelity").await;
    cluster.execute(&db, "DROP ROLE IF EXISTS fidelity_reader;").await;
    cluster.execute(&db, FIDELITY_SQL).await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    backup::run(&s, &BackupOptions::default()).await.unwrap();

    let target = format!("{db}_copy");
    let report = restore::run(&s, &RestoreOptions { target_db: Some(target.clone()), ..opts(BackupSelector::Latest) }).await.unwrap();
    assert!(report.verification.passed(), "{:?}", report.verification.problems);
    assert_eq!(report.restored_into, target);
    assert!(report.swap.is_none());

    assert_eq!(pg_dump_schema(cluster, &db), pg_dump_schema(cluster, &target), "schema dumps differ");
    assert_eq!(table_fingerprints(cluster, &db).await, table_fingerprints(cluster, &target).await);
    // The materialized view was refreshed and the sequence set.
    let c = cluster.client(&target).await;
    let mv: i64 = c.query_one("SELECT count(*) FROM mv_counts", &[]).await.unwrap().get(0);
    assert_eq!(mv, 7);
    let next: i64 = c.query_one("SELECT nextval('counter')", &[]).await.unwrap().get(0);
    assert_eq!(next, 101);
    // Every table was loaded with COPY FREEZE: all of its pages all-visible,
    // so vacuum and index-only scans have nothing to wait for.
    let busy = report.seconds.busy.as_ref().expect("the overlapped pipeline ran");
    assert!(busy.frozen_tables >= 8 && busy.unfrozen_tables == 0, "{busy:?}");
    assert_eq!(not_all_visible(cluster, &target).await, Vec::<String>::new());
    let ident: i32 = c.query_one("INSERT INTO everything (t) VALUES ('new') RETURNING id", &[]).await.unwrap().get(0);
    assert_eq!(ident, 4, "identity continues after the restored rows");
}

/// Tables with rows some of whose pages are not all-visible (ANALYZE
/// counts the visibility map into `relallvisible`).
async fn not_all_visible(cluster: &PgCluster, db: &str) -> Vec<String> {
    let c = cluster.client(db).await;
    c.batch_execute("ANALYZE").await.unwrap();
    c.query(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relpages > 0 AND c.relallvisible < c.relpages ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// One table far bigger than a worker's share is loaded chunk by chunk on
/// every worker (unfrozen); the others whole and frozen; indexes of every
/// table built; everything verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_bigger_than_a_workers_share_is_split_and_the_rest_frozen() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_split").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 40000) i; \
             CREATE INDEX big_pad ON big (left(pad, 4)); \
             CREATE TABLE small (id int PRIMARY KEY, big_id int REFERENCES big); INSERT INTO small SELECT i, i FROM generate_series(1, 500) i; \
             CREATE TABLE tiny (v text UNIQUE); INSERT INTO tiny VALUES ('a'), ('b'); CREATE TABLE empty (v int);",
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    s.jobs = 2;
    backup::run(&s, &BackupOptions { chunk_size: 256 << 10, ..BackupOptions::default() }).await.unwrap();

    let target = format!("{db}_copy");
    let report = restore::run(&s, &RestoreOptions { target_db: Some(target.clone()), ..opts(BackupSelector::Latest) }).await.unwrap();
    assert!(report.verification.passed(), "{:?}", report.verification.problems);
    assert_eq!(report.verification.tables_checked, 4);
    let busy = report.seconds.busy.as_ref().unwrap();
    // big is split; small and tiny frozen; empty has no rows to load.
    assert_eq!((busy.frozen_tables, busy.unfrozen_tables), (2, 1), "{busy:?}");
    assert_eq!(not_all_visible(cluster, &target).await, vec!["big".to_string()]);
    assert_eq!(pg_dump_schema(cluster, &db), pg_dump_schema(cluster, &target), "schema dumps differ");
    assert_eq!(table_fingerprints(cluster, &db).await, table_fingerprints(cluster, &target).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_with_live_sessions_then_rollback() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_swap").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'before' FROM generate_series(1, 1000) i;").await;
    // Database-level properties that pg_dump (without --create) does not carry.
    cluster
        .execute(
            "postgres",
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'swap_owner') THEN CREATE ROLE swap_owner; END IF; END $$; \
                 ALTER DATABASE {db} OWNER TO swap_owner; ALTER DATABASE {db} SET statement_timeout = '7min'; \
                 ALTER DATABASE {db} SET search_path = \"$user\", public;"
            ),
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let b = backup::run(&s, &BackupOptions::default()).await.unwrap();
    // An accident after the backup.
    cluster.execute(&db, "DELETE FROM t WHERE id > 10; UPDATE t SET v = 'after';").await;
    let live = cluster.client(&db).await;
    live.batch_execute("SELECT 1").await.unwrap();

    let report = restore::run(&s, &opts(BackupSelector::Id(b.manifest.backup_id.clone()))).await.unwrap();
    let swap = report.swap.clone().unwrap();
    assert!(swap.sessions_terminated >= 1, "the live session must have been closed");
    assert_eq!(swap.previous_renamed_to.as_deref(), Some(format!("{db}_old").as_str()));
    assert!(report.pre_restore_backup.as_deref().unwrap().starts_with("pre_restore_backup_"));
    assert!(live.batch_execute("SELECT 1").await.is_err(), "the old session was terminated");
    let c = cluster.client(&db).await;
    let (n, v): (i64, String) = {
        let r = c.query_one("SELECT count(*), min(v) FROM t", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, v.as_str()), (1000, "before"));
    // The swapped-in database has the original owner and settings.
    let props = cluster
        .client("postgres")
        .await
        .query_one(
            "SELECT pg_get_userbyid(d.datdba)::text, (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)::text[] FROM pg_database d WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    assert_eq!(props.get::<_, String>(0), "swap_owner");
    let mut settings_now: Vec<String> = props.get(1);
    settings_now.sort();
    assert_eq!(settings_now, vec!["search_path=\"$user\", public".to_string(), "statement_timeout=7min".to_string()]);
    let old = cluster.client(&format!("{db}_old")).await;
    let n_old: i64 = old.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n_old, 10, "the replaced database is kept as _old");
    drop(old);

    // A second restore keeps the earlier _old instead of dropping it.
    let report2 = restore::run(&s, &RestoreOptions { no_pre_backup: true, ..opts(BackupSelector::Latest) }).await.unwrap();
    let kept = report2.swap.unwrap().older_kept_as.expect("earlier _old kept");
    assert!(kept.starts_with(&format!("{db}_old_")));

    let msg = restore::rollback(&s, true).await.unwrap();
    assert!(msg.contains("rolled back"), "{msg}");
    let c = cluster.client(&db).await;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1000, "rollback brings back the database the second restore replaced (itself a restore)");

    // Every restore and the rollback are in the repository's audit trail, with who ran them.
    let audit = pgkeep::repo::audit::list(&pgkeep::storage::local::LocalStorage::new(repo.path())).await.unwrap();
    let ops: Vec<(&str, bool)> = audit.iter().map(|a| (a.operation.as_str(), a.ok)).collect();
    assert_eq!(ops.iter().filter(|o| **o == ("restore", true)).count(), 2, "{ops:?}");
    assert!(ops.contains(&("rollback", true)), "{ops:?}");
    assert!(audit.iter().all(|a| !a.run_by.os_user.is_empty() && !a.run_by.host.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_without_approval_and_corrupt_object_leave_production_alone() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_refuse").await;
    cluster.execute(&db, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i;").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let b = backup::run(&s, &BackupOptions::default()).await.unwrap();

    // No terminal in tests and no --yes: refused, nothing created.
    let before = databases(cluster).await;
    let err = restore::run(&s, &RestoreOptions { yes: false, ..opts(BackupSelector::Latest) }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.user_line().contains("--yes"), "{}", err.user_line());
    assert_eq!(databases(cluster).await, before);

    // Flip one byte in a data pack: refused before the swap, naming the object; temp dropped.
    let data_obj = b.manifest.objects.iter().find(|o| o.key.starts_with("data/")).unwrap();
    let path = repo.path().join(b.manifest.backup_id.key(&data_obj.key));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let before_corrupt: Vec<String> = databases(cluster).await.into_iter().filter(|d| d.starts_with("rs_refuse")).collect();
    let err = restore::run(&s, &opts(BackupSelector::Latest)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{}", err.user_line());
    assert!(err.user_line().contains(&data_obj.key), "{}", err.user_line());
    assert!(err.user_line().contains("production untouched"), "{}", err.user_line());
    let n: i64 = cluster.client(&db).await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 20000);
    let after: Vec<String> = databases(cluster).await.into_iter().filter(|d| d.starts_with("rs_refuse")).collect();
    assert_eq!(after, before_corrupt, "no swap happened and no database was left behind");
    // The temporary database named in the error was dropped.
    let temp = err.user_line().split_whitespace().find(|w| w.starts_with("restore_temp_")).map(str::to_string).expect("temp db named");
    assert!(!databases(cluster).await.contains(&temp), "{temp} must be dropped");
}

async fn databases(cluster: &PgCluster) -> Vec<String> {
    let c = cluster.client("postgres").await;
    c.query("SELECT datname::text FROM pg_database ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_only_and_restore_to_another_cluster() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_dr").await;
    cluster
        .execute(
            "postgres",
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dr_owner') THEN CREATE ROLE dr_owner LOGIN PASSWORD 'x'; END IF; END $$;",
        )
        .await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500); ALTER TABLE t OWNER TO dr_owner;").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    backup::run(&s, &BackupOptions::default()).await.unwrap();

    let report = restore::run(&s, &RestoreOptions { temp_only: true, ..opts(BackupSelector::Latest) }).await.unwrap();
    assert!(report.restored_into.starts_with("restore_temp_"));
    assert!(report.swap.is_none() && report.pre_restore_backup.is_none());
    let n: i64 = cluster.client(&report.restored_into).await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 500);

    // Disaster recovery: a brand-new cluster, where the owner role does not exist yet.
    let other = PgCluster::start();
    let dr: DbSettings = other.superuser_settings(&db);
    let s2 = settings(dr, vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let report = restore::run(&s2, &opts(BackupSelector::Latest)).await.unwrap();
    assert!(report.roles_created >= 1, "missing roles are created");
    assert!(report.swap.as_ref().unwrap().previous_renamed_to.is_none(), "nothing to replace on a new server");
    let c = other.client(&db).await;
    let owner: String = c.query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 't'", &[]).await.unwrap().get(0);
    assert_eq!(owner, "dr_owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_level_restore_into_temp_database() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_table").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric);
             CREATE TABLE audit (id int);
             INSERT INTO customers SELECT i, 'c' || i FROM generate_series(1, 100) i;
             INSERT INTO orders SELECT i, i % 100 + 1, i * 1.5 FROM generate_series(1, 1000) i;
             INSERT INTO audit SELECT generate_series(1, 10);",
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    backup::run(&s, &BackupOptions::default()).await.unwrap();
    cluster.execute(&db, "DELETE FROM orders WHERE id > 500;").await;

    let err = restore::run(&s, &RestoreOptions { tables: vec!["public.nope".into()], ..opts(BackupSelector::Latest) }).await.unwrap_err();
    assert!(err.user_line().contains("public.nope"), "{}", err.user_line());

    let report = restore::run(&s, &RestoreOptions { tables: vec!["orders".into()], ..opts(BackupSelector::Latest) }).await.unwrap();
    assert!(report.swap.is_none(), "a table-level restore is never swapped in");
    assert!(report.restored_into.starts_with("restore_temp_"));
    assert_eq!(report.tables_restored, 1);
    assert_eq!(report.foreign_keys_skipped.len(), 1, "{:?}", report.foreign_keys_skipped);
    assert!(report.verification.passed());
    let temp = cluster.client(&report.restored_into).await;
    let orders: i64 = temp.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    let customers: i64 = temp.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get(0);
    assert_eq!((orders, customers), (1000, 0));
    // Production untouched: the deleted rows can now be copied back by hand.
    let prod: i64 = cluster.client(&db).await.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(prod, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_garage_when_no_local_copy_exists() {
    let cluster = PgCluster::shared();
    let garage = harness::garage::Garage::shared();
    let db = cluster.fresh_db("rs_s3").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 30000) i;").await;
    let bucket = garage.unique_bucket("rss3");
    let local = tempfile::tempdir().unwrap();
    let both = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(local.path().to_path_buf()), RepoSpec::S3(garage.settings(&bucket, "db"))]);
    backup::run(&both, &BackupOptions::default()).await.unwrap();
    // The local copy is lost: the restore reads from S3.
    std::fs::remove_dir_all(local.path().join("backups")).unwrap();
    let target = format!("{db}_from_s3");
    let report = restore::run(&both, &RestoreOptions { target_db: Some(target.clone()), ..opts(BackupSelector::Latest) }).await.unwrap();
    assert!(report.repository.starts_with("s3://"), "{}", report.repository);
    assert!(report.verification.passed());
    let n: i64 = cluster.client(&target).await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 30000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_level_privileges_are_restored() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("rs_grants").await;
    cluster.execute(&db, "DROP ROLE IF EXISTS grants_app; CREATE ROLE grants_app LOGIN; CREATE TABLE t (id int);").await;
    cluster.execute(&db, &format!("REVOKE CONNECT, TEMPORARY ON DATABASE \"{db}\" FROM PUBLIC; GRANT CONNECT ON DATABASE \"{db}\" TO grants_app")).await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    backup::run(&s, &BackupOptions::default()).await.unwrap();
    let target = format!("{db}_copy");
    restore::run(&s, &RestoreOptions { target_db: Some(target.clone()), ..opts(BackupSelector::Latest) }).await.unwrap();
    let c = cluster.client("postgres").await;
    let q = "SELECT has_database_privilege('public', $1, 'CONNECT') OR has_database_privilege('public', $1, 'TEMPORARY'), \
             has_database_privilege('grants_app', $1, 'CONNECT')";
    let row = c.query_one(q, &[&target]).await.unwrap();
    let (public, app): (bool, bool) = (row.get(0), row.get(1));
    assert!(!public, "PUBLIC must not regain CONNECT or TEMPORARY on the restored database");
    assert!(app, "grants_app keeps CONNECT");
}
