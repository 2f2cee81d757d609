//! Legacy archives: the `full_backup_YYYYMMDD_HHMMSS.dump.gz` files the old
//! backup scripts wrote (`pg_dump -Fc … | gzip`) into BACKUP_DIR (or its
//! `backups/` folder) and uploaded under S3_PREFIX.
//!
//! This module finds them in a repository (any key whose last segment has
//! that name — never an object of a pgkeep backup folder `backups/<id>/…`),
//! unpacks one into a private file in the system temp directory (free space
//! checked first, the gzip CRC and length at the end), reads what it holds
//! with `pg_restore` (its table of contents, and every table's rows from a
//! data-only script), loads it into a database with `pg_restore -j`, and
//! verifies that every table is there with the archive's row count. The pure
//! parsers of `pg_restore`'s output live in [`script`].

pub mod script;

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::Command;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{connect, tools};
use crate::progress::ProgressCounters;
use crate::repo::layout::{BACKUPS_PREFIX, BackupId};
use crate::repo::manifest::DatabaseInfo;
use crate::restore::verify::VerifyReport;
use crate::storage::Storage;
use script::failure_line;
pub use script::{ArchiveToc, TableRows};

/// File-name suffix of a legacy archive.
pub const ARCHIVE_SUFFIX: &str = ".dump.gz";

/// The legacy id (`full_backup_YYYYMMDD_HHMMSS`) of `key` when its last
/// segment is `full_backup_\d{8}_\d{6}.dump.gz` and it is not inside a
/// pgkeep backup folder.
pub fn archive_id(key: &str) -> Option<&str> {
    let (parent, name) = key.rsplit_once('/').unwrap_or(("", key));
    let id = name.strip_suffix(ARCHIVE_SUFFIX)?;
    let ts = id.strip_prefix("full_backup_")?.as_bytes();
    let shaped = ts.len() == 15 && ts.iter().enumerate().all(|(i, c)| if i == 8 { *c == b'_' } else { c.is_ascii_digit() });
    let in_backup_folder = parent.strip_prefix(BACKUPS_PREFIX).is_some_and(|p| p.split('/').next().is_some_and(|d| d.parse::<BackupId>().is_ok()));
    (shaped && !in_backup_folder).then_some(id)
}

/// One copy of a legacy archive in a repository.
#[derive(Debug, Clone)]
pub struct LegacyArchive {
    /// Object key in the repository.
    pub key: String,
    /// `full_backup_YYYYMMDD_HHMMSS`: the file name without `.dump.gz`.
    pub id: String,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// Last modification time, when the store reports it.
    pub modified: Option<DateTime<Utc>>,
    /// The repository holding it.
    pub repository: Arc<dyn Storage>,
}

impl LegacyArchive {
    /// The file name: `<id>.dump.gz`.
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }

    /// Where it is, for messages: `<repository location>/<key>`.
    pub fn location(&self) -> String {
        format!("{}/{}", self.repository.location().trim_end_matches('/'), self.key)
    }

    /// The time in its name. The old scripts used the machine's clock and
    /// did not record its zone; it is taken as UTC, like pgkeep ids.
    pub fn named_time(&self) -> Option<DateTime<Utc>> {
        let ts = self.id.strip_prefix("full_backup_")?;
        NaiveDateTime::parse_from_str(ts, "%Y%m%d_%H%M%S").ok().map(|t| Utc.from_utc_datetime(&t))
    }
}

/// Which legacy archive the user means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSelector {
    /// Any copy with this id (`full_backup_YYYYMMDD_HHMMSS`).
    Id(String),
    /// The copy with this file name, key, or `<location>/<key>`.
    Name(String),
}

impl ArchiveSelector {
    fn matches(&self, a: &LegacyArchive) -> bool {
        match self {
            ArchiveSelector::Id(id) => a.id == *id,
            ArchiveSelector::Name(n) => *n == a.key || *n == a.file_name() || *n == a.location(),
        }
    }
}

/// Every legacy archive in `repo`, by key.
pub async fn list_archives(repo: &Arc<dyn Storage>) -> Result<Vec<LegacyArchive>> {
    let objects = repo.list("").await?;
    Ok(objects
        .into_iter()
        .filter_map(|o| {
            let id = archive_id(&o.key)?.to_string();
            Some(LegacyArchive { id, size: o.size, modified: o.modified, repository: repo.clone(), key: o.key })
        })
        .collect())
}

