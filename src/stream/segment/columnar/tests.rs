//! Unit tests of the columnar segment payload: exact round trips of every
//! pgoutput message kind and of arbitrary bytes, bounded unpacking of
//! garbage, and the size advantage over plain zstd.

use bytes::{Bytes, BytesMut};

use super::pack::{frame, streams};
use super::unpack::Cursor;
use super::*;
use crate::replication::pgoutput::{
    self, Begin, Column, Commit, DataType, Delete, Insert, LogicalMessage, OldTuple, Origin, PgOutputMessage, PgTimestamp, Relation, ReplicaIdentity, Truncate,
    TupleValue, Update,
};
use crate::repo::layout::Lsn;
use crate::stream::segment::put_record;

fn msg(m: PgOutputMessage) -> Bytes {
    let mut out = BytesMut::new();
    pgoutput::encode(&m, &mut out).unwrap();
    out.freeze()
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn raw_payload(records: &[Vec<Bytes>]) -> Vec<u8> {
    let mut raw = BytesMut::new();
    for r in records {
        put_record(&mut raw, r).unwrap();
    }
    raw.to_vec()
}

fn round_trip(raw: &[u8]) {
    let packed = pack(raw);
    assert_eq!(unpack(&packed, raw.len() as u64).unwrap(), raw);
    let plain = container(&streams(raw), false);
    assert_eq!(unpack(&plain, raw.len() as u64).unwrap(), raw);
}

/// xorshift64*: deterministic.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A schema record and transactions using every message pgoutput sends,
/// with a large value of `big` bytes.
fn every_message(big: usize) -> Vec<u8> {
    let column = |name: &str, key| Column { flags: u8::from(key), name: name.into(), type_oid: 23, type_modifier: -1 };
    let schema = vec![
        msg(PgOutputMessage::Type(DataType { id: 90001, namespace: "public".into(), name: "mood".into() })),
        msg(PgOutputMessage::Relation(Relation {
            id: 16384,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![column("id", true), column("doc", false), column("note", false)],
        })),
    ];
    let begin = |xid: u32, lsn: u64, time: i64| msg(PgOutputMessage::Begin(Begin { final_lsn: Lsn(lsn), commit_time: PgTimestamp(time), xid }));
    let commit = |lsn: u64, end: u64, time: i64| {
        msg(PgOutputMessage::Commit(Commit { flags: 0, commit_lsn: Lsn(lsn), end_lsn: Lsn(end), commit_time: PgTimestamp(time) }))
    };
    let big = TupleValue::Text(Bytes::from(vec![b'x'; big]));
    let row = |id: &str| vec![text(id), big.clone(), TupleValue::Null];
    let first = vec![
        begin(700, 0x1_0000, 1_000_000),
        msg(PgOutputMessage::Origin(Origin { commit_lsn: Lsn(0x99), name: "node2".into() })),
        msg(PgOutputMessage::Insert(Insert { relation_id: 16384, new_tuple: row("1") })),
        msg(PgOutputMessage::Insert(Insert {
            relation_id: 16384,
            new_tuple: vec![TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 2])), TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 2])), text("")],
        })),
        msg(PgOutputMessage::Update(Update { relation_id: 16384, old: None, new_tuple: vec![text("1"), TupleValue::UnchangedToast, text("n")] })),
        msg(PgOutputMessage::Update(Update {
            relation_id: 16384,
            old: Some(OldTuple::Key(vec![text("1"), TupleValue::Null, TupleValue::Null])),
            new_tuple: vec![text("2"), TupleValue::UnchangedToast, text("moved")],
        })),
        msg(PgOutputMessage::Update(Update { relation_id: 16384, old: Some(OldTuple::Full(row("2"))), new_tuple: row("3") })),
        msg(PgOutputMessage::Delete(Delete { relation_id: 16384, old: OldTuple::Key(vec![text("3")]) })),
        msg(PgOutputMessage::Delete(Delete { relation_id: 16384, old: OldTuple::Full(row("3")) })),
        msg(PgOutputMessage::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x1_0010),
            prefix: "pgkeep.ddl".into(),
            content: Bytes::from_static(br#"{"sql":"ALTER TABLE t ADD c int"}"#),
        })),
        msg(PgOutputMessage::Truncate(Truncate { options: Truncate::CASCADE, relation_ids: vec![16384, 16390] })),
        commit(0x1_0000, 0x1_0030, 1_000_000),
    ];
    // A Commit that does not repeat its Begin (never sent, but representable).
    let second = vec![begin(699, 0x2_0000, 1_000_500), commit(0x2_0008, 0x1_0000, 7)];
    raw_payload(&[schema, first, second, Vec::new()])
}

