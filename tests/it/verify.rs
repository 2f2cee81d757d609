//! `pgkeep verify` against a real cluster and real Garage: damage made on
//! purpose (a flipped byte, a truncated or missing object, edited manifests,
//! an unknown format version) is detected and named, locally and in S3; a
//! clean backup passes `--deep` and its scratch database is dropped, also
//! when the scratch restore fails; critical tables and age; exit codes of the
//! binary.

use crate::harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use harness::backup_check::settings;
use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::verify::{self, VerifyOptions};
use pgkeep::config::{RepoSpec, Settings};
use pgkeep::error::ErrorKind;
use pgkeep::repo::manifest::BackupManifest;
use pgkeep::restore::source::BackupSelector;
use pgkeep::storage::s3::S3Storage;
use pgkeep::storage::{PutOptions, Storage};
use pgkeep::verify::{BackupVerification, Check, CheckResult, Status};
use sha2::{Digest, Sha256};

const DATA_SQL: &str = "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
     CREATE TABLE tasks (id int PRIMARY KEY, user_id int REFERENCES users, title text);
     CREATE TABLE empty_one (id int);
     INSERT INTO users SELECT i, 'u' || i FROM generate_series(1, 2000) i;
     INSERT INTO tasks SELECT i, i % 2000 + 1, md5(i::text) FROM generate_series(1, 20000) i;";

async fn backed_up(prefix: &str, repos: impl FnOnce(&Path) -> Vec<RepoSpec>) -> (String, tempfile::TempDir, Settings, BackupManifest) {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db(prefix).await;
    cluster.execute(&db, DATA_SQL).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), repos(dir.path()));
    let m = backup::run(&s, &BackupOptions::default()).await.unwrap().manifest;
    (db, dir, s, m)
}

fn by_id(m: &BackupManifest) -> VerifyOptions {
    VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), ..VerifyOptions::default() }
}

/// The result of `check` (in the repository whose location starts with `repo`, if given).
#[track_caller]
fn result<'a>(v: &'a BackupVerification, check: Check, repo: Option<&str>) -> &'a CheckResult {
    v.checks
        .iter()
        .find(|c| c.check == check && repo.is_none_or(|r| c.repository.as_deref().is_some_and(|l| l.starts_with(r))))
        .unwrap_or_else(|| panic!("no {check:?} result for {repo:?} in\n{}", v.render()))
}

/// `check` failed in `repo` and its line names every needle.
#[track_caller]
fn assert_fails(v: &BackupVerification, check: Check, repo: Option<&str>, needles: &[&str]) {
    let r = result(v, check, repo);
    assert_eq!(r.status, Status::Fail, "\n{}", v.render());
    assert!(!v.passed);
    for n in needles {
        assert!(r.line().contains(n), "{n:?} missing from {}", r.line());
    }
}

