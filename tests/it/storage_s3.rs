//! The S3 backend against a real Garage server: the shared storage contract,
//! large multipart objects, long listings, and failures injected by the
//! fault proxy (5xx, stalls, truncated bodies, failing parts), plus the
//! errors a user meets with a missing bucket, a wrong secret or an
//! unreachable endpoint. Each test uses its own bucket on one shared server.

use crate::harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use harness::fault_proxy::{Fault, FaultProxy, Matcher};
use harness::garage::{Garage, TEST_PART_SIZE};
use harness::storage_conformance::{conformance, pseudo_random, sha256};
use pgkeep::ErrorKind;
use pgkeep::config::RepoSpec;
use pgkeep::storage::s3::{S3Settings, S3Storage};
use pgkeep::storage::{PutOptions, Storage, read_error};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

const MIB: usize = 1 << 20;

fn garage() -> &'static Garage {
    Garage::shared()
}

async fn s3(settings: S3Settings) -> S3Storage {
    S3Storage::connect(settings).await.expect("connect")
}

/// `settings` pointed at `proxy` instead of Garage.
fn via(proxy: &FaultProxy, settings: S3Settings) -> S3Settings {
    S3Settings { endpoint: Some(proxy.endpoint()), ..settings }
}

/// Multipart uploads in progress in `bucket`, as `(key, upload id)`.
async fn multipart_uploads(bucket: &str) -> Vec<(String, String)> {
    let out = garage().client().await.list_multipart_uploads().bucket(bucket).send().await.unwrap();
    out.uploads().iter().map(|u| (u.key().unwrap_or_default().to_string(), u.upload_id().unwrap_or_default().to_string())).collect()
}

/// Write `data` through a writer in uneven pieces; the writer's result.
async fn write_uneven(storage: &dyn Storage, key: &str, data: &Bytes, opts: PutOptions) -> pgkeep::Result<u64> {
    let mut w = storage.writer(key, opts).await?;
    let mut at = 0;
    for size in [1usize, 65_537, 3 * MIB + 5, 7, 9 * MIB + 1, 100_000].iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        w.write(data.slice(at..end)).await?;
        at = end;
    }
    Ok(w.finish().await?.size)
}

#[tokio::test]
async fn s3_backend_meets_the_storage_contract() {
    let bucket = garage().unique_bucket("contract");

    // With a prefix, directly.
    let storage = s3(garage().settings(&bucket, "repo/main")).await;
    assert_eq!(storage.location(), format!("s3://{bucket}/repo/main"));
    conformance(&storage).await;

    // A neighbouring prefix that shares a string prefix stays invisible.
    let neighbour = s3(garage().settings(&bucket, "repo/main-other")).await;
    neighbour.put("conf/x/1", Bytes::from_static(b"other"), PutOptions::default()).await.unwrap();
    assert_eq!(storage.list("").await.unwrap().len(), 5);
    assert!(storage.head("conf/x/1").await.unwrap().is_none());

    // Without a prefix, through `storage::open` (retry wrapper included).
    let bucket = garage().unique_bucket("contract-root");
    let opened = pgkeep::storage::open(&RepoSpec::S3(garage().settings(&bucket, ""))).await.unwrap();
    assert_eq!(opened.location(), format!("s3://{bucket}"));
    conformance(opened.as_ref()).await;
    let raw = garage().client().await.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(raw.key_count(), Some(5), "keys sit at the bucket root");
}

