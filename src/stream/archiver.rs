//! The archiving loop of `pgkeep stream`: pgoutput messages in, durable
//! [`ChangeSegment`](super::segment::ChangeSegment)s out, and the slot
//! confirmed only behind them.
//!
//! [`Archiver`] is the pure state: the durable end (end of the last segment
//! stored in every repository), the relation and type caches, the
//! transaction being collected and the open segment. [`run_session`] drives
//! it on one `START_REPLICATION` stream:
//!
//! 1. each XLogData is decoded and collected; a Commit whose `end_lsn` is at
//!    or before the last archived one is dropped (the server resends
//!    unconfirmed transactions after a restart);
//! 2. the open segment is closed after `segment_seconds` since its first
//!    transaction, past `segment_bytes`, or on shutdown: encoded, put to
//!    **every** repository, failpoint `stream.after_segment_put`, and only
//!    then confirmed to the server (`flushed` = its end);
//! 3. keepalives asking for a reply are answered at once and a status goes
//!    out at least every 10 s, always with `flushed` = the durable end.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::segment::{self, ChangeSegment, SegmentMeta, SegmentTransaction};
use crate::error::{Error, Result};
use crate::replication::pgoutput::{self, Oid, PgOutputMessage, PgTimestamp};
use crate::replication::{LogicalStream, ReplicationConnection, StreamEvent};
use crate::repo::layout::{Lsn, segment_key};
use crate::storage::{PutOptions, Storage};

/// A status update goes out at least this often.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// When idle (nothing received waiting to be stored), a heartbeat segment
/// moves the archive and the slot to the server's sent position once this
/// much WAL has passed…
pub const HEARTBEAT_BYTES: u64 = 16 << 20;
/// …or this much time, so a slot never retains WAL just because only
/// unpublished tables change.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// When to close a segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Close this long after the segment's first transaction.
    pub max_age: Duration,
    /// Close once the raw payload exceeds this many bytes.
    pub max_bytes: u64,
}

/// The transaction being received.
#[derive(Default)]
struct OpenTransaction {
    messages: Vec<Bytes>,
    bytes: usize,
    /// Schema entries captured at the first use of each relation.
    schema: Vec<(Oid, Vec<Bytes>)>,
    used: HashSet<Oid>,
    changes: u64,
}

/// The segment being filled.
#[derive(Default)]
struct OpenSegment {
    schema: Vec<Bytes>,
    schema_oids: HashSet<Oid>,
    transactions: Vec<SegmentTransaction>,
    bytes: u64,
    changes: u64,
    opened: Option<Instant>,
    first_commit: Option<(Lsn, PgTimestamp)>,
    last_commit: Option<(Lsn, Lsn, PgTimestamp)>,
}

/// A closed segment, encoded and ready to store.
pub struct SealedSegment {
    /// Its key (`changes/<stream_id>/<start>-<end>.seg`).
    pub key: String,
    /// The encoded bytes.
    pub bytes: Bytes,
    /// Its metadata.
    pub meta: SegmentMeta,
}

/// The archiver's state (pure: no I/O).
pub struct Archiver {
    stream_id: String,
    durable_end: Lsn,
    relations: HashMap<Oid, (Bytes, Vec<Oid>)>,
    types: HashMap<Oid, Bytes>,
    current: Option<OpenTransaction>,
    open: OpenSegment,
    last_confirm: Instant,
}

impl Archiver {
    /// Start after `durable_end`, the end of the last segment stored everywhere.
    pub fn new(stream_id: String, durable_end: Lsn) -> Archiver {
        Archiver {
            stream_id,
            durable_end,
            relations: HashMap::new(),
            types: HashMap::new(),
            current: None,
            open: OpenSegment::default(),
            last_confirm: Instant::now(),
        }
    }

    /// The end of the last segment stored in every repository.
    pub fn durable_end(&self) -> Lsn {
        self.durable_end
    }

    /// Forget everything not yet durable (a new replication session resends it).
    pub fn reset_session(&mut self) {
        self.relations.clear();
        self.types.clear();
        self.current = None;
        self.open = OpenSegment::default();
    }

    /// The end of the last transaction taken, durable or not.
    fn last_end(&self) -> Lsn {
        self.open
            .last_commit
            .map_or(self.durable_end, |(_, end, _)| end)
    }

