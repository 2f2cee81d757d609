//! `pgkeep expire` removes per-run log files and audit records past their
//! own retention (`LOG_RETENTION_DAYS`, `AUDIT_RETENTION_DAYS`, or the
//! config-file keys), through the binary on a local repository.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use pgkeep::storage::local::LocalStorage;

fn pgkeep(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k.ends_with("RETENTION_DAYS") || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1").env("PGDATABASE", "app");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgkeep")
}

fn stamp(days_ago: i64) -> String {
    (Utc::now() - chrono::Duration::days(days_ago)).format("%Y%m%d_%H%M%S").to_string()
}

fn touch(repo: &Path, rel: &str) {
    let p = repo.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"x").unwrap();
}

#[tokio::test]
async fn expire_removes_old_logs_and_audit_records_by_their_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let storage = LocalStorage::new(repo.to_path_buf());
    pgkeep::repo::meta::ensure(&storage).await.unwrap();

    let log_old = format!("logs/backup_{}.log", stamp(120));
    let log_new = format!("logs/backup_{}.log", stamp(10));
    let audit_old = format!("audit/{}_restore_abcdef.json", stamp(400));
    let audit_mid = format!("audit/{}_expire_123456.json", stamp(120));
    for f in [&log_old, &log_new, &audit_old, &audit_mid] {
        touch(repo, f);
    }
    // A log file without a date in its name ages by its modification time.
    touch(repo, "logs/custom.log");
    let old = SystemTime::now() - Duration::from_secs(200 * 86400);
    std::fs::File::options().write(true).open(repo.join("logs/custom.log")).unwrap().set_modified(old).unwrap();
    let repo_s = repo.to_str().unwrap();

    // A dry run with the defaults (90 and 365 days) names the counts and deletes nothing.
    let o = pgkeep(&["expire", "--dry-run"], &[("BACKUP_DIR", repo_s)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("would remove 2 log file(s) older than 90 days"), "{out}");
    assert!(out.contains("would remove 1 audit record(s) older than 365 days"), "{out}");
    assert!(repo.join(&log_old).exists() && repo.join(&audit_old).exists());

    // The real run with the defaults.
    let o = pgkeep(&["expire"], &[("BACKUP_DIR", repo_s)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!repo.join(&log_old).exists(), "log older than 90 days removed");
    assert!(!repo.join("logs/custom.log").exists(), "undated log aged by mtime removed");
    assert!(repo.join(&log_new).exists(), "recent log kept");
    assert!(!repo.join(&audit_old).exists(), "audit record older than 365 days removed");
    assert!(repo.join(&audit_mid).exists(), "120-day-old audit record kept by the 365-day default");

    // The config-file key shortens the audit retention; the env variable sets the logs'.
    let cfg = dir.path().join("pgkeep.toml");
    std::fs::write(&cfg, "audit_retention_days = 100\n").unwrap();
    let o = pgkeep(&["--config", cfg.to_str().unwrap(), "config"], &[("BACKUP_DIR", repo_s), ("LOG_RETENTION_DAYS", "5")]);
    let shown = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(shown.lines().any(|l| l.contains("audit_retention_days") && l.contains("100") && l.contains("pgkeep.toml")), "{shown}");
    assert!(shown.lines().any(|l| l.contains("log_retention_days") && l.contains("LOG_RETENTION_DAYS")), "{shown}");
    let o = pgkeep(&["--config", cfg.to_str().unwrap(), "expire"], &[("BACKUP_DIR", repo_s), ("LOG_RETENTION_DAYS", "5")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!repo.join(&audit_mid).exists(), "120-day-old audit record removed at 100 days");
    assert!(!repo.join(&log_new).exists(), "10-day-old log removed at 5 days");
    // The expire runs' own audit records and log files are fresh and stay.
    let audits = std::fs::read_dir(repo.join("audit")).unwrap().count();
    assert!(audits >= 1, "this run's audit records stay");

    // A bad value names the variable.
    let o = pgkeep(&["expire"], &[("BACKUP_DIR", repo_s), ("AUDIT_RETENTION_DAYS", "a year")]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("AUDIT_RETENTION_DAYS"));
}
