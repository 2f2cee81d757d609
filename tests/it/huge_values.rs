//! Bounded memory for huge values, through the binary on a real cluster: a
//! table with a 150 MB bytea (300 MB of COPY hex text) and a 50 MB text
//! value with escapes goes through `backup`, `verify --deep` and `restore --target-db`;
//! each process's own peak RSS (from `wait4`, in [`rss_probe`]) stays under
//! 200 MiB, the huge rows span chunks of the chunk size, and the restored values are exactly the
//! original ones (length and md5 of every value, server-side). Sized for
//! CI; `benches/huge_value_rss.sh` measures the largest values (BENCHMARKS.md).

use crate::harness;

use std::path::Path;
use std::process::{Command, Stdio};

use harness::postgres::PgCluster;
use pgkeep::repo::catalog::{self, CatalogEntry};
use pgkeep::storage::local::LocalStorage;

/// The memory target: 200 MiB, in KiB as `ru_maxrss` counts.
const PEAK_RSS_LIMIT_KIB: i64 = 200 * 1024;
const BYTEA_BYTES: u64 = 150_000_000;
const TEXT_BYTES: u64 = 50_000_000;

/// One run of the binary: exit code, stderr, and peak RSS in KiB.
struct Run {
    code: i32,
    stderr: String,
    peak_rss_kib: i64,
}