#[test]
fn every_pgoutput_message_round_trips_and_is_taken_apart() {
    let raw = every_message(5000);
    round_trip(&raw);
    let s = streams(&raw);
    // Rows, Begins and Commits were split up: the verbatim group (the first
    // group, as the payload starts with a Type) holds exactly the Type,
    // Relation, Origin, Message and Truncate messages.
    assert!(!s[LSN].is_empty() && !s[TIME].is_empty() && !s[XID].is_empty() && !s[COMMIT].is_empty());
    let mut others = 0;
    let mut records = Vec::new();
    let mut messages = Vec::new();
    assert!(frame(&raw, 0..raw.len(), &mut records));
    for record in records {
        assert!(frame(&raw, record, &mut messages));
        others += messages.iter().filter(|m| b"YROMT".contains(&raw[m.start])).map(|m| m.len()).sum::<usize>();
    }
    let mut directory = Cursor { buf: &s[GROUPS], what: "test" };
    let (_, verbatim) = (directory.varint().unwrap(), directory.varint().unwrap());
    assert_eq!(verbatim as usize, others);
    // The 5000-byte value is stored once; the other copies are references.
    assert!(s[VALUES].len() < 5000 + others + 100, "{}", s[VALUES].len());
}

#[test]
fn empty_and_short_inputs_round_trip() {
    round_trip(b"");
    assert_eq!(unpack(&pack(b""), 0).unwrap(), b"");
    for raw in [&b"\x00"[..], b"\x00\x00\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x05abc", b"\xff\xff\xff\xff"] {
        round_trip(raw);
    }
}

#[test]
fn random_bytes_round_trip() {
    let mut rng = Prng(0x1234_5678_9abc_def1);
    for i in 0..300 {
        let len = rng.below(if i < 200 { 64 } else { 4096 }) as usize;
        round_trip(&rng.bytes(len));
    }
}

#[test]
fn damaged_pgoutput_round_trips() {
    let raw = every_message(5000);
    let mut rng = Prng(42);
    for n in 0..raw.len().min(400) {
        round_trip(&raw[..n]);
    }
    for _ in 0..400 {
        let mut m = raw.clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(m.len() as u64) as usize;
            m[at] = if rng.below(2) == 0 { rng.next() as u8 } else { m[at] ^ 0x80 };
        }
        round_trip(&m);
    }
}

