//! Running `pgkeep stream` in tests: in-process (a task stopped through its
//! shutdown future) or as the `pgkeep` binary with the seed's environment
//! variables, and waiting for its slot.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgkeep::config::Settings;
use pgkeep::stream::{StreamOptions, StreamReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::postgres::PgCluster;

/// How long a stream may take to start or stop.
pub const WAIT: Duration = Duration::from_secs(60);

/// An in-process `pgkeep::stream::run`.
pub struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<pgkeep::Result<StreamReport>>,
}

/// Start `stream::run` with `opts` in a task.
pub fn start(settings: &Settings, opts: StreamOptions) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let settings = settings.clone();
    let task = tokio::spawn(async move {
        pgkeep::stream::run(&settings, &opts, async {
            let _ = rx.await;
        })
        .await
    });
    Running { stop, task }
}

/// Resolve its shutdown future and wait for its report (panics on an error).
pub async fn stop(running: Running) -> StreamReport {
    let _ = running.stop.send(());
    tokio::time::timeout(WAIT, running.task).await.expect("stream stops").unwrap().unwrap_or_else(|e| panic!("stream: {}", e.user_line()))
}

/// SQL condition: the slot's creation finished. While `CREATE_REPLICATION_SLOT`
/// waits for the transactions running on the cluster (other tests' too), the
/// slot is already listed, and active, with no `confirmed_flush_lsn`: a
/// transaction committed then lies before its consistent point and is never
/// decoded. Once it is set, every later commit is.
pub const SLOT_READY: &str = "confirmed_flush_lsn IS NOT NULL";

/// Wait until slot `slot` exists, created (see [`SLOT_READY`]), and, with
/// `active`, is in use or not.
pub async fn wait_for_slot(client: &tokio_postgres::Client, slot: &str, active: Option<bool>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let sql = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND {SLOT_READY} AND ($2::bool IS NULL OR active = $2)");
    loop {
        let n: i64 = client.query_one(&sql, &[&slot, &active]).await.unwrap().get(0);
        if n == 1 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot {slot} never reached active={active:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `pgkeep` binary, configured only through the seed's variables
/// (`DB_*`, `BACKUP_DIR`) for database `db` of `cluster` and repository `repo`.
pub fn pgkeep_cli(cluster: &PgCluster, db: &str, repo: &Path) -> Command {
    let s = cluster.superuser_settings(db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("DB_") || k.starts_with("S3_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("DB_HOST", &s.host)
        .env("DB_PORT", s.port.to_string())
        .env("DB_USER", &s.user)
        .env("DB_PASSWORD", s.password.as_ref().unwrap().expose())
        .env("DB_NAME", db)
        .env("BACKUP_DIR", repo);
    cmd
}
