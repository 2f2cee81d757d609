//! A COPY worker: one connection inside the backup's snapshot, taking tasks
//! from the shared plan, streaming `COPY … TO STDOUT` through the chunker,
//! the rayon pipeline (two chunks in flight) and its own pack sink.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::StreamExt;
use tokio::sync::Mutex;
use tracing::Instrument;

use super::plan::{CopyTask, copy_sql};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, TableInfo, quote_literal};
use crate::pg::connect;
use crate::pipeline::chunker::Chunker;
use crate::pipeline::pack::PackSink;
use crate::pipeline::process::{self, ProcessedChunk};
use crate::pipeline::{Compression, TableFingerprint};
use crate::progress::ProgressCounters;
use crate::repo::manifest::{ChunkRef, ObjectEntry};

/// Chunks being compressed per worker while the next one is read.
const IN_FLIGHT: usize = 2;

/// Shared state of all workers.
pub struct WorkerShared {
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
pub struct TaskResult {
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
pub async fn run(id: usize, shared: Arc<WorkerShared>, mut sink: PackSink) -> Result<(Vec<TaskResult>, Vec<ObjectEntry>)> {
    let span = tracing::info_span!("copy_worker", worker = id);
    let result = async {
        let conn = connect(&shared.db).await?;
        let client = &conn.client;
        let setup = format!(
            "{SESSION_SETUP}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&shared.snapshot)
        );
        client.batch_execute(&setup).await.map_err(|e| {
            Error::new(ErrorKind::Database, format!("worker {id} cannot import snapshot {}: {}", shared.snapshot, crate::pg::error_message(&e)))
        })?;
        let mut results = Vec::new();
        loop {
            let Some(task) = shared.queue.lock().await.pop_front() else { break };
            let table = &shared.tables[task.table];
            let r = copy_task(client, &shared, table, task, &mut sink)
                .instrument(tracing::debug_span!("table", table = %table.display()))
                .await?;
            results.push(r);
        }
        let _ = client.batch_execute("COMMIT").await;
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

async fn copy_task(
    client: &tokio_postgres::Client,
    shared: &WorkerShared,
    table: &TableInfo,
    task: CopyTask,
    sink: &mut PackSink,
) -> Result<TaskResult> {
    let started = std::time::Instant::now();
    let sql = copy_sql(table, &task);
    let stream = client.copy_out(sql.as_str()).await.map_err(|e| copy_error(table, &e))?;
    futures::pin_mut!(stream);
    let mut chunker = Chunker::new(shared.chunk_size);
    let mut in_flight: VecDeque<tokio::sync::oneshot::Receiver<Result<ProcessedChunk>>> = VecDeque::new();
    let mut out = TaskResult { task, chunks: Vec::new(), fingerprint: TableFingerprint::default(), raw_bytes: 0 };

    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| copy_error(table, &e))?;
        if let Some(chunk) = chunker.push(&piece) {
            in_flight.push_back(process::spawn_process_sealed(chunk, shared.compression, true, shared.sealer.clone()));
            while in_flight.len() >= IN_FLIGHT {
                let rx = in_flight.pop_front().expect("non-empty");
                store(sink, &mut out, process::join(rx).await?, shared).await?;
            }
        }
    }
    match chunker.finish() {
        Ok(Some(last)) => in_flight.push_back(process::spawn_process_sealed(last, shared.compression, true, shared.sealer.clone())),
        Ok(None) => {}
        Err(len) => {
            return Err(Error::new(
                ErrorKind::Database,
                format!("COPY output of table {} ended in the middle of a row ({len} bytes)", table.display()),
            ));
        }
    }
    while let Some(rx) = in_flight.pop_front() {
        store(sink, &mut out, process::join(rx).await?, shared).await?;
    }
    if shared.remaining_parts[out.task.table].fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.progress.tables_done.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(rows = out.fingerprint.rows, bytes = out.raw_bytes, part = out.task.part, ms = started.elapsed().as_millis() as u64, "copied");
    Ok(out)
}

async fn store(sink: &mut PackSink, out: &mut TaskResult, chunk: ProcessedChunk, shared: &WorkerShared) -> Result<()> {
    let at = sink.append(&chunk).await?;
    crate::failpoint::hit("backup.after_chunk");
    out.fingerprint.merge(chunk.fingerprint);
    out.raw_bytes += chunk.raw_size;
    shared.progress.rows.fetch_add(chunk.fingerprint.rows, Ordering::Relaxed);
    shared.progress.bytes.fetch_add(chunk.raw_size, Ordering::Relaxed);
    out.chunks.push(at);
    Ok(())
}

fn copy_error(table: &TableInfo, e: &tokio_postgres::Error) -> Error {
    Error::new(ErrorKind::Database, format!("COPY of table {} failed: {}", table.display(), crate::pg::error_message(e)))
}
