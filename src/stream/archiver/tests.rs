//! Unit tests of the [`Archiver`] state: segment ranges, schema records,
//! dedupe of resent transactions, limits, heartbeats, archived logical
//! messages and schema changes without captured DDL.

use super::*;
use crate::replication::pgoutput::{Begin, Column, Commit, Insert, LogicalMessage, Relation, ReplicaIdentity, TupleValue};

/// Encode one message as the server would send it.
fn encoded(m: PgOutputMessage) -> Bytes {
    let mut out = bytes::BytesMut::new();
    pgoutput::encode(&m, &mut out).unwrap();
    out.freeze()
}

/// Encode and decode a sealed segment, as a reader sees it.
fn stored(seg: ChangeSegment) -> ChangeSegment {
    let bytes = segment::encode(&seg).unwrap();
    segment::decode(&bytes, "k").unwrap()
}

fn relation(id: Oid, cols: usize) -> Bytes {
    encoded(PgOutputMessage::Relation(Relation {
        id,
        namespace: "public".into(),
        name: format!("t{id}"),
        replica_identity: ReplicaIdentity::Default,
        columns: (0..cols).map(|i| Column { flags: 1, name: format!("c{i}"), type_oid: 23, type_modifier: -1 }).collect(),
    }))
}

fn begin(a: &mut Archiver, xid: u32, end: u64) {
    a.accept(encoded(PgOutputMessage::Begin(Begin { final_lsn: Lsn(end - 8), commit_time: PgTimestamp(5), xid }))).unwrap();
}

fn commit(a: &mut Archiver, end: u64) {
    a.accept(encoded(PgOutputMessage::Commit(Commit { flags: 0, commit_lsn: Lsn(end - 8), end_lsn: Lsn(end), commit_time: PgTimestamp(5) }))).unwrap();
}

fn insert(rel: Oid) -> Bytes {
    encoded(PgOutputMessage::Insert(Insert { relation_id: rel, new_tuple: vec![TupleValue::Text(Bytes::from_static(b"1"))] }))
}

