//! The archiving loop of `pgkeep stream`: pgoutput messages in, durable
//! [`ChangeSegment`]s out, and the slot confirmed only behind them.
//!
//! [`Archiver`] is the pure state: the durable end (end of the last segment
//! stored in every repository), the relation and type caches, the
//! transaction being collected, the open segment, and the
//! [`SchemaWatch`] that notices schema changes without captured DDL.
//! [`run_session`](super::session::run_session) drives it on one `START_REPLICATION` stream of both
//! publications (with `messages 'true'` on PostgreSQL 14 and later):
//!
//! 1. each XLogData is decoded and collected; a Commit whose `end_lsn` is at
//!    or before the last archived one is dropped (the server resends
//!    unconfirmed transactions after a restart). Transactional logical
//!    messages whose prefix starts with `pgkeep.` stay in their
//!    transaction (captured DDL, `pgkeep.ddl`); other messages are dropped;
//!    A transaction holding more than `transaction_memory` bytes goes to
//!    [`TransactionPart`]s as it arrives: the messages after its Begin are
//!    put to every repository (failpoint `stream.after_part_put`) and
//!    dropped from memory. Parts are never confirmed by themselves: the slot
//!    moves past the transaction only once the segment ending with its
//!    Commit (which names the parts) is stored; after a crash the server
//!    resends it and the parts are written again under the same keys.
//!    A transaction already archived is not buffered at all;
//! 2. the open segment is closed after `segment_seconds` since its first
//!    transaction, past `segment_bytes`, or on shutdown (after receiving
//!    what the server had committed then, [`SHUTDOWN_CATCH_UP`] at most): every sequence is
//!    sampled (after the segment's last commit was received), the segment is
//!    encoded, put to **every** repository, failpoint
//!    `stream.after_segment_put`, and only then confirmed to the server
//!    (`flushed` = its end);
//! 3. keepalives asking for a reply are answered at once and a status goes
//!    out at least every 10 s, always with `flushed` = the durable end;
//! 4. every `publication_check` (5 s) tables created since are put into a
//!    publication ([`super::publication::reconcile`]); a table added late, or
//!    a schema change without captured DDL, asks [`AutoBackup`] for a new
//!    full backup; so does every change the archive cannot reproduce
//!    ([`super::inexact`]), which is also recorded in the segment's
//!    `inexact` metadata.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ddl::{DDL_PREFIX, DdlMessage};
use super::inexact::{COMMAND_PREFIX, CommandMessage, INEXACT_PREFIX, InexactMark, InexactMessage, PARTITION_PREFIX, PartitionMessage, TransactionDdl};
use super::schema_watch::{SchemaWatch, UncapturedChange};
use super::segment::part::{PART_FORMAT_VERSION, PartMeta, TransactionPart};
use super::segment::{self, ChangeSegment, SegmentMeta, SegmentTransaction};
use crate::error::{Error, Result};
use crate::replication::pgoutput::{self, Oid, PgOutputMessage, PgTimestamp};
use crate::repo::layout::Lsn;

#[cfg(test)]
mod tests;

/// A status update goes out at least this often.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// On shutdown, how long to wait for the server to send what it had
/// committed when the stop came ([`catch_up`]); the rest stays in the slot.
pub const SHUTDOWN_CATCH_UP: Duration = Duration::from_secs(10);

/// When idle (nothing received waiting to be stored), a heartbeat segment
/// moves the archive and the slot to the server's sent position once this
/// much WAL has passed…
pub const HEARTBEAT_BYTES: u64 = 16 << 20;
/// …or this much time, so a slot never retains WAL just because only
/// unpublished tables change.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Logical messages with this prefix are archived (when transactional).
pub const ARCHIVED_MESSAGE_PREFIX: &str = "pgkeep.";

