//! Unit tests of configuration precedence, parsing errors and redaction.

use super::*;
use std::collections::BTreeMap;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // Keep tests independent of the developer's ~/.pgpass and ./pgkeep.toml.
    m.entry("HOME".into()).or_insert_with(|| "/nonexistent-home".into());
    m
}

fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pgkeep.toml");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

fn source_of(s: &Settings, key: &str) -> String {
    s.provenance.iter().find(|(k, _, _)| k == key).map(|(_, _, s)| s.to_string()).unwrap_or_default()
}

#[test]
fn precedence_flag_env_file_default() {
    let (_d, path) = write_file("jobs = 3\nretention_days = 10\nlocal_retention_days = 5\n[db]\nhost = 'filehost'\nport = 7000\nname = 'filedb'\n");
    let e = env(&[("DB_HOST", "envhost"), ("PGHOST", "pghost"), ("RETENTION_DAYS", "40")]);
    let flags = FlagValues {
        config: Some(path.clone()),
        jobs: Some(9),
        ..Default::default()
    };
    let s = load(&flags, &e).unwrap();
    assert_eq!(s.jobs, 9);
    assert_eq!(source_of(&s, "jobs"), "flag --jobs");
    assert_eq!(s.db.host, "envhost");
    assert_eq!(source_of(&s, "db.host"), "env DB_HOST");
    assert_eq!(s.db.port, 7000);
    assert!(source_of(&s, "db.port").starts_with("file "));
    assert_eq!(s.db.dbname, "filedb");
    assert_eq!(s.retention_days, 40);
    assert_eq!(s.local_retention_days, 5);
    assert_eq!(s.db.sslmode, SslMode::Prefer);
    assert_eq!(source_of(&s, "db.sslmode"), "default");

    // --db beats DB_*; DB_* beats DATABASE_URL; DATABASE_URL beats PG*.
    let e = env(&[
        ("DB_HOST", "envhost"),
        ("DATABASE_URL", "postgres://urluser@urlhost:6000/urldb"),
        ("PGUSER", "pguser"),
        ("PGPORT", "5999"),
    ]);
    let s = load(&FlagValues { db: Some("postgres://flaghost/flagdb".into()), ..Default::default() }, &e).unwrap();
    assert_eq!(s.db.host, "flaghost");
    assert_eq!(s.db.dbname, "flagdb");
    assert_eq!(s.db.user, "urluser");
    assert_eq!(s.db.port, 6000);
    let s = load(&FlagValues::default(), &e).unwrap();
    assert_eq!(s.db.host, "envhost");
    assert_eq!(s.db.dbname, "urldb");
}

#[test]
fn seed_env_builds_local_and_s3_repos() {
    let e = env(&[
        ("BACKUP_DIR", "/srv/backups"),
        ("S3_BUCKET", "my-bucket"),
        ("S3_PREFIX", "/prod/db/"),
        ("S3_ENDPOINT", "http://127.0.0.1:3900"),
    ]);
    let s = load(&FlagValues::default(), &e).unwrap();
    assert_eq!(s.repos.len(), 2);
    assert!(matches!(&s.repos[0], RepoSpec::Local(p) if p == Path::new("/srv/backups")));
    match &s.repos[1] {
        RepoSpec::S3(s3) => {
            assert_eq!(s3.bucket, "my-bucket");
            assert_eq!(s3.prefix, "prod/db");
            assert!(s3.force_path_style, "custom endpoint implies path style");
        }
        other => panic!("expected s3, got {other:?}"),
    }
    // --repo replaces the env-derived list.
    let flags = FlagValues { repos: vec!["s3://other/p".into()], ..Default::default() };
    let s = load(&flags, &e).unwrap();
    assert_eq!(s.repos.len(), 1);
    assert_eq!(s.repos[0].display(), "s3://other/p");
}

