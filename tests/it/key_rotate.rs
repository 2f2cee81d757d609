//! `pgkeep key rotate` through the binary against a real cluster: backups
//! encrypted to recipient A are re-wrapped to B (A removed) without
//! re-encrypting data; restore works with B and fails with A naming the
//! backup; `verify` names the recipients; a `kill -9` (failpoint) in the
//! middle leaves every backup readable, and a second run finishes.

use crate::harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use age::secrecy::ExposeSecret;
use harness::postgres::PgCluster;
use pgkeep::config::DbSettings;

fn url(s: &DbSettings) -> String {
    format!("postgres://{}:{}@{}:{}/{}?sslmode={}", s.user, s.password.as_ref().unwrap().expose(), s.host, s.port, s.dbname, s.sslmode.as_str())
}

fn pgkeep(s: &DbSettings, repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.arg("--db").arg(url(s)).arg("--repo").arg(repo).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    if let Some(ca) = &s.sslrootcert {
        cmd.env("PGSSLROOTCERT", ca);
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1").env("EXPIRE_AFTER_BACKUP", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn out(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// An identity file and its public recipient.
fn identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

/// Backup ids in the repository, oldest first.
fn backup_ids(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo.join("backups")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ids.sort();
    ids
}

/// Whether `verify <id>` passes with identity file `key`.
fn opens(s: &DbSettings, repo: &Path, id: &str, key: &Path) -> bool {
    pgkeep(s, repo, &["--identity-file", key.to_str().unwrap(), "verify", id, "--max-age", "1h"], &[]).status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_rewraps_backups_and_survives_a_kill_in_the_middle() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("key_rot").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 2000) i;").await;
    let s = cluster.superuser_settings(&db);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (key_a, rec_a) = identity(dir.path(), "a.txt");
    let (key_b, rec_b) = identity(dir.path(), "b.txt");

    // Two backups encrypted to A.
    for _ in 0..2 {
        let o = pgkeep(&s, &repo, &["backup"], &[("PGKEEP_ENCRYPT_RECIPIENTS", &rec_a)]);
        assert!(o.status.success(), "{}", out(&o));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids = backup_ids(&repo);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let chunks_before: Vec<Vec<u8>> = ids.iter().map(|id| std::fs::read(first_data_object(&repo.join("backups").join(id)))).map(Result::unwrap).collect();
    assert!(opens(&s, &repo, &ids[0], &key_a) && !opens(&s, &repo, &ids[0], &key_b));

    // Without the current key: refused, nothing written.
    let rotate = |key: &Path, env: &[(&str, &str)]| {
        pgkeep(&s, &repo, &["--identity-file", key.to_str().unwrap(), "key", "rotate", "--add-recipient", &rec_b, "--remove-recipient", &rec_a], env)
    };
    let o = rotate(&key_b, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains(&format!("backup {}", ids[0])) && out(&o).contains("cannot decrypt"), "{}", out(&o));
    assert!(opens(&s, &repo, &ids[0], &key_a), "a refused rotation leaves the backup as it was");

    // A dry run names what would change and writes nothing.
    let o = pgkeep(&s, &repo, &["--identity-file", key_a.to_str().unwrap(), "key", "rotate", "--add-recipient", &rec_b, "--dry-run"], &[]);
    let text = out(&o);
    assert!(
        o.status.success() && text.contains(&format!("would re-wrap backup {}", ids[0])) && text.contains(&format!("would re-wrap backup {}", ids[1])),
        "{text}"
    );
    assert!(!opens(&s, &repo, &ids[0], &key_b), "a dry run writes nothing");

    // kill -9 in the union round, right after the first manifest is replaced: A still opens everything.
    let o = rotate(&key_a, &[("PGKEEP_FAILPOINT", "key_rotate.union.after_main")]);
    assert_eq!(o.status.code(), None, "aborted by the failpoint: {}", out(&o));
    for id in &ids {
        assert!(opens(&s, &repo, id, &key_a), "after a crash in the union round, A opens {id}");
    }
    assert!(opens(&s, &repo, &ids[0], &key_b), "the first backup is old ∪ new");
    assert!(!opens(&s, &repo, &ids[1], &key_b), "the second is not rewritten yet");
    let _ = std::fs::remove_dir_all(repo.join("locks"));

    // Run again and kill -9 in the final round, right after the first manifest is replaced.
    let o = rotate(&key_a, &[("PGKEEP_FAILPOINT", "key_rotate.final.after_main")]);
    assert_eq!(o.status.code(), None, "aborted by the failpoint: {}", out(&o));
    for id in &ids {
        assert!(opens(&s, &repo, id, &key_b), "after a crash in the final round, B opens {id}");
    }
    assert!(!opens(&s, &repo, &ids[0], &key_a), "the first backup was already final");
    assert!(opens(&s, &repo, &ids[1], &key_a), "the second still opens with A (old ∪ new)");

    // The dead run's lock turns stale only after 10 minutes; remove it as an operator would.
    let _ = std::fs::remove_dir_all(repo.join("locks"));
    // Running it again finishes, with either key (here B).
    let o = rotate(&key_b, &[]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("re-wrapped backup {}", ids[1])), "{}", out(&o));
    for id in &ids {
        assert!(opens(&s, &repo, id, &key_b), "B opens {id}");
        assert!(!opens(&s, &repo, id, &key_a), "A no longer opens {id}");
    }
    // Data objects untouched: only envelopes changed.
    for (id, before) in ids.iter().zip(&chunks_before) {
        assert_eq!(&std::fs::read(first_data_object(&repo.join("backups").join(id))).unwrap(), before, "{id}");
    }
    // A third run has nothing left to do.
    let o = rotate(&key_b, &[]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("2 backup(s) and 0 segment(s) already done"), "{}", out(&o));

    // verify names who can open it.
    let o = pgkeep(&s, &repo, &["--identity-file", key_b.to_str().unwrap(), "verify", &ids[1], "--max-age", "1h"], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("opens with age recipient(s) {rec_b}")), "{}", out(&o));

    // Restore with B works; with A it fails with one line naming the backup and the key file.
    let o = pgkeep(&s, &repo, &["--identity-file", key_b.to_str().unwrap(), "restore", &ids[1], "--target-db", &format!("{db}_b"), "--yes"], &[]);
    assert!(o.status.success(), "{}", out(&o));
    let c = cluster.client(&format!("{db}_b")).await;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 2000);
    let o = pgkeep(&s, &repo, &["--identity-file", key_a.to_str().unwrap(), "restore", &ids[1], "--target-db", &format!("{db}_a"), "--yes"], &[]);
    assert_ne!(o.status.code(), Some(0), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.lines().find(|l| l.starts_with("pgkeep: error: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&ids[1]) && line.contains("a.txt") && line.contains(&rec_b), "{line}");
}

/// The first object under a backup's `data/` folder.
fn first_data_object(backup: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = std::fs::read_dir(backup.join("data")).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    all.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_rewraps_change_segments() {
    use harness::backup_check::settings;
    use pgkeep::config::{EncryptionSettings, RepoSpec};
    use pgkeep::storage::Storage;
    use pgkeep::storage::local::LocalStorage;

    // Slots are cluster-wide: a cluster of its own. A stream run encrypted to A.
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("key_rot_seg").await;
    cluster.execute(&db, "CREATE TABLE items (id serial PRIMARY KEY, v text)").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (key_a, rec_a) = identity(dir.path(), "a.txt");
    let (key_b, rec_b) = identity(dir.path(), "b.txt");
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.clone())]);
    s.encryption = EncryptionSettings { recipients: vec![rec_a.clone()], ..Default::default() };
    let opts = pgkeep::stream::StreamOptions {
        segment_seconds: 1,
        auto_backup: Default::default(),
        ..pgkeep::stream::StreamOptions::new("pgkeep_rotate_test", "pgkeep_rotate_test")
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
        .query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgkeep_rotate_test' AND active AND confirmed_flush_lsn IS NOT NULL", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for i in 0..10 {
        client.execute("INSERT INTO items (v) VALUES ($1)", &[&format!("row-{i}")]).await.unwrap();
    }
    let storage = LocalStorage::new(&repo);
    let keyring = |p: &Path| pgkeep::crypto::Keyring::from_settings(&EncryptionSettings { identity_file: Some(p.to_path_buf()), ..Default::default() });
    // Transactions readable with `key` across all segments, or None when one does not open.
    let transactions = |key: PathBuf| {
        let storage = &storage;
        let keys = keyring(&key);
        async move {
            let mut n = 0;
            for o in storage.list("changes/").await.unwrap().iter().filter(|o| o.key.ends_with(".seg")) {
                let bytes = storage.get(&o.key, None).await.unwrap();
                match pgkeep::stream::segment::decode_with(&bytes, &o.key, &keys) {
                    Ok(seg) => n += seg.transactions.len(),
                    Err(_) => return None,
                }
            }
            Some(n)
        }
    };
    while transactions(key_a.clone()).await.unwrap() < 10 {
        assert!(std::time::Instant::now() < deadline, "never archived 10 transactions");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(60), task).await.unwrap().unwrap().unwrap_or_else(|e| panic!("{}", e.user_line()));
    pgkeep::stream::remove(&s, "pgkeep_rotate_test", "pgkeep_rotate_test").await.unwrap();
    let segments = storage.list("changes/").await.unwrap().iter().filter(|o| o.key.ends_with(".seg")).count();
    assert!(segments > 0);

    // Rotate A -> B: every segment opens with B only, the same transactions, one new wrapped key for the run.
    let sd = cluster.superuser_settings(&db);
    let o = pgkeep(&sd, &repo, &["--identity-file", key_a.to_str().unwrap(), "key", "rotate", "--add-recipient", &rec_b, "--remove-recipient", &rec_a], &[]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("re-wrapped {segments} segment(s)")), "{}", out(&o));
    assert_eq!(transactions(key_b.clone()).await, Some(10));
    assert_eq!(transactions(key_a.clone()).await, None);
    let mut wrapped = std::collections::BTreeSet::new();
    for o in storage.list("changes/").await.unwrap().iter().filter(|o| o.key.ends_with(".seg")) {
        let bytes = storage.get(&o.key, None).await.unwrap();
        let env = pgkeep::stream::segment::rekey::envelope_of(&bytes, &o.key).unwrap().unwrap();
        assert_eq!(env.recipients, vec![rec_b.clone()]);
        wrapped.insert(env.wrapped_key);
    }
    assert_eq!(wrapped.len(), 1, "one wrapped key per stream run");
}
