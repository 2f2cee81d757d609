//! Issue 12 through the binary: backup ids claimed atomically and per
//! database (8 concurrent backups of 4 databases into local + Garage),
//! config files that exist but cannot be read, error wording (startup
//! closed, password origin, BACKUP_DIR a file), SIGTERM/SIGINT during backup
//! and restore, dead-process lock takeover, leftover restore_temp_*.

use crate::harness;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::garage::Garage;
use harness::postgres::PgCluster;

/// A `pgkeep` command with a clean environment (no PG*, DB_*, S3_*, AWS_*).
fn pgkeep(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k.starts_with("AWS_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1").env("EXPIRE_AFTER_BACKUP", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    pgkeep(args, env).output().expect("run pgkeep")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o).lines().filter(|l| l.starts_with("pgkeep: ")).map(str::to_string).collect()
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// DB_* variables for the superuser on `db`.
fn db_env(cluster: &PgCluster, db: &str) -> Vec<(String, String)> {
    let s = cluster.superuser_settings(db);
    env(&[
        ("DB_HOST", s.host.clone()),
        ("DB_PORT", s.port.to_string()),
        ("DB_USER", s.user.clone()),
        ("DB_PASSWORD", s.password.as_ref().unwrap().expose().to_string()),
        ("DB_NAME", db.to_string()),
        ("DB_SSLMODE", "disable".into()),
    ])
}

fn signal(child: &Child, signo: i32) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signo) }, 0);
}

async fn scalar(cluster: &PgCluster, db: &str, sql: &str) -> String {
    let row = cluster.client(db).await.query_one(sql, &[]).await.unwrap();
    row.get::<_, Option<String>>(0).unwrap_or_default()
}

// ---------------------------------------------------------------- config

