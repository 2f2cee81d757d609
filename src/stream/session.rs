//! One replication session of `pgkeep stream`: [`run_session`] drives an
//! [`Archiver`] on one `START_REPLICATION` stream (steps 1–4 of the
//! [`archiver`](super::archiver) module), storing segments and parts in
//! every repository, confirming the slot behind them, answering keepalives,
//! and running the publication and catalog checks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::archiver::{Archiver, SHUTDOWN_CATCH_UP, STATUS_INTERVAL, SegmentLimits};
use super::autobackup::{AutoBackup, BackupReason};
use super::inexact::InexactMark;
use super::publication::{PublicationNames, ReconcileMode};
use super::schema_watch::UncapturedChange;
use super::segment::part::TransactionPart;
use super::segment::{self, ChangeSegment};
use super::upkeep::Upkeep;
use crate::error::Result;
use crate::replication::stream::supports_messages;
use crate::replication::{LogicalStream, ReplicationConnection, StreamEvent};
use crate::repo::layout::{Lsn, part_key, segment_key};
use crate::storage::{PutOptions, Storage};

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
    /// Parts of large transactions stored.
    pub parts: u64,
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The shutdown future resolved; the last segment is stored and confirmed.
    Shutdown,
    /// The server left the stream.
    ServerEnded,
    /// The durable end reached [`SessionContext::resubscribe_at`]: start again
    /// with both publications.
    Resubscribe,
}

/// What a session needs besides the connection.
pub struct SessionContext<'a> {
    /// Slot to stream from.
    pub slot: &'a str,
    /// The stream's publications.
    pub names: &'a PublicationNames,
    /// Whether the insert-only publication exists (pgkeep may have been
    /// unable to create it).
    pub insert_only: bool,
    /// Stream only the main publication, until the durable end reaches this
    /// LSN: the insert-only publication was created after the slot's
    /// position, and pgoutput refuses a publication that did not exist yet
    /// where it decodes. Then end with [`SessionEnd::Resubscribe`].
    pub resubscribe_at: Option<Lsn>,
    /// Every repository.
    pub repos: &'a [Arc<dyn Storage>],
    /// When to close segments.
    pub limits: SegmentLimits,
    /// How often to put new tables into a publication.
    pub publication_check: Duration,
    /// Automatic full backups.
    pub autobackup: &'a AutoBackup,
    /// Encryption of this run's segments, when configured.
    pub sealer: Option<&'a crate::crypto::Sealer>,
    /// What `--metrics-addr` serves.
    pub metrics: &'a super::metrics::StreamMetrics,
}

/// Stream from `archiver.durable_end()` until shutdown, the server ends the
/// stream, or an error.
pub async fn run_session<F: Future<Output = ()>>(
    conn: &mut ReplicationConnection,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    upkeep: &mut Upkeep,
    totals: &mut SessionTotals,
    shutdown: &mut Pin<&mut F>,
) -> Result<SessionEnd> {
    let mut publications = vec![cx.names.main.as_str()];
    if cx.insert_only && cx.resubscribe_at.is_none_or(|at| archiver.durable_end() >= at) {
        publications.push(cx.names.insert_only.as_str());
    }
    let messages = supports_messages(conn.server_version_num());
    let mut stream = conn.start_logical_replication(cx.slot, archiver.durable_end(), &publications, messages).await?;
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + cx.publication_check, cx.publication_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resubscribe = |a: &Archiver| cx.insert_only && publications.len() == 1 && cx.resubscribe_at.is_some_and(|at| a.durable_end() >= at);
    let end = loop {
        let deadline = archiver.close_deadline(cx.limits);
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                catch_up(&mut stream, archiver, cx, upkeep, totals).await?;
                store_segment(&mut stream, archiver, cx, upkeep, totals).await?;
                upkeep.keep_watch(true).await;
                break SessionEnd::Shutdown;
            }
            _ = sleep, if deadline.is_some() => store_segment(&mut stream, archiver, cx, upkeep, totals).await?,
            _ = status.tick() => send_durable(&mut stream, archiver, false).await?,
            _ = check.tick() => {
                check_publications(cx, upkeep, archiver).await;
                upkeep.keep_watch(false).await;
                if cx.metrics.is_served()
                    && let Some(bytes) = upkeep.slot_retained(cx.slot).await
                {
                    cx.metrics.slot_retained(bytes);
                }
            }
            event = stream.next_event() => match event? {
                StreamEvent::XLogData { data, wal_end, .. } => {
                    cx.metrics.server_at(wal_end);
                    take_data(&mut stream, archiver, cx, upkeep, totals, data).await?
                }
                StreamEvent::Keepalive { wal_end, reply_requested, server_time } => {
                    cx.metrics.server_at(wal_end);
                    archiver.note_sent(wal_end);
                    if let Some(mut segment) = archiver.heartbeat(wal_end, Instant::now()) {
                        // Where the server's WAL ended, and when by its clock.
                        segment.meta.server_time = server_time.to_utc();
                        store_sealed(&mut stream, archiver, cx, upkeep, totals, segment).await?;
                    } else if reply_requested {
                        send_durable(&mut stream, archiver, false).await?;
                    }
                }
                StreamEvent::End => break SessionEnd::ServerEnded,
            },
        }
        if resubscribe(archiver) {
            tracing::info!(durable_end = %archiver.durable_end(), publication = %cx.names.insert_only, "the insert-only publication can be streamed from here; restarting the stream with it");
            break SessionEnd::Resubscribe;
        }
    };
    stream.finish().await?;
    Ok(end)
}

