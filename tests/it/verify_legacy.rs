//! `pgkeep verify <file>.dump.gz` on legacy archives made the old scripts'
//! way (`pg_dump -Fc | gzip`), through the binary: a good archive in a local
//! repository (with `--deep` row counts and `--compare-production`) and in
//! Garage; a flipped byte (gzip CRC), a truncated file, a missing critical
//! table; and `list` pointing at `--legacy`.

use crate::harness;

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::config::DbSettings;
use pgkeep::storage::s3::S3Storage;
use pgkeep::storage::{PutOptions, Storage};

const SAMPLE_SQL: &str = "
CREATE SCHEMA sales;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer int REFERENCES customers, total numeric);
CREATE TABLE empty_one (id int);
INSERT INTO customers SELECT i, 'c' || i FROM generate_series(1, 300) i;
INSERT INTO sales.orders (customer, total) SELECT i % 300 + 1, i * 1.25 FROM generate_series(1, 5000) i;
";

/// A file name the old scripts would have written a minute ago.
fn file_name() -> String {
    format!("full_backup_{}.dump.gz", (chrono::Utc::now() - chrono::Duration::minutes(1)).format("%Y%m%d_%H%M%S"))
}

/// `pg_dump -Fc … | gzip > <dir>/<name>`, as the old scripts ran it.
fn legacy_dump(cluster: &PgCluster, db: &str, dir: &Path, name: &str) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let s = cluster.superuser_settings(db);
    let out = dir.join(name);
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"set -e; "$PG_DUMP" -Fc -h "$H" -p "$P" -U "$U" "$D" | gzip > "$OUT""#)
        .env("PG_DUMP", cluster.bindir().join("pg_dump"))
        .env("H", &s.host)
        .env("P", s.port.to_string())
        .env("U", &s.user)
        .env("D", db)
        .env("OUT", &out)
        .env("PGPASSWORD", s.password.as_ref().unwrap().expose())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn url(s: &DbSettings) -> String {
    format!("postgres://{}:{}@{}:{}/{}?sslmode={}", s.user, s.password.as_ref().unwrap().expose(), s.host, s.port, s.dbname, s.sslmode.as_str())
}