/// The first archive `which` names, repositories in the order given (local
/// first), copies in key order. A repository that cannot be listed is
/// skipped; its error is returned only when no other repository has one.
pub async fn find_archive(repos: &[Arc<dyn Storage>], which: &ArchiveSelector) -> Result<Option<LegacyArchive>> {
    let mut failure = None;
    for repo in repos {
        match list_archives(repo).await {
            Ok(found) => {
                if let Some(a) = found.into_iter().find(|a| which.matches(a)) {
                    return Ok(Some(a));
                }
            }
            Err(e) => {
                tracing::warn!(repository = %repo.location(), error = %e.user_line(), "cannot list legacy archives");
                failure.get_or_insert(e);
            }
        }
    }
    failure.map_or(Ok(None), Err)
}

/// A maintenance connection (`postgres`, else `template1`).
async fn maintenance(server: &DbSettings) -> Result<tokio_postgres::Client> {
    match connect(&server.with_dbname("postgres")).await {
        Ok(c) => Ok(c.client),
        Err(_) => Ok(connect(&server.with_dbname("template1")).await?.client),
    }
}

/// The server's major version, and the encoding and locale of database
/// `like` when it exists (a restore creates its database like the one it replaces).
pub async fn server_context(server: &DbSettings, like: &str) -> Result<(u32, Option<DatabaseInfo>)> {
    let client = maintenance(server).await?;
    let fail = |e: tokio_postgres::Error| Error::new(ErrorKind::Database, format!("cannot read settings of {}:{}: {e}", server.host, server.port));
    let num: i32 = client.query_one("SELECT current_setting('server_version_num')::int4", &[]).await.map_err(fail)?.get(0);
    let info = client
        .query_opt("SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text FROM pg_database WHERE datname = $1", &[&like])
        .await
        .map_err(fail)?
        .map(|r| DatabaseInfo { encoding: r.get(0), lc_collate: r.get(1), lc_ctype: r.get(2), owner: None, settings: Vec::new(), grants: None });
    Ok((num as u32 / 10000, info))
}

/// `pg_restore` of at least `server_major`.
pub async fn find_pg_restore(server_major: u32) -> Result<PathBuf> {
    tokio::task::spawn_blocking(move || tools::find_tool("pg_restore", server_major))
        .await
        .map_err(|e| Error::internal(format!("looking for pg_restore failed: {e}")))?
}

/// An archive unpacked into a private temporary file, removed when dropped.
#[derive(Debug)]
pub struct UnpackedArchive {
    path: PathBuf,
    bytes: u64,
    what: String,
}

impl UnpackedArchive {
    /// The unpacked `pg_dump` custom-format file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for UnpackedArchive {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the unpacked legacy archive");
        }
    }
}

/// A gzip member is at least a 10-byte header and an 8-byte trailer.
const GZIP_MIN: u64 = 18;
/// Deflate never compresses better than about 1032:1.
const DEFLATE_MAX_RATIO: u64 = 1032;
/// Free space kept beyond the unpacked size.
const SPACE_MARGIN: u64 = 64 << 20;
const PIECE: usize = 256 << 10;

/// The smallest unpacked size that agrees with the gzip trailer's length
/// (modulo 2^32) and with gzip's worst-case growth of incompressible data:
/// a lower bound for a single-member file, as `gzip` writes.
fn unpacked_lower_bound(compressed: u64, trailer_len: u32) -> u64 {
    let floor = compressed.saturating_sub(compressed / 1000 + 64);
    let mut n = u64::from(trailer_len);
    while n < floor {
        n += 1 << 32;
    }
    n
}

/// Bytes available to an unprivileged user in the file system of `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Why gunzip stopped.
#[derive(Debug)]
enum GunzipFailure {
    /// The compressed bytes are not valid gzip (corrupt, truncated).
    Data(std::io::Error),
    /// The unpacked bytes could not be written.
    Write(std::io::Error),
}