/// Step 1 for one XLogData payload, then step 2 when the segment is due.
async fn take_data(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    upkeep: &mut Upkeep,
    totals: &mut SessionTotals,
    data: Bytes,
) -> Result<()> {
    archiver.accept(data)?;
    if let Some(part) = archiver.take_part(cx.limits.transaction_memory) {
        store_part(cx, totals, part).await?;
    }
    for change in archiver.take_uncaptured() {
        schema_changed_without_ddl(cx, &change);
        archiver.note_answered(&change.table);
    }
    for mark in archiver.take_inexact() {
        not_reproducible(cx, mark);
    }
    if archiver.is_due(cx.limits, Instant::now()) {
        store_segment(stream, archiver, cx, upkeep, totals).await?;
    }
    Ok(())
}

/// On shutdown, before the last segment is stored: receive every
/// transaction the server had committed when the stop came, so that a stop
/// right after a commit archives it. The target is the end of the server's
/// last WAL record then; a walsender that has decoded past it and waits for
/// more sends a keepalive with its position (each status we send lets it
/// send one more). At most [`SHUTDOWN_CATCH_UP`]: what it has not sent by
/// then stays in the slot for the next run.
async fn catch_up(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    upkeep: &mut Upkeep,
    totals: &mut SessionTotals,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_CATCH_UP;
    let target = match tokio::time::timeout_at(deadline, upkeep.last_record_end()).await {
        Ok(Ok(lsn)) => lsn,
        Ok(Err(e)) => {
            tracing::warn!(error = %e.user_line(), "stopping without waiting for the server: cannot read its WAL position");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    tracing::debug!(target_lsn = %target, received_to = %archiver.last_end(), "stopping: receiving what the server committed before the stop");
    if archiver.last_end() >= target {
        return Ok(());
    }
    send_durable(stream, archiver, false).await?;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, stream.next_event()).await else {
            tracing::warn!(target_lsn = %target, received_to = %archiver.last_end(), "stopping before the server sent everything committed before the stop; the rest stays in the slot for the next run");
            return Ok(());
        };
        match event? {
            StreamEvent::XLogData { data, .. } => take_data(stream, archiver, cx, upkeep, totals, data).await?,
            StreamEvent::Keepalive { wal_end, .. } if wal_end >= target => return Ok(()),
            StreamEvent::Keepalive { .. } => {
                // Not there yet (WAL not flushed yet): ask again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                send_durable(stream, archiver, false).await?;
            }
            StreamEvent::End => return Ok(()),
        }
    }
}

