//! No secret ever leaves pgkeep in the clear: a full backup → verify --deep
//! → restore → list run of the binary, with a database password, an S3
//! secret key (in the config file), Slack and webhook URLs carrying tokens
//! (both failing to deliver, so their errors are logged) and an encryption
//! passphrase, at debug log level. Every byte of stdout, stderr, `pgkeep
//! config` (text and JSON), the per-run log files, the manifests, audit
//! records and packs in the local repository and every object in S3 is
//! searched for each secret.

use crate::harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::storage::Storage;
use pgkeep::storage::s3::S3Storage;

const DB_PASSWORD: &str = "Db-Pass-3f9c1e77";
const PASSPHRASE: &str = "Passphrase-Secret-42aa9d";
const SLACK_TOKEN: &str = "SlackToken5ec7b1";
const WEBHOOK_TOKEN: &str = "WebhookToken0a1b2c";

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k.starts_with("AWS_") || k == "DATABASE_URL" || k == "BACKUP_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", "/nonexistent-home").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgkeep")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_output_log_config_or_stored_object() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let role = format!("secret_owner_{}", std::process::id());
    cluster.create_role(&role, DB_PASSWORD, "SUPERUSER").await;
    let db = cluster.fresh_db("secrets").await;
    cluster.execute(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 500) i;").await;
    let bucket = garage.unique_bucket("secrets");
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let config = work.path().join("pgkeep.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nbucket = '{bucket}'\nprefix = 'sec'\nendpoint = '{}'\nregion = '{}'\nforce_path_style = true\naccess_key_id = '{}'\nsecret_access_key = '{}'\n",
            garage.endpoint(),
            garage.region(),
            garage.access_key(),
            garage.secret_key()
        ),
    )
    .unwrap();
    let s3_secret = garage.secret_key().to_string();
    let secrets = [DB_PASSWORD, PASSPHRASE, SLACK_TOKEN, WEBHOOK_TOKEN, s3_secret.as_str()];

    let settings = cluster.superuser_settings(&db);
    let env: Vec<(String, String)> = [
        ("DB_HOST", settings.host.clone()),
        ("DB_PORT", settings.port.to_string()),
        ("DB_USER", role.clone()),
        ("DB_PASSWORD", DB_PASSWORD.to_string()),
        ("DB_NAME", db.clone()),
        ("DB_SSLMODE", "disable".to_string()),
        ("BACKUP_DIR", repo.display().to_string()),
        ("PGKEEP_CONFIG", config.display().to_string()),
        ("PGKEEP_PASSPHRASE", PASSPHRASE.to_string()),
        ("SLACK_WEBHOOK_URL", format!("https://127.0.0.1:1/services/T0/B0/{SLACK_TOKEN}")),
        ("NOTIFY_WEBHOOK_URL", format!("http://127.0.0.1:1/hook/{WEBHOOK_TOKEN}")),
        ("NOTIFY_ON_SUCCESS", "true".to_string()),
        ("NOTIFY_TIMEOUT", "2s".to_string()),
        ("EXPIRE_AFTER_BACKUP", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let target = format!("{db}_restored");
    let steps: [&[&str]; 7] = [
        &["-v", "config"],
        &["config", "--json"],
        &["-v", "backup"],
        &["-v", "verify", "latest", "--deep"],
        &["-v", "restore", "latest", "--target-db", &target, "--yes"],
        &["list"],
        &["list", "--json"],
    ];
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for args in steps {
        let out = run(args, &env);
        assert!(out.status.success(), "pgkeep {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        seen.push((format!("stdout of {args:?}"), out.stdout));
        seen.push((format!("stderr of {args:?}"), out.stderr));
    }
    // The run really was encrypted, and notifications really were attempted.
    let stderr_all: String = seen.iter().filter(|(w, _)| w.starts_with("stderr")).map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    assert!(stderr_all.to_lowercase().contains("notif"), "no notification attempt logged:\n{stderr_all}");

    for f in files(&repo) {
        seen.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    let s3 = S3Storage::connect(garage.settings(&bucket, "sec")).await.unwrap();
    let objects = s3.list("").await.unwrap();
    assert!(objects.iter().any(|o| o.key.ends_with("manifest.json")), "{objects:?}");
    for o in objects {
        seen.push((format!("s3://{bucket}/sec/{}", o.key), s3.get(&o.key, None).await.unwrap().to_vec()));
    }
    let manifest = seen.iter().find(|(w, _)| w.ends_with("manifest.json")).expect("a manifest");
    assert!(String::from_utf8_lossy(&manifest.1).contains("\"mode\":\"passphrase\""), "the backup is encrypted");

    for (what, bytes) in &seen {
        for secret in &secrets {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret {:?}… found in {what}", &secret[..4]);
        }
    }
}