fn pgkeep(s: &DbSettings, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.arg("--db").arg(url(s)).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k.starts_with("AWS_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    if let Some(ca) = &s.sslrootcert {
        cmd.env("PGSSLROOTCERT", ca);
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn out(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn check<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no {name} check: {json:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_archive_passes_every_check_locally_and_in_garage() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("vl_good").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let s = cluster.superuser_settings(&db);
    let repo = tempfile::tempdir().unwrap();
    let name = file_name();
    let bytes = legacy_dump(cluster, &db, repo.path(), &name);
    let repo_s = repo.path().to_str().unwrap();

    // `list` without --legacy points at the archive.
    let o = pgkeep(&s, &["--repo", repo_s, "list"], &[]);
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("1 legacy archive(s)") && text.contains("pgkeep list --legacy"), "{text}");

    // Local: every check, with --deep row counts and --compare-production.
    let o = pgkeep(&s, &["--repo", repo_s, "verify", &name, "--deep", "--compare-production", "--critical-tables", "customers,sales.orders", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["passed"], true, "{json:#}");
    assert_eq!(check(&json, "file-integrity")["status"], "pass");
    assert!(check(&json, "file-integrity")["summary"].as_str().unwrap().contains("CRC and length match"), "{json:#}");
    assert!(check(&json, "format")["summary"].as_str().unwrap().contains("pg_dump custom format"), "{json:#}");
    assert!(check(&json, "critical-tables")["summary"].as_str().unwrap().contains("public.customers (300 rows)"), "{json:#}");
    let deep = check(&json, "completeness");
    assert_eq!(deep["status"], "pass", "{json:#}");
    assert!(deep["summary"].as_str().unwrap().contains("5300 rows"), "{json:#}");
    let details: Vec<&str> = deep["details"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(details.contains(&"table sales.orders: 5000 rows") && details.contains(&"table public.customers: 300 rows"), "{details:?}");
    assert_eq!(check(&json, "production")["status"], "pass", "{json:#}");
    assert_eq!(check(&json, "metadata")["status"], "pass", "{json:#}");
    let scratch = json["scratch_database"].as_str().unwrap();
    let c = cluster.client("postgres").await;
    let left: i64 = c.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&scratch]).await.unwrap().get(0);
    assert_eq!(left, 0, "scratch database dropped");

    // The bare id (no pgkeep backup has it) names the archive too.
    let id = name.trim_end_matches(".dump.gz");
    let o = pgkeep(&s, &["--repo", repo_s, "verify", id], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS format"), "{}", out(&o));

    // Production drifted beyond the tolerance: named, exit 3.
    cluster.execute(&db, "DELETE FROM sales.orders WHERE id > 1000").await;
    let o = pgkeep(&s, &["--repo", repo_s, "verify", &name, "--compare-production"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL production: table sales.orders: 1000 rows live, 5000 in the backup"), "{}", out(&o));

    // Garage only: the same archive under a prefix, found by file name.
    let garage = Garage::shared();
    let bucket = garage.unique_bucket("vlgood");
    let s3 = S3Storage::connect(garage.settings(&bucket, "prod")).await.unwrap();
    s3.put(&format!("backups/{name}"), Bytes::from(bytes), PutOptions::default()).await.unwrap();
    let endpoint = garage.endpoint();
    let env = [
        ("S3_BUCKET", bucket.as_str()),
        ("S3_PREFIX", "prod"),
        ("S3_ENDPOINT", endpoint.as_str()),
        ("S3_REGION", garage.region()),
        ("S3_FORCE_PATH_STYLE", "true"),
        ("S3_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", garage.access_key()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_key()),
    ];
    let o = pgkeep(&s, &["verify", &name, "--critical-tables", "customers"], &env);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("PASS file-integrity s3://{bucket}/prod")), "{text}");
    assert!(text.contains("PASS format") && text.contains("PASS critical-tables"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_archives_and_missing_tables_fail_naming_the_check() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("vl_bad").await;
    cluster.execute(&db, SAMPLE_SQL).await;
    let s = cluster.superuser_settings(&db);
    let repo = tempfile::tempdir().unwrap();
    let name = file_name();
    let good = legacy_dump(cluster, &db, repo.path(), &name);
    let repo_s = repo.path().to_str().unwrap();
    let verify = |args: &[&str]| {
        let mut all = vec!["--repo", repo_s, "verify", &name];
        all.extend_from_slice(args);
        pgkeep(&s, &all, &[])
    };

    // A missing critical table and an empty one: critical-tables fails, naming both.
    let o = verify(&["--critical-tables", "customers,no_such_table,empty_one"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("FAIL critical-tables"), "{text}");
    assert!(text.contains(&format!("critical table public.no_such_table is not in legacy archive {repo_s}/{name}")), "{text}");
    assert!(text.contains("critical table public.empty_one is empty"), "{text}");
    assert!(text.contains("PASS file-integrity") && text.contains("PASS format"), "{text}");

    // One byte flipped in the gzip CRC: file-integrity fails on the checksum, naming the file.
    let mut flipped = good.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x40;
    std::fs::write(repo.path().join(&name), &flipped).unwrap();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("FAIL file-integrity")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&name) && line.contains("checksum"), "{line}");
    assert!(text.contains("SKIP format"), "{text}");

    // Truncated: file-integrity fails.
    std::fs::write(repo.path().join(&name), &good[..good.len() / 2]).unwrap();
    let o = verify(&["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fi = check(&json, "file-integrity");
    assert_eq!(fi["status"], "fail");
    assert!(fi["problems"][0].as_str().unwrap().contains(&name), "{json:#}");

    // Not a dump at all inside valid gzip: format fails.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, b"this is not a pg_dump archive").unwrap();
    std::fs::write(repo.path().join(&name), enc.finish().unwrap()).unwrap();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL format"), "{}", out(&o));

    // A name that is nowhere: one error line, exit 1.
    let o = pgkeep(&s, &["--repo", repo_s, "verify", "full_backup_20200101_000000.dump.gz"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("legacy archive full_backup_20200101_000000.dump.gz not found"), "{}", out(&o));
}