#[test]
fn implicit_config_file_that_cannot_be_read_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgkeep.toml");
    let in_dir = |args: &[&str]| {
        let mut c = pgkeep(args, &[]);
        c.current_dir(dir.path());
        c.output().unwrap()
    };
    // Absent: fine.
    let o = in_dir(&["config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let cases: [(&str, &dyn Fn()); 3] = [
        ("UTF-8", &|| std::fs::write(&file, b"jobs = 2\n# \xff\xfe not utf-8\n").unwrap()),
        ("cannot parse config file pgkeep.toml", &|| std::fs::write(&file, "jobs = = 2\n").unwrap()),
        ("Is a directory", &|| {
            std::fs::remove_file(&file).unwrap();
            std::fs::create_dir(&file).unwrap();
        }),
    ];
    for (needle, make) in cases {
        make();
        let o = in_dir(&["backup"]);
        assert_eq!(o.status.code(), Some(2), "{needle}: {}", stderr(&o));
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{}", stderr(&o));
        assert!(lines[0].contains("pgkeep.toml") && lines[0].contains(needle), "{needle}: {}", lines[0]);
    }

    // The same non-UTF-8 file passed explicitly fails the same way.
    let bad = dir.path().join("other.toml");
    std::fs::write(&bad, b"\xff").unwrap();
    let o = run(&["--config", bad.to_str().unwrap(), "config"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(error_lines(&o)[0].contains("other.toml"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- wording

/// A TCP server that accepts and answers `reply` (possibly nothing), then closes.
fn fake_server(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 512];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    port
}

#[test]
fn connection_closed_during_startup_is_said_in_words() {
    let repo = tempfile::tempdir().unwrap();
    // Closes at once; answers like an HTTP server (the codec's "bytes remaining on stream").
    for (reply, sslmode) in [(&b""[..], "disable"), (&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], "disable"), (&b""[..], "prefer")] {
        let port = fake_server(reply);
        let o = run(
            &["backup"],
            &env(&[
                ("DB_HOST", "127.0.0.1".into()),
                ("DB_PORT", port.to_string()),
                ("DB_USER", "u".into()),
                ("DB_PASSWORD", "pw-never-shown".into()),
                ("DB_NAME", "app".into()),
                ("DB_SSLMODE", sslmode.into()),
                ("BACKUP_DIR", repo.path().display().to_string()),
            ]),
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{}", stderr(&o));
        let line = &lines[0];
        assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("closed the connection during startup"), "{line}");
        assert!(line.contains("TLS") && line.contains("wrong port") && line.contains("not a PostgreSQL server"), "{line}");
        assert!(!line.contains("bytes remaining") && !line.contains("pw-never-shown"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_errors_name_where_the_password_came_from() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("pwsrc").await;
    let port = cluster.port();
    let repo = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:{port}:*:postgres:wrong-from-pgpass\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let base = env(&[("BACKUP_DIR", repo.path().display().to_string()), ("DB_SSLMODE", "disable".into())]);
    let url = format!("postgresql://postgres:wrong-from-url@127.0.0.1:{port}/{db}");
    let fields = env(&[("DB_HOST", "127.0.0.1".into()), ("DB_PORT", port.to_string()), ("DB_USER", "postgres".into()), ("DB_NAME", db.clone())]);
    // (where the wrong password comes from, the command, its environment)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(String, String)>);
    let cases: Vec<Case> = vec![
        ("DB_PASSWORD", vec!["backup"], [fields.clone(), env(&[("DB_PASSWORD", "wrong-from-db-password".into())])].concat()),
        ("PGPASSWORD", vec!["backup"], [fields.clone(), env(&[("PGPASSWORD", "wrong-from-pgpassword".into())])].concat()),
        ("DATABASE_URL", vec!["backup"], env(&[("DATABASE_URL", url.clone())])),
        ("--db", vec!["--db", &url, "backup"], vec![]),
        (".pgpass", vec!["backup"], [fields.clone(), env(&[("HOME", home.path().display().to_string())])].concat()),
    ];
    for (origin, args, vars) in cases {
        let o = run(&args, &[base.clone(), vars].concat());
        assert_eq!(o.status.code(), Some(1), "{origin}: {}", stderr(&o));
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{origin}: {}", stderr(&o));
        assert!(lines[0].contains("password authentication failed"), "{origin}: {}", lines[0]);
        assert!(
            lines[0].contains(&format!("the password came from {origin}"))
                || (origin == ".pgpass" && lines[0].contains(&format!("came from {}", pgpass.display()))),
            "{origin}: {}",
            lines[0]
        );
        assert!(!stderr(&o).contains("wrong-from"), "{origin}: a password was printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_dir_that_is_a_file_says_not_a_directory() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("bkfile").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    for dir in [file.path().to_path_buf(), file.path().join("below")] {
        let o = run(&["backup"], &[db_env(cluster, &db), env(&[("BACKUP_DIR", dir.display().to_string())])].concat());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{}", stderr(&o));
        assert!(lines[0].contains("not a directory") && lines[0].contains(&dir.display().to_string()), "{}", lines[0]);
    }
}

// ---------------------------------------------------------------- ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_backups_of_four_databases_share_no_id_and_each_restores_to_its_own() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let bucket = garage.unique_bucket("ids");
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let config = work.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nbucket = '{bucket}'\nprefix = 'shared'\nendpoint = '{}'\nregion = '{}'\nforce_path_style = true\naccess_key_id = '{}'\nsecret_access_key = '{}'\n",
            garage.endpoint(),
            garage.region(),
            garage.access_key(),
            garage.secret_key()
        ),
    )
    .unwrap();
    let repos = env(&[("BACKUP_DIR", repo.display().to_string()), ("PGKEEP_CONFIG", config.display().to_string())]);
    let mut dbs = Vec::new();
    for i in 0..4 {
        let db = cluster.fresh_db(&format!("ids_db{i}")).await;
        cluster
            .execute(
                &db,
                &format!(
                    "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5('{db}' || g) FROM generate_series(1, {}) g;",
                    2000 * (i + 1)
                ),
            )
            .await;
        dbs.push(db);
    }

    // 1. Eight backups at once: two per database.
    let children: Vec<(String, Child)> = (0..8)
        .map(|k| {
            let db = dbs[k % 4].clone();
            let child =
                pgkeep(&["backup", "--json"], &[db_env(cluster, &db), repos.clone()].concat()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            (db, child)
        })
        .collect();
    let mut ids: Vec<(String, String)> = Vec::new();
    for (db, child) in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "backup of {db}: {}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["database"], db.as_str());
        assert_eq!(report["repositories"].as_array().unwrap().len(), 2);
        ids.push((db, report["backup_id"].as_str().unwrap().to_string()));
    }
    eprintln!("ids: {ids:?}");
    let mut distinct: Vec<&String> = ids.iter().map(|(_, id)| id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "two backups share an id: {ids:?}");
    for (db, id) in &ids {
        assert!(id.starts_with("full_backup_") && id.contains(&format!("_{}", db.replace('_', "-"))), "{id} does not name {db}");
    }

    // 2. `list` shows the configured database's backups; --all-databases shows all.
    for db in &dbs {
        let o = run(&["list", "--json"], &[db_env(cluster, db), repos.clone()].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(listed.len(), 2, "{db}: {listed:?}");
        assert!(listed.iter().all(|b| b["database"] == db.as_str() && b["repositories"].as_array().unwrap().len() == 2), "{listed:?}");
    }
    let o = run(&["list", "--json", "--all-databases"], &[db_env(cluster, &dbs[0]), repos.clone()].concat());
    let all: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.len(), 8, "{all:?}");

    // 3. Every backup verifies (both repositories) and restores into a new database equal to its own.
    for (k, (db, id)) in ids.iter().enumerate() {
        let e = [db_env(cluster, db), repos.clone()].concat();
        let o = run(&["verify", id], &e);
        assert!(o.status.success(), "verify {id}: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        let target = format!("ids_restored_{k}");
        let o = run(&["restore", id, "--target-db", &target, "--yes"], &e);
        assert!(o.status.success(), "restore {id}: {}", stderr(&o));
        let digest = "SELECT count(*)::text || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t";
        assert_eq!(scalar(cluster, &target, digest).await, scalar(cluster, db, digest).await, "{id} restored into {target}");
    }
}

// ---------------------------------------------------------------- interrupts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_backup_stops_cleanly_and_a_dead_holders_lock_is_taken_over() {
    // Its own cluster: it counts pgkeep's sessions and slots on the server.
    let cluster = &PgCluster::start();
    let db = cluster.fresh_db("sigterm_bk").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g;").await;
    let repo = tempfile::tempdir().unwrap();
    let e = [db_env(cluster, &db), env(&[("BACKUP_DIR", repo.path().display().to_string())])].concat();

    // 1. A session holds t (and so an xid): the backup claims its id and takes its
    //    repository lock, then waits (for the slot's snapshot, or on t).
    let blocker = cluster.client(&db).await;
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocker_pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let child = pgkeep(&["backup"], &e).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'pgkeep' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()";
    let start = Instant::now();
    while scalar(cluster, "postgres", waiting).await == "0" {
        assert!(start.elapsed() < Duration::from_secs(30), "the backup never waited on the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backups = repo.path().join("backups");
    assert!(std::fs::read_dir(&backups).unwrap().count() == 1, "the id is claimed before data");

    // 2. SIGTERM: one line, exit 143, nothing left in the repository or on the server.
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains("interrupted by SIGTERM") && lines[0].contains("full_backup_"), "{}", lines[0]);
    let objects: Vec<_> = walkdir(repo.path())
        .into_iter()
        .filter(|p| !p.starts_with(repo.path().join("logs")) && !p.file_name().unwrap().to_string_lossy().starts_with("pgkeep.repo.json"))
        .collect();
    assert!(objects.is_empty(), "left behind: {objects:?}");
    // The server ends pgkeep's sessions once the blocker is gone: a walsender still
    // building a slot's snapshot waits for the blocker's transaction before it notices the
    // closed socket; then its temporary slot goes with it.
    blocker.batch_execute("COMMIT").await.unwrap();
    // (The harness's own sessions say application_name pgkeep too.)
    let sessions = format!("SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'pgkeep' AND pid NOT IN (pg_backend_pid(), {blocker_pid})");
    let start = Instant::now();
    while scalar(cluster, "postgres", &sessions).await != "0" {
        if start.elapsed() > Duration::from_secs(10) {
            let detail = format!(
                "SELECT string_agg(format('%s %s %s %s', pid, datname, state, left(query, 60)), '; ') FROM pg_stat_activity WHERE application_name = 'pgkeep' AND pid NOT IN (pg_backend_pid(), {blocker_pid})"
            );
            panic!("pgkeep sessions remain: {}", scalar(cluster, "postgres", &detail).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slots = "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE 'pgkeep%'";
    assert_eq!(scalar(cluster, "postgres", slots).await, "0", "no slot may remain");

    // 3. A backup killed outright leaves its lock; the next exclusive user takes it over at once.
    let o = pgkeep(&["backup"], &e).env("PGKEEP_FAILPOINT", "backup.after_chunk").output().unwrap();
    assert!(!o.status.success());
    let locks = || std::fs::read_dir(repo.path().join("locks")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(locks(), 1, "the killed backup's lock stays");
    let o = run(&["expire"], &e);
    assert!(o.status.success(), "expire must take over the dead lock: {}", stderr(&o));
    assert!(stderr(&o).contains("taking over the lock") && stderr(&o).contains("no longer runs on this host"), "{}", stderr(&o));
    assert_eq!(locks(), 0);
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walkdir(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_restore_drops_the_temp_database_and_leftovers_are_reported_and_offered() {
    // Its own cluster: `check` looks at every restore_temp_* database on the server.
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("sigint_rs").await;
    cluster
        .execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;")
        .await;
    let repo = tempfile::tempdir().unwrap();
    let e = [db_env(&cluster, &db), env(&[("BACKUP_DIR", repo.path().display().to_string())])].concat();
    let o = run(&["backup"], &e);
    assert!(o.status.success(), "{}", stderr(&o));
    let temp_dbs = "SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '') FROM pg_database WHERE datname LIKE 'restore\\_temp\\_%'";

    // 1. A leftover of an interrupted restore: `check` reports it by name.
    cluster.execute("postgres", "CREATE DATABASE restore_temp_20200101_000000").await;
    let o = run(&["check", "--max-full-age", "1d"], &e);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.lines().any(|l| l.starts_with("ALERT") && l.contains("restore-temp") && l.contains("restore_temp_20200101_000000")), "{out}");

    // 2. A restore (approved with --yes) drops it, naming it, then SIGINT in the middle of loading.
    let child = pgkeep(&["restore", "latest", "--temp-only", "--yes"], &e).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let copying = "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'pgkeep' AND datname LIKE 'restore\\_temp\\_%' AND query ILIKE 'COPY%'";
    let start = Instant::now();
    while scalar(&cluster, "postgres", copying).await == "0" {
        assert!(start.elapsed() < Duration::from_secs(60), "the restore never started loading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains("interrupted by SIGINT") && lines[0].contains("production untouched") && lines[0].contains("dropped"), "{}", lines[0]);
    assert!(stderr(&o).contains("dropped leftover temporary restore database") && stderr(&o).contains("restore_temp_20200101_000000"), "{}", stderr(&o));
    assert_eq!(scalar(&cluster, "postgres", temp_dbs).await, "", "no temporary database may remain");

    // 3. Nothing left over now.
    let o = run(&["check", "--max-full-age", "1d"], &e);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.lines().any(|l| l.starts_with("OK") && l.contains("restore-temp")), "{out}");
}

// ---------------------------------------------------------------- claims on Garage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_on_garage_never_share_an_id_with_either_method() {
    use pgkeep::repo::claim::{self, ClaimMethod};
    use pgkeep::repo::layout::BackupKind;
    use pgkeep::storage::Storage;
    use std::sync::Arc;
    let garage = Garage::shared();
    let bucket = garage.unique_bucket("claims");
    let s3: Arc<dyn Storage> = Arc::new(pgkeep::storage::s3::S3Storage::connect(garage.settings(&bucket, "c")).await.unwrap());
    // Whether Garage honours If-None-Match decides the method `backup` uses there.
    let conditional = claim::conditional_put_works(s3.as_ref()).await.unwrap();
    let first = s3.put_if_absent("probe/x", bytes::Bytes::from_static(b"1")).await.unwrap();
    let second = s3.put_if_absent("probe/x", bytes::Bytes::from_static(b"2")).await.unwrap();
    eprintln!("garage honours If-None-Match: {conditional} (two creates of one key: {first:?}, {second:?})");
    s3.delete("probe/x").await.unwrap();
    let at = chrono::Utc::now();
    for method in [ClaimMethod::Exclusive, ClaimMethod::SoleClaim] {
        if method == ClaimMethod::Exclusive && !conditional {
            continue;
        }
        let db = format!("db-{method:?}").to_lowercase();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (s3, db) = (s3.clone(), db.clone());
                tokio::spawn(async move { claim::claim_id_using(&[s3], &[method], BackupKind::Full, at, &db).await.unwrap().to_string() })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{method:?}: {ids:?}");
        // Each id's folder holds exactly one claim: its owner's.
        for id in &ids {
            let objects = s3.list(&format!("backups/{id}/")).await.unwrap();
            assert_eq!(objects.len(), 1, "{method:?} {id}: {objects:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_to_garage_aborts_the_upload_and_leaves_nothing() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let db = cluster.fresh_db("sigterm_s3").await;
    cluster
        .execute(&db, "CREATE TABLE docs (id int PRIMARY KEY, body text); INSERT INTO docs SELECT g, md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text) FROM generate_series(1, 600000) g;")
        .await;
    let bucket = garage.unique_bucket("sigterms3");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nbucket = '{bucket}'\nendpoint = '{}'\nregion = '{}'\nforce_path_style = true\naccess_key_id = '{}'\nsecret_access_key = '{}'\n",
            garage.endpoint(),
            garage.region(),
            garage.access_key(),
            garage.secret_key()
        ),
    )
    .unwrap();
    let e = [db_env(cluster, &db), env(&[("PGKEEP_CONFIG", config.display().to_string())])].concat();
    let child = pgkeep(&["backup", "--compress", "none"], &e).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let client = garage.client().await;
    let start = Instant::now();
    loop {
        let uploads = client.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
        if !uploads.uploads().is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no multipart upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(error_lines(&o)[0].contains("interrupted by SIGTERM"), "{}", stderr(&o));
    let uploads = client.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "uploads left: {:?}", uploads.uploads());
    let objects = client.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).filter(|k| !k.starts_with("pgkeep.repo.json")).collect();
    assert!(keys.is_empty(), "left in the bucket: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_with_one_database_name_share_a_repository_and_latest_means_this_clusters() {
    let a = PgCluster::start();
    let b = PgCluster::start();
    let repo = tempfile::tempdir().unwrap();
    let digest = "SELECT count(*)::text || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t";
    for (cluster, rows) in [(&a, 300), (&b, 700)] {
        cluster.execute("postgres", "CREATE DATABASE shop").await;
        cluster
            .execute("shop", &format!("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"))
            .await;
    }
    let e = |c: &PgCluster| [db_env(c, "shop"), env(&[("BACKUP_DIR", repo.path().display().to_string())])].concat();
    // B, then A twice: A's are the newest of the repository.
    for cluster in [&b, &a, &a] {
        let o = run(&["backup"], &e(cluster));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = run(&["list", "--json"], &e(&b));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let ids: Vec<&str> = listed.iter().map(|b| b["backup_id"].as_str().unwrap()).collect();
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");

    // `restore latest` configured to B restores B's backup, not A's newer one.
    let o = run(&["restore", "latest", "--target-db", "shop_from_b", "--yes"], &e(&b));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(scalar(&b, "shop_from_b", digest).await, scalar(&b, "shop", digest).await);
    assert!(scalar(&b, "shop_from_b", digest).await.starts_with("700:"));
}
