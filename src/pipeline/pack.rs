//! Pack objects: a worker appends stored chunks to one open pack, written to
//! every healthy repository at once (a streaming put — a multipart upload on
//! S3). A pack is closed when it reaches the pack size; the chunk's (pack,
//! offset) goes into the manifest, so any chunk can be read with one ranged
//! GET.
//!
//! A repository whose write fails is dropped from the backup
//! ([`BackupTargets::fail`]) and the pack goes on in the others; only when
//! no repository is left does an append fail. Unfinished uploads are
//! aborted when their writer is dropped; finished packs of an interrupted
//! backup have no manifest and are never visible.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;

use super::process::ProcessedChunk;
use super::targets::BackupTargets;
use crate::error::Result;
use crate::repo::layout::BackupId;
use crate::repo::manifest::{ChunkRef, ObjectEntry};
use crate::storage::{ObjectWriter, PutOptions};

struct OpenPack {
    rel_key: String,
    /// One writer per healthy repository, with the repository's index.
    writers: Vec<(usize, Box<dyn ObjectWriter>)>,
    size: u64,
}

/// Appends chunks to pack objects `backups/<id>/<name>-<seq>.pack` in every healthy repository.
pub struct PackSink {
    targets: Arc<BackupTargets>,
    backup_id: BackupId,
    name: String,
    seq: u32,
    max_pack_size: u64,
    open: Option<OpenPack>,
    finished: Vec<ObjectEntry>,
}

impl PackSink {
    /// A sink for one worker. `name` is a relative folder + stem, e.g. `data/w01`.
    pub fn new(targets: Arc<BackupTargets>, backup_id: BackupId, name: impl Into<String>, max_pack_size: u64) -> Self {
        PackSink { targets, backup_id, name: name.into(), seq: 0, max_pack_size, open: None, finished: Vec::new() }
    }

    /// Append a processed chunk; returns where it lives.
    pub async fn append(&mut self, chunk: &ProcessedChunk) -> Result<ChunkRef> {
        if self.open.is_none() {
            self.seq += 1;
            let rel_key = format!("{}-{:06}.pack", self.name, self.seq);
            let key = self.backup_id.key(&rel_key);
            let healthy = self.targets.healthy();
            let started = join_all(healthy.iter().map(|(_, r)| r.writer(&key, PutOptions::default()))).await;
            let mut writers = Vec::with_capacity(started.len());
            for ((i, _), w) in healthy.iter().zip(started) {
                match w {
                    Ok(w) => writers.push((*i, w)),
                    Err(e) => self.targets.fail(*i, e)?,
                }
            }
            self.open = Some(OpenPack { rel_key, writers, size: 0 });
        }
        let pack = self.open.as_mut().expect("opened above");
        // Another worker may have dropped a repository since; dropping its
        // writer aborts the upload.
        pack.writers.retain(|(i, _)| !self.targets.is_failed(*i));
        let offset = pack.size;
        let data: Bytes = chunk.stored.clone();
        let written = join_all(pack.writers.iter_mut().map(|(_, w)| w.write(data.clone()))).await;
        let mut failed = Vec::new();
        for ((i, _), r) in pack.writers.iter().zip(written) {
            if let Err(e) = r {
                failed.push((*i, e));
            }
        }
        for (i, e) in failed {
            pack.writers.retain(|(j, _)| *j != i);
            self.targets.fail(i, e)?;
        }
        pack.size += data.len() as u64;
        let at = ChunkRef {
            object: pack.rel_key.clone(),
            offset,
            stored_size: data.len() as u64,
            raw_size: chunk.raw_size,
            stored_sha256: chunk.stored_sha256.clone(),
            raw_xxh3: chunk.raw_xxh3.clone(),
            rows: chunk.fingerprint.rows,
            continues: chunk.continues,
        };
        if pack.size >= self.max_pack_size {
            self.close().await?;
        }
        Ok(at)
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(pack) = self.open.take() {
            let writers: Vec<_> = pack.writers.into_iter().filter(|(i, _)| !self.targets.is_failed(*i)).collect();
            let indexes: Vec<usize> = writers.iter().map(|(i, _)| *i).collect();
            let finished = join_all(writers.into_iter().map(|(_, w)| w.finish())).await;
            for (i, r) in indexes.into_iter().zip(finished) {
                if let Err(e) = r {
                    self.targets.fail(i, e)?;
                }
            }
            self.finished.push(ObjectEntry { key: pack.rel_key, size: pack.size });
        }
        Ok(())
    }

    /// Close the open pack; returns every pack written, durable in every
    /// repository that is still healthy.
    pub async fn finish(mut self) -> Result<Vec<ObjectEntry>> {
        self.close().await?;
        Ok(std::mem::take(&mut self.finished))
    }

    /// Abort the open pack's uploads. Finished packs stay until cleaned up.
    pub async fn abort(mut self) -> Vec<ObjectEntry> {
        if let Some(pack) = self.open.take() {
            for (_, w) in pack.writers {
                let _ = w.abort().await;
            }
        }
        std::mem::take(&mut self.finished)
    }
}