/// Decompress `src` (one or more gzip members) into `dst`, reporting unpacked
/// bytes to `progress`. Checks each member's CRC and length.
fn gunzip_into(src: impl Read, dst: &mut impl Write, mut progress: impl FnMut(u64)) -> std::result::Result<u64, GunzipFailure> {
    let mut dec = flate2::bufread::MultiGzDecoder::new(std::io::BufReader::with_capacity(PIECE, src));
    let mut buf = vec![0u8; PIECE];
    let mut total = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GunzipFailure::Data(e)),
        };
        dst.write_all(&buf[..n]).map_err(GunzipFailure::Write)?;
        total += n as u64;
        progress(n as u64);
    }
    if total == 0 {
        return Err(GunzipFailure::Data(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no data")));
    }
    dst.flush().map_err(GunzipFailure::Write)?;
    Ok(total)
}

/// Synchronous reads over pieces sent from the async side.
struct PieceReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Unpack `archive` into a new private file in `dir`. The object is
/// streamed from the repository and decompressed on a blocking thread.
pub async fn unpack(archive: &LegacyArchive, dir: &Path, progress: Arc<ProgressCounters>) -> Result<UnpackedArchive> {
    let what = format!("legacy archive {}", archive.location());
    let damaged =
        |detail: String| Error::corrupt(format!("{what} is damaged: {detail}")).with_hint("restore another archive; `pgkeep list --legacy` lists them");
    if archive.size < GZIP_MIN {
        return Err(damaged(format!("{} bytes is too short for a gzip file", archive.size)));
    }
    // 1. Room for the unpacked file, from the length in the gzip trailer.
    let trailer = archive.repository.get(&archive.key, Some(archive.size - 4..archive.size)).await?;
    let trailer_len = u32::from_le_bytes(trailer.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| damaged("cannot read its gzip trailer".into()))?);
    let needed = unpacked_lower_bound(archive.size, trailer_len);
    if needed / DEFLATE_MAX_RATIO > archive.size {
        return Err(damaged(format!("its gzip trailer claims {needed} unpacked bytes, more than {} compressed bytes can hold", archive.size)));
    }
    if let Some(free) = free_space(dir)
        && free < needed.saturating_add(SPACE_MARGIN)
    {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("not enough space in {} to unpack {what}: it needs at least {needed} bytes, {free} are free", dir.display()),
        )
        .with_hint("set TMPDIR to a directory with room for the unpacked archive"));
    }
    progress.bytes_total.store(needed, std::sync::atomic::Ordering::Relaxed);

    // 2. A private file (mode 0600: it holds the whole database).
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let path = dir.join(format!("pgkeep-legacy-{}-{}-{nanos}.dump", archive.id, std::process::id()));
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
    }
    .map_err(|e| Error::new(ErrorKind::Storage, format!("cannot create {} to unpack {what}", path.display())).with_source(e))?;
    let mut unpacked = UnpackedArchive { path: path.clone(), bytes: 0, what: what.clone() };

    // 3. Stream the object to a blocking gunzip.
    let mut reader = archive.repository.reader(&archive.key, None).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let feed = async move {
        loop {
            let mut buf = BytesMut::with_capacity(PIECE);
            let n = reader.read_buf(&mut buf).await.map_err(|e| crate::storage::read_error(archive.repository.location(), &archive.key, e))?;
            // A closed channel means gunzip stopped early; its error tells why.
            if n == 0 || tx.send(buf.freeze()).await.is_err() {
                return Ok::<_, Error>(());
            }
        }
    };
    let counters = progress.clone();
    let decode = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(PIECE, &mut file);
        let counted = |n| {
            counters.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        };
        gunzip_into(PieceReader { rx, current: Bytes::new() }, &mut out, counted)
    });
    let (fed, decoded) = tokio::join!(feed, decode);
    fed.map_err(|e| e.context(format!("cannot read {what}")))?;
    unpacked.bytes = match decoded.map_err(|e| Error::internal(format!("gunzip worker failed: {e}")))? {
        Ok(n) => n,
        Err(GunzipFailure::Data(e)) => return Err(damaged(format!("gunzip failed: {e}"))),
        Err(GunzipFailure::Write(e)) => {
            let err = Error::new(ErrorKind::Storage, format!("cannot write the unpacked {what} to {}", path.display())).with_source(e);
            return Err(err.with_hint("set TMPDIR to a directory with room for the unpacked archive"));
        }
    };
    tracing::info!(archive = %archive.location(), bytes = unpacked.bytes, path = %path.display(), "legacy archive unpacked");
    Ok(unpacked)
}

/// A `pg_restore` that connects nowhere: no PG* variables reach it.
fn offline(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Run `cmd`, returning its stdout; on failure the first error line.
async fn output(mut cmd: Command) -> std::result::Result<Vec<u8>, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output().await.map_err(|e| format!("cannot run pg_restore: {e}"))?;
    if out.status.success() { Ok(out.stdout) } else { Err(failure_line(&out.stderr)) }
}

/// The archive's table of contents (`pg_restore --list`); fails when the
/// file is not a `pg_dump` custom-format archive this `pg_restore` reads.
pub async fn read_toc(pg_restore: &Path, unpacked: &UnpackedArchive) -> Result<ArchiveToc> {
    let mut cmd = offline(pg_restore);
    cmd.arg("--list").arg(&unpacked.path);
    let out = output(cmd).await.map_err(|line| {
        Error::corrupt(format!("{} does not hold a pg_dump custom-format archive that {} can read: {line}", unpacked.what, pg_restore.display()))
    })?;
    Ok(script::parse_toc(&String::from_utf8_lossy(&out)))
}

