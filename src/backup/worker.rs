//! A COPY worker: one connection inside the backup's snapshot, taking tasks
//! from the shared plan, streaming `COPY … TO STDOUT` through the chunker,
//! the rayon pipeline (two chunks in flight) and its own pack sink.
//!
//! The connection is pgkeep's own protocol client
//! (`ReplicationConnection::connect_regular`, with the same TLS and
//! authentication): it hands CopyData payload to the chunker piece by piece
//! as it arrives, so a row larger than a chunk is split across chunks and
//! memory stays about `IN_FLIGHT + 1` chunks whatever the row size. The
//! row that spans chunks is fingerprinted here, in order ([`SpanningRow`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Mutex;
use tracing::Instrument;

use super::plan::{CopyTask, copy_sql};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, TableInfo, quote_literal};
use crate::pipeline::chunker::{Chunker, CutChunk};
use crate::pipeline::pack::PackSink;
use crate::pipeline::process::{self, ProcessedChunk, SpanningRow};
use crate::pipeline::{Compression, TableFingerprint};
use crate::progress::ProgressCounters;
use crate::replication::ReplicationConnection;
use crate::repo::manifest::{ChunkRef, ObjectEntry};

/// Chunks being compressed per worker while the next one is read.
const IN_FLIGHT: usize = 2;
/// Raw bytes read between progress updates.
const PROGRESS_STEP: usize = 1 << 20;

/// Shared state of all workers.
pub(crate) struct WorkerShared {
    /// Connection settings.
    pub db: DbSettings,
    /// Snapshot to import.
    pub snapshot: String,
    /// Tables.
    pub tables: Arc<Vec<TableInfo>>,
    /// Remaining tasks.
    pub queue: Mutex<VecDeque<CopyTask>>,
    /// Compression.
    pub compression: Compression,
    /// Encryption after compression, when the backup is encrypted.
    pub sealer: Option<Arc<crate::crypto::Sealer>>,
    /// Raw chunk size.
    pub chunk_size: usize,
    /// Progress counters.
    pub progress: Arc<ProgressCounters>,
    /// Per table, the tasks not finished yet (a table is done at zero).
    pub remaining_parts: Vec<AtomicU32>,
}

/// What one task produced.
#[derive(Debug)]
pub(crate) struct TaskResult {
    /// The task.
    pub task: CopyTask,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
    /// Rows and fingerprint.
    pub fingerprint: TableFingerprint,
    /// Raw bytes.
    pub raw_bytes: u64,
}

/// Run one worker until the queue is empty. Returns the task results and the packs written.
pub(crate) async fn run(id: usize, shared: Arc<WorkerShared>, mut sink: PackSink) -> Result<(Vec<TaskResult>, Vec<ObjectEntry>)> {
    let span = tracing::info_span!("copy_worker", worker = id);
    let result = async {
        let mut conn = ReplicationConnection::connect_regular(&shared.db).await?;
        let setup = format!("{SESSION_SETUP}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}", quote_literal(&shared.snapshot));
        conn.simple_query(&setup).await.map_err(|e| e.context(format!("worker {id} cannot import snapshot {}", shared.snapshot)))?;
        let mut results = Vec::new();
        loop {
            let Some(task) = shared.queue.lock().await.pop_front() else { break };
            let table = &shared.tables[task.table];
            let r = copy_task(&mut conn, &shared, table, task, &mut sink).instrument(tracing::debug_span!("table", table = %table.display())).await?;
            results.push(r);
        }
        let _ = conn.simple_query("COMMIT").await;
        let _ = conn.close().await;
        Ok(results)
    }
    .instrument(span)
    .await;
    match result {
        Ok(results) => Ok((results, sink.finish().await?)),
        Err(e) => {
            // Dropping the sink aborts its open uploads in the background: the
            // error must reach the orchestrator at once, so that it releases
            // the database before anything else (a stalled store would hold it).
            drop(sink);
            Err(e)
        }
    }
}

async fn copy_task(conn: &mut ReplicationConnection, shared: &WorkerShared, table: &TableInfo, task: CopyTask, sink: &mut PackSink) -> Result<TaskResult> {
    let started = std::time::Instant::now();
    let sql = copy_sql(table, &task);
    let what = format!("copy table {}", table.display());
    let fail = |e: Error| e.context(format!("COPY of table {} failed", table.display()));
    let mut reader = conn.copy_out(&sql, &what).await.map_err(fail)?;
    let mut chunker = Chunker::new(shared.chunk_size);
    let mut span = SpanningRow::default();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut out = TaskResult { task, chunks: Vec::new(), fingerprint: TableFingerprint::default(), raw_bytes: 0 };

    // The reader frames CopyData straight into the chunker's buffer, up to a
    // chunk's worth, counted for progress every MiB.
    loop {
        let before = chunker.buffer().len();
        let want = chunker.chunk_size().min(before + PROGRESS_STEP);
        let more = reader.read_into(chunker.buffer(), want).await.map_err(fail)?;
        shared.progress.bytes.fetch_add((chunker.buffer().len() - before) as u64, Ordering::Relaxed);
        if let Some(cut) = chunker.cut() {
            in_flight.push_back(spawn(cut, &mut span, shared));
            while in_flight.len() >= IN_FLIGHT {
                let chunk = in_flight.pop_front().expect("non-empty");
                store(sink, &mut out, chunk.join().await?, shared).await?;
            }
        }
        if !more {
            break;
        }
    }
    match chunker.finish() {
        Ok(Some(last)) => in_flight.push_back(spawn(last, &mut span, shared)),
        Ok(None) => {}
        Err(len) => {
            return Err(Error::new(ErrorKind::Database, format!("COPY output of table {} ended in the middle of a row ({len} bytes)", table.display())));
        }
    }
    while let Some(chunk) = in_flight.pop_front() {
        store(sink, &mut out, chunk.join().await?, shared).await?;
    }
    if shared.remaining_parts[out.task.table].fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.progress.tables_done.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(rows = out.fingerprint.rows, bytes = out.raw_bytes, part = out.task.part, ms = started.elapsed().as_millis() as u64, "copied");
    Ok(out)
}

/// A chunk on the rayon pool, and the row that spans into it, which was
/// hashed in order when the chunk was cut.
struct InFlight {
    rx: tokio::sync::oneshot::Receiver<Result<ProcessedChunk>>,
    spanning: TableFingerprint,
}

impl InFlight {
    async fn join(self) -> Result<ProcessedChunk> {
        let mut chunk = process::join(self.rx).await?;
        chunk.fingerprint.merge(self.spanning);
        Ok(chunk)
    }
}

/// Hash the part of `cut` that belongs to a row spanning chunks (in stream
/// order, here), and send the rest of the work to the rayon pool.
fn spawn(cut: CutChunk, span: &mut SpanningRow, shared: &WorkerShared) -> InFlight {
    let starts_inside_row = span.is_open();
    let spanning = span.feed(&cut.raw, cut.continues);
    InFlight { rx: process::spawn_process_rows(cut, starts_inside_row, shared.compression, shared.sealer.clone()), spanning }
}

async fn store(sink: &mut PackSink, out: &mut TaskResult, chunk: ProcessedChunk, shared: &WorkerShared) -> Result<()> {
    let at = sink.append(&chunk).await?;
    crate::failpoint::hit("backup.after_chunk");
    out.fingerprint.merge(chunk.fingerprint);
    out.raw_bytes += chunk.raw_size;
    shared.progress.rows.fetch_add(chunk.fingerprint.rows, Ordering::Relaxed);
    out.chunks.push(at);
    Ok(())
}