/// Step 4: tables created since go into a publication; a table added this
/// late misses its earlier changes, and a definition that changed with
/// nothing in the archive showing it ([`super::catalog_watch`]) cannot be
/// replayed: a table image is asked for each.
async fn check_publications(cx: &SessionContext<'_>, upkeep: &mut Upkeep, archiver: &Archiver) {
    match upkeep.reconcile(cx.names, ReconcileMode { create: false, announce: false }).await {
        Ok(done) => {
            super::request_late(cx.autobackup, &done, upkeep).await;
            cx.metrics.set_unarchived(upkeep.unarchived_tables().len());
            if done.insert_only_exists {
                for (table, (since, time)) in upkeep.watch_writes(&cx.names.insert_only).await {
                    tracing::warn!(
                        table = %table,
                        since = %since,
                        "table has no replica identity and UPDATE or DELETE changed it: those changes are not archived, so a table image of it is taken \
                         (point-in-time targets before the image are refused for this table); fix: add a primary key or REPLICA IDENTITY FULL"
                    );
                    super::request_unseen(cx.autobackup, upkeep, BackupReason::UntrackedWrites { table, since, time }).await;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e.user_line(), "cannot check the publications; retrying at the next check"),
    }
    for s in upkeep.watch_catalog(cx.publication_check, archiver.decoded_to(), |t, after| archiver.captured_since(t, after)).await {
        let table = crate::pg::catalog::qualified(&s.table.0, &s.table.1);
        tracing::warn!(table = %table, since = %s.since.0, "the table's definition changed without captured DDL (found in the catalog)");
        super::request_unseen(cx.autobackup, upkeep, BackupReason::UnseenChange { table, since: s.since.0, time: s.since.1 }).await;
    }
}

/// A table's definition changed with no `pgkeep.ddl` message: warn, and ask
/// for a table image, since replay cannot cross the change (the same table
/// also carries an inexact mark; the two requests merge in one image).
fn schema_changed_without_ddl(cx: &SessionContext<'_>, change: &UncapturedChange) {
    tracing::warn!(
        table = %change.table,
        previous_name = change.previous_name.as_deref().unwrap_or(""),
        columns_changed = change.columns_changed,
        lsn = %change.lsn,
        "the table's definition changed without a captured DDL statement: replay cannot cross this point from an earlier backup \
         (install DDL capture with `pgkeep setup`)"
    );
    cx.autobackup.request(BackupReason::SchemaChange { table: change.table.clone(), lsn: change.lsn });
}

/// A change replay cannot reproduce (a rewrite, a computed fast default,
/// DDL inside a function, …): warn, and ask for a table image (a full
/// backup for a mark naming no table), from whose consistent point on the
/// table is exact again.
fn not_reproducible(cx: &SessionContext<'_>, mark: InexactMark) {
    tracing::warn!(table = %mark.table, lsn = %mark.lsn, reason = %mark.reason, "a change the archive cannot reproduce: replay refuses targets after it until the table's image");
    cx.autobackup.request(BackupReason::Inexact { table: mark.table, reason: mark.reason, lsn: mark.lsn, time: mark.time });
}

/// Status update with every position at the durable end, never beyond.
async fn send_durable(stream: &mut LogicalStream<'_>, archiver: &Archiver, reply: bool) -> Result<()> {
    let at = archiver.durable_end();
    stream.send_status(at, at, at, reply).await
}

/// Close the open segment: put it to every repository, then confirm it.
async fn store_segment(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    upkeep: &mut Upkeep,
    totals: &mut SessionTotals,
) -> Result<()> {
    let Some(segment) = archiver.seal() else {
        return Ok(());
    };
    store_sealed(stream, archiver, cx, upkeep, totals, segment).await
}

/// Put `bytes` at `key` in every repository.
async fn put_everywhere(cx: &SessionContext<'_>, key: &str, bytes: &Bytes, what: &str) -> Result<()> {
    let puts = cx.repos.iter().map(|repo| {
        let bytes = bytes.clone();
        async move { repo.put(key, bytes, PutOptions::default()).await.map_err(|e| e.context(format!("cannot store {what} {key} in {}", repo.location()))) }
    });
    futures::future::try_join_all(puts).await?;
    for repo in cx.repos {
        cx.metrics.stored(&repo.location(), bytes.len() as u64);
    }
    Ok(())
}

/// Store one part of the open transaction in every repository. Nothing is
/// confirmed: the segment ending with the transaction's Commit does that.
async fn store_part(cx: &SessionContext<'_>, totals: &mut SessionTotals, part: TransactionPart) -> Result<()> {
    let meta = part.meta.clone();
    let key = part_key(&meta.stream_id, meta.commit_lsn, meta.index);
    let bytes = Bytes::from(segment::part::encode(part, cx.sealer)?);
    put_everywhere(cx, &key, &bytes, "transaction part").await?;
    crate::failpoint::hit("stream.after_part_put");
    tracing::info!(commit_lsn = %meta.commit_lsn, xid = meta.xid, part = meta.index, changes = meta.changes, stored_bytes = bytes.len(), "stored a part of a large transaction");
    totals.parts += 1;
    Ok(())
}

/// Sample the sequences into a sealed segment, encode it, put it to every
/// repository, then confirm its end to the server.
async fn store_sealed(
    stream: &mut LogicalStream<'_>,
    archiver: &mut Archiver,
    cx: &SessionContext<'_>,
    upkeep: &mut Upkeep,
    totals: &mut SessionTotals,
    mut segment: ChangeSegment,
) -> Result<()> {
    // The segment's last commit was received, so its sequence values are
    // at most what the server reports now.
    segment.meta.sequences = upkeep.sample_sequences().await;
    let key = segment_key(&segment.meta.stream_id, segment.meta.start_lsn, segment.meta.end_lsn);
    let bytes = Bytes::from(segment::encode_sealed(&segment, cx.sealer)?);
    let meta = &segment.meta;
    put_everywhere(cx, &key, &bytes, "change segment").await?;
    crate::failpoint::hit("stream.after_segment_put");
    stream.send_status(meta.end_lsn, meta.end_lsn, meta.end_lsn, false).await?;
    archiver.confirm(meta.end_lsn);
    cx.metrics.durable(meta.end_lsn);
    let lag_ms = meta.last_commit_time.map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0)).unwrap_or(0);
    tracing::info!(
        start_lsn = %meta.start_lsn,
        end_lsn = %meta.end_lsn,
        transactions = meta.transactions,
        changes = meta.changes,
        sequences = meta.sequences.len(),
        raw_bytes = meta.raw_size,
        stored_bytes = bytes.len(),
        lag_ms,
        "stored change segment"
    );
    totals.segments += 1;
    totals.transactions += meta.transactions;
    totals.changes += meta.changes;
    totals.bytes += bytes.len() as u64;
    Ok(())
}
