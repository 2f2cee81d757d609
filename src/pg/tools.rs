//! Locating and running PostgreSQL's client programs (`pg_dump` for DDL
//! only, `pg_dumpall` for roles), with connection settings passed through the
//! environment — never on the command line, where `ps` would show them.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};

/// Directories that may hold PostgreSQL client programs, best first.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("PG_BINDIR") {
        dirs.push(PathBuf::from(d));
    }
    // Versioned Debian/Ubuntu install dirs, newest first.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> =
            entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok().map(|v| (v, e.path().join("bin")))).collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(path) = std::env::var("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The major version a program reports with `--version`.
fn tool_major(path: &Path) -> Option<u32> {
    let out = std::process::Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ver = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    ver.split('.').next()?.parse().ok()
}

/// Find `name` with a major version at least `server_major`.
pub fn find_tool(name: &str, server_major: u32) -> Result<PathBuf> {
    let mut seen = Vec::new();
    for dir in candidate_dirs() {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        match tool_major(&p) {
            Some(v) if v >= server_major => return Ok(p),
            Some(v) => seen.push(format!("{} ({v})", p.display())),
            None => {}
        }
    }
    Err(Error::new(
        ErrorKind::Config,
        format!("no {name} of version {server_major} or later found{}", if seen.is_empty() { String::new() } else { format!(" (found {})", seen.join(", ")) }),
    )
    .with_hint(format!("install the PostgreSQL {server_major} client programs or set PG_BINDIR")))
}

/// A command for a PostgreSQL client program connected to `db` through libpq's environment.
pub fn command(program: &Path, db: &DbSettings) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGHOST", &db.host)
        .env("PGPORT", db.port.to_string())
        .env("PGUSER", &db.user)
        .env("PGDATABASE", &db.dbname)
        .env("PGSSLMODE", db.sslmode.as_str())
        .env("PGCONNECT_TIMEOUT", db.connect_timeout.as_secs().max(2).to_string())
        .env("PGAPPNAME", "pgkeep")
        .env("PGOPTIONS", "-c statement_timeout=0 -c lock_timeout=0");
    if let Some(pw) = &db.password {
        cmd.env("PGPASSWORD", pw.expose());
    }
    if let Some(ca) = &db.sslrootcert {
        cmd.env("PGSSLROOTCERT", ca);
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Run a command and return its stdout; failures name the program and its last stderr line.
pub async fn run_capture(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| Error::new(ErrorKind::Internal, format!("cannot run {what}")).with_source(e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no error output");
        return Err(Error::new(ErrorKind::Database, format!("{what} failed: {}", last.trim())));
    }
    Ok(out.stdout)
}