fn message(transactional: bool, prefix: &str) -> Bytes {
    encoded(PgOutputMessage::Message(LogicalMessage {
        transactional,
        lsn: Lsn(1),
        prefix: prefix.into(),
        content: Bytes::from_static(br#"{"sql":"ALTER TABLE t ADD c int"}"#),
    }))
}

fn txn(a: &mut Archiver, xid: u32, rel: Oid, with_relation: Option<Bytes>, end: u64) {
    begin(a, xid, end);
    if let Some(r) = with_relation {
        a.accept(r).unwrap();
    }
    a.accept(insert(rel)).unwrap();
    commit(a, end);
}

#[test]
fn segment_covers_durable_end_to_last_commit_and_carries_schema() {
    let mut a = Archiver::new("9-s".into(), Lsn(0x100));
    txn(&mut a, 1, 16384, Some(relation(16384, 1)), 0x200);
    txn(&mut a, 2, 16384, None, 0x300);
    let seg = stored(a.seal().unwrap());
    assert_eq!((seg.meta.start_lsn, seg.meta.end_lsn), (Lsn(0x100), Lsn(0x300)));
    assert_eq!(seg.transactions.len(), 2);
    assert_eq!(seg.schema, vec![relation(16384, 1)]);
    assert_eq!(seg.meta.changes, 2);
    a.confirm(Lsn(0x300));
    assert!(a.seal().is_none());

    // Next segment: relation known from the cache, not resent by the server.
    txn(&mut a, 3, 16384, None, 0x400);
    let seg = stored(a.seal().unwrap());
    assert_eq!(seg.meta.start_lsn, Lsn(0x300));
    assert_eq!(seg.schema, vec![relation(16384, 1)]);
}

#[test]
fn sealed_raw_size_matches_the_encoding() {
    let mut a = Archiver::new("9-s".into(), Lsn(0x100));
    txn(&mut a, 1, 7, Some(relation(7, 3)), 0x200);
    let sealed = a.seal().unwrap();
    let announced = sealed.meta.raw_size;
    assert_eq!(stored(sealed).meta.raw_size, announced);
}

#[test]
fn schema_is_the_version_before_a_later_change() {
    let mut a = Archiver::new("9-s".into(), Lsn(0));
    txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
    txn(&mut a, 2, 7, Some(relation(7, 2)), 0x300);
    let seg = stored(a.seal().unwrap());
    assert_eq!(seg.schema, vec![relation(7, 1)]);
    assert_eq!(seg.transactions[1].messages[1], relation(7, 2));
}

#[test]
fn already_archived_transactions_are_skipped() {
    let mut a = Archiver::new("9-s".into(), Lsn(0x300));
    txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
    txn(&mut a, 2, 7, None, 0x300);
    assert!(!a.has_open_segment());
    txn(&mut a, 3, 7, None, 0x380);
    txn(&mut a, 3, 7, None, 0x380);
    let seg = stored(a.seal().unwrap());
    assert_eq!(seg.transactions.len(), 1);
    assert_eq!((seg.meta.start_lsn, seg.meta.end_lsn), (Lsn(0x300), Lsn(0x380)));
    // The skipped transaction's Relation still fed the cache.
    assert_eq!(seg.schema, vec![relation(7, 1)]);
}

#[test]
fn due_by_size_and_age() {
    let limits = SegmentLimits { max_age: Duration::from_secs(60), max_bytes: 10_000, transaction_memory: 1 << 20 };
    let mut a = Archiver::new("9-s".into(), Lsn(0));
    assert!(!a.is_due(limits, Instant::now()));
    txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
    assert!(!a.is_due(limits, Instant::now()));
    assert!(a.is_due(limits, Instant::now() + Duration::from_secs(61)));
    assert!(a.is_due(SegmentLimits { max_bytes: 10, ..limits }, Instant::now()));
}

#[test]
fn change_before_relation_is_an_error() {
    let mut a = Archiver::new("9-s".into(), Lsn(0));
    begin(&mut a, 1, 9);
    assert!(a.accept(insert(9)).is_err());
}

#[test]
fn heartbeat_only_when_idle_and_far_enough() {
    let a = Archiver::new("1-s".into(), Lsn(1000));
    let now = Instant::now();
    assert!(a.heartbeat(Lsn(1000), now).is_none(), "nothing new");
    assert!(a.heartbeat(Lsn(2000), now).is_none(), "too little WAL, too soon");
    let far = Lsn(1000 + HEARTBEAT_BYTES);
    let hb = a.heartbeat(far, now).expect("due by size");
    assert_eq!((hb.meta.start_lsn, hb.meta.end_lsn, hb.meta.transactions), (Lsn(1000), far, 0));
    let back = stored(hb);
    assert!(back.transactions.is_empty());
    assert_eq!(back.meta.raw_size, 4);
    assert!(a.heartbeat(Lsn(2000), now + HEARTBEAT_INTERVAL).is_some(), "due by time");
    let mut busy = Archiver::new("1-s".into(), Lsn(1000));
    busy.current = Some(OpenTransaction::default());
    assert!(busy.heartbeat(far, now).is_none(), "never in the middle of a transaction");
}

#[test]
fn pgkeep_messages_stay_in_their_transaction_and_others_are_dropped() {
    let mut a = Archiver::new("9-s".into(), Lsn(0));
    // A transaction with nothing but a captured DDL statement is archived.
    begin(&mut a, 1, 0x200);
    a.accept(message(true, "pgkeep.ddl")).unwrap();
    a.accept(message(true, "someone.else")).unwrap();
    commit(&mut a, 0x200);
    // Non-transactional messages come outside transactions and are dropped.
    a.accept(message(false, "pgkeep.ddl")).unwrap();
    begin(&mut a, 2, 0x300);
    a.accept(relation(7, 1)).unwrap();
    a.accept(message(true, "pgkeep.note")).unwrap();
    a.accept(insert(7)).unwrap();
    commit(&mut a, 0x300);
    let seg = stored(a.seal().unwrap());
    let kinds: Vec<Vec<String>> = seg
        .transactions
        .iter()
        .map(|t| {
            t.messages
                .iter()
                .map(|m| match pgoutput::decode(m).unwrap() {
                    PgOutputMessage::Message(m) => format!("M {}", m.prefix),
                    PgOutputMessage::Begin(_) => "B".into(),
                    PgOutputMessage::Commit(_) => "C".into(),
                    PgOutputMessage::Relation(_) => "R".into(),
                    PgOutputMessage::Insert(_) => "I".into(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect();
    assert_eq!(kinds, [vec!["B", "M pgkeep.ddl", "C"], vec!["B", "R", "M pgkeep.note", "I", "C"]]);
    assert_eq!(seg.meta.changes, 1);
}

#[test]
fn a_relation_change_without_ddl_is_reported_with_its_commit_lsn() {
    let mut a = Archiver::new("9-s".into(), Lsn(0));
    txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
    assert!(a.take_uncaptured().is_empty());
    // Captured: a pgkeep.ddl message before the new definition.
    begin(&mut a, 2, 0x300);
    a.accept(message(true, DDL_PREFIX)).unwrap();
    a.accept(relation(7, 2)).unwrap();
    a.accept(insert(7)).unwrap();
    commit(&mut a, 0x300);
    assert!(a.take_uncaptured().is_empty());
    // Not captured.
    txn(&mut a, 3, 7, Some(relation(7, 3)), 0x400);
    let changes = a.take_uncaptured();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].table.as_str(), changes[0].lsn), (r#""public"."t7""#, Lsn(0x400 - 8)));
    assert!(a.take_uncaptured().is_empty());
}

#[test]
fn a_transaction_over_its_memory_goes_to_parts_and_closes_its_segment() {
    let limits = SegmentLimits { max_age: Duration::from_secs(60), max_bytes: 1 << 20, transaction_memory: 1000 };
    let mut a = Archiver::new("9-s".into(), Lsn(0x100));
    txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
    begin(&mut a, 2, 0x300);
    a.accept(relation(8, 1)).unwrap();
    let mut parts = Vec::new();
    for _ in 0..100 {
        a.accept(insert(8)).unwrap();
        if let Some(p) = a.take_part(limits.transaction_memory) {
            parts.push(p);
        }
        assert!(a.current.as_ref().unwrap().memory <= 1000 + 100, "memory stays near the budget");
    }
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert!(!a.is_due(limits, Instant::now()), "the first transaction alone is small");
    commit(&mut a, 0x300);
    assert!(a.is_due(limits, Instant::now()), "a transaction with parts closes its segment");
    let seg = stored(a.seal().unwrap());
    assert_eq!((seg.meta.parts as usize, seg.meta.transactions, seg.meta.changes), (parts.len(), 2, 101));
    assert_eq!((seg.meta.start_lsn, seg.meta.end_lsn), (Lsn(0x100), Lsn(0x300)));
    // Parts numbered from 1, keyed by the commit; Begin and Commit stay in the segment.
    for (i, p) in parts.iter().enumerate() {
        assert_eq!((p.meta.index as usize, p.meta.commit_lsn, p.meta.xid), (i + 1, Lsn(0x2f8), 2));
        let back = segment::part::decode_with(&segment::part::encode(p.clone(), None).unwrap(), "p", &crate::crypto::Keyring::none()).unwrap();
        assert_eq!(back.messages, p.messages);
    }
    let in_parts: usize = parts.iter().map(|p| p.messages.len()).sum();
    let last = &seg.transactions[1].messages;
    assert_eq!(in_parts + last.len(), 1 + 1 + 100 + 1, "Begin, Relation, 100 inserts, Commit: each once");
    assert_eq!(parts.iter().map(|p| p.meta.changes).sum::<u64>() + (last.len() as u64 - 2), 100);
    assert!(matches!(pgoutput::decode(&last[0]), Ok(PgOutputMessage::Begin(_))));
    assert_eq!(parts[0].messages[0], relation(8, 1));
}

#[test]
fn a_resent_transaction_is_not_buffered() {
    let mut a = Archiver::new("9-s".into(), Lsn(0x300));
    begin(&mut a, 2, 0x300);
    a.accept(relation(8, 1)).unwrap();
    for _ in 0..100 {
        a.accept(insert(8)).unwrap();
        assert!(a.take_part(100).is_none(), "already archived: nothing stored again");
    }
    assert!(a.current.as_ref().unwrap().messages.is_empty());
    commit(&mut a, 0x300);
    assert!(!a.has_open_segment());
    assert_eq!(a.relations.len(), 1, "its Relation still fed the cache");
}
