//! Local filesystem backend.
//!
//! Objects are files under the repository root. A write goes to a temporary
//! file in the destination directory (named `.pgkeep-tmp-…`), is fsynced, then
//! renamed over the final name, and the directory is fsynced: an object is
//! never visible half-written, and a crash leaves only temp files, which
//! [`Storage::clean_incomplete`] removes and [`Storage::list`] never shows.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ObjectMeta, ObjectReader, ObjectWriter, PutIfAbsent, PutOptions, Storage, StorageKind, validate_key};
use crate::error::{Error, ErrorKind, Result};

/// Prefix of temporary files; never part of a valid key segment we write.
pub const TEMP_PREFIX: &str = ".pgkeep-tmp-";

/// A repository on the local filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// A backend rooted at `root`. The directory is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_error(&self, what: &str, path: &Path, e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
            std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::AccessDenied,
            _ => ErrorKind::Storage,
        };
        Error::new(kind, format!("cannot {what} {}", path.display())).with_source(e)
    }
}

fn to_utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn temp_name(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: u64 = rand::random();
    final_path.with_file_name(format!("{TEMP_PREFIX}{name}.{}.{nonce:016x}", std::process::id()))
}

/// fsync a directory so a rename inside it is durable.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await.map_err(std::io::Error::other)?
}

struct LocalWriter {
    storage: LocalStorage,
    key: String,
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
}

impl LocalWriter {
    async fn discard(&mut self) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.temp_path).await;
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Dropped without finish/abort: remove the temp file synchronously.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::internal("write after finish"))?;
        if let Err(e) = file.write_all(&data).await {
            let err = self.storage.io_error("write", &self.temp_path, e);
            self.discard().await;
            return Err(err);
        }
        self.written += data.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        let mut file = self.file.take().ok_or_else(|| Error::internal("finish called twice"))?;
        let synced = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        drop(file);
        if let Err(e) = synced {
            let _ = tokio::fs::remove_file(&self.temp_path).await;
            return Err(self.storage.io_error("sync", &self.temp_path, e));
        }
        if let Err(e) = tokio::fs::rename(&self.temp_path, &self.final_path).await {
            let _ = tokio::fs::remove_file(&self.temp_path).await;
            return Err(self.storage.io_error("rename into", &self.final_path, e));
        }
        if let Some(dir) = self.final_path.parent() {
            sync_dir(dir).await.map_err(|e| self.storage.io_error("sync directory", dir, e))?;
        }
        Ok(ObjectMeta { key: self.key.clone(), size: self.written, modified: Some(Utc::now()) })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await;
        Ok(())
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn kind(&self) -> StorageKind {
        StorageKind::Local
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn writer(&self, key: &str, _opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        let final_path = self.path_of(key)?;
        let dir = final_path.parent().expect("key has a parent: the root");
        tokio::fs::create_dir_all(dir).await.map_err(|e| self.io_error("create directory", dir, e))?;
        let temp_path = temp_name(&final_path);
        let file = tokio::fs::File::create(&temp_path).await.map_err(|e| self.io_error("create", &temp_path, e))?;
        Ok(Box::new(LocalWriter { storage: self.clone(), key: key.to_string(), final_path, temp_path, file: Some(file), written: 0 }))
    }

    async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, format!("object {key} not found in {}", self.location()))
            } else {
                self.io_error("open", &path, e)
            }
        })?;
        match range {
            None => Ok(Box::pin(file)),
            Some(r) => {
                file.seek(SeekFrom::Start(r.start)).await.map_err(|e| self.io_error("seek in", &path, e))?;
                Ok(Box::pin(file.take(r.end.saturating_sub(r.start))))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { key: key.to_string(), size: m.len(), modified: m.modified().ok().map(to_utc) })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("stat", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let location = self.location();
        tokio::task::spawn_blocking(move || walk(&root, &prefix, false))
            .await
            .map_err(|e| Error::internal(format!("listing task failed: {e}")))?
            .map_err(|e| Error::new(ErrorKind::Storage, format!("cannot list {location}")).with_source(e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error("delete", &path, e)),
        }
        // Tidy empty parent directories, never the root itself.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn clean_incomplete(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let location = self.location();
        let temps = tokio::task::spawn_blocking(move || walk(&root, &prefix, true))
            .await
            .map_err(|e| Error::internal(format!("listing task failed: {e}")))?
            .map_err(|e| Error::new(ErrorKind::Storage, format!("cannot list {location}")).with_source(e))?;
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let mut removed = 0;
        for t in temps {
            if t.modified.map(|m| m < cutoff).unwrap_or(true) {
                let path = self.root.join(&t.key);
                if tokio::fs::remove_file(&path).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Write a temp file, fsync it, then hard-link it to the final name:
    /// `link` fails if the name exists, so creation is exclusive and the
    /// object is never seen half-written.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutIfAbsent> {
        let final_path = self.path_of(key)?;
        let dir = final_path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await.map_err(|e| self.io_error("create directory", &dir, e))?;
        let temp = temp_name(&final_path);
        let (t, f) = (temp.clone(), final_path.clone());
        // Some(created) or None where the filesystem has no hard links (then the caller
        // claims another way).
        let linked = tokio::task::spawn_blocking(move || -> std::io::Result<Option<bool>> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&t)?;
            file.write_all(&data)?;
            file.sync_all()?;
            let linked = match std::fs::hard_link(&t, &f) {
                Ok(()) => Ok(Some(true)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some(false)),
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(libc::EPERM) => Ok(None),
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&t);
            linked
        })
        .await
        .map_err(|e| Error::internal(format!("conditional put task failed: {e}")))?
        .map_err(|e| self.io_error("create", &final_path, e))?;
        match linked {
            None => return Ok(PutIfAbsent::Unsupported),
            Some(false) => return Ok(PutIfAbsent::Exists),
            Some(true) => {}
        }
        sync_dir(&dir).await.map_err(|e| self.io_error("sync directory", &dir, e))?;
        Ok(PutIfAbsent::Created)
    }

    async fn check_writable(&self) -> Result<()> {
        let what = format!("local repository directory {}", self.root.display());
        // A file where the directory (or one of its parents) should be: say so in words.
        if let Some(file) = self.root.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
            let which = if file == self.root { String::new() } else { format!(": {} is a file", file.display()) };
            return Err(Error::config(format!("{what} is not a directory{which}")).with_hint("set BACKUP_DIR or --repo to a directory"));
        }
        tokio::fs::create_dir_all(&self.root).await.map_err(|e| {
            self.io_error("create", &self.root, e).context(format!("{what} cannot be created")).with_hint("set BACKUP_DIR or --repo to a writable directory")
        })?;
        let probe = self.root.join(format!("{TEMP_PREFIX}probe.{}", std::process::id()));
        let res = async {
            let mut f = tokio::fs::File::create(&probe).await?;
            f.write_all(b"pgkeep").await?;
            f.sync_all().await
        }
        .await;
        let _ = tokio::fs::remove_file(&probe).await;
        res.map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::PermissionDenied || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
                ErrorKind::AccessDenied
            } else {
                ErrorKind::Storage
            };
            Error::new(kind, format!("{what} is not writable")).with_source(e).with_hint("set BACKUP_DIR or --repo to a writable directory")
        })
    }
}

