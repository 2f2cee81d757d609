//! Deadlines and partial success, through the `pgkeep` binary:
//! - a store that stalls mid-part (the scripted fake S3) fails the backup
//!   within the documented bound, naming the endpoint and the object, and the
//!   database is free (no pgkeep session, no temporary slot) as soon as the
//!   failure is reported;
//! - a Garage paused with SIGSTOP does the same, and a backup after SIGCONT
//!   succeeds;
//! - a local repository on a full filesystem fails mid-backup while the
//!   Garage copy completes: it verifies and restores, the local one has no
//!   manifest, the command exits non-zero, and the webhook reports a failure
//!   naming the local repository.

use crate::harness;
use crate::notify::sinks;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::fake_s3::FakeS3;
use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::repo::catalog::{self, CatalogEntry};
use pgkeep::storage::Storage;
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::s3::S3Storage;
use sinks::{HttpSink, Reply};
use tokio::io::AsyncBufReadExt;

/// The line pgkeep logs once a doomed backup has let go of the database.
const RELEASED: &str = "snapshot, table locks and slot released";
/// Test deadlines: no progress for 4 s fails a transfer; small requests get 2 s.
const STALL: Duration = Duration::from_secs(4);
const REQUEST: Duration = Duration::from_secs(2);
/// How long a failed upload waits for its abort (`storage/s3/upload.rs`).
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// ~40 MB of poorly compressible rows: several 5 MiB parts per pack.
async fn sample_db(cluster: &PgCluster, label: &str) -> String {
    let db = cluster.fresh_db(label).await;
    cluster
        .execute(
            &db,
            "CREATE TABLE docs (id int PRIMARY KEY, body text);
             INSERT INTO docs SELECT i, md5(i::text) || md5((i * 3)::text) || md5((i * 7)::text) FROM generate_series(1, 400000) i;
             CREATE TABLE small (id int); INSERT INTO small VALUES (1), (2);",
        )
        .await;
    db
}