#[test]
fn unpack_refuses_more_than_max_raw_and_garbage() {
    let raw = every_message(5000);
    let packed = pack(&raw);
    assert!(unpack(&packed, raw.len() as u64 - 1).is_err());
    let plain = container(&streams(&raw), false);
    assert!(unpack(&plain, raw.len() as u64 - 1).is_err());
    let mut rng = Prng(7);
    for input in [&packed, &plain] {
        for n in 0..input.len() {
            let _ = unpack(&input[..n], 1 << 20);
        }
        for _ in 0..2000 {
            let mut m = input.clone();
            let at = rng.below(m.len() as u64) as usize;
            m[at] = rng.next() as u8;
            if let Ok(out) = unpack(&m, 1 << 20) {
                assert!(out.len() <= 1 << 20);
            }
        }
    }
    for len in 0..200 {
        let _ = unpack(&rng.bytes(len), 1 << 16);
    }
    // A zstd frame followed by a byte, a stream stored larger than it is.
    let values = vec![b'a'; 1000];
    let mut frame = zstd::bulk::compress(&values, ZSTD_LEVEL).unwrap();
    frame.push(0);
    let mut header = vec![0; 2 * (STREAMS - 1)];
    put_varint(&mut header, values.len() as u64);
    put_varint(&mut header, frame.len() as u64);
    let e = unpack(&[header, frame].concat(), 1 << 20).unwrap_err();
    assert!(e.message().contains("after its zstd frame"), "{}", e.message());
    let mut larger = vec![0; 2 * (STREAMS - 1)];
    larger.extend([1, 2, 0, 0]);
    let e = unpack(&larger, 1 << 20).unwrap_err();
    assert!(e.message().contains("stored larger"), "{}", e.message());
    // A header that declares more than the payload allows.
    let mut huge = Vec::new();
    put_varint(&mut huge, 1 << 40);
    put_varint(&mut huge, 1);
    huge.extend([0; 15]);
    assert!(unpack(&huge, 1 << 30).is_err());
}

#[test]
fn streams_stay_within_twice_the_raw_size() {
    let mut rng = Prng(99);
    let mut inputs = vec![every_message(5000), pgbench_like(50)];
    for _ in 0..100 {
        let len = rng.below(300) as usize;
        inputs.push(rng.bytes(len));
    }
    for raw in inputs {
        let total: usize = streams(&raw).iter().map(Vec::len).sum();
        assert!(total as u64 <= 2 * raw.len() as u64 + 64, "{total} for {}", raw.len());
    }
}

/// Transactions shaped like pgbench's TPC-B: three Updates and an Insert.
fn pgbench_like(transactions: u32) -> Vec<u8> {
    let mut rng = Prng(2024);
    let (mut lsn, mut time) = (0x9_40DF_1800u64, 817_000_000_000_000i64);
    let mut tellers = [0i64; 100];
    let mut branches = [0i64; 10];
    let filler = " ".repeat(84);
    let mut records = vec![Vec::new()];
    for i in 0..transactions {
        lsn += 400 + rng.below(300);
        time += 50 + rng.below(900) as i64;
        let (aid, tid, bid) = (1 + rng.below(1_000_000), rng.below(100) as usize, rng.below(10) as usize);
        let delta = rng.below(10_001) as i64 - 5000;
        tellers[tid] += delta;
        branches[bid] += delta;
        let update = |rel, tuple| msg(PgOutputMessage::Update(Update { relation_id: rel, old: None, new_tuple: tuple }));
        let secs = time / 1_000_000;
        let stamp = format!("2026-11-25 {:02}:{:02}:{:02}.{:06}", secs / 3600 % 24, secs / 60 % 60, secs % 60, time % 1_000_000);
        records.push(vec![
            msg(PgOutputMessage::Begin(Begin { final_lsn: Lsn(lsn), commit_time: PgTimestamp(time), xid: 738 + i })),
            update(16391, vec![text(&aid.to_string()), text(&(1 + aid / 100_000).to_string()), text(&delta.to_string()), text(&filler)]),
            update(16388, vec![text(&(tid + 1).to_string()), text(&(tid / 10 + 1).to_string()), text(&tellers[tid].to_string()), TupleValue::Null]),
            update(16394, vec![text(&(bid + 1).to_string()), text(&branches[bid].to_string()), TupleValue::Null]),
            msg(PgOutputMessage::Insert(Insert {
                relation_id: 16385,
                new_tuple: vec![
                    text(&(tid + 1).to_string()),
                    text(&(bid + 1).to_string()),
                    text(&aid.to_string()),
                    text(&delta.to_string()),
                    text(&stamp),
                    TupleValue::Null,
                ],
            })),
            msg(PgOutputMessage::Commit(Commit { flags: 0, commit_lsn: Lsn(lsn), end_lsn: Lsn(lsn + 48), commit_time: PgTimestamp(time) })),
        ]);
    }
    raw_payload(&records)
}