#[tokio::test]
async fn user_metadata_reaches_s3() {
    let bucket = garage().unique_bucket("metadata");
    let storage = s3(garage().settings(&bucket, "m")).await;
    let opts = PutOptions { metadata: vec![("pgkeep-checksum".into(), "abc123".into())] };
    storage.put("small", Bytes::from_static(b"x"), opts.clone()).await.unwrap();
    let big = Bytes::from(pseudo_random(2 * TEST_PART_SIZE + 10, 5));
    write_uneven(&storage, "big", &big, opts).await.unwrap();
    let client = garage().client().await;
    for key in ["m/small", "m/big"] {
        let head = client.head_object().bucket(&bucket).key(key).send().await.unwrap();
        let meta = head.metadata().cloned().unwrap_or_default();
        assert_eq!(meta.get("pgkeep-checksum").map(String::as_str), Some("abc123"), "{key}: {meta:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_round_trips_through_parallel_multipart() {
    let bucket = garage().unique_bucket("large");
    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let settings = via(&proxy, garage().settings(&bucket, "big"));
    let concurrency = settings.upload_concurrency;
    let storage = s3(settings).await;

    let data = Bytes::from(pseudo_random(110 * MIB + 12_345, 11));
    let size = write_uneven(&storage, "objects/large.bin", &data, PutOptions::default()).await.unwrap();
    assert_eq!(size, data.len() as u64);

    // Parts went up in parallel, never more than the configured concurrency.
    let parts = data.len().div_ceil(TEST_PART_SIZE);
    assert_eq!(proxy.count("partNumber="), parts, "one UploadPart per part: {:?}", proxy.log().len());
    let peak = proxy.max_in_flight();
    assert!((2..=concurrency).contains(&peak), "peak parallel requests {peak}, limit {concurrency}");
    assert!(multipart_uploads(&bucket).await.is_empty(), "upload completed");

    // Byte-exact read back, streamed into a hash.
    let head = storage.head("objects/large.bin").await.unwrap().unwrap();
    assert_eq!(head.size, data.len() as u64);
    let mut reader = storage.reader("objects/large.bin", None).await.unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total, data.len());
    assert_eq!(hex::encode(hasher.finalize()), sha256(&data));

    // Ranges across part boundaries.
    for range in [
        (TEST_PART_SIZE - 1_000) as u64..(TEST_PART_SIZE + 1_000) as u64,
        (2 * TEST_PART_SIZE - 10) as u64..(3 * TEST_PART_SIZE + 10) as u64,
        (data.len() - 100) as u64..data.len() as u64,
    ] {
        let got = storage.get("objects/large.bin", Some(range.clone())).await.unwrap();
        assert_eq!(got, data.slice(range.start as usize..range.end as usize), "range {range:?}");
    }
}

#[tokio::test]
async fn listing_returns_over_a_thousand_keys_sorted_and_relative() {
    let bucket = garage().unique_bucket("listing");
    let storage = s3(garage().settings(&bucket, "lst")).await;
    let mut expected: Vec<String> = (0..1_100).map(|i| format!("many/{:02}/{i}", i % 13)).collect();
    futures::stream::iter(expected.clone())
        .map(|key| {
            let storage = &storage;
            async move { storage.put(&key, Bytes::from(key.clone()), PutOptions::default()).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    // Outside the listed prefix, and outside the repository prefix.
    storage.put("many-not/x", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
    let other = s3(garage().settings(&bucket, "lst-other")).await;
    other.put("many/00/0", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();

    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let listed = s3(via(&proxy, garage().settings(&bucket, "lst"))).await.list("many/").await.unwrap();
    expected.sort();
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys.len(), 1_100);
    assert_eq!(keys, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(listed.iter().all(|m| m.size == m.key.len() as u64));
    assert!(proxy.count("list-type=2") >= 2, "listing used continuation pages: {:?}", proxy.log());
}

#[tokio::test]
async fn injected_server_errors_are_retried() {
    let bucket = garage().unique_bucket("retry5xx");
    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let storage = s3(via(&proxy, garage().settings(&bucket, "r"))).await;

    // PutObject.
    let put = proxy.inject(Fault::Status(503), 2, Matcher::any().method("PUT").no_query("partNumber"));
    storage.put("small", Bytes::from_static(b"small object"), PutOptions::default()).await.unwrap();
    assert_eq!(put.fired(), 2);

    // CreateMultipartUpload, UploadPart and CompleteMultipartUpload.
    let create = proxy.inject(Fault::Status(500), 1, Matcher::any().method("POST").query("uploads"));
    let parts = proxy.inject(Fault::Status(503), 3, Matcher::any().method("PUT").query("partNumber"));
    let complete = proxy.inject(Fault::Status(503), 1, Matcher::any().method("POST").query("uploadId"));
    let data = Bytes::from(pseudo_random(2 * TEST_PART_SIZE + 4_321, 21));
    write_uneven(&storage, "multi", &data, PutOptions::default()).await.unwrap();
    assert_eq!((create.fired(), parts.fired(), complete.fired()), (1, 3, 1));

    // GetObject, HeadObject, ListObjectsV2, DeleteObject.
    let get = proxy.inject(Fault::Status(503), 2, Matcher::any().method("GET").no_query("list-type"));
    assert_eq!(sha256(&storage.get("multi", None).await.unwrap()), sha256(&data));
    assert_eq!(get.fired(), 2);
    let head = proxy.inject(Fault::Status(500), 1, Matcher::any().method("HEAD"));
    assert_eq!(storage.head("small").await.unwrap().unwrap().size, 12);
    let list = proxy.inject(Fault::Status(503), 2, Matcher::any().query("list-type"));
    assert_eq!(storage.list("").await.unwrap().len(), 2);
    let delete = proxy.inject(Fault::Status(503), 1, Matcher::any().method("DELETE"));
    storage.delete("small").await.unwrap();
    assert_eq!((head.fired(), list.fired(), delete.fired()), (1, 2, 1));

    assert_eq!(proxy.faults(), 13);
    assert!(proxy.requests() > proxy.faults());
    assert!(storage.head("small").await.unwrap().is_none());
}

#[tokio::test]
async fn stalled_requests_are_cut_off_and_retried() {
    let bucket = garage().unique_bucket("stall");
    let direct = s3(garage().settings(&bucket, "s")).await;
    let data = Bytes::from(pseudo_random(300_000, 31));
    direct.put("obj", data.clone(), PutOptions::default()).await.unwrap();

    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let settings =
        S3Settings { request_timeout: Duration::from_millis(4_500), stall_timeout: Duration::from_secs(3), ..via(&proxy, garage().settings(&bucket, "s")) };
    let storage = s3(settings).await;

    let stall = proxy.inject(Fault::Stall, 1, Matcher::any().method("GET"));
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(20), storage.get("obj", None)).await.expect("a stalled GET must not hang").unwrap();
    let took = started.elapsed();
    assert_eq!(got, data);
    assert_eq!(stall.fired(), 1);
    assert!(took >= Duration::from_millis(1_400), "the stall was waited out ({took:?})");
    assert!(took < Duration::from_secs(10), "retried promptly ({took:?})");

    // Headers arrive, then the body stops: the reader gives up on it and resumes.
    let stall = proxy.inject(Fault::StallBody(100_000), 1, Matcher::any().method("GET"));
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(20), storage.get("obj", None)).await.expect("a stalled body must not hang").unwrap();
    let took = started.elapsed();
    assert_eq!(got, data);
    assert_eq!(stall.fired(), 1);
    assert!(took < Duration::from_secs(10), "resumed promptly ({took:?})");
    assert!(proxy.log().last().unwrap().ends_with("range=bytes=100000-299999"), "resumed from the stall: {:?}", proxy.log());

    let stall = proxy.inject(Fault::Stall, 1, Matcher::any().method("PUT"));
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), storage.put("obj2", data.clone(), PutOptions::default()))
        .await
        .expect("a stalled PUT must not hang")
        .unwrap();
    assert_eq!(stall.fired(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(direct.get("obj2", None).await.unwrap(), data);
}

#[tokio::test]
async fn truncated_bodies_are_resumed_exactly() {
    let bucket = garage().unique_bucket("truncate");
    let direct = s3(garage().settings(&bucket, "t")).await;
    let data = Bytes::from(pseudo_random(3 * MIB + 77, 41));
    direct.put("obj", data.clone(), PutOptions::default()).await.unwrap();

    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let storage = s3(via(&proxy, garage().settings(&bucket, "t"))).await;

    let cut = proxy.inject(Fault::Truncate(MIB), 2, Matcher::any().method("GET"));
    let got = storage.get("obj", None).await.unwrap();
    assert_eq!(cut.fired(), 2);
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), sha256(&data));
    let log = proxy.log();
    assert_eq!(proxy.count("GET "), 3, "one first GET and two resumes: {log:?}");
    let last = data.len() - 1;
    for offset in [MIB, 2 * MIB] {
        let resume = format!("range=bytes={offset}-{last}");
        assert!(log.iter().any(|l| l.ends_with(&resume)), "resumed at {offset}: {log:?}");
    }

    let cut = proxy.inject(Fault::Truncate(100), 1, Matcher::any().method("GET"));
    let got = storage.get("obj", Some(1_000..500_000)).await.unwrap();
    assert_eq!(cut.fired(), 1);
    assert_eq!(got, data.slice(1_000..500_000));
    assert!(proxy.log().last().unwrap().ends_with("range=bytes=1100-499999"), "{:?}", proxy.log());

    // An object replaced between the cut and the resume is an error, not a mix.
    let cut = proxy.inject(Fault::Truncate(1_000), 1, Matcher::any().method("GET"));
    let mut reader = storage.reader("obj", None).await.unwrap();
    let mut first = vec![0u8; 1_000];
    reader.read_exact(&mut first).await.unwrap();
    assert_eq!(first, data[..1_000]);
    direct.put("obj", Bytes::from(pseudo_random(3 * MIB, 42)), PutOptions::default()).await.unwrap();
    let mut rest = Vec::new();
    let io = reader.read_to_end(&mut rest).await.unwrap_err();
    let err = read_error(storage.location(), "obj", io);
    assert_eq!(cut.fired(), 1);
    assert_eq!(err.kind(), ErrorKind::Storage, "{err:?}");
    assert!(err.user_line().contains("changed") && err.user_line().contains("obj"), "{}", err.user_line());
}

#[tokio::test]
async fn nothing_is_visible_after_abort_drop_or_failed_parts() {
    let bucket = garage().unique_bucket("nothing");
    let storage = s3(garage().settings(&bucket, "n")).await;
    let data = Bytes::from(pseudo_random(2 * TEST_PART_SIZE + 1, 51));

    // Aborted after parts went up.
    let mut w = storage.writer("aborted", PutOptions::default()).await.unwrap();
    w.write(data.clone()).await.unwrap();
    assert_eq!(multipart_uploads(&bucket).await.len(), 1, "multipart upload started");
    w.abort().await.unwrap();
    assert!(storage.head("aborted").await.unwrap().is_none());
    assert!(multipart_uploads(&bucket).await.is_empty(), "abort removed the upload");

    // Dropped without finish: aborted in the background.
    let mut w = storage.writer("dropped", PutOptions::default()).await.unwrap();
    w.write(data.clone()).await.unwrap();
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !multipart_uploads(&bucket).await.is_empty() {
        assert!(Instant::now() < deadline, "dropped writer's upload was not aborted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(storage.head("dropped").await.unwrap().is_none());

    // Every UploadPart fails: an error, and the upload is aborted before it returns.
    let proxy = FaultProxy::start(garage().s3_addr()).await;
    let failing = proxy.inject(Fault::Status(500), usize::MAX, Matcher::any().method("PUT").query("partNumber"));
    let settings = S3Settings { max_attempts: 2, ..via(&proxy, garage().settings(&bucket, "n")) };
    let proxied = s3(settings).await;
    let err = write_uneven(&proxied, "failed", &data, PutOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageTransient, "{err:?}");
    assert!(err.user_line().contains("failed") && err.user_line().contains(&bucket), "{}", err.user_line());
    assert!(failing.fired() >= 2, "each part was tried twice at least once");
    assert!(storage.head("failed").await.unwrap().is_none());
    assert!(multipart_uploads(&bucket).await.is_empty(), "failed upload was aborted");
    assert!(storage.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn missing_bucket_is_not_found_naming_it() {
    let settings = garage().settings("pgkeep-no-such-bucket", "p");
    let storage = s3(settings).await;
    let err = storage.check_writable().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.user_line().contains("pgkeep-no-such-bucket"), "{}", err.user_line());
    let err = storage.get("some/key", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.user_line().contains("pgkeep-no-such-bucket"), "{}", err.user_line());
    let err = storage.list("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
}

#[tokio::test]
async fn wrong_secret_is_access_denied() {
    let bucket = garage().unique_bucket("denied");
    let wrong = "0".repeat(64);
    let settings = S3Settings { secret_access_key: Some(pgkeep::config::Secret::new(wrong.clone())), ..garage().settings(&bucket, "d") };
    let storage = s3(settings).await;
    let started = Instant::now();
    let err = storage.check_writable().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err:?}");
    assert!(err.hint().unwrap_or_default().contains("credentials"));
    let err = storage.put("k", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err:?}");
    assert!(err.user_line().contains(&bucket) && err.user_line().contains('k'));
    assert!(!err.user_line().contains(&wrong) && !format!("{err:?}").contains(&wrong));
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
}

#[tokio::test]
async fn unreachable_endpoint_fails_fast_naming_the_host() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        max_attempts: 2,
        connect_timeout: Duration::from_secs(2),
        ..garage().settings("any-bucket", "")
    };
    let storage = s3(settings).await;
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), storage.check_writable()).await.expect("must not hang").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::StorageTransient, "{err:?}");
    assert!(err.user_line().contains(&format!("127.0.0.1:{port}")), "{}", err.user_line());
    let err = tokio::time::timeout(Duration::from_secs(15), storage.get("k", None)).await.expect("must not hang").unwrap_err();
    assert!(err.user_line().contains("cannot reach S3 endpoint"), "{}", err.user_line());
}

#[tokio::test]
async fn clean_incomplete_aborts_abandoned_uploads() {
    let bucket = garage().unique_bucket("clean");
    let storage = s3(garage().settings(&bucket, "c")).await;
    let client = garage().client().await;
    for key in ["c/abandoned/1", "elsewhere/abandoned"] {
        let up = client.create_multipart_upload().bucket(&bucket).key(key).send().await.unwrap();
        client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(up.upload_id().unwrap())
            .part_number(1)
            .body(Bytes::from_static(b"part").into())
            .send()
            .await
            .unwrap();
    }
    assert_eq!(multipart_uploads(&bucket).await.len(), 2);
    assert_eq!(storage.clean_incomplete("", Duration::from_secs(3_600)).await.unwrap(), 0, "too young");
    assert_eq!(storage.clean_incomplete("other/", Duration::ZERO).await.unwrap(), 0, "other prefix");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(storage.clean_incomplete("", Duration::ZERO).await.unwrap(), 1);
    let left: Vec<String> = multipart_uploads(&bucket).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec!["elsewhere/abandoned".to_string()], "only the repository's upload is removed");
}
