//! Bugs that hid in the seams between the CLI and the capabilities, through
//! the real binary against a real PostgreSQL: exactly one notification per
//! `verify` and `expire` (counted at a local webhook sink), retention after
//! the full backups `stream` takes by itself, and every verb refusing a
//! repository whose format version it does not know.

use crate::harness;
use crate::notify::sinks;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;
use sinks::{HttpSink, Reply};

const HOOK_PATH: &str = "/hooks/pgkeep";

/// `pgkeep <args>` against `db` and `repo`, notifying every outcome to `hook`.
async fn pgkeep(cluster: &PgCluster, db: &str, repo: &Path, hook: Option<&HttpSink>, args: &[&str]) -> Output {
    let mut cmd = harness::streaming::pgkeep_cli(cluster, db, repo);
    cmd.args(args).env("HOME", "/nonexistent-home").env("PGKEEP_CONFIG", "/dev/null").env("NO_COLOR", "1");
    if let Some(h) = hook {
        cmd.env("NOTIFY_WEBHOOK_URL", h.url(HOOK_PATH)).env("NOTIFY_ON_SUCCESS", "true");
    }
    tokio::process::Command::from(cmd).output().await.expect("run pgkeep")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (operation, outcome) of each notification the sink received after the first `skip`.
fn notifications(hook: &HttpSink, skip: usize) -> Vec<(String, String)> {
    hook.received()
        .iter()
        .skip(skip)
        .map(|r| {
            let j = r.json();
            (j["operation"].as_str().unwrap_or_default().to_string(), j["outcome"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn pair(op: &str, outcome: &str) -> (String, String) {
    (op.to_string(), outcome.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_expire_send_exactly_one_notification() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("seamnotify").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);").await;
    let repo = tempfile::tempdir().unwrap();
    let hook = HttpSink::start(Reply::Status(204)).await;

    // A backup: its own success, then one for the expire that follows it.
    let out = pgkeep(&cluster, &db, repo.path(), Some(&hook), &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(notifications(&hook, 0), vec![pair("backup", "success"), pair("expire", "success")]);

    // A passing verify: one success.
    let seen = hook.received().len();
    let out = pgkeep(&cluster, &db, repo.path(), Some(&hook), &["verify", "latest"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(notifications(&hook, seen), vec![pair("verify", "success")]);

    // A failing verify (a critical table that is not in the backup): one failure, exit 3.
    let seen = hook.received().len();
    let out = pgkeep(&cluster, &db, repo.path(), Some(&hook), &["verify", "latest", "--critical-tables", "public.no_such_table"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(notifications(&hook, seen), vec![pair("verify", "failure")]);

    // An expire that cannot complete (its repository's metadata cannot be read): one failure, exit 1.
    let broken = tempfile::tempdir().unwrap();
    std::fs::create_dir(broken.path().join("pgkeep.repo.json")).unwrap();
    let seen = hook.received().len();
    let out = pgkeep(&cluster, &db, broken.path(), Some(&hook), &["expire"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("expire did not complete"), "{}", stderr(&out));
    assert_eq!(notifications(&hook, seen), vec![pair("expire", "failure")]);

    // A complete expire: one success.
    let seen = hook.received().len();
    let out = pgkeep(&cluster, &db, repo.path(), Some(&hook), &["expire"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(notifications(&hook, seen), vec![pair("expire", "success")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_auto_backups_run_expire_after_backup() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("seamstream").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    let repo = tempfile::tempdir().unwrap();
    let hook = HttpSink::start(Reply::Status(204)).await;
    let mut cmd = harness::streaming::pgkeep_cli(&cluster, &db, repo.path());
    cmd.args(["stream", "--segment-seconds", "60"])
        .env("HOME", "/nonexistent-home")
        .env("PGKEEP_CONFIG", "/dev/null")
        .env("NOTIFY_WEBHOOK_URL", hook.url(HOOK_PATH))
        .env("NOTIFY_ON_SUCCESS", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();

    // Nothing covers the new archive: the stream takes a full backup, then expire runs.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !notifications(&hook, 0).contains(&pair("expire", "success")) {
        assert!(Instant::now() < deadline, "no expire after the automatic backup: {:?}", notifications(&hook, 0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let got = notifications(&hook, 0);
    assert_eq!(got.iter().filter(|n| **n == pair("backup", "success")).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|n| **n == pair("expire", "success")).count(), 1, "{got:?}");
    // The backup's notification comes before its expire's.
    assert!(got.iter().position(|n| *n == pair("backup", "success")) < got.iter().position(|n| *n == pair("expire", "success")), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_refuses_an_unknown_repository_format_version() {
    let cluster = PgCluster::start();
    let db = cluster.fresh_db("seamversion").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY);").await;
    let repo = tempfile::tempdir().unwrap();

    // An absent metadata file stays fine for readers, and is not created by them.
    let out = pgkeep(&cluster, &db, repo.path(), None, &["list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!repo.path().join("pgkeep.repo.json").exists());

    let meta = serde_json::json!({
        "format": "pgkeep-repository", "version": 99, "repository_id": "0123456789abcdef0123456789abcdef",
        "created_at": "2030-01-01T00:00:00Z",
        "created_by": {"os_user": "u", "host": "h", "pgkeep_version": "99.0.0"}
    });
    std::fs::write(repo.path().join("pgkeep.repo.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    // An intact copy of an older version does not overrule it.
    let mut old = meta.clone();
    old["version"] = 1.into();
    std::fs::write(repo.path().join("pgkeep.repo.json.copy"), serde_json::to_vec(&old).unwrap()).unwrap();
    let location = repo.path().display().to_string();
    for args in [
        &["list"][..],
        &["verify", "latest"],
        &["restore", "latest", "--target-db", "seamversion_copy"],
        &["check"],
        &["drill"],
        &["stream", "--segment-seconds", "60"],
        &["backup"],
    ] {
        let out = pgkeep(&cluster, &db, repo.path(), None, args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pgkeep: error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains("format version 99") && lines[0].contains(&location), "{args:?}: {}", lines[0]);
    }
    // Nothing but run logs was written next to the metadata, and the stream left no slot behind.
    let mut names: Vec<String> =
        std::fs::read_dir(repo.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != "logs").collect();
    names.sort();
    assert_eq!(names, vec!["pgkeep.repo.json".to_string(), "pgkeep.repo.json.copy".to_string()], "{names:?}");
    let slots: i64 = cluster.client(&db).await.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(slots, 0);
}