/// The binary for `db`, configured through the environment only, with the
/// test deadlines and 5 MiB parts.
fn pgkeep(cluster: &PgCluster, db: &str) -> Command {
    let s = cluster.superuser_settings(db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG")
            || k.starts_with("DB_")
            || k.starts_with("S3_")
            || k.starts_with("AWS_")
            || k.starts_with("NOTIFY")
            || k == "DATABASE_URL"
            || k == "BACKUP_DIR"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("DB_SSLMODE", "disable")
        .env("PGKEEP_JOBS", "2")
        .env("PGKEEP_S3_PART_SIZE", "5MiB")
        .env("PGKEEP_S3_TIMEOUT", format!("{}s", STALL.as_secs()))
        .env("PGKEEP_S3_REQUEST_TIMEOUT", format!("{}s", REQUEST.as_secs()))
        .env("EXPIRE_AFTER_BACKUP", "false")
        .current_dir(empty_dir());
    cmd
}

/// An empty working directory: no `./pgkeep.toml` is picked up.
fn empty_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// S3 environment for `bucket` at `endpoint`.
fn s3_env(cmd: &mut Command, endpoint: &str, bucket: &str, key: &str, secret: &str, region: &str) {
    cmd.env("S3_BUCKET", bucket).env("S3_ENDPOINT", endpoint).env("S3_REGION", region).env("AWS_ACCESS_KEY_ID", key).env("AWS_SECRET_ACCESS_KEY", secret);
}

/// pgkeep's and pg_dump's sessions on `db`, and its temporary slots.
async fn held(cluster: &PgCluster, db: &str) -> (i64, i64) {
    let c = cluster.client("postgres").await;
    let sessions: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name IN ('pgkeep', 'pg_dump') AND pid <> pg_backend_pid()", &[&db])
        .await
        .unwrap()
        .get(0);
    let slots: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND temporary", &[&db]).await.unwrap().get(0);
    (sessions, slots)
}

/// Wait (up to 2 s: a backend takes a moment to exit after its socket
/// closes) until `db` holds nothing of pgkeep's.
async fn assert_released(cluster: &PgCluster, db: &str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let h = held(cluster, db).await;
        if h == (0, 0) {
            return;
        }
        assert!(Instant::now() < deadline, "{when}: pgkeep still holds (sessions, temporary slots) = {h:?} on {db}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a watched run ended.
struct Run {
    code: Option<i32>,
    stderr: String,
    /// When the database-released line appeared, and when the process exited.
    released_at: Option<Instant>,
    exited_at: Instant,
}

/// Run `cmd`; when it logs that the database is released, check at once
/// that it is; return when the process exits.
async fn run_watching(mut cmd: Command, cluster: &PgCluster, db: &str) -> Run {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    let mut released_at = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if released_at.is_none() && line.contains(RELEASED) {
                released_at = Some(Instant::now());
                assert_released(cluster, db, "when the failure was logged").await;
            }
            stderr.push_str(&line);
            stderr.push('\n');
        }
    };
    tokio::time::timeout(Duration::from_secs(300), read).await.expect("pgkeep must not hang");
    let status = child.wait().await.unwrap();
    Run { code: status.code(), stderr, released_at, exited_at: Instant::now() }
}

/// The final `pgkeep: error:` line.
fn error_line(stderr: &str) -> String {
    stderr.lines().rfind(|l| l.starts_with("pgkeep: error:")).unwrap_or_else(|| panic!("no error line in:\n{stderr}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stalling_mid_part_fails_the_backup_in_bounded_time_and_frees_the_database() {
    let cluster = PgCluster::shared();
    let db = sample_db(cluster, "stall_part").await;
    let fake = FakeS3::start().await;
    // Every part upload takes 1 MiB of its 5 MiB and then hangs.
    fake.stall_parts_after(1 << 20);
    let mut cmd = pgkeep(cluster, &db);
    s3_env(&mut cmd, &fake.endpoint(), "bk", "AKFAKE", "fake-secret", "us-east-1");
    cmd.args(["backup", "--repo", "s3://bk"]);

    let watch_held = async {
        // While the part hangs, the backup really holds the database.
        let deadline = Instant::now() + Duration::from_secs(120);
        while fake.stalls().0 == 0 {
            assert!(Instant::now() < deadline, "no part upload ever started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        held(cluster, &db).await
    };
    let (run, during) = tokio::join!(run_watching(cmd, cluster, &db), watch_held);
    assert!(during.0 >= 1 && during.1 == 1, "during the stall pgkeep holds sessions and a temporary slot: {during:?}");

    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let line = error_line(&run.stderr);
    let host = fake.endpoint().trim_start_matches("http://").to_string();
    assert!(line.contains("made no progress") && line.contains(&host) && line.contains("/data/w0") && line.contains(".pack"), "{line}");
    assert_eq!(line.lines().count(), 1);

    // Bounds: the stall is seen after s3.timeout; the database is free at that
    // moment; cleanup and the lock release take at most two small requests more.
    let first = fake.stalls().1.expect("a stalled part");
    let released = run.released_at.expect("the database-released line is logged before cleanup");
    eprintln!("stall -> database released {:?}, stall -> exit {:?}", released.duration_since(first), run.exited_at.duration_since(first));
    let slack = Duration::from_secs(6);
    assert!(released.duration_since(first) < STALL + ABORT_WAIT + slack, "released {:?} after the stall", released.duration_since(first));
    assert!(run.exited_at.duration_since(first) < STALL + ABORT_WAIT + 2 * REQUEST + slack, "exited {:?} after the stall", run.exited_at.duration_since(first));
    assert!(released <= run.exited_at);
    assert_released(cluster, &db, "after exit").await;

    // Nothing visible, nothing left half-uploaded.
    assert!(!fake.keys().iter().any(|k| k.starts_with("backups/")), "{:?}", fake.keys());
    assert_eq!(fake.open_uploads(), 0, "stalled uploads are aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_garage_fails_the_backup_in_bounded_time_and_a_later_backup_succeeds() {
    let cluster = PgCluster::shared();
    let db = sample_db(cluster, "stall_garage").await;
    // A private server: pausing the shared one would stall other tests.
    let garage = Garage::start();
    let bucket = garage.unique_bucket("paused");
    let client = garage.client().await;
    let backup = |cluster: &PgCluster| {
        let mut cmd = pgkeep(cluster, &db);
        s3_env(&mut cmd, &garage.endpoint(), &bucket, garage.access_key(), garage.secret_key(), garage.region());
        cmd.args(["backup", "--repo", &format!("s3://{bucket}")]);
        cmd
    };

    let pause_mid_upload = async {
        // Once data is flowing (a multipart upload exists), stop the server.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ups = client.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
            if !ups.uploads().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "no upload ever started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        garage.pause();
        Instant::now()
    };
    let (run, paused_at) = tokio::join!(run_watching(backup(cluster), cluster, &db), pause_mid_upload);
    garage.resume();

    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let line = error_line(&run.stderr);
    let host = garage.endpoint().trim_start_matches("http://").to_string();
    assert!(line.contains(&host) && line.contains("backups/"), "names endpoint and object: {line}");
    assert!(run.released_at.is_some(), "{}", run.stderr);
    // Stall bound (counted from the last byte the kernel took, which can be a
    // little after the pause), the bounded wait for the abort, one cleanup
    // request and the lock release; plus slack for a loaded machine.
    let took = run.exited_at.duration_since(paused_at);
    eprintln!("pause -> exit {took:?}");
    assert!(took < STALL + ABORT_WAIT + 2 * REQUEST + Duration::from_secs(15), "failed {took:?} after the pause:\n{}", run.stderr);
    assert_released(cluster, &db, "after exit").await;

    // The store is back: the next backup succeeds and is the only one listed.
    let out = backup(cluster).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s3 = S3Storage::connect(garage.settings(&bucket, "")).await.unwrap();
    let listed = catalog::list_backups(&s3).await.unwrap();
    assert!(matches!(&listed[..], [CatalogEntry::Valid(_)]), "{listed:?}");
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted when dropped.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(size: &str) -> TinyFs {
        let dir = std::env::temp_dir().join(format!("pgkeep-tinyfs-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        TinyFs(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_disk_keeps_the_garage_copy() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let db = sample_db(cluster, "partial").await;
    let bucket = garage.unique_bucket("partial");
    // 8 MiB: the repository and its lock fit, the first data pack does not.
    let disk = TinyFs::mount("8m");
    let hook = HttpSink::start(Reply::Status(200)).await;

    let mut cmd = pgkeep(cluster, &db);
    s3_env(&mut cmd, &garage.endpoint(), &bucket, garage.access_key(), garage.secret_key(), garage.region());
    cmd.env("BACKUP_DIR", disk.path()).env("NOTIFY_WEBHOOK_URL", hook.url("/hook")).arg("backup");
    let run = run_watching(cmd, cluster, &db).await;

    // Non-zero, one loud line naming the failed repository and where the backup is complete.
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let line = error_line(&run.stderr);
    let local = disk.path().display().to_string();
    assert!(
        line.contains("failed in 1 of 2 repositories") && line.contains(&local) && line.contains(&format!("complete and listed in s3://{bucket}")),
        "{line}"
    );
    assert!(run.released_at.is_none(), "the backup was not doomed: {}", run.stderr);
    eprintln!("{line}");

    // Garage: listed, valid, verifies and restores.
    let s3 = S3Storage::connect(garage.settings(&bucket, "")).await.unwrap();
    let listed = catalog::list_backups(&s3).await.unwrap();
    let [CatalogEntry::Valid(m)] = &listed[..] else { panic!("one valid backup in Garage: {listed:?}") };
    assert!(line.contains(m.backup_id.as_str()), "{line}");
    let only_s3 = |args: &[&str]| {
        let mut cmd = pgkeep(cluster, &db);
        s3_env(&mut cmd, &garage.endpoint(), &bucket, garage.access_key(), garage.secret_key(), garage.region());
        cmd.args(args).args(["--repo", &format!("s3://{bucket}")]);
        cmd.output().unwrap()
    };
    let out = only_s3(&["verify", m.backup_id.as_str()]);
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stderr));
    let target = format!("{db}_restored");
    let out = only_s3(&["restore", m.backup_id.as_str(), "--target-db", &target, "--yes"]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let restored = cluster.client(&target).await;
    let n: i64 = restored.query_one("SELECT count(*) FROM docs", &[]).await.unwrap().get(0);
    assert_eq!(n, 400_000);

    // Local: no manifest, nothing of the backup left, not listed.
    let local_repo = LocalStorage::new(disk.path());
    assert!(catalog::list_backups(&local_repo).await.unwrap().is_empty());
    assert!(local_repo.list(&m.backup_id.prefix()).await.unwrap().is_empty(), "the partial local copy is removed");

    // The notification is a failure naming the failed repository.
    let sent = hook.received();
    let event = sent.last().expect("a webhook notification").json();
    assert_eq!(event["outcome"], "failure", "{event}");
    assert!(event["error"].as_str().unwrap().contains(&local), "{event}");
}
