//! Legacy archives of the old scripts (`pg_dump -Fc | gzip` into
//! `full_backup_YYYYMMDD_HHMMSS.dump.gz`), made exactly that way from a real
//! cluster: listed from a local repository (top level and `backups/`) and
//! from Garage; restored by id with the swap, into `--target-db`, and from
//! S3 by key; damaged archives (truncated or flipped gzip, a truncated dump
//! inside valid gzip, a load that fails) refused with production untouched;
//! no approval without a terminal.

use crate::harness;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use harness::backup_check::settings;
use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::list;
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::commands::restore_legacy;
use pgkeep::config::RepoSpec;
use pgkeep::error::ErrorKind;
use pgkeep::repo::layout::BackupId;
use pgkeep::restore::source::BackupSelector;
use pgkeep::storage::s3::S3Storage;
use pgkeep::storage::{PutOptions, Storage};

/// The tests compare the cluster's list of databases, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ID: &str = "full_backup_20250101_020000";
const FILE: &str = "full_backup_20250101_020000.dump.gz";

const SAMPLE_SQL: &str = "
CREATE SCHEMA sales;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer int REFERENCES customers, total numeric, note text);
CREATE TABLE \"Audit Log\" (at timestamptz DEFAULT now(), what text);
CREATE TABLE empty_one (id int);
CREATE SEQUENCE invoice_no START 1000;
SELECT nextval('invoice_no'), nextval('invoice_no');
INSERT INTO customers SELECT i, 'c' || i FROM generate_series(1, 300) i;
INSERT INTO sales.orders (customer, total, note) SELECT i % 300 + 1, i * 1.25, E'multi\\nline ' || i FROM generate_series(1, 5000) i;
INSERT INTO \"Audit Log\" (what) VALUES ('created'), ('tab\there');
CREATE INDEX orders_customer ON sales.orders (customer);
CREATE VIEW big_orders AS SELECT * FROM sales.orders WHERE total > 100;
";

/// Row counts of the sample's tables, in a fixed order.
async fn counts(cluster: &PgCluster, db: &str) -> Vec<i64> {
    let c = cluster.client(db).await;
    let mut out = Vec::new();
    for t in ["customers", "sales.orders", "\"Audit Log\"", "empty_one"] {
        out.push(c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0));
    }
    out
}

