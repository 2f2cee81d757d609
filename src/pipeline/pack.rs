//! Pack objects: a worker appends stored chunks to one open pack, written to
//! every repository at once (a streaming put — a multipart upload on S3). A
//! pack is closed when it reaches the pack size; the chunk's (pack, offset)
//! goes into the manifest, so any chunk can be read with one ranged GET.
//!
//! If anything fails, [`PackSink::abort`] aborts the open uploads; finished
//! packs of an interrupted backup have no manifest and are never visible.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;

use super::process::ProcessedChunk;
use crate::error::Result;
use crate::repo::layout::BackupId;
use crate::repo::manifest::{ChunkRef, ObjectEntry};
use crate::storage::{ObjectWriter, PutOptions, Storage};

struct OpenPack {
    rel_key: String,
    writers: Vec<Box<dyn ObjectWriter>>,
    size: u64,
}

/// Appends chunks to pack objects `backups/<id>/<name>-<seq>.pack` in every repository.
pub struct PackSink {
    repos: Vec<Arc<dyn Storage>>,
    backup_id: BackupId,
    name: String,
    seq: u32,
    max_pack_size: u64,
    open: Option<OpenPack>,
    finished: Vec<ObjectEntry>,
}

impl PackSink {
    /// A sink for one worker. `name` is a relative folder + stem, e.g. `data/w01`.
    pub fn new(repos: Vec<Arc<dyn Storage>>, backup_id: BackupId, name: impl Into<String>, max_pack_size: u64) -> Self {
        PackSink {
            repos,
            backup_id,
            name: name.into(),
            seq: 0,
            max_pack_size,
            open: None,
            finished: Vec::new(),
        }
    }

    /// Append a processed chunk; returns where it lives.
    pub async fn append(&mut self, chunk: &ProcessedChunk) -> Result<ChunkRef> {
        if self.open.is_none() {
            self.seq += 1;
            let rel_key = format!("{}-{:06}.pack", self.name, self.seq);
            let key = self.backup_id.key(&rel_key);
            let writers = try_join_all(self.repos.iter().map(|r| r.writer(&key, PutOptions::default()))).await?;
            self.open = Some(OpenPack { rel_key, writers, size: 0 });
        }
        let pack = self.open.as_mut().expect("opened above");
        let offset = pack.size;
        let data: Bytes = chunk.stored.clone();
        try_join_all(pack.writers.iter_mut().map(|w| w.write(data.clone()))).await?;
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
            try_join_all(pack.writers.into_iter().map(|w| w.finish())).await?;
            self.finished.push(ObjectEntry {
                key: pack.rel_key,
                size: pack.size,
            });
        }
        Ok(())
    }

    /// Close the open pack; returns every pack written, durable in every repository.
    pub async fn finish(mut self) -> Result<Vec<ObjectEntry>> {
        self.close().await?;
        Ok(std::mem::take(&mut self.finished))
    }

    /// Abort the open pack's uploads. Finished packs stay until cleaned up.
    pub async fn abort(mut self) -> Vec<ObjectEntry> {
        if let Some(pack) = self.open.take() {
            for w in pack.writers {
                let _ = w.abort().await;
            }
        }
        std::mem::take(&mut self.finished)
    }
}