/// Every table's rows in the archive, counted from `pg_restore --data-only
/// -f -`. Reads all of the archive's data, so a truncated dump inside a
/// valid gzip file is found here, before anything is created.
pub async fn count_rows(pg_restore: &Path, unpacked: &UnpackedArchive) -> Result<Vec<TableRows>> {
    let mut cmd = offline(pg_restore);
    cmd.args(["--data-only", "-f", "-"]).arg(&unpacked.path).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = &unpacked.what;
    let damaged = |detail: String| Error::corrupt(format!("{what} is damaged: {detail}"));
    let mut child = cmd.spawn().map_err(|e| Error::internal(format!("cannot run {}", pg_restore.display())).with_source(e))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::internal("pg_restore pipes missing"));
    };
    let errors = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v).await;
        v
    });
    let mut counter = script::RowCounter::default();
    let mut lines = tokio::io::BufReader::with_capacity(PIECE, stdout);
    let mut line = Vec::new();
    let mut parse_problem = None;
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {
                if let Err(p) = counter.line(&line) {
                    parse_problem = Some(p);
                    break;
                }
            }
            Err(e) => return Err(Error::internal(format!("cannot read pg_restore's output: {e}"))),
        }
    }
    drop(lines);
    let status = child.wait().await.map_err(|e| Error::internal(format!("pg_restore vanished: {e}")))?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() && parse_problem.is_none() {
        return Err(damaged(format!("pg_restore cannot read its data: {}", failure_line(&stderr))));
    }
    match parse_problem {
        Some(p) => Err(damaged(p)),
        None => counter.finish().map_err(damaged),
    }
}

