//! The `pgkeep` binary as a user meets it: exit codes, one-line errors,
//! redacted configuration, and a backup through the seed's env variables.

use crate::harness;

use std::process::{Command, Output};

use harness::postgres::PgCluster;

fn pgkeep(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgkeep")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o).lines().filter(|l| l.starts_with("pgkeep: ")).map(str::to_string).collect()
}

#[test]
fn malformed_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgkeep.toml");
    std::fs::write(&cfg, "jobs = = 2\n").unwrap();
    let o = pgkeep(&["--config", cfg.to_str().unwrap(), "config"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains(cfg.to_str().unwrap()));
    assert!(!stderr(&o).contains("panicked"));

    let o = pgkeep(&["config"], &[("RETENTION_DAYS", "soon")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_lines(&o)[0].contains("RETENTION_DAYS"));

    let o = pgkeep(&["--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn config_shows_sources_and_never_secrets() {
    let o = pgkeep(
        &["config", "--jobs", "3"],
        &[
            ("DB_HOST", "db.internal"),
            ("DB_PASSWORD", "very-secret-pw"),
            ("S3_BUCKET", "backups"),
            ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T1/B2/secrettoken"),
            ("DATABASE_URL", "postgres://app:url-pass@db.internal/app"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("db.host") && out.contains("db.internal") && out.contains("env DB_HOST"), "{out}");
    assert!(out.contains("flag --jobs"));
    for secret in ["very-secret-pw", "secrettoken", "url-pass"] {
        assert!(!out.contains(secret) && !stderr(&o).contains(secret), "{secret} leaked: {out}");
    }
}

#[test]
fn unreachable_database_and_bad_password_fail_cleanly() {
    // A closed loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let port_s = port.to_string();
    let o = pgkeep(
        &["backup"],
        &[("DB_HOST", "127.0.0.1"), ("DB_PORT", &port_s), ("DB_USER", "u"), ("DB_PASSWORD", "pw-never-shown"), ("BACKUP_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{}", lines[0]);
    assert!(!stderr(&o).contains("pw-never-shown"));

    let cluster = PgCluster::shared();
    let port_s = cluster.port().to_string();
    let o = pgkeep(
        &["backup"],
        &[
            ("DB_HOST", "127.0.0.1"),
            ("DB_PORT", &port_s),
            ("DB_USER", "postgres"),
            ("DB_PASSWORD", "wrong-pw-xyz"),
            ("DB_NAME", "postgres"),
            ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains("postgres"), "{}", lines[0]);
    assert!(!stderr(&o).contains("wrong-pw-xyz"));
}

#[test]
fn backup_through_seed_env_vars_into_an_unwritable_dir_and_then_a_good_one() {
    let cluster = PgCluster::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let db = cluster.fresh_db("cli_backup").await;
        cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'x' FROM generate_series(1, 5000) i;").await;
        db
    });
    let s = cluster.superuser_settings(&db);
    let port_s = cluster.port().to_string();
    let pw = s.password.as_ref().unwrap().expose().to_string();
    let file = tempfile::NamedTempFile::new().unwrap();
    let bad_dir = file.path().join("repo");
    let env = |dir: &str| -> Vec<(&'static str, String)> {
        vec![
            ("DB_HOST", "127.0.0.1".into()),
            ("DB_PORT", port_s.clone()),
            ("DB_USER", s.user.clone()),
            ("DB_PASSWORD", pw.clone()),
            ("DB_NAME", db.clone()),
            ("BACKUP_DIR", dir.to_string()),
        ]
    };
    let run = |dir: &str, args: &[&str]| {
        let e = env(dir);
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pgkeep(args, &pairs)
    };
    let o = run(bad_dir.to_str().unwrap(), &["backup"]);
    // A file where BACKUP_DIR's directory should be is a configuration error (exit 2).
    assert_eq!(o.status.code(), Some(2));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains(bad_dir.to_str().unwrap()), "{}", lines[0]);

    let good = tempfile::tempdir().unwrap();
    let o = run(good.path().to_str().unwrap(), &["backup", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = report["backup_id"].as_str().unwrap();
    assert!(id.starts_with("full_backup_"));
    assert_eq!(report["stats"]["rows"].as_u64(), Some(5000));
    assert!(good.path().join("backups").join(id).join("manifest.json").is_file());
    // Retention ran after the successful backup (EXPIRE_AFTER_BACKUP defaults to on) and was audited.
    let audited: Vec<String> = std::fs::read_dir(good.path().join("audit")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(audited.iter().any(|n| n.contains("_expire_")), "{audited:?}");
    assert!(good.path().join("logs").read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("backup_")));
    assert!(!stderr(&o).contains(&pw));
}

#[test]
fn help_groups_the_global_options() {
    for verb in ["backup", "restore", "stream"] {
        let out = pgkeep(&[verb, "--help"], &[]);
        assert!(out.status.success(), "{verb} --help");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let at = |heading: &str| text.lines().position(|l| l == heading).unwrap_or_else(|| panic!("{heading} in {verb} --help:\n{text}"));
        let order = ["Options:", "Connection:", "Repositories:", "S3:", "Encryption:", "Output:"].map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{verb} --help headings out of order: {order:?}\n{text}");
        // Each global option under its heading.
        let section = |heading: &str| text.lines().skip(at(heading) + 1).take_while(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
        assert!(section("Connection:").contains("--db") && section("S3:").contains("--s3-sse") && section("Encryption:").contains("--identity-file"), "{text}");
    }
}
