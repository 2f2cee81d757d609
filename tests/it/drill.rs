//! `pgkeep drill` on a real cluster: a verified test restore with SQL
//! assertions, the temporary database dropped, the outcome and RTO recorded
//! in the repository.

use crate::harness;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::drill::{self, DrillOptions};
use pgkeep::config::RepoSpec;
use pgkeep::storage::local::LocalStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_restores_asserts_drops_and_records() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("drill").await;
    cluster.execute(&db, "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL); INSERT INTO users SELECT i, 'u' || i || '@x' FROM generate_series(1, 300) i; CREATE TABLE tasks (id int);").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    pgkeep::commands::backup::run(&s, &Default::default()).await.unwrap();
    let dbs_before = list_dbs(cluster).await;

    let ok = drill::run(
        &s,
        &DrillOptions {
            recent: 3,
            assert_sql: Some("SELECT count(*) = 300 FROM users;\nSELECT bool_and(email LIKE '%@x') FROM users;".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(ok.passed, "{:?}", ok.problems);
    assert_eq!((ok.assertions, ok.rows), (2, 300));
    assert!(ok.rto_seconds > 0.0);
    assert_eq!(list_dbs(cluster).await, dbs_before, "the temporary database is dropped");
    let recorded = drill::last_record(&LocalStorage::new(repo.path())).await.unwrap().unwrap();
    assert_eq!(recorded.backup_id, ok.backup_id);
    assert!(recorded.passed);

    // A false assertion fails the drill, and the failure is recorded.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let bad = drill::run(&s, &DrillOptions { recent: 1, assert_sql: Some("SELECT count(*) = 999 FROM users".into()), ..Default::default() }).await.unwrap();
    assert!(!bad.passed);
    assert!(bad.problems.iter().any(|p| p.contains("assertion 1")), "{:?}", bad.problems);
    assert_eq!(list_dbs(cluster).await, dbs_before, "dropped after a failed drill too");
    assert!(!drill::last_record(&LocalStorage::new(repo.path())).await.unwrap().unwrap().passed);

    // An empty critical table fails verification itself.
    let bad = drill::run(&s, &DrillOptions { recent: 1, critical_tables: vec!["public.tasks".into()], ..Default::default() }).await.unwrap();
    assert!(!bad.passed);
    assert!(bad.problems.iter().any(|p| p.contains("critical table public.tasks is empty")), "{:?}", bad.problems);
    assert_eq!(list_dbs(cluster).await, dbs_before);
}

async fn list_dbs(cluster: &PgCluster) -> Vec<String> {
    let c = cluster.client("postgres").await;
    let mut v: Vec<String> = c
        .query("SELECT datname::text FROM pg_database WHERE datname LIKE 'restore_temp_%' OR datname LIKE 'drill%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}
