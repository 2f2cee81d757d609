//! A database for point-in-time tests on the shared cluster, with `pgkeep
//! stream` on its own slot, full backups, restores into new databases, and
//! the comparison of a restore with the source: every table's rows (a hash
//! of the sorted rows) and the schema (columns, types, defaults, identity,
//! indexes, constraints) of schema `public`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::restore::{self, RestoreOptions};
use pgkeep::config::{RepoSpec, Settings};
use pgkeep::replay::RecoveryTarget;
use pgkeep::restore::source::BackupSelector;
use pgkeep::stream::StreamOptions;

use super::backup_check::settings;
use super::postgres::PgCluster;
use super::streaming;

/// The database as it is: every table's rows, and its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub rows: BTreeMap<String, String>,
    pub schema: Vec<String>,
}

pub async fn state(client: &tokio_postgres::Client) -> State {
    let tables: Vec<String> = client
        .query("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut rows = BTreeMap::new();
    for t in tables {
        let sql = format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t");
        rows.insert(t, client.query_one(&sql, &[]).await.unwrap().get(0));
    }
    let schema = client
        .query(
            "SELECT format('%s.%s %s %s null=%s default=%s identity=%s', table_name, column_name, data_type,
                           character_maximum_length, is_nullable, column_default, is_identity)
               FROM information_schema.columns WHERE table_schema = 'public'
             UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
                        WHERE connamespace = 'public'::regnamespace
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    State { rows, schema }
}

/// The time right after the last commit, and the state then.
pub async fn mark(client: &tokio_postgres::Client) -> (chrono::DateTime<chrono::Utc>, State) {
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    let s = state(client).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    (t, s)
}

pub struct Db {
    pub cluster: &'static PgCluster,
    pub name: String,
    _dir: tempfile::TempDir,
    pub settings: Settings,
    pub client: tokio_postgres::Client,
}

impl Db {
    pub async fn new(prefix: &str, schema: &str) -> Db {
        let cluster = PgCluster::shared();
        let name = cluster.fresh_db(prefix).await;
        cluster.execute(&name, schema).await;
        let dir = tempfile::tempdir().unwrap();
        let repo: PathBuf = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let settings = settings(cluster.superuser_settings(&name), vec![RepoSpec::Local(repo)]);
        let client = cluster.client(&name).await;
        Db { cluster, name, _dir: dir, settings, client }
    }

    pub fn stream(&self) -> streaming::Running {
        streaming::start(&self.settings, StreamOptions { segment_seconds: 1, ..StreamOptions::new(&self.name, &self.name) })
    }

    /// `stream` that takes table images where the archive cannot reproduce
    /// a table (as the CLI's does), checking publications every second.
    pub fn stream_with_images(&self) -> streaming::Running {
        let auto_backup = pgkeep::stream::autobackup::AutoBackupOptions { on_schema_change: true, ..Default::default() };
        streaming::start(
            &self.settings,
            StreamOptions { segment_seconds: 1, publication_check: Duration::from_secs(1), auto_backup, ..StreamOptions::new(&self.name, &self.name) },
        )
    }

    /// The local repository.
    pub fn repo(&self) -> PathBuf {
        self._dir.path().join("repo")
    }

    /// Ids of the backups of `kind` (`full-backup`, `table-image`, …, the
    /// manifest's `kind`) in the repository, with their manifests.
    pub fn manifests(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.repo().join("backups")) else { return out };
        for d in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(d.path().join("manifest.json")) else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            // The envelope keeps the manifest under `body` (docs/FORMAT.md §3).
            let m = v["body"].clone();
            if m["kind"] == kind {
                out.push(m);
            }
        }
        out
    }

    /// Wait until a table image of `schema.name` consistent after `after`
    /// (an LSN from `pg_current_wal_lsn()`) is complete; its manifest.
    pub async fn wait_image(&self, table: &str, after: pgkeep::repo::layout::Lsn) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let found = self.manifests("table-image").into_iter().find(|m| {
                let name = format!("{}.{}", m["image"]["schema"].as_str().unwrap_or(""), m["image"]["name"].as_str().unwrap_or(""));
                let at: pgkeep::repo::layout::Lsn = serde_json::from_value(m["snapshot"]["consistent_lsn"].clone()).unwrap();
                name == table && at > after
            });
            if let Some(m) = found {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "no table image of {table} after {after}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's current WAL position.
    pub async fn lsn(&self) -> pgkeep::repo::layout::Lsn {
        let text: String = self.client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
        text.parse().unwrap()
    }

    pub async fn backup(&self) -> String {
        let r = backup::run(&self.settings, &BackupOptions::default()).await.unwrap_or_else(|e| panic!("backup: {}", e.user_line()));
        r.manifest.backup_id.to_string()
    }

    pub async fn run(&self, sql: &str) {
        self.client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn restore(&self, suffix: &str, target: RecoveryTarget, accept: bool) -> (String, pgkeep::Result<restore::RestoreReport>) {
        let name = format!("{}_{suffix}", self.name);
        let opts = RestoreOptions {
            target_db: Some(name.clone()),
            yes: true,
            point_in_time: Some(target),
            accept_inexact: accept,
            ..RestoreOptions::new(BackupSelector::Latest)
        };
        (name.clone(), restore::run(&self.settings, &opts).await)
    }

    /// Restore to `target`, which must succeed, and compare with `want`.
    pub async fn restore_exact(&self, suffix: &str, target: RecoveryTarget, want: &State) -> restore::RestoreReport {
        let (name, r) = self.restore(suffix, target, false).await;
        let report = r.unwrap_or_else(|e| panic!("restore {suffix}: {}", e.user_line()));
        let got = state(&self.cluster.client(&name).await).await;
        assert_eq!(got.schema, want.schema, "schema at {suffix}");
        assert_eq!(got.rows, want.rows, "rows at {suffix}");
        report
    }
}
