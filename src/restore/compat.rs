//! Whether a backup may be restored onto the target server's major version.
//!
//! A backup's schema is SQL written by a pg_dump at least as new as the
//! source server. PostgreSQL supports loading such a dump into the same or
//! a newer major (the upgrade path: a backup of 15 restores onto 17), never
//! into an older one: pg_dump writes syntax and catalog features of the
//! source (for example `NOT NULL` constraints with names on 18, `MAINTAIN`
//! privileges on 17) that an older server rejects halfway through, or —
//! worse — accepts with another meaning. So an older target is refused
//! before anything is touched, naming both versions.

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::ServerInfo;

/// The major of a `server_version_num` (150018 → 15).
pub fn major(version_num: u32) -> u32 {
    version_num / 10_000
}

/// Refuse a target server older (by major) than the backup's source: `Ok`
/// for the same or a newer major.
pub fn check_versions(source: &ServerInfo, target_version_num: u32, target: &str) -> Result<()> {
    let (from, to) = (major(source.version_num), major(target_version_num));
    if to >= from {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "cannot restore a backup of PostgreSQL {} onto {target}, which runs PostgreSQL {to}: restoring onto an older major version is not supported",
            source.version
        ),
    )
    .with_hint(format!("restore onto a server running PostgreSQL {from} or later")))
}

/// [`check_versions`] against the server `db` points at, through its
/// `postgres` (or `template1`) database: the configured database need not
/// exist on a new cluster.
pub async fn check_target(db: &DbSettings, source: &ServerInfo) -> Result<()> {
    let conn = match crate::pg::connect(&db.with_dbname("postgres")).await {
        Ok(c) => c,
        Err(_) => crate::pg::connect(&db.with_dbname("template1")).await?,
    };
    let num: i32 = conn
        .client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(crate::pg::query_error(format!("reading the server version of {}:{}", db.host, db.port)))?
        .get(0);
    check_versions(source, num as u32, &format!("{}:{}", db.host, db.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(num: u32) -> ServerInfo {
        ServerInfo { version: format!("{}.{}", num / 10_000, num % 10_000), version_num: num, system_identifier: "1".into(), timeline: 1 }
    }

    #[test]
    fn same_or_newer_major_is_fine_older_is_refused_naming_both() {
        assert!(check_versions(&source(150_018), 150_002, "h:1").is_ok());
        assert!(check_versions(&source(150_018), 170_011, "h:1").is_ok());
        let e = check_versions(&source(170_011), 160_015, "db.example:5432").unwrap_err();
        let line = e.user_line();
        assert!(line.contains("PostgreSQL 17.11") && line.contains("PostgreSQL 16") && line.contains("db.example:5432"), "{line}");
        assert!(!line.contains('\n'));
    }
}
