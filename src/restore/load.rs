//! Parallel data load: every chunk of every table is one task; `--jobs`
//! connections take tasks and run `COPY … FROM STDIN` with the chunk's rows.
//! Each worker reads (and checks, and decompresses off the runtime) its next
//! chunk while the current one is being copied in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::Mutex;
use tracing::Instrument;

use super::source::BackupSource;
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{SESSION_SETUP, qualified, quote_ident};
use crate::pg::connect;
use crate::progress::ProgressCounters;
use crate::repo::manifest::TableEntry;

/// One chunk to load.
#[derive(Debug, Clone, Copy)]
struct LoadTask {
    table: usize,
    chunk: usize,
}

/// The COPY FROM statement for a table of the manifest.
pub fn copy_in_sql(t: &TableEntry) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    if cols.is_empty() {
        format!("COPY {} FROM STDIN", qualified(&t.schema, &t.name))
    } else {
        format!("COPY {} ({}) FROM STDIN", qualified(&t.schema, &t.name), cols.join(", "))
    }
}

/// Load `tables` (indexes into the manifest's tables) into `db`.
pub async fn load_tables(
    source: Arc<BackupSource>,
    db: &DbSettings,
    tables: &[usize],
    jobs: usize,
    progress: Arc<ProgressCounters>,
) -> Result<()> {
    let mut tasks = Vec::new();
    for &t in tables {
        for c in 0..source.manifest.tables[t].chunks.len() {
            tasks.push(LoadTask { table: t, chunk: c });
        }
    }
    // Biggest chunks first keeps the tail short.
    tasks.sort_by_key(|t| std::cmp::Reverse(source.manifest.tables[t.table].chunks[t.chunk].raw_size));
    let jobs = jobs.max(1).min(tasks.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(tasks)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let (source, queue, db, progress) = (source.clone(), queue.clone(), db.clone(), progress.clone());
        set.spawn(worker(i + 1, source, queue, db, progress).instrument(tracing::info_span!("load_worker", worker = i + 1)));
    }
    while let Some(joined) = set.join_next().await {
        let r = joined.map_err(|e| Error::internal(format!("load worker crashed: {e}"))).and_then(|r| r);
        if let Err(e) = r {
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(e);
        }
    }
    Ok(())
}

async fn worker(
    id: usize,
    source: Arc<BackupSource>,
    queue: Arc<Mutex<VecDeque<LoadTask>>>,
    db: DbSettings,
    progress: Arc<ProgressCounters>,
) -> Result<()> {
    let conn = connect(&db).await?;
    // synchronous_commit off: a crash mid-load fails the restore anyway, and
    // the loaded data is verified before anything uses it.
    conn.client
        .batch_execute(&format!("{SESSION_SETUP}; SET synchronous_commit = off"))
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("load worker {id} cannot configure its session: {e}")))?;
    let next = |queue: Arc<Mutex<VecDeque<LoadTask>>>, source: Arc<BackupSource>| async move {
        let task = queue.lock().await.pop_front();
        match task {
            Some(t) => {
                let chunk = source.manifest.tables[t.table].chunks[t.chunk].clone();
                let bytes = source.read_chunk(&chunk).await?;
                Ok::<_, Error>(Some((t, bytes)))
            }
            None => Ok(None),
        }
    };
    let mut current = next(queue.clone(), source.clone()).await?;
    while let Some((task, rows)) = current {
        // Prefetch the next chunk while this one is copied in.
        let prefetch = tokio::spawn(next(queue.clone(), source.clone()));
        let table = &source.manifest.tables[task.table];
        let n = rows.len() as u64;
        copy_chunk(&conn.client, table, rows).await?;
        progress.bytes.fetch_add(n, Ordering::Relaxed);
        progress.rows.fetch_add(table.chunks[task.chunk].rows, Ordering::Relaxed);
        current = prefetch.await.map_err(|e| Error::internal(format!("prefetch failed: {e}")))??;
    }
    Ok(())
}

async fn copy_chunk(client: &tokio_postgres::Client, table: &TableEntry, rows: Bytes) -> Result<()> {
    let what = format!("loading table {}.{}", table.schema, table.name);
    let fail = crate::pg::query_error(format!("{what} failed"));
    let sink = client.copy_in::<_, Bytes>(copy_in_sql(table).as_str()).await.map_err(&fail)?;
    futures::pin_mut!(sink);
    sink.send(rows).await.map_err(&fail)?;
    sink.finish().await.map_err(&fail)?;
    Ok(())
}