/// When to close a segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Close this long after the segment's first transaction.
    pub max_age: Duration,
    /// Close once the raw payload exceeds this many bytes.
    pub max_bytes: u64,
    /// Keep at most about this many bytes of one transaction in memory;
    /// beyond, its messages go to a [`TransactionPart`].
    pub transaction_memory: u64,
}

/// Memory a buffered message costs besides its bytes (its `Bytes` handle
/// and allocation), counted against `transaction_memory`.
const MESSAGE_OVERHEAD: usize = 48;

/// The transaction being received.
#[derive(Default)]
struct OpenTransaction {
    /// Its commit LSN, from Begin.
    final_lsn: Lsn,
    xid: u32,
    /// Already archived (the server resends after a restart): not buffered.
    skip: bool,
    /// Begin, then the messages not yet in a part.
    messages: Vec<Bytes>,
    /// Raw size of `messages`.
    bytes: usize,
    /// Memory `messages` take.
    memory: usize,
    /// Parts stored so far.
    parts: u32,
    /// `changes` when the last part was taken.
    changes_in_parts: u64,
    /// Schema entries captured at the first use of each relation.
    schema: Vec<(Oid, Vec<Bytes>)>,
    used: HashSet<Oid>,
    changes: u64,
    /// Its DDL, for the changes replay cannot reproduce.
    ddl: TransactionDdl,
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
    inexact: Vec<InexactMark>,
    /// Parts of the last transaction (it must then be the last).
    parts: u32,
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
    watch: SchemaWatch,
    uncaptured: Vec<UncapturedChange>,
    /// Marks of transactions taken since the last [`Archiver::take_inexact`].
    inexact: Vec<InexactMark>,
    /// Tables (`schema.name`) captured DDL commands named, and when they came.
    captured: HashMap<String, Instant>,
    /// The last keepalive's WAL end (decoding has passed it).
    sent: Lsn,
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
            sent: durable_end,
            last_confirm: Instant::now(),
            watch: SchemaWatch::default(),
            uncaptured: Vec::new(),
            inexact: Vec::new(),
            captured: HashMap::new(),
        }
    }

    /// Whether a captured DDL command, or a changed Relation message the
    /// stream answered already, named `table` (`schema.name`) after `after`.
    pub fn captured_since(&self, table: &str, after: Instant) -> bool {
        self.captured.get(table).is_some_and(|at| *at >= after)
    }

    /// `table` (`"schema"."name"`) changed, and the stream answered it from
    /// its Relation message: the catalog comparison need not.
    pub fn note_answered(&mut self, table: &str) {
        if let Some((schema, name)) = crate::pg::catalog::split_table_name(table) {
            self.captured.insert(format!("{schema}.{name}"), Instant::now());
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
        self.watch = SchemaWatch::default();
        self.uncaptured.clear();
        self.inexact.clear();
    }

    /// Tables marked inexact by transactions taken since the last call.
    pub fn take_inexact(&mut self) -> Vec<InexactMark> {
        std::mem::take(&mut self.inexact)
    }

    /// Schema changes without captured DDL noticed since the last call.
    pub fn take_uncaptured(&mut self) -> Vec<UncapturedChange> {
        std::mem::take(&mut self.uncaptured)
    }

    /// A keepalive's WAL end: decoding has passed it.
    pub fn note_sent(&mut self, wal_end: Lsn) {
        self.sent = self.sent.max(wal_end);
    }

    /// Where decoding has passed: every transaction committed before it
    /// has been received (the last transaction taken, or a keepalive's WAL end).
    pub fn decoded_to(&self) -> Lsn {
        self.sent.max(self.last_end())
    }

    /// The end of the last transaction taken, durable or not.
    pub(super) fn last_end(&self) -> Lsn {
        self.open.last_commit.map_or(self.durable_end, |(_, end, _)| end)
    }

    /// Take one pgoutput message (an XLogData payload).
    pub fn accept(&mut self, data: Bytes) -> Result<()> {
        let message = pgoutput::decode_shared(&data).map_err(|e| Error::internal(format!("cannot decode a pgoutput message: {e}")))?;
        match &message {
            PgOutputMessage::Begin(begin) => {
                if self.current.is_some() {
                    return Err(Error::internal("pgoutput sent Begin inside a transaction"));
                }
                // Its commit record starts before the end of the last one taken: it is that one or
                // earlier, so archived already (commit records do not overlap).
                let skip = begin.final_lsn < self.last_end();
                self.current = Some(OpenTransaction { final_lsn: begin.final_lsn, xid: begin.xid, skip, ..OpenTransaction::default() });
            }
            PgOutputMessage::Relation(r) => {
                let types = r.columns.iter().map(|c| c.type_oid).collect();
                self.relations.insert(r.id, (data.clone(), types));
                let lsn = self.current.as_ref().map_or(self.durable_end, |t| t.final_lsn);
                if let Some(change) = self.watch.relation(r, lsn) {
                    if let Some(txn) = self.current.as_mut() {
                        txn.ddl.schema_changed(format!("{}.{}", r.namespace, r.name));
                    }
                    self.uncaptured.push(change);
                }
            }
            PgOutputMessage::Type(t) => {
                self.types.insert(t.id, data.clone());
            }
            PgOutputMessage::Insert(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Update(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Delete(m) => self.use_relations(&[m.relation_id], true)?,
            PgOutputMessage::Truncate(m) => self.use_relations(&m.relation_ids, false)?,
            PgOutputMessage::Message(m) => {
                // Only pgkeep's own transactional messages belong to the archive;
                // a non-transactional one is not part of any transaction.
                if !(m.transactional && m.prefix.starts_with(ARCHIVED_MESSAGE_PREFIX) && self.current.is_some()) {
                    tracing::debug!(prefix_len = m.prefix.len(), transactional = m.transactional, "dropping a logical message");
                    return Ok(());
                }
                if m.prefix == DDL_PREFIX {
                    self.watch.ddl_message();
                }
                let ddl = &mut self.current.as_mut().expect("checked above").ddl;
                match m.prefix.as_str() {
                    DDL_PREFIX => ddl.ddl(&DdlMessage::parse(&m.content).map(|d| d.sql).unwrap_or_default()),
                    COMMAND_PREFIX => {
                        let command = CommandMessage::parse(&m.content).unwrap_or_default();
                        for t in &command.tables {
                            self.captured.insert(t.clone(), Instant::now());
                        }
                        ddl.command(command);
                    }
                    PARTITION_PREFIX => {
                        if let Some(p) = PartitionMessage::parse(&m.content) {
                            ddl.partition(&p);
                        }
                    }
                    INEXACT_PREFIX => ddl.inexact(
                        InexactMessage::parse(&m.content)
                            .unwrap_or_else(|| InexactMessage { table: "*".into(), reason: "an unreadable pgkeep.inexact message".into() }),
                    ),
                    _ => {}
                }
            }
            PgOutputMessage::Commit(_) | PgOutputMessage::Origin(_) => {}
        }
        let Some(txn) = self.current.as_mut() else {
            return Ok(());
        };
        if !txn.skip {
            txn.bytes += 4 + data.len();
            txn.memory += data.len() + MESSAGE_OVERHEAD;
            // `data` is a compact copy already (`replication::stream`).
            txn.messages.push(data);
        }
        if let PgOutputMessage::Commit(commit) = message {
            let txn = self.current.take().unwrap_or_default();
            self.finish_transaction(txn, commit.commit_lsn, commit.end_lsn, commit.commit_time);
        }
        Ok(())
    }

    /// The open transaction's messages after its Begin as the next part, once
    /// they take more than `budget` bytes of memory. Store it in every
    /// repository before accepting more.
    pub fn take_part(&mut self, budget: u64) -> Option<TransactionPart> {
        let txn = self.current.as_mut()?;
        if txn.skip || txn.memory as u64 <= budget || txn.messages.len() < 2 {
            return None;
        }
        let messages: Vec<Bytes> = txn.messages.drain(1..).collect();
        txn.bytes = 4 + txn.messages[0].len();
        txn.memory = txn.messages[0].len() + MESSAGE_OVERHEAD;
        txn.parts += 1;
        let changes = txn.changes - std::mem::replace(&mut txn.changes_in_parts, txn.changes);
        Some(TransactionPart {
            meta: PartMeta {
                version: PART_FORMAT_VERSION,
                stream_id: self.stream_id.clone(),
                commit_lsn: txn.final_lsn,
                xid: txn.xid,
                index: txn.parts,
                changes,
                compression: String::new(),
                raw_size: 0,
                encryption: None,
            },
            messages,
        })
    }

    /// Note relations used by a change of the open transaction, capturing
    /// their Type and Relation messages as they are now.
    fn use_relations(&mut self, ids: &[Oid], row: bool) -> Result<()> {
        let Some(txn) = self.current.as_mut() else {
            return Err(Error::internal("pgoutput sent a change outside a transaction"));
        };
        if row {
            txn.changes += 1;
        }
        for id in ids {
            if !txn.used.insert(*id) {
                continue;
            }
            let (relation, type_oids) =
                self.relations.get(id).ok_or_else(|| Error::internal(format!("pgoutput sent a change of relation {id} before its Relation message")))?;
            let mut entry: Vec<Bytes> = type_oids.iter().filter_map(|t| self.types.get(t).cloned()).collect();
            entry.push(relation.clone());
            txn.schema.push((*id, entry));
        }
        Ok(())
    }

    fn finish_transaction(&mut self, txn: OpenTransaction, commit_lsn: Lsn, end: Lsn, time: PgTimestamp) {
        debug_assert!(!txn.skip || end <= self.last_end(), "a skipped transaction was archived already");
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
        // A transaction with parts closes its segment (see `is_due`).
        debug_assert_eq!(open.parts, 0, "a transaction with parts is always the last of its segment");
        open.parts = txn.parts;
        open.transactions.push(SegmentTransaction { messages: txn.messages });
        let marks = txn.ddl.finish(commit_lsn, time.to_utc());
        open.inexact.extend(marks.iter().cloned());
        self.inexact.extend(marks);
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
        self.has_open_segment() && (self.open.parts > 0 || self.open.bytes > limits.max_bytes || self.close_deadline(limits).is_some_and(|d| now >= d))
    }

    /// The open segment, covering `[durable_end, last commit end)`, not yet
    /// encoded (sequence samples are added first). The archiver keeps it
    /// until [`confirm`](Self::confirm).
    pub fn seal(&self) -> Option<ChangeSegment> {
        let open = &self.open;
        let (Some((first_lsn, first_time)), Some((last_lsn, end, last_time))) = (open.first_commit, open.last_commit) else {
            return None;
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
            // The schema record's own length prefix is not in `open.bytes`.
            raw_size: open.bytes + 4,
            sequences: Vec::new(),
            inexact: open.inexact.clone(),
            server_time: None,
            parts: open.parts,
        };
        Some(ChangeSegment { meta, schema: open.schema.clone(), transactions: open.transactions.clone() })
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
    pub fn heartbeat(&self, sent: Lsn, now: Instant) -> Option<ChangeSegment> {
        let idle = self.current.is_none() && !self.has_open_segment();
        if !idle || sent <= self.durable_end {
            return None;
        }
        let due = sent.0 - self.durable_end.0 >= HEARTBEAT_BYTES || now.duration_since(self.last_confirm) >= HEARTBEAT_INTERVAL;
        if !due {
            return None;
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
            raw_size: 4,
            sequences: Vec::new(),
            inexact: Vec::new(),
            server_time: None,
            parts: 0,
        };
        Some(ChangeSegment { meta, schema: Vec::new(), transactions: Vec::new() })
    }
}
