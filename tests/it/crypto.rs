//! Client-side encryption end to end on a real cluster: an encrypted backup
//! (age recipients, and a passphrase) stores no readable row, verifies with
//! `--deep`, restores and drills with the key; a missing or wrong key fails
//! in one line naming the backup and the key source before any database is
//! created; a manifest edited behind pgkeep's back (checksum recomputed) is
//! reported by `verify` and refused by `restore`; `pgkeep stream` with
//! recipients writes encrypted change segments that only the identity opens.

use crate::harness;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::drill::{self, DrillOptions};
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::commands::verify::{self, VerifyOptions};
use pgkeep::config::{EncryptionSettings, RepoSpec, Secret, Settings};
use pgkeep::crypto::EncryptionMode;
use pgkeep::error::ErrorKind;
use pgkeep::pipeline::Compression;
use pgkeep::repo::manifest::{self, BackupManifest};
use pgkeep::restore::source::BackupSelector;
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::{PutOptions, Storage};
use pgkeep::verify::{Check, Status};

/// A value that must never appear in stored bytes.
const NEEDLE: &str = "plaintext-needle-7c1e";

async fn database(prefix: &str) -> (String, Settings, tempfile::TempDir) {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db(prefix).await;
    cluster
        .execute(
            &db,
            &format!(
                "CREATE TABLE users (id int PRIMARY KEY, note text NOT NULL);
                 INSERT INTO users SELECT i, '{NEEDLE}-' || i FROM generate_series(1, 3000) i;
                 CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());
                 INSERT INTO audit_log (at) SELECT now() FROM generate_series(1, 50);"
            ),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(dir.path().to_path_buf())]);
    (db, s, dir)
}

fn identity_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("# test identity\n{}\n", age::secrecy::ExposeSecret::expose_secret(&id.to_string()))).unwrap();
    (path, id.to_public().to_string())
}

/// No compression, so only encryption stands between the rows and the disk.
fn plain_opts() -> BackupOptions {
    BackupOptions { compression: Compression::None, ..BackupOptions::default() }
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(all_files(&p)) } else { out.push(p) }
    }
    out
}

