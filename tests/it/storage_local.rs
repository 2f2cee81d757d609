//! The local filesystem backend against the shared storage contract, through
//! `storage::open` (so with the retry wrapper) and directly, plus the errors
//! a user meets with a bad repository directory.

use crate::harness;

use std::time::Duration;

use bytes::Bytes;
use harness::storage_conformance::{conformance, pseudo_random, sha256};
use pgkeep::ErrorKind;
use pgkeep::config::RepoSpec;
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::{PutOptions, Storage};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn local_backend_meets_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let storage = pgkeep::storage::open(&RepoSpec::Local(dir.path().join("repo"))).await.unwrap();
    conformance(storage.as_ref()).await;
    // Nothing but the objects themselves is left on disk.
    let leftovers = LocalStorage::new(dir.path().join("repo")).clean_incomplete("", Duration::ZERO).await.unwrap();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn large_object_streams_in_uneven_writes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let data = Bytes::from(pseudo_random(20 << 20, 3));
    let mut w = storage.writer("big/object", PutOptions::default()).await.unwrap();
    let mut at = 0;
    for size in [1usize, 65_537, 3 << 20, 7].iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        w.write(data.slice(at..end)).await.unwrap();
        at = end;
    }
    assert_eq!(w.finish().await.unwrap().size, data.len() as u64);
    let mut r = storage.reader("big/object", None).await.unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(sha256(&back), sha256(&data));
}

#[tokio::test]
async fn repository_under_a_regular_file_is_a_clear_error() {
    // Tests run as root, where permissions do not stop writes; a path under
    // a regular file fails for everyone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let root = file.join("repo");
    let storage = LocalStorage::new(&root);

    let err = storage.check_writable().await.unwrap_err();
    assert!(err.user_line().contains(&root.display().to_string()), "message names the directory: {}", err.user_line());
    assert!(!err.is_retryable());

    let err = storage.put("a/b", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap_err();
    assert!(err.user_line().contains(&file.display().to_string()), "message names the path: {}", err.user_line());
    assert_ne!(err.kind(), ErrorKind::Internal);
}
