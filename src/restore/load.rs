//! Loading table data with `COPY … FROM STDIN`, two ways:
//! - [`load_table_whole`]: one table in one transaction that truncates it
//!   and copies every chunk in with `FREEZE`, so its rows are written frozen
//!   and all-visible (what [`pipeline`](super::pipeline) does for most tables);
//! - [`load_tables`]: every chunk of every table is one task, `--jobs`
//!   connections take tasks (for restores into a database whose tables
//!   already have foreign keys, and for a table too big for one connection).
//!
//! Each reads (and checks, and decompresses off the runtime) the next chunk
//! while the current one is being copied in.
//!
//! Chunks that a row larger than a chunk spans (`ChunkRef::continues`) form
//! one task: one `COPY … FROM STDIN` into which they are sent in order, one
//! chunk at a time, so memory stays about two chunks whatever the row size.

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

/// Chunks to load with one COPY: one chunk, or the run of chunks that rows
/// larger than a chunk span (`first..=last`).
#[derive(Debug, Clone, Copy)]
pub struct LoadTask {
    /// Index into the manifest's tables.
    pub table: usize,
    first: usize,
    last: usize,
}

/// The tasks of one table: each chunk alone, except that a chunk that
/// continues into the next is loaded with it. A table whose last chunk
/// continues is a damaged manifest, refused naming the table.
pub fn table_tasks(t: &TableEntry, table: usize) -> Result<Vec<LoadTask>> {
    let mut tasks = Vec::new();
    let mut first = 0;
    for (i, c) in t.chunks.iter().enumerate() {
        if !c.continues {
            tasks.push(LoadTask { table, first, last: i });
            first = i + 1;
        }
    }
    if first < t.chunks.len() {
        return Err(Error::corrupt(format!("table {}.{}: its last chunk ends inside a row that no chunk continues", t.schema, t.name)));
    }
    Ok(tasks)
}

