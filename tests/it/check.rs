//! `pgkeep check` against a real cluster: OK when a fresh full backup exists,
//! ALERT (exit 3) for a forgotten pgkeep slot, an old backup, or no backup.

use crate::harness;

use std::process::Command;

use harness::postgres::PgCluster;

fn check(cluster: &PgCluster, db: &str, repo: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let s = cluster.superuser_settings(db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("check")
        .args(extra)
        .env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("BACKUP_DIR", repo)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_alerts_on_missing_or_old_backups_and_forgotten_slots() {
    // Own cluster: slots are cluster-wide and other tests create their own.
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("ck").await;
    cluster.execute(&db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await;
    let repo = tempfile::tempdir().unwrap();

    let (code, out) = check(&cluster, &db, repo.path(), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ALERT full-backup-age: no full backup"), "{out}");

    let s = harness::backup_check::settings(cluster.superuser_settings(&db), vec![pgkeep::config::RepoSpec::Local(repo.path().to_path_buf())]);
    pgkeep::commands::backup::run(&s, &Default::default()).await.unwrap();
    let prom = repo.path().join("pgkeep.prom");
    let (code, out) = check(&cluster, &db, repo.path(), &["--prometheus-file", prom.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK    full-backup-age") && out.contains("OK    repository"), "{out}");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(metrics.contains("pgkeep_last_full_backup_timestamp_seconds{"), "{metrics}");
    assert!(metrics.contains("pgkeep_check_ok{check=\"full-backup-age\"} 1"), "one status per check: {metrics}");

    // A forgotten pgkeep slot: inactive, retaining WAL.
    cluster.execute(&db, "SELECT pg_create_logical_replication_slot('pgkeep_forgotten', 'pgoutput');").await;
    let (code, out) = check(&cluster, &db, repo.path(), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ALERT slot: logical slot pgkeep_forgotten") && out.contains("nothing is consuming"), "{out}");
    // Any slot above the lag limit alerts, whoever owns it.
    cluster.execute(&db, "SELECT pg_drop_replication_slot('pgkeep_forgotten'); SELECT pg_create_logical_replication_slot('other_tool', 'pgoutput'); CREATE TABLE filler AS SELECT repeat('x', 1000) FROM generate_series(1, 5000);").await;
    let (code, out) = check(&cluster, &db, repo.path(), &["--max-slot-lag", "1KiB"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("other_tool") && out.contains("above the"), "{out}");
    cluster.execute(&db, "SELECT pg_drop_replication_slot('other_tool');").await;

    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (code, out) = check(&cluster, &db, repo.path(), &["--max-full-age", "1s"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ALERT full-backup-age"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_alerts_at_once_on_a_published_table_whose_update_would_fail() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("ckident").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE full_ident (v text); ALTER TABLE full_ident REPLICA IDENTITY FULL; \
             CREATE TABLE inserts (v text); \
             CREATE PUBLICATION app_pub FOR TABLE keyed, full_ident; CREATE PUBLICATION app_ins FOR TABLE inserts WITH (publish = 'insert');",
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let (_, out) = check(cluster, &db, repo.path(), &[]);
    assert!(out.contains("OK    replica-identity: every table published for UPDATE/DELETE has a replica identity"), "{out}");

    // The application drops the primary key: check alerts at once, naming the table and publication.
    cluster.execute(&db, "ALTER TABLE keyed DROP CONSTRAINT keyed_pkey").await;
    let (code, out) = check(cluster, &db, repo.path(), &[]);
    assert_eq!(code, 3, "{out}");
    let alerts: Vec<&str> = out.lines().filter(|l| l.starts_with("ALERT replica-identity")).collect();
    assert_eq!(alerts.len(), 1, "{out}");
    assert!(alerts[0].contains("table public.keyed") && alerts[0].contains("publication app_pub"), "{}", alerts[0]);
    assert!(alerts[0].contains("REPLICA IDENTITY FULL"), "{}", alerts[0]);
}
