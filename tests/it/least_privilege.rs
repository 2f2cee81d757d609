//! The verify role of docs/OPERATIONS.md: `verify --deep` runs as a
//! non-superuser (LOGIN, CREATEDB, member of the role that owns the backed
//! up objects), restoring into a scratch database it creates and drops;
//! plain `verify` needs no database privilege at all.

use crate::harness;

use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::commands::verify::{self, VerifyOptions};
use pgkeep::config::{RepoSpec, Secret};
use pgkeep::restore::source::BackupSelector;
use pgkeep::verify::{Check, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_deep_runs_as_the_documented_non_superuser_verify_role() {
    let cluster = PgCluster::shared();
    let n = std::process::id();
    let owner = format!("app_owner_{n}");
    let verifier = format!("pgkeep_verify_{n}");
    let nobody = format!("pgkeep_nobody_{n}");
    let db = cluster.fresh_db("least_priv").await;
    // The application's objects belong to a NOLOGIN owner role, as in production.
    cluster.execute("postgres", &format!("CREATE ROLE {owner} NOLOGIN; ALTER DATABASE {db} OWNER TO {owner}")).await;
    cluster
        .execute(
            &db,
            &format!(
                "ALTER SCHEMA public OWNER TO {owner};
                 SET ROLE {owner};
                 CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
                 CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric);
                 INSERT INTO users SELECT i, 'u' || i FROM generate_series(1, 500) i;
                 INSERT INTO orders SELECT i, i % 500 + 1, i * 1.5 FROM generate_series(1, 2000) i;"
            ),
        )
        .await;
    let repo = tempfile::tempdir().unwrap();
    let admin = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let m = backup::run(&admin, &BackupOptions::default()).await.unwrap().manifest;

    // docs/OPERATIONS.md, "The verify role".
    cluster.create_role(&verifier, "verify-pass", "CREATEDB").await;
    cluster.execute("postgres", &format!("GRANT {owner} TO {verifier}")).await;
    let mut as_verifier = admin.clone();
    as_verifier.db.user = verifier.clone();
    as_verifier.db.password = Some(Secret::new("verify-pass"));
    let opts = VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), deep: true, ..Default::default() };
    let v = verify::run(&as_verifier, &opts).await.unwrap();
    assert!(v.passed, "{}", v.render());
    assert_eq!(v.checks.iter().find(|c| c.check == Check::Completeness).unwrap().status, Status::Pass, "{}", v.render());

    // Without --deep, verify connects to no database: a role with no privilege at all will do.
    cluster.create_role(&nobody, "nobody-pass", "").await;
    let mut as_nobody = admin.clone();
    as_nobody.db.user = nobody;
    as_nobody.db.password = Some(Secret::new("nobody-pass"));
    let shallow = VerifyOptions { selector: BackupSelector::Id(m.backup_id.clone()), ..Default::default() };
    assert!(verify::run(&as_nobody, &shallow).await.unwrap().passed);
}