/// The error of a failed load of table `t`, from the server's.
fn load_failed(t: &TableEntry) -> impl Fn(tokio_postgres::Error) -> Error {
    crate::pg::query_error(format!("loading table {}.{} failed", t.schema, t.name))
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
pub async fn load_tables(source: Arc<BackupSource>, db: &DbSettings, tables: &[usize], jobs: usize, progress: Arc<ProgressCounters>) -> Result<()> {
    let mut tasks = Vec::new();
    for &t in tables {
        tasks.extend(table_tasks(&source.manifest.tables[t], t)?);
    }
    // Biggest tasks first keeps the tail short.
    let raw_size = |t: &LoadTask| -> u64 { source.manifest.tables[t.table].chunks[t.first..=t.last].iter().map(|c| c.raw_size).sum() };
    tasks.sort_by_key(|t| std::cmp::Reverse(raw_size(t)));
    let jobs = jobs.max(1).min(tasks.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(tasks)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let (source, queue, db, progress) = (source.clone(), queue.clone(), db.clone(), progress.clone());
        set.spawn(worker(source, queue, db, progress).instrument(tracing::info_span!("load_worker", worker = i + 1)));
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

/// A session for loading: the backup's session settings, and
/// `synchronous_commit` off (a crash mid-load fails the restore anyway, and
/// the loaded data is verified before anything uses it).
pub async fn load_session(db: &DbSettings) -> Result<crate::pg::Connection> {
    let conn = connect(db).await?;
    conn.client
        .batch_execute(&format!("{SESSION_SETUP}; SET synchronous_commit = off"))
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("a load session cannot be configured: {e}")))?;
    Ok(conn)
}

async fn worker(source: Arc<BackupSource>, queue: Arc<Mutex<VecDeque<LoadTask>>>, db: DbSettings, progress: Arc<ProgressCounters>) -> Result<()> {
    let conn = load_session(&db).await?;
    let next = |queue: Arc<Mutex<VecDeque<LoadTask>>>, source: Arc<BackupSource>| async move {
        let task = queue.lock().await.pop_front();
        match task {
            Some(t) => {
                let chunk = source.manifest.tables[t.table].chunks[t.first].clone();
                let bytes = source.read_chunk(&chunk).await?;
                Ok::<_, Error>(Some((t, bytes)))
            }
            None => Ok(None),
        }
    };
    let mut current = next(queue.clone(), source.clone()).await?;
    while let Some((task, rows)) = current {
        // Prefetch the next task's first chunk while this one is copied in.
        let prefetch = tokio::spawn(next(queue.clone(), source.clone()));
        copy_task(&conn.client, &source, task, rows, &progress).await?;
        current = prefetch.await.map_err(|e| Error::internal(format!("prefetch failed: {e}")))??;
    }
    Ok(())
}

/// One COPY FROM STDIN with the task's chunks in order: `first` (already
/// read), then each next chunk, read while the one before is sent.
pub async fn copy_task(client: &tokio_postgres::Client, source: &Arc<BackupSource>, task: LoadTask, first: Bytes, progress: &ProgressCounters) -> Result<()> {
    let table = &source.manifest.tables[task.table];
    let sink = client.copy_in::<_, Bytes>(copy_in_sql(table).as_str()).await.map_err(load_failed(table))?;
    send_chunks(sink, source, task, first, progress).await
}

/// Read a task's first chunk, then [`copy_task`].
pub async fn load_part(client: &tokio_postgres::Client, source: &Arc<BackupSource>, task: LoadTask, progress: &ProgressCounters) -> Result<()> {
    let first = source.read_chunk(&source.manifest.tables[task.table].chunks[task.first]).await?;
    copy_task(client, source, task, first, progress).await
}

/// Send chunks `task.first..=task.last` into an open COPY, `first` already
/// read, each next one read while the one before is sent; then finish it.
async fn send_chunks(
    sink: tokio_postgres::CopyInSink<Bytes>,
    source: &Arc<BackupSource>,
    task: LoadTask,
    first: Bytes,
    progress: &ProgressCounters,
) -> Result<()> {
    let table = &source.manifest.tables[task.table];
    let fail = load_failed(table);
    futures::pin_mut!(sink);
    // A chunk counts as loaded once the connection has taken it on (the
    // next one was accepted), the last one once the COPY has finished: the
    // sink accepts a chunk long before the server has it.
    let count = |i: usize| {
        progress.bytes.fetch_add(table.chunks[i].raw_size, Ordering::Relaxed);
        progress.rows.fetch_add(table.chunks[i].rows, Ordering::Relaxed);
    };
    let mut rows = first;
    for i in task.first..=task.last {
        let following = (i < task.last).then(|| {
            let (source, chunk) = (source.clone(), table.chunks[i + 1].clone());
            tokio::spawn(async move { source.read_chunk(&chunk).await })
        });
        sink.send(rows).await.map_err(&fail)?;
        if i > task.first {
            count(i - 1);
        }
        match following {
            Some(read) => rows = read.await.map_err(|e| Error::internal(format!("chunk read failed: {e}")))??,
            None => break,
        }
    }
    sink.finish().await.map_err(&fail)?;
    count(task.last);
    Ok(())
}

/// Load every chunk of table `table` with one COPY on `client`. When the
/// table can be truncated in the same transaction (it is not an extension's
/// table, the role may, no foreign key points at it), that transaction
/// truncates it and copies `WITH (FREEZE)`: the rows are written frozen and
/// the pages all-visible, so reading them back, building indexes and
/// vacuuming later write nothing. Otherwise a plain COPY. Returns whether the
/// table was loaded frozen.
pub async fn load_table_whole(client: &tokio_postgres::Client, source: &Arc<BackupSource>, table: usize, progress: &ProgressCounters) -> Result<bool> {
    let t = &source.manifest.tables[table];
    if t.chunks.is_empty() {
        return Ok(false);
    }
    let task = LoadTask { table, first: 0, last: t.chunks.len() - 1 };
    table_tasks(t, table)?; // a damaged chain of split rows is refused, named
    let fail = load_failed(t);
    // The first chunk is read while the transaction starts.
    let first = {
        let (source, chunk) = (source.clone(), t.chunks[0].clone());
        tokio::spawn(async move { source.read_chunk(&chunk).await })
    };
    let mut frozen = t.extension.is_none() && begin_truncated(client, t).await?;
    let mut sink = None;
    if frozen {
        match client.copy_in::<_, Bytes>(format!("{} WITH (FREEZE)", copy_in_sql(t)).as_str()).await {
            Ok(s) => sink = Some(s),
            Err(e) => {
                tracing::debug!(table = %qualified(&t.schema, &t.name), error = %crate::pg::error_message(&e), "COPY FREEZE refused; plain COPY");
                client.batch_execute("ROLLBACK").await.map_err(&fail)?;
                frozen = false;
            }
        }
    }
    let sink = match sink {
        Some(s) => s,
        None => client.copy_in::<_, Bytes>(copy_in_sql(t).as_str()).await.map_err(&fail)?,
    };
    let first = first.await.map_err(|e| Error::internal(format!("chunk read failed: {e}")))??;
    send_chunks(sink, source, task, first, progress).await?;
    if frozen {
        client.batch_execute("COMMIT").await.map_err(&fail)?;
    }
    Ok(frozen)
}

/// `BEGIN; TRUNCATE ONLY t`: true when the table is now truncated in an
/// open transaction; false (transaction rolled back) when the server
/// refuses, e.g. a foreign key points at it or the role lacks TRUNCATE.
async fn begin_truncated(client: &tokio_postgres::Client, t: &TableEntry) -> Result<bool> {
    match client.batch_execute(&format!("BEGIN; TRUNCATE ONLY {}", qualified(&t.schema, &t.name))).await {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::debug!(table = %qualified(&t.schema, &t.name), error = %crate::pg::error_message(&e), "cannot truncate before loading; plain COPY");
            client.batch_execute("ROLLBACK").await.map_err(load_failed(t))?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::ChunkRef;

    fn table(continues: &[bool]) -> TableEntry {
        let chunk = |c: bool| ChunkRef {
            object: "data/w01-000001.pack".into(),
            offset: 0,
            stored_size: 1,
            raw_size: 1,
            stored_sha256: String::new(),
            raw_xxh3: String::new(),
            rows: 0,
            continues: c,
        };
        TableEntry {
            schema: "public".into(),
            name: "t".into(),
            oid: 1,
            columns: vec![],
            rows: 0,
            raw_bytes: 0,
            fingerprint: String::new(),
            chunks: continues.iter().map(|&c| chunk(c)).collect(),
            extension: None,
        }
    }

    #[test]
    fn continued_chunks_load_in_one_task() {
        let spans = |c: &[bool]| table_tasks(&table(c), 0).unwrap().iter().map(|t| (t.first, t.last)).collect::<Vec<_>>();
        assert_eq!(spans(&[]), vec![]);
        assert_eq!(spans(&[false, false]), vec![(0, 0), (1, 1)]);
        assert_eq!(spans(&[false, true, true, false, false]), vec![(0, 0), (1, 3), (4, 4)]);
        let e = table_tasks(&table(&[false, true]), 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.user_line().contains("public.t"), "{}", e.user_line());
    }
}