/// Run `pgkeep args…` against `db` with `repo` as BACKUP_DIR and measure
/// the child's own peak RSS, through [`rss_probe`] (not the test process's).
fn pgkeep(cluster: &PgCluster, db: &str, repo: &Path, args: &[&str]) -> Run {
    let s = cluster.superuser_settings(db);
    let out = tempfile::tempdir().unwrap();
    let stderr_path = out.path().join("stderr");
    let report_path = out.path().join("rusage");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--exact", "huge_values::rss_probe", "--ignored"])
        .env(PROBE_ARGS, args.join("\n"))
        .env(PROBE_REPORT, &report_path)
        .env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("DB_SSLMODE", "disable")
        .env("BACKUP_DIR", repo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let probe = cmd.status().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert!(probe.success() && !report.is_empty(), "the RSS probe failed ({probe}): {stderr}");
    let (code, peak) = report.split_once(' ').unwrap();
    Run { code: code.parse().unwrap(), stderr, peak_rss_kib: peak.parse().unwrap() }
}

/// Arguments of `pgkeep` for [`rss_probe`], one a line.
const PROBE_ARGS: &str = "PGKEEP_RSS_PROBE_ARGS";
/// File [`rss_probe`] writes `<exit code> <ru_maxrss KiB>` into.
const PROBE_REPORT: &str = "PGKEEP_RSS_PROBE_REPORT";

/// The child half of [`pgkeep`]: this test binary re-run as a small, freshly
/// exec'd process that spawns `pgkeep` (its environment passed on), reaps it
/// with `wait4` and reports its exit code and `ru_maxrss`. A child's
/// `ru_maxrss` includes the resident size of the process it was spawned
/// from (Linux keeps the old address space's high-water mark across
/// `exec`), so spawned straight from the test process, which runs every
/// other test too, `pgkeep` would be charged with their memory. Does nothing
/// without [`PROBE_ARGS`].
#[test]
#[ignore = "run as a child process by pgkeep()"]
fn rss_probe() {
    let (Ok(args), Ok(report)) = (std::env::var(PROBE_ARGS), std::env::var(PROBE_REPORT)) else {
        return;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.args(args.lines()).env_remove(PROBE_ARGS).env_remove(PROBE_REPORT).stdin(Stdio::null()).stdout(Stdio::null());
    // Reaped below with wait4 (for its rusage), not Child::wait.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    std::fs::write(report, format!("{code} {}", usage.ru_maxrss)).unwrap();
}

fn assert_bounded(what: &str, run: &Run) {
    assert_eq!(run.code, 0, "{what} failed: {}", run.stderr);
    assert!(run.peak_rss_kib < PEAK_RSS_LIMIT_KIB, "{what} peaked at {} MiB, the limit is 200 MiB", run.peak_rss_kib / 1024);
    eprintln!("{what}: peak RSS {} MiB", run.peak_rss_kib / 1024);
}

/// Length and md5 of every value, in id order.
async fn values(cluster: &PgCluster, db: &str) -> Vec<(i32, Option<i32>, Option<String>, Option<i32>, Option<String>)> {
    let c = cluster.client(db).await;
    c.query("SELECT id, length(b), md5(b), length(t), md5(t) FROM big ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bytea_and_text_round_trip_in_bounded_memory() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("huge").await;
    // Built server-side, so no client ever holds a value.
    cluster
        .execute(
            &db,
            &format!(
                "CREATE TABLE big (id int PRIMARY KEY, b bytea, t text); \
                 ALTER TABLE big ALTER b SET STORAGE EXTERNAL, ALTER t SET STORAGE EXTERNAL; \
                 INSERT INTO big VALUES (1, decode(repeat('00112233445566778899aabbccddeeff', {}), 'hex'), 'small'); \
                 INSERT INTO big VALUES (2, '\\x00ff', repeat(E'tab\\there, newline\\n, ünï ', {})); \
                 INSERT INTO big SELECT i, int4send(i), md5(i::text) FROM generate_series(3, 500) i;",
                BYTEA_BYTES / 16,
                TEXT_BYTES / 25,
            ),
        )
        .await;
    let original = values(cluster, &db).await;
    assert_eq!(original[0].1, Some(BYTEA_BYTES as i32));
    assert!(original[1].3.unwrap() as u64 >= TEXT_BYTES * 9 / 10);
    let repo = tempfile::tempdir().unwrap();

    // 1. Backup: the huge rows are split across chunks of the chunk size.
    assert_bounded("backup", &pgkeep(cluster, &db, repo.path(), &["backup"]));
    let listed = catalog::list_backups(&LocalStorage::new(repo.path())).await.unwrap();
    let Some(CatalogEntry::Valid(m)) = listed.into_iter().next() else { panic!("no valid backup") };
    let t = m.tables.iter().find(|t| t.name == "big").unwrap();
    assert_eq!(t.rows, 500);
    assert!(t.raw_bytes > 2 * BYTEA_BYTES + TEXT_BYTES, "{}", t.raw_bytes);
    assert!(t.chunks.iter().all(|c| c.raw_size <= 9 << 20), "every chunk near the 8 MiB chunk size");
    assert!(t.chunks.iter().filter(|c| c.continues).count() > 30, "the huge rows span chunks");
    let id = m.backup_id.to_string();

    // 2. verify --deep: restore into a scratch database and compare fingerprints.
    assert_bounded("verify --deep", &pgkeep(cluster, &db, repo.path(), &["verify", "--deep", &id]));

    // 3. restore into a new database; its own verification reads everything back.
    let target = format!("{db}_restored");
    assert_bounded("restore", &pgkeep(cluster, &db, repo.path(), &["restore", &id, "--target-db", &target, "--yes"]));
    assert_eq!(values(cluster, &target).await, original, "restored values differ");
}

/// Many chunk boundaries, fast: 64 KiB chunks, rows of 0.3–3 MB with COPY
/// escapes among small rows, an encrypted backup (manifest version 3 with
/// `encryption`), then a restore into a new database whose verification
/// recomputes every fingerprint, and a server-side comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_split_across_small_chunks_round_trip_encrypted() {
    use harness::backup_check::{read_back, settings};
    use pgkeep::commands::backup::{self, BackupOptions};
    use pgkeep::commands::restore::{self, RestoreOptions};
    use pgkeep::config::{EncryptionSettings, RepoSpec, Secret};
    use pgkeep::restore::source::BackupSelector;

    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("split").await;
    cluster
        .execute(
            &db,
            "CREATE TABLE big (id int PRIMARY KEY, b bytea, t text); \
             INSERT INTO big SELECT i, CASE WHEN i % 7 = 0 THEN decode(repeat(md5(i::text), i * 1000), 'hex') END, \
               CASE WHEN i % 5 = 0 THEN repeat(E'x\\ty\\\\z\\n', i * 5000) ELSE md5(i::text) END FROM generate_series(1, 60) i;",
        )
        .await;
    let original = values(cluster, &db).await;
    let repo = tempfile::tempdir().unwrap();
    let mut s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().into())]);
    s.encryption =
        EncryptionSettings { passphrase: Some(Secret::new("split rows")), passphrase_origin: Some("PGKEEP_PASSPHRASE".into()), ..Default::default() };
    let opts = BackupOptions { chunk_size: 64 << 10, ..BackupOptions::default() };
    let m = backup::run(&s, &opts).await.unwrap().manifest;
    assert_eq!(pgkeep::repo::manifest::version_of(&m), 3);
    assert!(m.encryption.is_some());
    let t = m.tables.iter().find(|t| t.name == "big").unwrap();
    assert_eq!(t.rows, 60);
    assert!(t.chunks.iter().filter(|c| c.continues).count() > 100, "rows span chunks");
    assert!(t.chunks.iter().all(|c| c.raw_size < 200 << 10), "chunks stay near 64 KiB");

    let target = format!("{db}_copy");
    let opts = RestoreOptions { yes: true, target_db: Some(target.clone()), ..RestoreOptions::new(BackupSelector::Id(m.backup_id.clone())) };
    let report = restore::run(&s, &opts).await.unwrap();
    assert!(report.verification.passed(), "{:?}", report.verification.problems);
    assert_eq!(values(cluster, &target).await, original);
    // read_back checks rows and fingerprints of unencrypted chunks only; an
    // unencrypted backup of the same data must agree with the encrypted one.
    s.encryption = EncryptionSettings::default();
    let plain = backup::run(&s, &BackupOptions { chunk_size: 64 << 10, ..BackupOptions::default() }).await.unwrap().manifest;
    let p = plain.tables.iter().find(|t| t.name == "big").unwrap();
    assert_eq!((p.rows, &p.fingerprint), (t.rows, &t.fingerprint));
    read_back(&LocalStorage::new(repo.path()), &plain).await;
}