#[test]
fn beats_plain_zstd_on_pgbench_like_changes() {
    let raw = pgbench_like(5000);
    let packed = pack(&raw);
    let zstd = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
    assert_eq!(unpack(&packed, raw.len() as u64).unwrap(), raw);
    assert!(packed.len() * 2 < zstd.len(), "packed {} bytes, zstd {} bytes, raw {}", packed.len(), zstd.len(), raw.len());
}

/// Sizes and times on a real payload: `/tmp/raw.bin` (or `PGKEEP_RAW_PAYLOAD`),
/// records back to back. Run with
/// `cargo test --release --lib columnar -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_real_payload() {
    let path = std::env::var("PGKEEP_RAW_PAYLOAD").unwrap_or_else(|_| "/tmp/raw.bin".into());
    let Ok(raw) = std::fs::read(&path) else {
        eprintln!("{path} not found; nothing measured");
        return;
    };
    let t = std::time::Instant::now();
    let zstd = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
    let zstd_time = t.elapsed();
    let t = std::time::Instant::now();
    let packed = pack(&raw);
    let pack_time = t.elapsed();
    let t = std::time::Instant::now();
    let back = unpack(&packed, raw.len() as u64).unwrap();
    let unpack_time = t.elapsed();
    assert!(back == raw, "round trip");
    let t = std::time::Instant::now();
    let s = streams(&raw);
    let split_time = t.elapsed();
    eprintln!("raw {} bytes", raw.len());
    eprintln!("zstd -{ZSTD_LEVEL}: {} bytes in {zstd_time:?}", zstd.len());
    eprintln!(
        "{COMPRESSION}: {} bytes ({:.3} of zstd), pack {pack_time:?} (split alone {split_time:?}), unpack {unpack_time:?}",
        packed.len(),
        packed.len() as f64 / zstd.len() as f64
    );
    // As the archive stores it: each segment (a schema record and the
    // transactions up to the next one) compressed on its own.
    let mut records = Vec::new();
    assert!(frame(&raw, 0..raw.len(), &mut records));
    let mut starts: Vec<usize> = records.iter().filter(|r| raw.get(r.start + 4) != Some(&b'B')).map(|r| r.start - 4).collect();
    starts.push(raw.len());
    let (mut zstd_sum, mut packed_sum) = (0, 0);
    for w in starts.windows(2) {
        let segment = &raw[w[0]..w[1]];
        zstd_sum += zstd::bulk::compress(segment, ZSTD_LEVEL).unwrap().len();
        packed_sum += pack(segment).len();
    }
    eprintln!(
        "per segment ({} segments): zstd {zstd_sum} bytes, {COMPRESSION} {packed_sum} bytes ({:.3})",
        starts.len() - 1,
        packed_sum as f64 / zstd_sum as f64
    );
    let names = ["groups", "structure", "lsn", "time", "xid", "commit", "lengths", "values"];
    for (name, stream) in names.iter().zip(&s) {
        let z = zstd::bulk::compress(stream, ZSTD_LEVEL).unwrap();
        eprintln!("  {name:9} {:>10} raw {:>9} zstd", stream.len(), z.len());
    }
}

/// With `PGKEEP_WRITE_FUZZ_SEEDS=1`, write the seeds of the
/// `segment_columnar` fuzz target: raw payloads (packed and unpacked by
/// the target) and packed payloads with uncompressed streams (so that
/// mutations reach the stream decoding, not only zstd).
#[test]
fn write_fuzz_seeds() {
    if std::env::var("PGKEEP_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/segment_columnar");
    std::fs::create_dir_all(&dir).unwrap();
    let every = every_message(60);
    let bench = pgbench_like(3);
    for (name, bytes) in [
        ("raw-every-message", every.clone()),
        ("raw-pgbench", bench.clone()),
        ("packed-plain-every-message", container(&streams(&every), false)),
        ("packed-plain-pgbench", container(&streams(&bench), false)),
        ("packed-pgbench", pack(&bench)),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
