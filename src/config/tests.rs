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
    let flags = FlagValues { config: Some(path.clone()), jobs: Some(9), ..Default::default() };
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
    let e = env(&[("DB_HOST", "envhost"), ("DATABASE_URL", "postgres://urluser@urlhost:6000/urldb"), ("PGUSER", "pguser"), ("PGPORT", "5999")]);
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
    let e = env(&[("BACKUP_DIR", "/srv/backups"), ("S3_BUCKET", "my-bucket"), ("S3_PREFIX", "/prod/db/"), ("S3_ENDPOINT", "http://127.0.0.1:3900")]);
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
    let e = env(&[("PGPASSFILE", pass.to_str().unwrap()), ("DB_HOST", "dbhost"), ("DB_USER", "alice"), ("DB_NAME", "app")]);
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

#[test]
fn encryption_settings_layer_and_never_show_the_passphrase() {
    let id = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let other = "age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg";
    let (_d, path) = write_file(&format!("[encryption]\nrecipients = ['{other}']\nidentity_file = '/etc/pgkeep/key.txt'\n"));
    let e = env(&[("PGKEEP_PASSPHRASE", "hunter2-passphrase"), ("PGKEEP_ENCRYPT_RECIPIENTS", id)]);
    let s = load(&FlagValues { config: Some(path.clone()), ..Default::default() }, &e).unwrap();
    assert_eq!(s.encryption.recipients, vec![id.to_string()], "env beats file");
    assert_eq!(source_of(&s, "encryption.recipients"), "env PGKEEP_ENCRYPT_RECIPIENTS");
    assert_eq!(s.encryption.identity_file.as_deref(), Some(Path::new("/etc/pgkeep/key.txt")));
    assert_eq!(s.encryption.passphrase.as_ref().map(Secret::expose), Some("hunter2-passphrase"));
    assert_eq!(s.encryption.passphrase_origin.as_deref(), Some("PGKEEP_PASSPHRASE"));
    let shown = format!("{} {} {:?}", s.render_text(), s.render_json(), s);
    assert!(!shown.contains("hunter2-passphrase"), "{shown}");
    assert!(shown.contains("encryption.passphrase"));

    let flags =
        FlagValues { config: Some(path.clone()), encrypt_recipients: vec![other.into(), id.into()], identity_file: Some("/k".into()), ..Default::default() };
    let s = load(&flags, &e).unwrap();
    assert_eq!(s.encryption.recipients.len(), 2);
    assert_eq!(source_of(&s, "encryption.identity_file"), "flag --identity-file");

    let err = load(&FlagValues::default(), &env(&[("PGKEEP_ENCRYPT_RECIPIENTS", "age1nope")])).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Config);
    assert!(err.user_line().contains("PGKEEP_ENCRYPT_RECIPIENTS") && err.user_line().contains("age1nope"), "{}", err.user_line());
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("pass");
    std::fs::write(&pf, "from-a-file\n").unwrap();
    let s = load(&FlagValues::default(), &env(&[("PGKEEP_PASSPHRASE_FILE", pf.to_str().unwrap())])).unwrap();
    assert_eq!(s.encryption.passphrase.as_ref().map(Secret::expose), Some("from-a-file"));
    let both = env(&[("PGKEEP_PASSPHRASE_FILE", pf.to_str().unwrap()), ("PGKEEP_PASSPHRASE", "x")]);
    assert!(load(&FlagValues::default(), &both).is_err());
}

#[test]
fn s3_protections_apply_to_every_s3_repository_and_are_checked() {
    let base =
        [("S3_BUCKET", "b"), ("S3_SSE", "aws:kms"), ("S3_SSE_KMS_KEY_ID", "key-1"), ("S3_OBJECT_LOCK_MODE", "compliance"), ("S3_OBJECT_LOCK_DAYS", "14")];
    let s = load(&FlagValues { repos: vec!["s3://other/p".into(), "/tmp/x".into()], ..Default::default() }, &env(&base)).unwrap();
    let RepoSpec::S3(s3) = &s.repos[0] else { panic!("{:?}", s.repos) };
    assert_eq!(s3.security.sse, Some(crate::storage::s3::Sse::Kms { key_id: Some("key-1".into()) }));
    assert_eq!(s3.security.object_lock, Some(crate::storage::s3::ObjectLock { mode: crate::storage::s3::LockMode::Compliance, days: 14 }));
    assert_eq!(source_of(&s, "s3.object_lock_mode"), "env S3_OBJECT_LOCK_MODE");
    let flags = FlagValues { s3_sse: Some("AES256".into()), s3_sse_kms_key_id: None, ..Default::default() };
    let e = load(&flags, &env(&base)).unwrap_err();
    assert!(e.user_line().contains("S3_SSE_KMS_KEY_ID"), "{}", e.user_line());
    for bad in [
        &[("S3_SSE", "rot13")][..],
        &[("S3_OBJECT_LOCK_MODE", "GOVERNANCE")],
        &[("S3_OBJECT_LOCK_MODE", "GOVERNANCE"), ("S3_OBJECT_LOCK_DAYS", "0")],
        &[("S3_SSE_KMS_KEY_ID", "k")],
    ] {
        let e = load(&FlagValues::default(), &env(bad)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{bad:?}");
    }
    let e = load(&FlagValues::default(), &env(&[("S3_BUCKET", "b"), ("S3_ENDPOINT", "http://10.1.2.3:9000")])).unwrap_err();
    assert!(e.user_line().contains("http://10.1.2.3:9000"), "{}", e.user_line());
    let ok = FlagValues { allow_http: true, ..Default::default() };
    assert!(load(&ok, &env(&[("S3_BUCKET", "b"), ("S3_ENDPOINT", "http://10.1.2.3:9000")])).is_ok());
}

#[test]
fn s3_deadlines_have_documented_defaults_and_are_checked() {
    let s3_of = |pairs: &[(&str, &str)]| {
        let s = load(&FlagValues::default(), &env(pairs)).unwrap();
        let Some(RepoSpec::S3(s3)) = s.repos.iter().find(|r| matches!(r, RepoSpec::S3(_))).cloned() else { panic!("{:?}", s.repos) };
        s3
    };
    let d = s3_of(&[("S3_BUCKET", "b")]);
    assert_eq!((d.stall_timeout, d.request_timeout), (Duration::from_secs(60), Duration::from_secs(20)));
    // The request deadline defaults to at most the stall bound.
    let short = s3_of(&[("S3_BUCKET", "b"), ("PGKEEP_S3_TIMEOUT", "10s")]);
    assert_eq!((short.stall_timeout, short.request_timeout), (Duration::from_secs(10), Duration::from_secs(10)));
    let both = s3_of(&[("S3_BUCKET", "b"), ("PGKEEP_S3_TIMEOUT", "2m"), ("PGKEEP_S3_REQUEST_TIMEOUT", "5s")]);
    assert_eq!((both.stall_timeout, both.request_timeout), (Duration::from_secs(120), Duration::from_secs(5)));
    for bad in [("PGKEEP_S3_TIMEOUT", "0s"), ("PGKEEP_S3_REQUEST_TIMEOUT", "soon")] {
        let e = load(&FlagValues::default(), &env(&[("S3_BUCKET", "b"), bad])).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{bad:?}");
        assert!(e.user_line().contains(bad.0), "{}", e.user_line());
    }
}