    /// Take one pgoutput message (an XLogData payload).
    pub fn accept(&mut self, data: Bytes) -> Result<()> {
        let message = pgoutput::decode_shared(&data)
            .map_err(|e| Error::internal(format!("cannot decode a pgoutput message: {e}")))?;
        match &message {
            PgOutputMessage::Begin(_) => {
                if self.current.is_some() {
                    return Err(Error::internal("pgoutput sent Begin inside a transaction"));
                }
                self.current = Some(OpenTransaction::default());
            }
            PgOutputMessage::Relation(r) => {
                let types = r.columns.iter().map(|c| c.type_oid).collect();
                self.relations.insert(r.id, (data.clone(), types));
            }
            PgOutputMessage::Type(t) => {
                self.types.insert(t.id, data.clone());
            }
            PgOutputMessage::Insert(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Update(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Delete(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Truncate(m) => self.use_relations(&m.relation_ids, false)?,
            PgOutputMessage::Commit(_)
            | PgOutputMessage::Origin(_)
            | PgOutputMessage::Message(_) => {}
        }
        let Some(txn) = self.current.as_mut() else {
            // Outside a transaction (a non-transactional logical message):
            // not archived in this version.
            return Ok(());
        };
        txn.bytes += 4 + data.len();
        txn.messages.push(data);
        if let PgOutputMessage::Commit(commit) = message {
            let txn = self.current.take().unwrap_or_default();
            self.finish_transaction(txn, commit.commit_lsn, commit.end_lsn, commit.commit_time);
        }
        Ok(())
    }

    /// Note relations used by a change of the open transaction, capturing
    /// their Type and Relation messages as they are now.
    fn use_relations(&mut self, ids: &[Oid], row: bool) -> Result<()> {
        let Some(txn) = self.current.as_mut() else {
            return Err(Error::internal(
                "pgoutput sent a change outside a transaction",
            ));
        };
        if row {
            txn.changes += 1;
        }
        for id in ids {
            if !txn.used.insert(*id) {
                continue;
            }
            let (relation, type_oids) = self.relations.get(id).ok_or_else(|| {
                Error::internal(format!(
                    "pgoutput sent a change of relation {id} before its Relation message"
                ))
            })?;
            let mut entry: Vec<Bytes> = type_oids
                .iter()
                .filter_map(|t| self.types.get(t).cloned())
                .collect();
            entry.push(relation.clone());
            txn.schema.push((*id, entry));
        }
        Ok(())
    }

    fn finish_transaction(
        &mut self,
        txn: OpenTransaction,
        commit_lsn: Lsn,
        end: Lsn,
        time: PgTimestamp,
    ) {
        if end <= self.last_end() {
            tracing::debug!(end_lsn = %end, "skipping a transaction already archived");
            return;
        }
        let open = &mut self.open;
        for (oid, entry) in txn.schema {
            if open.schema_oids.insert(oid) {
                open.bytes += entry.iter().map(|m| 4 + m.len() as u64).sum::<u64>();
                open.schema.extend(entry);
            }
        }
        open.opened.get_or_insert_with(Instant::now);
        open.first_commit.get_or_insert((commit_lsn, time));
        open.last_commit = Some((commit_lsn, end, time));
        open.bytes += 4 + txn.bytes as u64;
        open.changes += txn.changes;
        open.transactions.push(SegmentTransaction {
            messages: txn.messages,
        });
    }

    /// Whether the open segment holds any transaction.
    pub fn has_open_segment(&self) -> bool {
        !self.open.transactions.is_empty()
    }

    /// When the open segment must be closed by age.
    pub fn close_deadline(&self, limits: SegmentLimits) -> Option<Instant> {
        self.open.opened.map(|t| t + limits.max_age)
    }

    /// Whether the open segment is due by size or age.
    pub fn is_due(&self, limits: SegmentLimits, now: Instant) -> bool {
        self.has_open_segment()
            && (self.open.bytes > limits.max_bytes
                || self.close_deadline(limits).is_some_and(|d| now >= d))
    }

    /// Encode the open segment, covering `[durable_end, last commit end)`.
    /// The archiver keeps it until [`confirm`](Self::confirm).
    pub fn seal(&self) -> Result<Option<SealedSegment>> {
        let open = &self.open;
        let (Some((first_lsn, first_time)), Some((last_lsn, end, last_time))) =
            (open.first_commit, open.last_commit)
        else {
            return Ok(None);
        };
        let meta = SegmentMeta {
            version: segment::FORMAT_VERSION,
            stream_id: self.stream_id.clone(),
            start_lsn: self.durable_end,
            end_lsn: end,
            first_commit_lsn: first_lsn,
            last_commit_lsn: last_lsn,
            first_commit_time: first_time.to_utc(),
            last_commit_time: last_time.to_utc(),
            transactions: open.transactions.len() as u64,
            changes: open.changes,
            compression: "zstd".into(),
            raw_size: 0,
            sequences: Vec::new(),
        };
        let segment = ChangeSegment {
            meta,
            schema: open.schema.clone(),
            transactions: open.transactions.clone(),
        };
        let bytes = segment::encode(&segment)?;
        let mut meta = segment.meta;
        // The schema record's own length prefix is not in `open.bytes`.
        meta.raw_size = open.bytes + 4;
        Ok(Some(SealedSegment {
            key: segment_key(&self.stream_id, self.durable_end, end),
            bytes: Bytes::from(bytes),
            meta,
        }))
    }

    /// The sealed segment ending at `end` is stored everywhere.
    pub fn confirm(&mut self, end: Lsn) {
        self.durable_end = end;
        self.open = OpenSegment::default();
        self.last_confirm = Instant::now();
    }

    /// A heartbeat segment `[durable_end, sent)` when the archiver is idle —
    /// no transaction being received, no open segment — and the server's
    /// sent position (a keepalive's WAL end: decoding has passed it, so every
    /// transaction committed before it was already sent to us) is far enough
    /// ahead, by [`HEARTBEAT_BYTES`] or [`HEARTBEAT_INTERVAL`].
    pub fn heartbeat(&self, sent: Lsn, now: Instant) -> Result<Option<SealedSegment>> {
        let idle = self.current.is_none() && !self.has_open_segment();
        if !idle || sent <= self.durable_end {
            return Ok(None);
        }
        let due = sent.0 - self.durable_end.0 >= HEARTBEAT_BYTES || now.duration_since(self.last_confirm) >= HEARTBEAT_INTERVAL;
        if !due {
            return Ok(None);
        }
        let meta = SegmentMeta {
            version: segment::FORMAT_VERSION,
            stream_id: self.stream_id.clone(),
            start_lsn: self.durable_end,
            end_lsn: sent,
            first_commit_lsn: self.durable_end,
            last_commit_lsn: self.durable_end,
            first_commit_time: None,
            last_commit_time: None,
            transactions: 0,
            changes: 0,
            compression: "zstd".into(),
            raw_size: 0,
            sequences: Vec::new(),
        };
        let segment = ChangeSegment { meta, schema: Vec::new(), transactions: Vec::new() };
        let bytes = segment::encode(&segment)?;
        let mut meta = segment.meta;
        meta.raw_size = 4;
        Ok(Some(SealedSegment { key: segment_key(&self.stream_id, self.durable_end, sent), bytes: Bytes::from(bytes), meta }))
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionTotals {
    /// Segments stored.
    pub segments: u64,
    /// Transactions archived.
    pub transactions: u64,
    /// Row changes archived.
    pub changes: u64,
    /// Encoded bytes stored (per repository).
    pub bytes: u64,
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The shutdown future resolved; the last segment is stored and confirmed.
    Shutdown,
    /// The server left the stream.
    ServerEnded,
}

/// What a session needs besides the connection.
pub struct SessionContext<'a> {
    /// Slot to stream from.
    pub slot: &'a str,
    /// Publication to stream.
    pub publication: &'a str,
    /// Every repository.
    pub repos: &'a [Arc<dyn Storage>],
    /// When to close segments.
    pub limits: SegmentLimits,
}

/// Stream from `archiver.durable_end()` until shutdown, the server ends the
/// stream, or an error.
pub async fn run_session<F: Future<Output = ()>>(
    conn: &mut ReplicationConnection,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    totals: &mut SessionTotals,
    shutdown: &mut Pin<&mut F>,
) -> Result<SessionEnd> {
    let mut stream = conn
        .start_logical_replication(cx.slot, archiver.durable_end(), &[cx.publication], false)
        .await?;
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        let deadline = archiver.close_deadline(cx.limits);
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                store_segment(&mut stream, archiver, cx, totals).await?;
                break SessionEnd::Shutdown;
            }
            _ = sleep, if deadline.is_some() => store_segment(&mut stream, archiver, cx, totals).await?,
            _ = status.tick() => send_durable(&mut stream, archiver, false).await?,
            event = stream.next_event() => match event? {
                StreamEvent::XLogData { data, .. } => {
                    archiver.accept(data)?;
                    if archiver.is_due(cx.limits, Instant::now()) {
                        store_segment(&mut stream, archiver, cx, totals).await?;
                    }
                }
                StreamEvent::Keepalive { wal_end, reply_requested, .. } => {
                    if let Some(sealed) = archiver.heartbeat(wal_end, Instant::now())? {
                        store_sealed(&mut stream, archiver, cx, totals, sealed).await?;
                    } else if reply_requested {
                        send_durable(&mut stream, archiver, false).await?;
                    }
                }
                StreamEvent::End => break SessionEnd::ServerEnded,
            },
        }
    };
    stream.finish().await?;
    Ok(end)
}

/// Status update with every position at the durable end, never beyond.
async fn send_durable(
    stream: &mut LogicalStream<'_>,
    archiver: &Archiver,
    reply: bool,
) -> Result<()> {
    let at = archiver.durable_end();
    stream.send_status(at, at, at, reply).await
}

/// Close the open segment: put it to every repository, then confirm it.
async fn store_segment(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    totals: &mut SessionTotals,
) -> Result<()> {
    let Some(sealed) = archiver.seal()? else {
        return Ok(());
    };
    store_sealed(stream, archiver, cx, totals, sealed).await
}

/// Put a sealed segment to every repository, then confirm its end to the server.
async fn store_sealed(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    totals: &mut SessionTotals,
    sealed: SealedSegment,
) -> Result<()> {
    let meta = &sealed.meta;
    let puts = cx.repos.iter().map(|repo| {
        let bytes = sealed.bytes.clone();
        let key = sealed.key.as_str();
        async move {
            repo.put(key, bytes, PutOptions::default())
                .await
                .map_err(|e| {
                    e.context(format!(
                        "cannot store change segment {key} in {}",
                        repo.location()
                    ))
                })
        }
    });
    futures::future::try_join_all(puts).await?;
    crate::failpoint::hit("stream.after_segment_put");
    stream
        .send_status(meta.end_lsn, meta.end_lsn, meta.end_lsn, false)
        .await?;
    archiver.confirm(meta.end_lsn);
    let lag_ms = meta
        .last_commit_time
        .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0))
        .unwrap_or(0);
    tracing::info!(
        start_lsn = %meta.start_lsn,
        end_lsn = %meta.end_lsn,
        transactions = meta.transactions,
        changes = meta.changes,
        raw_bytes = meta.raw_size,
        stored_bytes = sealed.bytes.len(),
        lag_ms,
        "stored change segment"
    );
    totals.segments += 1;
    totals.transactions += meta.transactions;
    totals.changes += meta.changes;
    totals.bytes += sealed.bytes.len() as u64;
    Ok(())
}