/// `pg_dump -Fc … | gzip > <dir>/<FILE>`, as the old scripts ran it.
fn legacy_dump(cluster: &PgCluster, db: &str, dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let s = cluster.superuser_settings(db);
    let out = dir.join(FILE);
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"set -e; "$PG_DUMP" -Fc -h "$H" -p "$P" -U "$U" "$D" | gzip > "$OUT""#)
        .env("PG_DUMP", cluster.bindir().join("pg_dump"))
        .env("H", &s.host)
        .env("P", s.port.to_string())
        .env("U", &s.user)
        .env("D", db)
        .env("OUT", &out)
        .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn opts(selector: BackupSelector) -> RestoreOptions {
    RestoreOptions { yes: true, ..RestoreOptions::new(selector) }
}

fn by_id() -> BackupSelector {
    BackupSelector::Id(ID.parse::<BackupId>().unwrap())
}

async fn databases(cluster: &PgCluster) -> Vec<String> {
    let c = cluster.client("postgres").await;
    c.query("SELECT datname::text FROM pg_database ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

async fn garage_repo(label: &str, prefix: &str) -> (RepoSpec, S3Storage) {
    let garage = Garage::shared();
    let bucket = garage.unique_bucket(label);
    let storage = S3Storage::connect(garage.settings(&bucket, prefix)).await.unwrap();
    (RepoSpec::S3(garage.settings(&bucket, prefix)), storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_legacy_finds_archives_locally_and_in_garage() {
    let _serial = SERIAL.lock().await;
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("lg_list").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let repo = tempfile::tempdir().unwrap();
    let archive = legacy_dump(cluster, &db, repo.path());
    // The same bytes in every place (two dumps can differ in size: pg_dump -Fc records its start time).
    std::fs::create_dir_all(repo.path().join("backups")).unwrap();
    std::fs::write(repo.path().join("backups").join(FILE), &archive).unwrap();
    std::fs::write(repo.path().join("backups/full_backup_2025.dump.gz"), b"not an archive name").unwrap();
    let (s3_spec, s3) = garage_repo("lglist", "prod/db").await;
    s3.put(&format!("backups/{FILE}"), Bytes::from(archive.clone()), PutOptions::default()).await.unwrap();

    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into()), s3_spec]);
    // A pgkeep backup in the same repositories is not confused with the archive.
    let b = backup::run(&s, &BackupOptions::default()).await.unwrap();

    let plain = list::run(&s).await.unwrap();
    assert!(plain.iter().all(|i| i.kind != "legacy"), "without --legacy, archives are not listed");
    assert!(plain.iter().all(|i| i.modified.is_none()));
    let all = list::run_with_legacy(&s).await.unwrap();
    assert_eq!(all.len(), plain.len() + 1, "{all:#?}");
    let legacy: Vec<_> = all.iter().filter(|i| i.kind == "legacy").collect();
    let [item] = legacy[..] else { panic!("one legacy entry expected: {all:#?}") };
    assert_eq!(item.backup_id, ID);
    assert_eq!(item.stored_bytes, archive.len() as u64);
    assert!(item.modified.is_some());
    assert!(item.started_at.starts_with("2025-01-01T02:00:00"), "{}", item.started_at);
    assert!(item.problems.is_empty(), "{:?}", item.problems);
    assert_eq!(item.repositories.len(), 3, "{:?}", item.repositories);
    assert!(item.repositories.iter().any(|r| r.ends_with(&format!("/backups/{FILE}")) && r.starts_with("s3://")), "{:?}", item.repositories);
    assert!(all.iter().any(|i| i.backup_id == b.manifest.backup_id.to_string() && i.kind == "full"));
    // Legacy archives sort before the (newer) pgkeep backup; text and JSON both show them.
    assert_eq!(all[0].kind, "legacy");
    let text = list::render(&all);
    assert!(text.contains(ID) && text.contains("legacy") && text.contains("modified "), "{text}");
    let json = serde_json::to_value(&all).unwrap();
    assert_eq!(json[0]["kind"], "legacy");
    assert!(json[0]["modified"].is_string());
    assert!(json[1].get("modified").is_none(), "pgkeep entries keep their JSON shape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_by_id_swaps_in_and_target_db_works() {
    let _serial = SERIAL.lock().await;
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("lg_restore").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let source_counts = counts(cluster, &db).await;
    let repo = tempfile::tempdir().unwrap();
    legacy_dump(cluster, &db, &repo.path().join("backups"));
    // An accident after the archive.
    cluster.execute(&db, "DELETE FROM sales.orders WHERE id > 100; TRUNCATE \"Audit Log\";").await;
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);

    let report = restore::run(&s, &opts(by_id())).await.unwrap();
    assert!(report.is_legacy());
    assert_eq!(report.backup_id, ID);
    assert!(report.repository.ends_with(&format!("backups/{FILE}")), "{}", report.repository);
    assert!(report.verification.passed(), "{:?}", report.verification.problems);
    assert_eq!(report.verification.tables_checked, 4);
    assert_eq!(report.rows as i64, source_counts.iter().sum::<i64>());
    assert_eq!(report.restored_into, db);
    assert!(report.pre_restore_backup.as_deref().unwrap().starts_with("pre_restore_backup_"));
    let swap = report.swap.clone().unwrap();
    assert_eq!(swap.previous_renamed_to.as_deref(), Some(format!("{db}_old").as_str()));
    assert!(report.summary().contains("row counts equal the archive's"), "{}", report.summary());

    assert_eq!(counts(cluster, &db).await, source_counts, "the archive's data is back");
    let c = cluster.client(&db).await;
    let next: i64 = c.query_one("SELECT nextval('invoice_no')", &[]).await.unwrap().get(0);
    assert_eq!(next, 1002, "the sequence continues");
    let note: String = c.query_one("SELECT note FROM sales.orders WHERE id = 7", &[]).await.unwrap().get(0);
    assert_eq!(note, "multi\nline 7");
    let big: i64 = c.query_one("SELECT count(*) FROM big_orders", &[]).await.unwrap().get(0);
    assert!(big > 0);
    let old: i64 = cluster.client(&format!("{db}_old")).await.query_one("SELECT count(*) FROM sales.orders", &[]).await.unwrap().get(0);
    assert_eq!(old, 100, "the replaced database is kept as _old");
    assert!(!databases(cluster).await.iter().any(|d| d.starts_with("restore_temp_")), "no temporary database left");
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("pgkeep-legacy-{ID}-{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "the unpacked file is removed: {leftovers:?}");

    // --target-db, with a critical table that is empty in the archive.
    let target = format!("{db}_copy");
    let o = RestoreOptions { target_db: Some(target.clone()), critical_tables: vec!["empty_one".into()], ..opts(by_id()) };
    let err = restore::run(&s, &o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CheckFailed, "{}", err.user_line());
    assert!(err.user_line().contains("critical table public.empty_one is empty"), "{}", err.user_line());
    assert!(!databases(cluster).await.contains(&target), "the failed target is dropped");
    let o = RestoreOptions { target_db: Some(target.clone()), critical_tables: vec!["sales.orders".into()], ..opts(by_id()) };
    let report = restore::run(&s, &o).await.unwrap();
    assert!(report.swap.is_none() && report.pre_restore_backup.is_none());
    assert_eq!(report.restored_into, target);
    assert_eq!(counts(cluster, &target).await, source_counts);
    // The name given again: refused, it exists now.
    let err = restore::run(&s, &o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);

    // From Garage only, naming the archive by its key.
    let (s3_spec, s3) = garage_repo("lgrestore", "legacy").await;
    s3.put(&format!("backups/{FILE}"), Bytes::from(std::fs::read(repo.path().join("backups").join(FILE)).unwrap()), PutOptions::default()).await.unwrap();
    let s3_settings = settings(cluster.superuser_settings(&db), vec![s3_spec]);
    let from_s3 = format!("{db}_s3");
    let o = RestoreOptions { target_db: Some(from_s3.clone()), ..opts(BackupSelector::Latest) };
    let report = restore_legacy::run_legacy(&s3_settings, &o, &format!("backups/{FILE}")).await.unwrap();
    assert!(report.repository.starts_with("s3://"), "{}", report.repository);
    assert_eq!(counts(cluster, &from_s3).await, source_counts);
    // `latest` is never a legacy archive.
    let err = restore::run(&s3_settings, &RestoreOptions { target_db: Some(format!("{db}_latest")), ..opts(BackupSelector::Latest) }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.user_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_archives_are_refused_and_production_untouched() {
    let _serial = SERIAL.lock().await;
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("lg_corrupt").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let before = counts(cluster, &db).await;
    let repo = tempfile::tempdir().unwrap();
    let good = legacy_dump(cluster, &db, repo.path());
    let path = repo.path().join(FILE);
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    let dbs_before = databases(cluster).await;

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let truncated_dump = {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&good[..]), &mut raw).unwrap();
        raw.truncate(raw.len() * 2 / 3);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        enc.finish().unwrap()
    };
    for (label, bytes) in [("truncated gzip", good[..good.len() - 100].to_vec()), ("flipped byte", flipped), ("truncated dump", truncated_dump)] {
        std::fs::write(&path, &bytes).unwrap();
        let err = restore::run(&s, &opts(by_id())).await.unwrap_err();
        let line = err.user_line();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{label}: {line}");
        assert!(line.contains(FILE) && line.contains("damaged"), "{label}: {line}");
        assert_eq!(counts(cluster, &db).await, before, "{label}: production untouched");
        assert_eq!(databases(cluster).await, dbs_before, "{label}: no swap, no pre-restore work, nothing created");
    }

    // A load that fails (a role the server lacks): the temporary database is dropped.
    cluster.execute("postgres", "DROP ROLE IF EXISTS legacy_ghost; CREATE ROLE legacy_ghost;").await;
    let ghost_db = cluster.fresh_db("lg_ghost").await;
    cluster.execute(&ghost_db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO legacy_ghost;").await;
    legacy_dump(cluster, &ghost_db, repo.path());
    cluster.execute("postgres", &format!("DROP DATABASE {ghost_db} WITH (FORCE)")).await;
    cluster.execute("postgres", "DROP ROLE legacy_ghost").await;
    let before_ghost = databases(cluster).await;
    let err = restore::run(&s, &RestoreOptions { no_pre_backup: true, ..opts(by_id()) }).await.unwrap_err();
    let line = err.user_line();
    assert_eq!(err.kind(), ErrorKind::Database, "{line}");
    assert!(line.contains(FILE) && line.contains("legacy_ghost") && line.contains("production untouched"), "{line}");
    let temp = line.split_whitespace().find(|w| w.starts_with("restore_temp_")).expect("temp db named").trim_end_matches([':', ';', ',']);
    assert!(!databases(cluster).await.iter().any(|d| d == temp), "{temp} must be dropped");
    assert_eq!(databases(cluster).await, before_ghost);
    assert_eq!(counts(cluster, &db).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_terminal_and_no_yes_refuses() {
    let _serial = SERIAL.lock().await;
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("lg_refuse").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let repo = tempfile::tempdir().unwrap();
    legacy_dump(cluster, &db, repo.path());
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    let before = databases(cluster).await;
    for attempt in [
        restore::run(&s, &RestoreOptions { yes: false, ..opts(by_id()) }).await,
        restore_legacy::run_legacy(&s, &RestoreOptions { yes: false, ..opts(by_id()) }, FILE).await,
    ] {
        let err = attempt.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{}", err.user_line());
        assert!(err.user_line().contains("--yes") && err.user_line().contains(FILE), "{}", err.user_line());
    }
    assert_eq!(databases(cluster).await, before);
    // Unknown names are not found, with a pointer to the listing.
    let err = restore_legacy::run_legacy(&s, &opts(by_id()), "full_backup_20240101_000000.dump.gz").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.user_line().contains("list --legacy"), "{}", err.user_line());
}