/// `dbname='…'` for `pg_restore -d`: a conninfo string, so a database name
/// containing `=` is never read as connection settings.
fn conninfo_dbname(name: &str) -> String {
    format!("dbname='{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Load the archive into `work` with `pg_restore -j <jobs> --exit-on-error`,
/// keeping owners and privileges. Connection settings go through the environment.
pub async fn load(pg_restore: &Path, unpacked: &UnpackedArchive, work: &DbSettings, jobs: usize) -> Result<()> {
    let mut cmd = tools::command(pg_restore, work);
    cmd.args(["--exit-on-error", "-j", &jobs.max(1).to_string(), "-d", &conninfo_dbname(&work.dbname)]).arg(&unpacked.path).kill_on_drop(true);
    output(cmd).await.map(|_| ()).map_err(|line| {
        let err = Error::new(ErrorKind::Database, format!("pg_restore of {} into database {} failed: {line}", unpacked.what, work.dbname));
        // Tool output, not a server error we hold: pg_restore relays the
        // server's message without its SQLSTATE (libpq's default verbosity),
        // so only the English wording can be recognised here. It picks a
        // hint and nothing else; in another language the error reads the
        // same, without the hint.
        if line.contains("role") && line.contains("does not exist") {
            err.with_hint("legacy archives carry no roles: create the missing role on the server, then restore again")
        } else {
            err
        }
    })
}

/// Check the restored database `work` against the archive: every `TABLE
/// DATA` entry of its table of contents has data in it, every table exists
/// with exactly the archive's row count (so none that had rows is empty),
/// and critical tables are in the archive and not empty.
pub async fn verify(work: &DbSettings, toc: &ArchiveToc, tables: &[TableRows], critical: &[String], jobs: usize) -> Result<VerifyReport> {
    let db_fail = |what: String| move |e: tokio_postgres::Error| Error::new(ErrorKind::Database, format!("{what}: {e}"));
    let mut report = VerifyReport { problems: script::unmatched(toc, tables), ..VerifyReport::default() };
    let conn = connect(work).await?;
    let present: HashSet<(String, String)> = conn
        .client
        .query("SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')", &[])
        .await
        .map_err(db_fail(format!("cannot list the tables of {}", work.dbname)))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut queue = VecDeque::new();
    for t in tables {
        if present.contains(&(t.schema.clone(), t.name.clone())) {
            queue.push_back(t.clone());
        } else {
            report.problems.push(format!("table {}.{} of the archive is missing from the restored database", t.schema, t.name));
        }
    }

    // Row counts, `jobs` connections at a time.
    let queue = Arc::new(Mutex::new(queue));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..jobs.clamp(1, tables.len().max(1)) {
        let (queue, results, work) = (queue.clone(), results.clone(), work.clone());
        set.spawn(async move {
            let conn = connect(&work).await?;
            loop {
                let Some(t) = queue.lock().map_err(|_| Error::internal("verify queue poisoned"))?.pop_front() else { break };
                let sql = format!("SELECT count(*)::int8 FROM ONLY {}", t.qualified());
                let n: i64 = conn.client.query_one(&sql, &[]).await.map_err(db_fail(format!("cannot count the rows of {}.{}", t.schema, t.name)))?.get(0);
                results.lock().map_err(|_| Error::internal("verify results poisoned"))?.push((t, n as u64));
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(j) = set.join_next().await {
        j.map_err(|e| Error::internal(format!("verify worker crashed: {e}")))??;
    }
    let results = std::mem::take(&mut *results.lock().map_err(|_| Error::internal("verify results poisoned"))?);
    for (t, n) in results {
        report.rows += n;
        if n == t.rows {
            report.tables_checked += 1;
        } else if n == 0 {
            report.problems.push(format!("table {}.{} is empty, the archive has {} rows", t.schema, t.name, t.rows));
        } else {
            report.problems.push(format!("table {}.{}: {n} rows restored, the archive has {}", t.schema, t.name, t.rows));
        }
    }

    // Critical tables: in the archive and not empty.
    for name in critical {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        match tables.iter().find(|t| t.schema == schema && t.name == table) {
            None => report.problems.push(format!("critical table {schema}.{table} is not in the archive")),
            Some(t) if t.rows == 0 => report.problems.push(format!("critical table {schema}.{table} is empty")),
            Some(_) => {}
        }
    }
    report.problems.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> std::result::Result<Vec<u8>, GunzipFailure> {
        let mut out = Vec::new();
        gunzip_into(data, &mut out, |_| {}).map(|_| out)
    }

    #[test]
    fn archive_names_are_recognised() {
        assert_eq!(archive_id("full_backup_20250101_020000.dump.gz"), Some("full_backup_20250101_020000"));
        assert_eq!(archive_id("backups/full_backup_20250101_020000.dump.gz"), Some("full_backup_20250101_020000"));
        assert_eq!(archive_id("old/prod/full_backup_20250101_020000.dump.gz"), Some("full_backup_20250101_020000"));
        for no in [
            "full_backup_20250101_020000.dump",
            "full_backup_2025010_020000.dump.gz",
            "full_backup_20250101-020000.dump.gz",
            "full_backup_20250101_020000_1.dump.gz",
            "xfull_backup_20250101_020000.dump.gz",
            "backups/full_backup_20250101_020000/manifest.json",
            "backups/full_backup_20250101_020000/full_backup_20250101_020000.dump.gz",
        ] {
            assert_eq!(archive_id(no), None, "{no}");
        }
    }

    #[test]
    fn gunzip_checks_integrity() {
        let raw: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let gz = gzip(&raw);
        assert_eq!(gunzip(&gz).unwrap(), raw);
        // Concatenated members are one file, as gunzip reads them.
        assert_eq!(gunzip(&[gzip(b"ab"), gzip(b"cd")].concat()).unwrap(), b"abcd");
        // Truncated anywhere, or one byte flipped: refused, never a short success.
        for cut in [1, 10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
            assert!(matches!(gunzip(&gz[..cut]), Err(GunzipFailure::Data(_))), "cut at {cut}");
        }
        for at in [gz.len() / 2, gz.len() - 6, gz.len() - 2] {
            let mut bad = gz.clone();
            bad[at] ^= 0x55;
            assert!(matches!(gunzip(&bad), Err(GunzipFailure::Data(_))), "flip at {at}");
        }
        assert!(matches!(gunzip(b"PGDMP not gzip at all"), Err(GunzipFailure::Data(_))));
        assert!(matches!(gunzip(b""), Err(GunzipFailure::Data(_))));
    }

    #[test]
    fn unpacked_size_bound_follows_the_trailer() {
        assert_eq!(unpacked_lower_bound(1000, 5000), 5000);
        // Incompressible data: never below the compressed size less gzip's overhead.
        assert_eq!(unpacked_lower_bound(6 << 30, 100), (1 << 33) + 100);
        assert!(unpacked_lower_bound(1 << 20, 1 << 20) == 1 << 20);
    }

    #[test]
    fn database_names_are_quoted_for_conninfo() {
        assert_eq!(conninfo_dbname("a'b\\c"), "dbname='a\\'b\\\\c'");
    }
}