/// Encode messages for tests.
#[cfg(test)]
fn encoded(m: PgOutputMessage) -> Bytes {
    let mut out = bytes::BytesMut::new();
    pgoutput::encode(&m, &mut out).unwrap();
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{
        Begin, Column, Commit, Insert, Relation, ReplicaIdentity, TupleValue,
    };

    fn relation(id: Oid, cols: usize) -> Bytes {
        encoded(PgOutputMessage::Relation(Relation {
            id,
            namespace: "public".into(),
            name: format!("t{id}"),
            replica_identity: ReplicaIdentity::Default,
            columns: (0..cols)
                .map(|i| Column {
                    flags: 1,
                    name: format!("c{i}"),
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        }))
    }

    fn txn(a: &mut Archiver, xid: u32, rel: Oid, with_relation: Option<Bytes>, end: u64) {
        a.accept(encoded(PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(end - 8),
            commit_time: PgTimestamp(5),
            xid,
        })))
        .unwrap();
        if let Some(r) = with_relation {
            a.accept(r).unwrap();
        }
        a.accept(encoded(PgOutputMessage::Insert(Insert {
            relation_id: rel,
            new_tuple: vec![TupleValue::Text(Bytes::from_static(b"1"))],
        })))
        .unwrap();
        a.accept(encoded(PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(end - 8),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(5),
        })))
        .unwrap();
    }

    #[test]
    fn segment_covers_durable_end_to_last_commit_and_carries_schema() {
        let mut a = Archiver::new("9-s".into(), Lsn(0x100));
        txn(&mut a, 1, 16384, Some(relation(16384, 1)), 0x200);
        txn(&mut a, 2, 16384, None, 0x300);
        let sealed = a.seal().unwrap().unwrap();
        assert_eq!(sealed.key, segment_key("9-s", Lsn(0x100), Lsn(0x300)));
        let seg = segment::decode(&sealed.bytes, "k").unwrap();
        assert_eq!(seg.transactions.len(), 2);
        assert_eq!(seg.schema, vec![relation(16384, 1)]);
        assert_eq!(seg.meta.changes, 2);
        a.confirm(Lsn(0x300));
        assert!(a.seal().unwrap().is_none());

        // Next segment: relation known from the cache, not resent by the server.
        txn(&mut a, 3, 16384, None, 0x400);
        let seg = segment::decode(&a.seal().unwrap().unwrap().bytes, "k").unwrap();
        assert_eq!(seg.meta.start_lsn, Lsn(0x300));
        assert_eq!(seg.schema, vec![relation(16384, 1)]);
    }

    #[test]
    fn schema_is_the_version_before_a_later_change() {
        let mut a = Archiver::new("9-s".into(), Lsn(0));
        txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
        txn(&mut a, 2, 7, Some(relation(7, 2)), 0x300);
        let seg = segment::decode(&a.seal().unwrap().unwrap().bytes, "k").unwrap();
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
        let seg = segment::decode(&a.seal().unwrap().unwrap().bytes, "k").unwrap();
        assert_eq!(seg.transactions.len(), 1);
        assert_eq!(
            (seg.meta.start_lsn, seg.meta.end_lsn),
            (Lsn(0x300), Lsn(0x380))
        );
        // The skipped transaction's Relation still fed the cache.
        assert_eq!(seg.schema, vec![relation(7, 1)]);
    }

    #[test]
    fn due_by_size_and_age() {
        let limits = SegmentLimits {
            max_age: Duration::from_secs(60),
            max_bytes: 10_000,
        };
        let mut a = Archiver::new("9-s".into(), Lsn(0));
        assert!(!a.is_due(limits, Instant::now()));
        txn(&mut a, 1, 7, Some(relation(7, 1)), 0x200);
        assert!(!a.is_due(limits, Instant::now()));
        assert!(a.is_due(limits, Instant::now() + Duration::from_secs(61)));
        assert!(a.is_due(
            SegmentLimits {
                max_bytes: 10,
                ..limits
            },
            Instant::now()
        ));
    }

    #[test]
    fn change_before_relation_is_an_error() {
        let mut a = Archiver::new("9-s".into(), Lsn(0));
        a.accept(encoded(PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(1),
            commit_time: PgTimestamp(0),
            xid: 1,
        })))
        .unwrap();
        let insert = encoded(PgOutputMessage::Insert(Insert {
            relation_id: 9,
            new_tuple: vec![],
        }));
        assert!(a.accept(insert).is_err());
    }

    #[test]
    fn heartbeat_only_when_idle_and_far_enough() {
        let a = Archiver::new("1-s".into(), Lsn(1000));
        let now = Instant::now();
        assert!(a.heartbeat(Lsn(1000), now).unwrap().is_none(), "nothing new");
        assert!(a.heartbeat(Lsn(2000), now).unwrap().is_none(), "too little WAL, too soon");
        let far = Lsn(1000 + HEARTBEAT_BYTES);
        let hb = a.heartbeat(far, now).unwrap().expect("due by size");
        assert_eq!((hb.meta.start_lsn, hb.meta.end_lsn, hb.meta.transactions), (Lsn(1000), far, 0));
        let back = super::segment::decode(&hb.bytes, &hb.key).unwrap();
        assert!(back.transactions.is_empty());
        assert!(a.heartbeat(Lsn(2000), now + HEARTBEAT_INTERVAL).unwrap().is_some(), "due by time");
        let mut busy = Archiver::new("1-s".into(), Lsn(1000));
        busy.current = Some(OpenTransaction::default());
        assert!(busy.heartbeat(far, now).unwrap().is_none(), "never in the middle of a transaction");
    }
}