async fn databases() -> Vec<String> {
    let c = PgCluster::shared().client("postgres").await;
    c.query("SELECT datname::text FROM pg_database", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_backup_passes_deep_and_the_scratch_database_is_dropped() {
    let (_db, _dir, s, m) = backed_up("vf_clean", |p| vec![RepoSpec::Local(p.to_path_buf())]).await;
    let opts = VerifyOptions { deep: true, compare_production: true, critical_tables: vec!["users".into(), "public.tasks".into()], ..VerifyOptions::default() };
    let v = verify::run(&s, &opts).await.unwrap();
    eprintln!("{}", v.render());
    assert!(v.passed, "{}", v.render());
    assert_eq!(v.backup_id, m.backup_id.to_string(), "latest is the backup just taken");
    for check in [Check::Format, Check::FileIntegrity, Check::CriticalTables, Check::Completeness, Check::Production, Check::Metadata] {
        assert_eq!(result(&v, check, None).status, Status::Pass, "{check:?}\n{}", v.render());
    }
    let chains = result(&v, Check::Chains, None);
    assert_eq!((chains.status, chains.summary.as_str()), (Status::Skip, "no incremental backups or change segments"));
    assert!(result(&v, Check::Completeness, None).summary.contains("fingerprints equal"));
    let scratch = v.scratch_database.clone().expect("scratch database named");
    assert!(scratch.starts_with("pgkeep_verify_"), "{scratch}");
    assert!(!databases().await.contains(&scratch), "{scratch} must be dropped");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["checks"][0]["status"], "pass");

    // Production drifting beyond the tolerance fails, naming the table and the difference.
    PgCluster::shared().execute(&s.db.dbname, "DELETE FROM tasks WHERE id > 10000;").await;
    let v = verify::run(&s, &VerifyOptions { compare_production: true, ..by_id(&m) }).await.unwrap();
    assert_fails(&v, Check::Production, None, &["public.tasks", "10000 rows live", "-10000", "50.0%"]);
    let v = verify::run(&s, &VerifyOptions { compare_production: true, tolerance_pct: 60.0, ..by_id(&m) }).await.unwrap();
    assert!(v.passed, "{}", v.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_damage_is_detected_and_named() {
    let (_db, dir, s, m) = backed_up("vf_local", |p| vec![RepoSpec::Local(p.to_path_buf())]).await;
    let root = dir.path().display().to_string();
    let local = Some(root.as_str());
    let path = |rel: &str| dir.path().join(m.backup_id.key(rel));
    let data = m.objects.iter().find(|o| o.key.starts_with("data/")).unwrap().key.clone();
    let data_key = m.backup_id.key(&data);
    let original = std::fs::read(path(&data)).unwrap();

    // A flipped byte in a chunk.
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path(&data), &bytes).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, local, &[&data, "fails its checksum", &root]);
    assert_eq!(result(&v, Check::Format, local).status, Status::Pass);

    // A truncated object.
    std::fs::write(path(&data), &original[..original.len() - 100]).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, local, &[&data_key, &format!("the manifest says {}", original.len())]);

    // A missing object.
    std::fs::remove_file(path(&data)).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, local, &[&format!("object {data_key} is missing from {root}")]);
    std::fs::write(path(&data), &original).unwrap();
    assert!(verify::run(&s, &by_id(&m)).await.unwrap().passed);

    // The manifest's body edited without updating its checksum: the copy is intact, a warning.
    let manifest = path("manifest.json");
    let copy = path("manifest.json.copy");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let edited = good.replacen("\"rows\":2000", "\"rows\":2001", 1);
    assert_ne!(edited, good);
    std::fs::write(&manifest, &edited).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    let format = result(&v, Check::Format, local);
    assert_eq!(format.status, Status::Warn, "{}", v.render());
    assert!(format.line().contains("manifest.json") && format.line().contains("fails its checksum"), "{}", format.line());
    assert!(v.passed, "a damaged manifest with a good copy is not data loss\n{}", v.render());

    // Both edited: fails, naming both keys; nothing else can be checked there.
    std::fs::write(&copy, &edited).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::Format, local, &["manifest.json in", "manifest.json.copy in", "fails its checksum"]);
    assert_eq!(result(&v, Check::FileIntegrity, local).status, Status::Skip);

    // An unknown format version.
    let future = good.replacen("\"version\":1", "\"version\":99", 1);
    assert_ne!(future, good);
    std::fs::write(&manifest, &future).unwrap();
    std::fs::write(&copy, &future).unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::Format, local, &["format version 99", "manifest.json"]);

    // `latest` still finds the damaged backup to report it.
    let v = verify::run(&s, &VerifyOptions::default()).await.unwrap();
    assert_eq!(v.backup_id, m.backup_id.to_string());
    assert!(!v.passed);

    // A backup that is not there is not a check failure: verify cannot run.
    let missing: pgkeep::repo::layout::BackupId = "full_backup_20200101_000000".parse().unwrap();
    let e = verify::run(&s, &VerifyOptions { selector: BackupSelector::Id(missing), ..VerifyOptions::default() }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.user_line().contains("full_backup_20200101_000000"), "{}", e.user_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_damage_is_reported_per_repository() {
    let garage = Garage::shared();
    let bucket = garage.unique_bucket("vfs3");
    let s3 = garage.settings(&bucket, "prod/db");
    let (_db, _dir, s, m) = backed_up("vf_s3", |p| vec![RepoSpec::Local(p.to_path_buf()), RepoSpec::S3(s3.clone())]).await;
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert!(v.passed, "{}", v.render());
    assert_eq!(v.repositories.len(), 2);
    let s3_loc = format!("s3://{bucket}/prod/db");
    assert!(result(&v, Check::FileIntegrity, Some(&s3_loc)).line().starts_with(&format!("PASS file-integrity {s3_loc}: ")));

    let store = S3Storage::connect(s3.clone()).await.unwrap();
    let data = m.objects.iter().find(|o| o.key.starts_with("data/")).unwrap().key.clone();
    let key = m.backup_id.key(&data);
    let original = store.get(&key, None).await.unwrap();
    let mut bytes = original.to_vec();
    bytes[original.len() / 3] ^= 0x01;
    store.put(&key, Bytes::from(bytes), PutOptions::default()).await.unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, Some(&s3_loc), &[&data, "fails its checksum", &s3_loc]);
    let local = s.repos.iter().find_map(|r| match r {
        RepoSpec::Local(p) => Some(p.display().to_string()),
        _ => None,
    });
    assert_eq!(result(&v, Check::FileIntegrity, local.as_deref()).status, Status::Pass, "the local copy is intact");

    // A truncated and then a missing object in S3.
    store.put(&key, original.slice(..original.len() - 10), PutOptions::default()).await.unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, Some(&s3_loc), &[&key, &format!("has {} bytes", original.len() - 10)]);
    store.delete(&key).await.unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::FileIntegrity, Some(&s3_loc), &[&format!("object {key} is missing from {s3_loc}")]);

    // Both manifests edited in S3; only that repository's format fails.
    store.put(&key, original, PutOptions::default()).await.unwrap();
    let mk = m.backup_id.manifest_key();
    let good = String::from_utf8(store.get(&mk, None).await.unwrap().to_vec()).unwrap();
    let edited = Bytes::from(good.replacen("\"rows\":2000", "\"rows\":1", 1));
    store.put(&mk, edited.clone(), PutOptions::default()).await.unwrap();
    store.put(&format!("{mk}.copy"), edited, PutOptions::default()).await.unwrap();
    let v = verify::run(&s, &by_id(&m)).await.unwrap();
    assert_fails(&v, Check::Format, Some(&s3_loc), &[&mk, &s3_loc, "fails its checksum"]);
    assert_eq!(result(&v, Check::Format, local.as_deref()).status, Status::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_scratch_restore_still_drops_the_scratch_database() {
    let (_db, dir, s, mut m) = backed_up("vf_scratch", |p| vec![RepoSpec::Local(p.to_path_buf())]).await;
    // Replace the pre-data schema with SQL that fails, with valid checksums:
    // the files check out, the restore does not.
    let storage = pgkeep::storage::local::LocalStorage::new(dir.path());
    let comp = pgkeep::pipeline::Compression::from_manifest(&m.compression.algorithm, m.compression.level).unwrap();
    let raw = b"CREATE TABLE broken (;\n";
    let stored = comp.compress(raw).unwrap();
    // A new schema object: the broken pre-data, then the other schema chunks' bytes as they were.
    let rel = "schema/broken-000001.pack";
    let mut object = stored.clone();
    let mut others = vec![&mut m.schema.post_data];
    others.extend(m.schema.globals.as_mut());
    for c in others {
        let key = m.backup_id.key(&c.object);
        let bytes = storage.get(&key, Some(c.offset..c.offset + c.stored_size)).await.unwrap();
        c.object = rel.into();
        c.offset = object.len() as u64;
        object.extend_from_slice(&bytes);
    }
    storage.put(&m.backup_id.key(rel), Bytes::from(object.clone()), PutOptions::default()).await.unwrap();
    m.schema.pre_data = pgkeep::repo::manifest::ChunkRef {
        object: rel.into(),
        offset: 0,
        stored_size: stored.len() as u64,
        raw_size: raw.len() as u64,
        stored_sha256: hex::encode(Sha256::digest(&stored)),
        raw_xxh3: pgkeep::pipeline::process::raw_checksum(raw),
        rows: 0,
        continues: false,
    };
    m.objects.push(pgkeep::repo::manifest::ObjectEntry { key: rel.into(), size: object.len() as u64 });
    let used: Vec<String> = [&m.schema.pre_data, &m.schema.post_data]
        .into_iter()
        .chain(m.schema.globals.iter())
        .chain(m.tables.iter().flat_map(|t| t.chunks.iter()))
        .map(|c| c.object.clone())
        .collect();
    m.objects.retain(|o| used.contains(&o.key));
    pgkeep::repo::catalog::write_manifest(&storage, &m).await.unwrap();

    let v = verify::run(&s, &VerifyOptions { deep: true, ..by_id(&m) }).await.unwrap();
    assert_eq!(result(&v, Check::FileIntegrity, None).status, Status::Pass, "{}", v.render());
    assert_fails(&v, Check::Completeness, None, &["restore into scratch database pgkeep_verify_", "failed"]);
    let scratch = v.scratch_database.clone().expect("a scratch database was created");
    assert!(!databases().await.contains(&scratch), "{scratch} must be dropped after a failed restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_critical_table_and_old_backup_fail() {
    let (_db, _dir, s, m) = backed_up("vf_meta", |p| vec![RepoSpec::Local(p.to_path_buf())]).await;
    let v = verify::run(&s, &VerifyOptions { critical_tables: vec!["users".into(), "empty_one".into(), "nope".into()], ..by_id(&m) }).await.unwrap();
    assert_fails(&v, Check::CriticalTables, None, &["public.empty_one is empty", "public.nope is not in backup"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verify::run(&s, &VerifyOptions { max_age: Duration::from_secs(1), ..by_id(&m) }).await.unwrap();
    assert_fails(&v, Check::Metadata, None, &["older than --max-age 1s"]);
    assert_eq!(result(&v, Check::FileIntegrity, None).status, Status::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exit_codes() {
    let (db, dir, s, m) = backed_up("vf_bin", |p| vec![RepoSpec::Local(p.to_path_buf())]).await;
    let url =
        format!("postgres://{}:{}@{}:{}/{db}?sslmode={}", s.db.user, s.db.password.as_ref().unwrap().expose(), s.db.host, s.db.port, s.db.sslmode.as_str());
    let repo = dir.path().display().to_string();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
        cmd.args(["verify", "--db", &url, "--repo", &repo]).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
                cmd.env_remove(k);
            }
        }
        if let Some(ca) = &s.db.sslrootcert {
            cmd.env("PGSSLROOTCERT", ca);
        }
        cmd.env("HOME", "/nonexistent-home").output().unwrap()
    };
    let ok = run(&[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains(&format!("PASS file-integrity {repo}: ")), "{stdout}");

    let failed = run(&[m.backup_id.as_str(), "--critical-tables", "empty_one", "--json"]);
    assert_eq!(failed.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(json["passed"], false);
    let err = String::from_utf8_lossy(&failed.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pgkeep: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("pgkeep: error: ") && lines[0].contains("critical-tables"), "{err}");

    let missing = run(&["full_backup_20200101_000000"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pgkeep: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("pgkeep: error: backup full_backup_20200101_000000 not found"), "{err}");
    assert!(missing.stdout.is_empty());

    let bad = run(&["--max-age", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
}