async fn temp_databases() -> Vec<String> {
    let c = PgCluster::shared().client("postgres").await;
    c.query("SELECT datname::text FROM pg_database WHERE datname LIKE 'restore_temp_%' OR datname LIKE 'crypt%target%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_to_recipients_stores_no_plaintext_and_restores_verifies_and_drills() {
    let (db, mut s, dir) = database("crypt_recipients").await;
    let keys = tempfile::tempdir().unwrap();
    let (id_path, recipient) = identity_file(keys.path(), "backup.key");
    s.encryption = EncryptionSettings { recipients: vec![recipient.clone()], identity_file: Some(id_path), ..Default::default() };

    let m = backup::run(&s, &plain_opts()).await.unwrap().manifest;
    let info = m.encryption.as_ref().expect("manifest records the encryption");
    assert_eq!(info.mode, EncryptionMode::Recipients);
    assert_eq!(info.recipients, vec![recipient]);
    assert!(info.manifest_mac.starts_with("hmac-sha256:"));
    for f in all_files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(NEEDLE), "row data in the clear in {}", f.display());
        assert!(!text.contains("AGE-SECRET-KEY"), "an identity in {}", f.display());
        assert!(!text.contains("CREATE TABLE"), "schema SQL in the clear in {}", f.display());
    }

    let v = verify::run(&s, &VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), deep: true, ..Default::default() }).await.unwrap();
    assert!(v.passed, "{}", v.render());
    let format = v.checks.iter().find(|c| c.check == Check::Format).unwrap();
    assert!(format.summary.contains("manifest version 2") && format.summary.contains("encrypted"), "{}", format.summary);
    assert_eq!(v.checks.iter().find(|c| c.check == Check::Completeness).unwrap().status, Status::Pass);

    let target = format!("{db}_target");
    let opts = RestoreOptions { target_db: Some(target.clone()), yes: true, ..RestoreOptions::new(BackupSelector::Id(m.backup_id.clone())) };
    let report = restore::run(&s, &opts).await.unwrap();
    assert_eq!(report.rows, 3050);
    let c = PgCluster::shared().client(&target).await;
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM users WHERE note LIKE '{NEEDLE}-%'"), &[]).await.unwrap().get(0);
    assert_eq!(n, 3000);

    let d = drill::run(&s, &DrillOptions { recent: 1, assert_sql: Some("SELECT count(*) = 3000 FROM users".into()), ..Default::default() }).await.unwrap();
    assert!(d.passed, "{:?}", d.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_key_fails_in_one_line_before_any_database_step() {
    let (db, mut s, _dir) = database("crypt_wrong").await;
    let keys = tempfile::tempdir().unwrap();
    let (_good, recipient) = identity_file(keys.path(), "good.key");
    let (wrong, _) = identity_file(keys.path(), "wrong.key");
    s.encryption = EncryptionSettings { recipients: vec![recipient], ..Default::default() };
    let m = backup::run(&s, &BackupOptions::default()).await.unwrap().manifest;
    let id = m.backup_id.to_string();
    let before = temp_databases().await;
    let restore_into = |s: Settings| {
        let opts = RestoreOptions { target_db: Some(format!("{db}_target")), yes: true, ..RestoreOptions::new(BackupSelector::Id(m.backup_id.clone())) };
        async move { restore::run(&s, &opts).await }
    };

    // No key at all.
    let e = restore_into(Settings { encryption: EncryptionSettings::default(), ..s.clone() }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let line = e.user_line();
    assert!(line.contains(&id) && line.contains("no identity file") && !line.contains('\n'), "{line}");

    // The wrong identity file: named, with where it came from.
    let wrong_keys = EncryptionSettings { identity_file: Some(wrong.clone()), identity_origin: Some("PGKEEP_IDENTITY_FILE".into()), ..Default::default() };
    let e = restore_into(Settings { encryption: wrong_keys.clone(), ..s.clone() }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let line = e.user_line();
    assert!(line.contains(&id) && line.contains(&wrong.display().to_string()) && line.contains("PGKEEP_IDENTITY_FILE"), "{line}");
    assert_eq!(temp_databases().await, before, "no temporary or target database was created");

    // verify reports it as a failed check naming the backup.
    let v = verify::run(
        &Settings { encryption: wrong_keys, ..s.clone() },
        &VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), ..Default::default() },
    )
    .await
    .unwrap();
    assert!(!v.passed);
    let files = v.checks.iter().find(|c| c.check == Check::FileIntegrity).unwrap();
    assert!(files.line().contains(&id), "{}", files.line());
}

/// Rewrite both manifest objects with `edit` applied and a correct SHA-256:
/// what someone with write access to the repository could do.
async fn forge(storage: &dyn Storage, m: &BackupManifest, edit: impl Fn(&mut BackupManifest)) {
    let mut forged = m.clone();
    edit(&mut forged);
    let bytes = Bytes::from(manifest::encode(&forged).unwrap());
    let key = m.backup_id.manifest_key();
    storage.put(&key, bytes.clone(), PutOptions::default()).await.unwrap();
    storage.put(&format!("{key}.copy"), bytes, PutOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_backups_and_tampered_manifests() {
    let (db, mut s, dir) = database("crypt_pass").await;
    s.encryption = EncryptionSettings {
        passphrase: Some(Secret::new("correct horse battery")),
        passphrase_origin: Some("PGKEEP_PASSPHRASE".into()),
        ..Default::default()
    };
    let m = backup::run(&s, &BackupOptions::default()).await.unwrap().manifest;
    let info = m.encryption.as_ref().unwrap();
    assert_eq!(info.mode, EncryptionMode::Passphrase);
    assert!(info.recipients.is_empty());
    let by_id = VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), ..Default::default() };
    assert!(verify::run(&s, &by_id).await.unwrap().passed);

    // A wrong passphrase names its source, never the passphrase.
    let wrong = Settings {
        encryption: EncryptionSettings {
            passphrase: Some(Secret::new("wrong horse")),
            passphrase_origin: Some("PGKEEP_PASSPHRASE".into()),
            ..Default::default()
        },
        ..s.clone()
    };
    let opts = RestoreOptions { target_db: Some(format!("{db}_target")), yes: true, ..RestoreOptions::new(BackupSelector::Id(m.backup_id.clone())) };
    let e = restore::run(&wrong, &opts).await.unwrap_err();
    assert!(e.user_line().contains("PGKEEP_PASSPHRASE") && !e.user_line().contains("wrong horse"), "{}", e.user_line());

    // Edit a row count and recompute the envelope checksum: the MAC catches it.
    let storage = LocalStorage::new(dir.path());
    forge(&storage, &m, |f| f.tables[0].rows += 1).await;
    let v = verify::run(&s, &by_id).await.unwrap();
    assert!(!v.passed, "{}", v.render());
    let files = v.checks.iter().find(|c| c.check == Check::FileIntegrity).unwrap();
    assert!(files.line().contains("authentication code") && files.line().contains(&m.backup_id.to_string()), "{}", files.line());
    let e = restore::run(&s, &opts).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.user_line().contains("authentication code"), "{}", e.user_line());

    // Stripping the encryption section (an "unencrypted" manifest over ciphertext) fails too.
    forge(&storage, &m, |f| f.encryption = None).await;
    let v = verify::run(&s, &by_id).await.unwrap();
    assert!(!v.passed, "{}", v.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_encrypted_segments_only_the_identity_opens() {
    // Slots are cluster-wide: a cluster of its own.
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("crypt_stream").await;
    cluster.execute(&db, "CREATE TABLE items (id serial PRIMARY KEY, v text)").await;
    let repo = tempfile::tempdir().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_path, recipient) = identity_file(keys_dir.path(), "stream.key");
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    s.encryption = EncryptionSettings { recipients: vec![recipient], ..Default::default() };
    let opts = pgkeep::stream::StreamOptions {
        segment_seconds: 1,
        auto_backup: Default::default(),
        ..pgkeep::stream::StreamOptions::new("pgkeep_crypto_test", "pgkeep_crypto_test")
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run_settings = s.clone();
    let task = tokio::spawn(async move {
        pgkeep::stream::run(&run_settings, &opts, async {
            let _ = rx.await;
        })
        .await
    });

    let client = cluster.client(&db).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while client
        .query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgkeep_crypto_test' AND active AND confirmed_flush_lsn IS NOT NULL", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for i in 0..10 {
        client.execute("INSERT INTO items (v) VALUES ($1)", &[&format!("{NEEDLE}-{i}")]).await.unwrap();
    }
    let keys = pgkeep::crypto::Keyring::from_settings(&EncryptionSettings { identity_file: Some(id_path), ..Default::default() });
    let storage = LocalStorage::new(repo.path());
    let transactions = || async {
        let mut n = 0;
        for o in storage.list("changes/").await.unwrap() {
            let bytes = storage.get(&o.key, None).await.unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(NEEDLE), "row data in the clear in {}", o.key);
            let e = pgkeep::stream::segment::decode(&bytes, &o.key).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{}", e.user_line());
            let seg = pgkeep::stream::segment::decode_with(&bytes, &o.key, &keys).unwrap_or_else(|e| panic!("{}", e.user_line()));
            assert_eq!(seg.meta.version, pgkeep::stream::segment::SEALED_FORMAT_VERSION);
            n += seg.transactions.len();
        }
        n
    };
    while transactions().await < 10 {
        assert!(std::time::Instant::now() < deadline, "never archived 10 transactions");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let _ = stop.send(());
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), task).await.unwrap().unwrap().unwrap_or_else(|e| panic!("{}", e.user_line()));
    assert_eq!(report.totals.transactions, 10);
    assert_eq!(transactions().await, 10);
    pgkeep::stream::remove(&s, "pgkeep_crypto_test", "pgkeep_crypto_test").await.unwrap();
}