/// Walk `root` recursively and return objects whose key starts with
/// `prefix`: completed objects, or, with `temps`, only temp files.
fn walk(root: &Path, prefix: &str, temps: bool) -> std::io::Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    // Start from the deepest directory the prefix names, to avoid walking everything.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if start_rel.is_empty() { root.to_path_buf() } else { root.join(start_rel) };
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // An object or folder deleted while this walks (a concurrent
        // delete tidies empty folders too) is simply not listed.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            let rel = match path.strip_prefix(root) {
                Ok(r) => r.to_string_lossy().replace('\\', "/"),
                Err(_) => continue,
            };
            if ft.is_dir() {
                if rel.starts_with(prefix) || prefix.starts_with(&format!("{rel}/")) {
                    stack.push(path);
                }
                continue;
            }
            if !ft.is_file() || !rel.starts_with(prefix) {
                continue;
            }
            let is_temp = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
            if is_temp != temps {
                continue;
            }
            let md = match entry.metadata() {
                Ok(md) => md,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectMeta { key: rel, size: md.len(), modified: md.modified().ok().map(to_utc) });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let mut w = s.writer("a/b.bin", PutOptions::default()).await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        assert!(s.head("a/b.bin").await.unwrap().is_none());
        assert!(s.list("").await.unwrap().is_empty());
        assert_eq!(s.clean_incomplete("", Duration::ZERO).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn put_get_range_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        s.check_writable().await.unwrap();
        s.put("x/1", Bytes::from_static(b"hello world"), PutOptions::default()).await.unwrap();
        s.put("x/2", Bytes::from_static(b"2"), PutOptions::default()).await.unwrap();
        s.put("y/3", Bytes::from_static(b"3"), PutOptions::default()).await.unwrap();
        assert_eq!(&s.get("x/1", Some(6..11)).await.unwrap()[..], b"world");
        let keys: Vec<_> = s.list("x/").await.unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec!["x/1", "x/2"]);
        s.delete("x/1").await.unwrap();
        s.delete("x/1").await.unwrap();
        assert!(s.head("x/1").await.unwrap().is_none());
        let err = s.get("x/1", None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.user_line().contains("x/1"));
    }
}
