//! Backups into a local repository and real Garage at once, and a store that
//! fails in the middle of a backup (through the fault proxy): the backup
//! completes in the other repository and fails loudly.

use crate::harness;

use std::sync::Arc;

use harness::backup_check::{read_back, settings};
use harness::fault_proxy::{Fault, FaultProxy, Matcher};
use harness::garage::Garage;
use harness::postgres::PgCluster;
use pgkeep::commands::backup::{self, BackupOptions};
use pgkeep::config::RepoSpec;
use pgkeep::repo::catalog::{self, CatalogEntry};
use pgkeep::storage::Storage;
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::s3::S3Storage;

async fn sample_db(cluster: &PgCluster, label: &str) -> String {
    let db = cluster.fresh_db(label).await;
    // ~40 MB of poorly compressible text, so packs need multipart uploads.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_goes_to_local_and_garage_at_once() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let db = sample_db(cluster, "bk_s3").await;
    let bucket = garage.unique_bucket("bks3");
    let local = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(local.path().into()), RepoSpec::S3(garage.settings(&bucket, "prod/db"))]);
    let report = backup::run(&s, &BackupOptions::default()).await.unwrap();
    assert_eq!(report.repositories.len(), 2);

    let s3: Arc<dyn Storage> = Arc::new(S3Storage::connect(garage.settings(&bucket, "prod/db")).await.unwrap());
    let local_storage = LocalStorage::new(local.path());
    for storage in [s3.as_ref(), &local_storage as &dyn Storage] {
        let listed = catalog::list_backups(storage).await.unwrap();
        match &listed[..] {
            [CatalogEntry::Valid(m)] => assert_eq!(**m, report.manifest),
            other => panic!("expected one valid backup in {}, got {other:?}", storage.location()),
        }
        let rows = read_back(storage, &report.manifest).await;
        assert_eq!(rows.len(), report.manifest.tables.len());
    }
    assert!(report.manifest.objects.iter().any(|o| o.size > 5 << 20), "at least one multipart pack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_store_mid_backup_leaves_nothing_there_but_the_local_copy_completes() {
    let cluster = PgCluster::shared();
    let garage = Garage::shared();
    let db = sample_db(cluster, "bk_s3_fail").await;
    let bucket = garage.unique_bucket("bks3fail");
    let proxy = FaultProxy::start(garage.s3_addr()).await;
    let mut s3 = garage.settings(&bucket, "");
    s3.endpoint = Some(proxy.endpoint());
    s3.max_attempts = 2;
    let local = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(local.path().into()), RepoSpec::S3(s3.clone())]);

    // Every part upload fails: the store breaks once data is flowing. The
    // backup completes in the local repository and fails, naming the bucket.
    let fired = proxy.inject(Fault::Status(500), 10_000, Matcher::any().method("PUT").query("partNumber"));
    let err = backup::run(&s, &BackupOptions::default()).await.unwrap_err();
    assert!(fired.fired() > 0, "the fault must have been hit");
    let line = err.user_line();
    assert!(line.contains("backup full_backup_") && line.contains("failed in 1 of 2 repositories") && line.contains(&bucket), "{line}");
    assert!(line.contains(&format!("complete and listed in {}", local.path().display())), "{line}");

    proxy.clear();
    let direct: Arc<dyn Storage> = Arc::new(S3Storage::connect(garage.settings(&bucket, "")).await.unwrap());
    assert!(catalog::list_backups(direct.as_ref()).await.unwrap().is_empty());
    assert!(direct.list("backups/").await.unwrap().is_empty(), "the partial S3 copy is removed");
    let local_storage = LocalStorage::new(local.path());
    let listed = catalog::list_backups(&local_storage).await.unwrap();
    let [CatalogEntry::Valid(m)] = &listed[..] else { panic!("one valid local backup: {listed:?}") };
    assert_eq!(read_back(&local_storage, m).await.len(), m.tables.len());
    let uploads = garage.client().await.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "multipart uploads must be aborted: {:?}", uploads.uploads());

    let report = backup::run(&s, &BackupOptions::default()).await.unwrap();
    let listed = catalog::list_backups(direct.as_ref()).await.unwrap();
    assert!(matches!(&listed[..], [CatalogEntry::Valid(m)] if m.backup_id == report.manifest.backup_id));
}
