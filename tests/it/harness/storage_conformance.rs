//! One behavioural contract for every [`Storage`] backend, run by
//! `tests/storage_local.rs` and `tests/storage_s3.rs` against each of them,
//! plus small helpers those tests share (deterministic data, SHA-256).

use bytes::Bytes;
use pgkeep::ErrorKind;
use pgkeep::storage::{ObjectMeta, PutOptions, Storage};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// Deterministic pseudo-random bytes (xorshift64), cheap enough for 100 MiB.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

/// Run the shared contract against an empty `storage`.
pub async fn conformance(storage: &dyn Storage) {
    let none = PutOptions::default;
    let where_ = storage.location();

    // Put and get, with a key of many segments.
    let deep = "conf/a/b/c/d/e/f/g/h/i/object.bin";
    let data = Bytes::from(pseudo_random(100_003, 7));
    let meta = storage.put(deep, data.clone(), none()).await.expect("put deep key");
    assert_eq!((meta.key.as_str(), meta.size), (deep, 100_003));
    assert_eq!(storage.get(deep, None).await.unwrap(), data, "{where_}: deep key round-trips");

    // Ranges: inside, running past the end (short read), empty, past the end.
    storage.put("conf/x/1", Bytes::from_static(b"hello world"), none()).await.unwrap();
    assert_eq!(&storage.get("conf/x/1", Some(6..11)).await.unwrap()[..], b"world");
    assert_eq!(&storage.get("conf/x/1", Some(0..1)).await.unwrap()[..], b"h");
    assert_eq!(&storage.get("conf/x/1", Some(6..100)).await.unwrap()[..], b"world");
    assert!(storage.get("conf/x/1", Some(5..5)).await.unwrap().is_empty());
    assert!(storage.get("conf/x/1", Some(20..30)).await.unwrap().is_empty());
    assert_eq!(storage.get(deep, Some(65_536..65_546)).await.unwrap(), data.slice(65_536..65_546), "{where_}: range in a larger object");

    // Streaming reader.
    let mut reader = storage.reader(deep, Some(1..100_000)).await.unwrap();
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, data[1..100_000]);

    // Head.
    let head = storage.head("conf/x/1").await.unwrap().expect("head of existing object");
    assert_eq!((head.key.as_str(), head.size), ("conf/x/1", 11));
    assert!(head.modified.is_some());
    assert!(storage.head("conf/x/missing").await.unwrap().is_none());

    // Empty object and a writer fed in pieces.
    storage.put("conf/empty", Bytes::new(), none()).await.unwrap();
    assert!(storage.get("conf/empty", None).await.unwrap().is_empty());
    assert_eq!(storage.head("conf/empty").await.unwrap().unwrap().size, 0);
    let mut w = storage.writer("conf/x/2", none()).await.unwrap();
    for piece in [&b"ab"[..], b"", b"cde", b"f"] {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap().size, 6);
    assert_eq!(&storage.get("conf/x/2", None).await.unwrap()[..], b"abcdef");
    storage.put("conf/x10", Bytes::from_static(b"10"), none()).await.unwrap();
    storage.put("conf/y/3", Bytes::from_static(b"3"), none()).await.unwrap();

    // Listing: sorted, relative, prefix is a plain string prefix.
    let all = storage.list("").await.unwrap();
    assert_eq!(keys(&all), vec![deep, "conf/empty", "conf/x/1", "conf/x/2", "conf/x10", "conf/y/3"], "{where_}: full listing");
    assert_eq!(keys(&storage.list("conf/x/").await.unwrap()), vec!["conf/x/1", "conf/x/2"]);
    assert_eq!(keys(&storage.list("conf/x").await.unwrap()), vec!["conf/x/1", "conf/x/2", "conf/x10"]);
    assert!(storage.list("nothing/").await.unwrap().is_empty());
    let sizes: Vec<u64> = storage.list("conf/x/").await.unwrap().iter().map(|m| m.size).collect();
    assert_eq!(sizes, vec![11, 6]);

    // Overwrite replaces content and size.
    storage.put("conf/x/1", Bytes::from_static(b"bye"), none()).await.unwrap();
    assert_eq!(&storage.get("conf/x/1", None).await.unwrap()[..], b"bye");
    assert_eq!(storage.head("conf/x/1").await.unwrap().unwrap().size, 3);

    // Aborted and dropped writers leave nothing.
    let mut w = storage.writer("conf/aborted", none()).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await.unwrap();
    let mut w = storage.writer("conf/dropped", none()).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(w);
    assert!(storage.head("conf/aborted").await.unwrap().is_none());
    assert!(storage.head("conf/dropped").await.unwrap().is_none());

    // Delete: idempotent, then reads fail with NotFound naming the key.
    storage.delete("conf/x/1").await.unwrap();
    storage.delete("conf/x/1").await.unwrap();
    storage.delete("conf/never/was").await.unwrap();
    assert!(storage.head("conf/x/1").await.unwrap().is_none());
    let err = storage.get("conf/x/1", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.user_line().contains("conf/x/1"), "{}", err.user_line());
    assert_eq!(keys(&storage.list("conf/").await.unwrap()), vec![deep, "conf/empty", "conf/x/2", "conf/x10", "conf/y/3"]);

    // Keys that could escape the repository are refused.
    for bad in ["../escape", "/abs", "a//b", "dir/"] {
        assert!(storage.put(bad, Bytes::from_static(b"x"), none()).await.is_err(), "{bad:?} accepted");
        assert!(storage.get(bad, None).await.is_err(), "{bad:?} readable");
    }

    // The location is writable.
    storage.check_writable().await.expect("check_writable");
    assert_eq!(storage.list("").await.unwrap().len(), 5, "{where_}: the probe leaves nothing");
}
