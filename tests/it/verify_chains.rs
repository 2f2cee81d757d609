//! verify's chains check over real change segments: contiguous segments of
//! this cluster pass and report the window; a damaged segment fails, naming
//! its key; a missing segment fails, naming the missing LSN range and the
//! repository.

use crate::harness;

use bytes::Bytes;
use harness::backup_check::settings;
use harness::postgres::PgCluster;
use pgkeep::commands::verify::{self, VerifyOptions};
use pgkeep::config::RepoSpec;
use pgkeep::repo::layout::{Lsn, segment_key};
use pgkeep::storage::local::LocalStorage;
use pgkeep::storage::{PutOptions, Storage};
use pgkeep::stream::segment::{self, ChangeSegment, SegmentMeta};
use pgkeep::verify::{Check, Status};

/// An empty (heartbeat) segment of `stream` covering `[start, end)`.
fn heartbeat(stream: &str, start: u64, end: u64) -> Bytes {
    let meta = SegmentMeta {
        version: segment::FORMAT_VERSION,
        stream_id: stream.to_string(),
        start_lsn: Lsn(start),
        end_lsn: Lsn(end),
        first_commit_lsn: Lsn(start),
        last_commit_lsn: Lsn(start),
        first_commit_time: None,
        last_commit_time: None,
        transactions: 0,
        changes: 0,
        compression: "zstd".into(),
        raw_size: 0,
        sequences: Vec::new(),
        inexact: Vec::new(),
        server_time: None,
        parts: 0,
    };
    Bytes::from(segment::encode(&ChangeSegment { meta, schema: Vec::new(), transactions: Vec::new() }).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_gaps_fail_and_contiguous_chains_pass() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_db("vchain").await;
    cluster.execute(&db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await;
    let repo = tempfile::tempdir().unwrap();
    let s = settings(cluster.superuser_settings(&db), vec![RepoSpec::Local(repo.path().to_path_buf())]);
    let b = pgkeep::commands::backup::run(&s, &Default::default()).await.unwrap();
    let sysid = &b.manifest.server.system_identifier;
    assert!(!sysid.is_empty());
    let stream = format!("{sysid}-pgkeep_{db}");
    let storage = LocalStorage::new(repo.path());
    let lsn = b.manifest.snapshot.consistent_lsn.0;
    let bounds = [lsn - 100, lsn + 100, lsn + 300, lsn + 900];
    for w in bounds.windows(2) {
        storage.put(&segment_key(&stream, Lsn(w[0]), Lsn(w[1])), heartbeat(&stream, w[0], w[1]), PutOptions::default()).await.unwrap();
    }
    // Another cluster's stream in the same repository is not this backup's concern.
    storage.put(&segment_key("1-other", Lsn(1), Lsn(2)), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
    storage.put(&segment_key("1-other", Lsn(5), Lsn(6)), Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();

    let v = verify::run(&s, &VerifyOptions::default()).await.unwrap();
    let chains: Vec<_> = v.checks.iter().filter(|c| c.check == Check::Chains).collect();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(chains[0].status, Status::Pass, "{chains:?}");
    assert!(
        chains[0].summary.contains("3 contiguous segment(s)") && chains[0].summary.contains("covers this backup's consistent point"),
        "{}",
        chains[0].summary
    );

    // A flipped byte in a segment after the consistent point fails, naming it.
    let middle = segment_key(&stream, Lsn(bounds[1]), Lsn(bounds[2]));
    let mut damaged = heartbeat(&stream, bounds[1], bounds[2]).to_vec();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x01;
    storage.put(&middle, Bytes::from(damaged), PutOptions::default()).await.unwrap();
    let v = verify::run(&s, &VerifyOptions::default()).await.unwrap();
    assert!(!v.passed);
    let text = format!("{:?}", v.checks.iter().filter(|c| c.check == Check::Chains && c.status == Status::Fail).collect::<Vec<_>>());
    assert!(text.contains(&middle) && text.contains("damaged"), "{text}");

    storage.delete(&middle).await.unwrap();
    let v = verify::run(&s, &VerifyOptions::default()).await.unwrap();
    assert!(!v.passed);
    let failed: Vec<_> = v.checks.iter().filter(|c| c.check == Check::Chains && c.status == Status::Fail).collect();
    assert_eq!(failed.len(), 1);
    let text = format!("{failed:?}");
    assert!(text.contains(&Lsn(bounds[1]).to_string()) && text.contains(&Lsn(bounds[2]).to_string()), "{text}");
}
