//! S3 protections against a scripted fake S3 (Garage has no object lock):
//! every write carries the configured server-side encryption, backup
//! objects carry the object-lock mode and retain-until date (and a payload
//! checksum, which S3 requires with a retention), lock objects do not; and
//! `expire` leaves backups under retention alone, reporting them as kept
//! because locked, also when only the store knows they are locked and
//! answers AccessDenied.

use crate::harness;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use harness::backup_check::settings;
use harness::fake_s3::FakeS3;
use pgkeep::commands::expire::{self, ExpireOptions};
use pgkeep::config::{DbSettings, RepoSpec, Secret, Settings};
use pgkeep::repo::catalog;
use pgkeep::repo::layout::{BackupId, BackupKind};
use pgkeep::repo::lock::LockOptions;
use pgkeep::repo::manifest::BackupManifest;
use pgkeep::repo::meta;
use pgkeep::storage::s3::{LockMode, ObjectLock, S3Security, S3Settings, S3Storage, Sse};
use pgkeep::storage::{PutOptions, Storage};

fn s3_settings(fake: &FakeS3, security: S3Security) -> S3Settings {
    S3Settings {
        bucket: "locked".into(),
        prefix: "pg".into(),
        endpoint: Some(fake.endpoint()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        access_key_id: Some("AKFAKE".into()),
        secret_access_key: Some(Secret::new("fake-secret")),
        part_size: 5 << 20,
        upload_concurrency: 2,
        max_attempts: 2,
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        security,
    }
}

fn locked(days: u32) -> S3Security {
    S3Security {
        sse: Some(Sse::Kms { key_id: Some("arn:aws:kms:us-east-1:1:key/k1".into()) }),
        object_lock: Some(ObjectLock { mode: LockMode::Governance, days }),
        allow_http: false,
    }
}

/// A minimal manifest of a full backup that started `days_ago` days ago.
fn manifest(days_ago: i64) -> BackupManifest {
    let at = Utc::now() - chrono::Duration::days(days_ago);
    let id = BackupId::new(BackupKind::Full, at, 0);
    let chunk =
        serde_json::json!({"object": "data/w01-000001.pack", "offset": 0, "stored_size": 4, "raw_size": 4, "stored_sha256": "aa", "raw_xxh3": "bb", "rows": 1});
    serde_json::from_value(serde_json::json!({
        "backup_id": id.to_string(), "kind": "full", "database": "app",
        "server": {"version": "15.18", "version_num": 150018, "system_identifier": "1", "timeline": 1},
        "started_at": at, "finished_at": at,
        "snapshot": {"method": "exported_snapshot", "consistent_lsn": "0/1", "slot_name": null, "slot_kept": false},
        "started_by": {"os_user": "t", "host": "h", "pgkeep_version": "0"},
        "compression": {"algorithm": "none", "level": 0}, "encryption": null,
        "schema": {"pre_data": chunk, "post_data": chunk, "globals": null},
        "tables": [], "sequences": [], "large_objects": {"count": 0, "covered": true},
        "objects": [{"key": "data/w01-000001.pack", "size": 4}],
        "stats": {"database_size": 0, "raw_bytes": 0, "stored_bytes": 0, "rows": 0, "duration_ms": 0}
    }))
    .unwrap()
}

async fn store(s: &dyn Storage, m: &BackupManifest) {
    s.put(&m.backup_id.key("data/w01-000001.pack"), Bytes::from_static(b"data"), PutOptions::default()).await.unwrap();
    catalog::write_manifest(s, m).await.unwrap();
}

fn expire_settings(spec: S3Settings) -> Settings {
    let db = DbSettings {
        host: "localhost".into(),
        port: 1,
        user: "unused".into(),
        password: None,
        dbname: "app".into(),
        sslmode: pgkeep::config::SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(1),
    };
    let mut s = settings(db, vec![RepoSpec::S3(spec)]);
    s.retention_days = 7;
    s
}

fn near(t: DateTime<Utc>, expected: DateTime<Utc>) -> bool {
    (t - expected).num_seconds().abs() < 120
}

#[tokio::test]
async fn every_write_carries_sse_and_backup_objects_carry_the_retention() {
    let fake = FakeS3::start().await;
    let storage = S3Storage::connect(s3_settings(&fake, locked(30))).await.unwrap();
    storage.put("backups/full_backup_20260101_000000/manifest.json", Bytes::from_static(b"{}"), PutOptions::default()).await.unwrap();
    // Larger than one part: a multipart upload.
    let big = Bytes::from(vec![7u8; (5 << 20) + 1234]);
    storage.put("backups/full_backup_20260101_000000/data/w01-000001.pack", big.clone(), PutOptions::default()).await.unwrap();
    storage.put("locks/backup-0123456789abcdef.json", Bytes::from_static(b"{}"), PutOptions::default()).await.unwrap();
    assert_eq!(storage.get("backups/full_backup_20260101_000000/data/w01-000001.pack", None).await.unwrap(), big);

    let log = fake.log();
    let expected_until = Utc::now() + chrono::Duration::days(30);
    let writes: Vec<_> =
        log.iter().filter(|r| (r.method == "PUT" && !r.query.contains("partNumber")) || (r.method == "POST" && r.query.contains("uploads"))).collect();
    assert_eq!(writes.len(), 3, "{log:#?}");
    for w in &writes {
        assert_eq!(w.header("x-amz-server-side-encryption"), Some("aws:kms"), "{w:?}");
        assert_eq!(w.header("x-amz-server-side-encryption-aws-kms-key-id"), Some("arn:aws:kms:us-east-1:1:key/k1"), "{w:?}");
        let is_backup = w.key.starts_with("pg/backups/");
        assert_eq!(w.header("x-amz-object-lock-mode").is_some(), is_backup, "{w:?}");
        if is_backup {
            assert_eq!(w.header("x-amz-object-lock-mode"), Some("GOVERNANCE"));
            let until = DateTime::parse_from_rfc3339(w.header("x-amz-object-lock-retain-until-date").unwrap()).unwrap();
            assert!(near(until.with_timezone(&Utc), expected_until), "{until}");
            assert!(w.headers.keys().any(|h| h.starts_with("x-amz-checksum") || h == "x-amz-sdk-checksum-algorithm" || h == "x-amz-trailer"), "{w:?}");
        }
    }
    // The parts of a locked multipart upload carry checksums too.
    let parts: Vec<_> = log.iter().filter(|r| r.query.contains("partNumber")).collect();
    assert!(!parts.is_empty());
    assert!(
        parts.iter().all(|p| p.headers.keys().any(|h| h.starts_with("x-amz-checksum") || h == "x-amz-sdk-checksum-algorithm" || h == "x-amz-trailer")),
        "{parts:#?}"
    );
    assert!(near(fake.retain_until("pg/backups/full_backup_20260101_000000/manifest.json").unwrap(), expected_until));
    assert!(fake.retain_until("pg/locks/backup-0123456789abcdef.json").is_none());
    // Locks stay deletable; locked backup objects do not.
    storage.delete("locks/backup-0123456789abcdef.json").await.unwrap();
    let e = storage.delete("backups/full_backup_20260101_000000/manifest.json").await.unwrap_err();
    assert_eq!(e.kind(), pgkeep::ErrorKind::AccessDenied);
}

#[tokio::test]
async fn expire_keeps_locked_backups_and_reports_them() {
    let fake = FakeS3::start().await;
    let spec = s3_settings(&fake, locked(30));
    let storage = S3Storage::connect(spec.clone()).await.unwrap();
    meta::ensure(&storage).await.unwrap();
    let (old, older, newest) = (manifest(40), manifest(50), manifest(1));
    for m in [&older, &old, &newest] {
        store(&storage, m).await;
    }
    let opts = ExpireOptions { dry_run: false, keep_full: 1 };
    let report = expire::run_with(&expire_settings(spec.clone()), &opts, Utc::now(), &LockOptions::default()).await.unwrap();
    assert!(report.is_complete(), "{}", report.render());
    let r = &report.repositories[0];
    assert!(r.deleted.is_empty(), "{}", report.render());
    assert!(r.problems.is_empty(), "{}", report.render());
    for m in [&old, &older] {
        let kept = r.kept.iter().find(|k| k.backup_id == m.backup_id.to_string()).unwrap_or_else(|| panic!("{}", report.render()));
        assert!(kept.reason.contains("locked by S3 object lock until"), "{}", kept.reason);
    }
    let deletes = fake.log().iter().filter(|r| r.method == "DELETE" && r.key.contains("backups/")).count();
    assert_eq!(deletes, 0, "expire must not try to delete before retain-until");

    // Only the store knows (a bucket default retention, an older longer lock):
    // the refused deletion keeps the backup, and the run still completes.
    let unaware = S3Settings { security: S3Security::default(), ..spec.clone() };
    let report = expire::run_with(&expire_settings(unaware), &opts, Utc::now(), &LockOptions::default()).await.unwrap();
    assert!(report.is_complete(), "{}", report.render());
    let r = &report.repositories[0];
    assert!(r.deleted.is_empty() && r.problems.is_empty(), "{}", report.render());
    assert!(r.kept.iter().filter(|k| k.reason.contains("refused the deletion")).count() == 2, "{}", report.render());
    assert!(fake.keys().iter().any(|k| k.ends_with(&format!("{}/manifest.json", old.backup_id))));

    // Once retention has passed (seen from 31 days on), they are deleted.
    let later = Utc::now() + chrono::Duration::days(31);
    let report = expire::run_with(&expire_settings(spec), &opts, later, &LockOptions::default()).await;
    // The fake still enforces its own clock, so the store refuses; the plan no longer holds them back.
    let report = report.unwrap();
    let r = &report.repositories[0];
    assert!(r.kept.iter().all(|k| !k.reason.contains("locked by S3 object lock")), "{}", report.render());
}

#[tokio::test]
async fn plain_http_to_a_remote_endpoint_is_refused_unless_allowed() {
    let fake = FakeS3::start().await;
    let remote = S3Settings { endpoint: Some("http://s3.backup.example:9000".into()), ..s3_settings(&fake, S3Security::default()) };
    let e = S3Storage::connect(remote.clone()).await.unwrap_err();
    assert_eq!(e.kind(), pgkeep::ErrorKind::Config);
    assert!(e.user_line().contains("http://s3.backup.example:9000") && e.user_line().contains("S3_ALLOW_HTTP"), "{}", e.user_line());
    let allowed = S3Settings { security: S3Security { allow_http: true, ..Default::default() }, ..remote };
    assert!(S3Storage::connect(allowed).await.is_ok());

    // The same through configuration, naming the endpoint.
    let env: std::collections::BTreeMap<String, String> =
        [("S3_BUCKET", "b"), ("S3_ENDPOINT", "http://minio.internal:9000"), ("HOME", "/nonexistent-home"), ("PGKEEP_CONFIG", "/dev/null")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let e = pgkeep::config::load(&Default::default(), &env).unwrap_err();
    assert!(e.user_line().contains("http://minio.internal:9000"), "{}", e.user_line());
    let mut env = env;
    env.insert("S3_ALLOW_HTTP".into(), "true".into());
    assert!(pgkeep::config::load(&Default::default(), &env).is_ok());
}