#[test]
fn bad_values_name_their_origin() {
    let e = env(&[("RETENTION_DAYS", "thirty")]);
    let err = load(&FlagValues::default(), &e).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::Config);
    assert!(err.user_line().contains("RETENTION_DAYS"), "{}", err.user_line());

    let e = env(&[("DB_PORT", "99999")]);
    let err = load(&FlagValues::default(), &e).unwrap_err();
    assert!(err.user_line().contains("DB_PORT"));

    let (_d, path) = write_file("[db]\nsslmode = 'sometimes'\n");
    let err = load(&FlagValues { config: Some(path), ..Default::default() }, &env(&[])).unwrap_err();
    assert!(err.user_line().contains("db.sslmode in"), "{}", err.user_line());

    let err = load(&FlagValues { config: Some("/nonexistent/pgkeep.toml".into()), ..Default::default() }, &env(&[])).unwrap_err();
    assert!(err.user_line().contains("/nonexistent/pgkeep.toml"));
}

#[test]
fn secrets_are_redacted_everywhere() {
    let (_d, path) = write_file("[s3]\nbucket = 'b'\naccess_key_id = 'AKIDPUBLIC'\nsecret_access_key = 'S3CR3T-KEY'\n");
    let e = env(&[
        ("DB_PASSWORD", "pa55-w0rd"),
        ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXSECRET"),
        ("DATABASE_URL", "postgres://u:url-secret@h/db"),
    ]);
    let s = load(&FlagValues { config: Some(path), ..Default::default() }, &e).unwrap();
    let text = s.render_text();
    let json = s.render_json().to_string();
    let debug = format!("{s:?}");
    for out in [&text, &json, &debug] {
        for secret in ["pa55-w0rd", "XXXSECRET", "url-secret", "S3CR3T-KEY"] {
            assert!(!out.contains(secret), "secret {secret} leaked in {out}");
        }
    }
    assert!(text.contains("db.password"));
    assert!(text.contains("********"));
    assert_eq!(s.db.password.as_ref().unwrap().expose(), "pa55-w0rd");
}

#[test]
fn pgpass_is_used_when_no_password_given() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pgpass");
    std::fs::write(&pass, "dbhost:5432:app:alice:from-pgpass\n").unwrap();
    let e = env(&[
        ("PGPASSFILE", pass.to_str().unwrap()),
        ("DB_HOST", "dbhost"),
        ("DB_USER", "alice"),
        ("DB_NAME", "app"),
    ]);
    let s = load(&FlagValues::default(), &e).unwrap();
    assert_eq!(s.db.password.as_ref().unwrap().expose(), "from-pgpass");
    assert!(source_of(&s, "db.password").starts_with("passfile"));
}

#[test]
fn repo_urls() {
    assert!(matches!(parse_repo("/x/y", "--repo", &None).unwrap(), RepoSpec::Local(_)));
    assert!(matches!(parse_repo("file:///x/y", "--repo", &None).unwrap(), RepoSpec::Local(p) if p == Path::new("/x/y")));
    assert!(parse_repo("gs://b", "--repo", &None).is_err());
    assert!(parse_repo("s3:///p", "--repo", &None).is_err());
    assert_eq!(redact_url("postgres://u:pw@h:1/d?password=x"), "postgres://u:********@h:1/d?password=********");
    assert_eq!(redact_url("host=h password=pw"), "host=h password=********");
}

#[test]
fn env_repositories_beat_the_files_list() {
    let (_d, path) = write_file("repos = ['/from/file']\n");
    let flags = FlagValues { config: Some(path), ..Default::default() };
    let s = load(&flags, &env(&[])).unwrap();
    assert_eq!(s.repos[0].display(), "/from/file");
    let s = load(&flags, &env(&[("BACKUP_DIR", "/from/env")])).unwrap();
    assert_eq!(s.repos.len(), 1);
    assert_eq!(s.repos[0].display(), "/from/env");
    assert_eq!(source_of(&s, "backup_dir"), "env BACKUP_DIR");
}
