//! The databases a restore works with: creating the temporary database,
//! dropping it on failure, and the swap (`<name>` → `<name>_old`, temp →
//! `<name>`) and rollback, done from the server's maintenance database with
//! connections to the target closed and refused while renaming.

use chrono::Utc;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{quote_ident, quote_literal};
use crate::pg::connect;
use crate::repo::manifest::DatabaseInfo;

/// Name of a new temporary database: `restore_temp_YYYYMMDD_HHMMSS`.
pub fn temp_db_name() -> String {
    format!("restore_temp_{}", Utc::now().format("%Y%m%d_%H%M%S"))
}

/// Create a temporary database named [`temp_db_name`], with a `_N` suffix
/// when another restore took that name in the same second. Returns the name.
pub async fn create_temp_database(server: &DbSettings, info: Option<&DatabaseInfo>) -> Result<String> {
    create_unique_database(server, &temp_db_name(), info).await
}

/// Create database `base`, or `base_2`, `base_3`… when taken (also when two
/// processes race for the same name). Returns the name created.
pub async fn create_unique_database(server: &DbSettings, base: &str, info: Option<&DatabaseInfo>) -> Result<String> {
    for n in 1..100 {
        let name = if n == 1 { base.to_string() } else { format!("{base}_{n}") };
        if database_exists(server, &name).await? {
            continue;
        }
        match create_database(server, &name, info).await {
            Ok(()) => return Ok(name),
            Err(e) if is_name_taken(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::internal(format!("cannot find a free database name like {base}")))
}

/// Whether a failed CREATE DATABASE means another session took the name
/// first, by SQLSTATE: `42P04` duplicate_database, or `23505`
/// unique_violation on pg_database when both passed the existence check at
/// once (the only unique index CREATE DATABASE inserts into). Never the
/// wording, which follows the server's `lc_messages`.
pub fn is_name_taken(e: &Error) -> bool {
    matches!(e.sqlstate(), Some("42P04" | "23505"))
}

use crate::pg::query_error as db_error;

/// A `restore_temp_*` database found on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempDatabase {
    /// Its name.
    pub name: String,
    /// Whether any session is connected to it (a restore may be running).
    pub in_use: bool,
    /// When its name says it was created, if the name parses.
    pub created: Option<chrono::DateTime<Utc>>,
}

impl TempDatabase {
    /// Left over by an interrupted restore: nobody connected, and created
    /// more than `min_age` ago (a running restore between two steps may
    /// briefly have no session).
    pub fn is_leftover(&self, min_age: std::time::Duration) -> bool {
        let old = self.created.is_none_or(|c| (Utc::now() - c).to_std().unwrap_or_default() >= min_age);
        !self.in_use && old
    }
}

/// Every `restore_temp_*` database on the server, by name.
pub async fn temp_databases(server: &DbSettings) -> Result<Vec<TempDatabase>> {
    let client = maintenance(server).await?;
    let rows = client
        .query(
            "SELECT d.datname::text, EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datname = d.datname) \
             FROM pg_catalog.pg_database d WHERE d.datname LIKE 'restore\\_temp\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_error("cannot list temporary restore databases".to_string()))?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let created = name
                .strip_prefix("restore_temp_")
                .and_then(|rest| rest.get(..15))
                .and_then(|ts| chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%d_%H%M%S").ok())
                .map(|n| n.and_utc());
            TempDatabase { name, in_use: r.get(1), created }
        })
        .collect())
}

/// A connection to the server's maintenance database (`postgres`, else `template1`).
async fn maintenance(server: &DbSettings) -> Result<tokio_postgres::Client> {
    match connect(&server.with_dbname("postgres")).await {
        Ok(c) => Ok(c.client),
        Err(_) => Ok(connect(&server.with_dbname("template1")).await?.client),
    }
}

/// Whether database `name` exists on the server.
pub async fn database_exists(server: &DbSettings, name: &str) -> Result<bool> {
    let client = maintenance(server).await?;
    let row = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.map_err(db_error(format!("cannot look up database {name}")))?;
    Ok(row.is_some())
}

/// Create database `name` like the backed-up one (encoding and locale), from template0.
pub async fn create_database(server: &DbSettings, name: &str, info: Option<&DatabaseInfo>) -> Result<()> {
    let client = maintenance(server).await?;
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(i) = info {
        sql.push_str(&format!(" ENCODING {} LC_COLLATE {} LC_CTYPE {}", quote_literal(&i.encoding), quote_literal(&i.lc_collate), quote_literal(&i.lc_ctype)));
    }
    client.batch_execute(&sql).await.map_err(db_error(format!("cannot create database {name} on {}:{}", server.host, server.port)))
}

/// Give database `name` the backed-up database's owner and database-level
/// settings (`ALTER DATABASE … SET`). Done after the load, so settings such
/// as a database-wide `statement_timeout` never apply to pgkeep's own
/// sessions. An owner role missing on this server is a warning, not a failure.
pub async fn apply_database_properties(server: &DbSettings, name: &str, info: Option<&DatabaseInfo>) -> Result<()> {
    let Some(info) = info else { return Ok(()) };
    let client = maintenance(server).await?;
    if let Some(owner) = &info.owner {
        let sql = format!("ALTER DATABASE {} OWNER TO {}", quote_ident(name), quote_ident(owner));
        if let Err(e) = client.batch_execute(&sql).await {
            tracing::warn!(database = name, owner = %owner, error = %e, "cannot give the restored database its original owner");
        }
    }
    for setting in &info.settings {
        let Some(sql) = alter_database_set(name, setting) else { continue };
        client.batch_execute(&sql).await.map_err(db_error(format!("cannot apply database setting {} to {name}", setting.split('=').next().unwrap_or(""))))?;
    }
    // Privileges on the database: the defaults of CREATE DATABASE go, the recorded ones come.
    if let Some(grants) = &info.grants {
        client
            .batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(name)))
            .await
            .map_err(db_error(format!("cannot reset the privileges of database {name}")))?;
        for g in grants {
            let Some(sql) = grant_on_database(name, g) else { continue };
            if let Err(e) = client.batch_execute(&sql).await {
                // A grantee missing on this server: the restore stands, without that grant.
                tracing::warn!(database = name, grant = %g, error = %e, "cannot restore a database privilege");
            }
        }
    }
    Ok(())
}

/// `GRANT privilege ON DATABASE db TO grantee [WITH GRANT OPTION]` for one
/// `grantee:privilege:grantable` entry; `None` for anything malformed.
pub fn grant_on_database(db: &str, entry: &str) -> Option<String> {
    let (rest, grantable) = entry.rsplit_once(':')?;
    let (grantee, privilege) = rest.rsplit_once(':')?;
    if !matches!(privilege, "CREATE" | "CONNECT" | "TEMPORARY") || grantee.is_empty() {
        return None;
    }
    let to = if grantee == "PUBLIC" { "PUBLIC".to_string() } else { quote_ident(grantee) };
    let option = if grantable == "true" { " WITH GRANT OPTION" } else { "" };
    Some(format!("GRANT {privilege} ON DATABASE {} TO {to}{option}", quote_ident(db)))
}

/// `ALTER DATABASE name SET …` for one `name=value` of `pg_db_role_setting`.
/// List-valued settings (search_path and the like) are split into quoted
/// elements, as pg_dump does; one quoted literal would become one element.
pub fn alter_database_set(db: &str, setting: &str) -> Option<String> {
    const LIST_SETTINGS: &[&str] = &["search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries", "local_preload_libraries"];
    let (key, value) = setting.split_once('=')?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return None;
    }
    let rhs = if LIST_SETTINGS.contains(&key.to_ascii_lowercase().as_str()) {
        // Elements are identifiers, double-quoted when needed; each becomes one
        // literal holding the bare name (the server re-quotes it when storing).
        let element = |raw: &str| {
            let t = raw.trim();
            let bare = match t.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                Some(inner) => inner.replace("\"\"", "\""),
                None => t.to_string(),
            };
            quote_literal(&bare)
        };
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in value.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                ',' if !quoted => {
                    items.push(element(&cur));
                    cur.clear();
                }
                _ => cur.push(c),
            }
        }
        items.push(element(&cur));
        items.join(", ")
    } else {
        quote_literal(value)
    };
    Some(format!("ALTER DATABASE {} SET {key} = {rhs}", quote_ident(db)))
}

/// Drop database `name`, closing its sessions first.
pub async fn drop_database(server: &DbSettings, name: &str) -> Result<()> {
    let client = maintenance(server).await?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await.map_err(db_error(format!("cannot drop database {name}")))
}

/// What a swap did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapOutcome {
    /// Sessions terminated on the target.
    pub sessions_terminated: u64,
    /// Where the previous database went (`<name>_old`).
    pub previous_renamed_to: Option<String>,
    /// Where an earlier `<name>_old` went, kept rather than dropped.
    pub older_kept_as: Option<String>,
}

/// `ALTER DATABASE name …`: as the restoring role, or, when it does not
/// hold the owner's privileges (42501) but may become the owner (`SET ROLE`:
/// a member without INHERIT, or on 16+ a grant `WITH INHERIT FALSE, SET
/// TRUE`), as the owner. Renaming also needs the owner to have CREATEDB.
async fn alter_database(client: &tokio_postgres::Client, name: &str, rest: &str, what: String) -> Result<()> {
    let sql = format!("ALTER DATABASE {} {rest}", quote_ident(name));
    let e = match client.batch_execute(&sql).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if e.code() != Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return Err(db_error(what)(e));
    }
    let owner: Option<String> = client
        .query_opt(
            "SELECT r.rolname::text FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
             WHERE d.datname = $1 AND r.rolname <> current_user \
               AND CASE WHEN current_setting('server_version_num')::int >= 160000 THEN pg_has_role(d.datdba, 'SET') \
                        ELSE pg_has_role(d.datdba, 'MEMBER') END",
            &[&name],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    let Some(owner) = owner else { return Err(db_error(what)(e)) };
    client
        .batch_execute(&format!("SET ROLE {}", quote_ident(&owner)))
        .await
        .map_err(db_error(format!("cannot become role {owner}, the owner of database {name}")))?;
    let done = client.batch_execute(&sql).await.map_err(db_error(format!("{what} (as its owner {owner})")));
    let reset = client.batch_execute("RESET ROLE").await.map_err(db_error("cannot reset the role"));
    done.and(reset)
}

/// Close `name` to new connections and terminate its sessions; returns how many.
async fn close_database(client: &tokio_postgres::Client, name: &str) -> Result<u64> {
    alter_database(client, name, "ALLOW_CONNECTIONS false", format!("cannot close database {name} to new connections")).await?;
    // Only sessions this role may end: all for a superuser; otherwise those of
    // non-superuser roles whose privileges it holds (or any, with
    // pg_signal_backend): pg_terminate_backend checks privileges (USAGE),
    // not membership, which on 16+ may be SET without INHERIT.
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(a.pid))::int8 FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid() \
               AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                    OR (NOT coalesce(r.rolsuper, true) AND (pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))))",
            &[&name],
        )
        .await
        .map_err(db_error(format!("cannot terminate sessions on {name}")))?;
    // Give terminated backends a moment to exit before renaming.
    for _ in 0..50 {
        let left: i64 = client
            .query_one("SELECT count(*)::int8 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&name])
            .await
            .map_err(db_error(format!("cannot list sessions on {name}")))?
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows = client
        .query("SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND usesysid IS NOT NULL", &[&name])
        .await
        .map_err(db_error(format!("cannot list sessions on {name}")))?;
    if !rows.is_empty() {
        let _ = allow(client, name).await;
        let roles: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        return Err(Error::new(
            ErrorKind::AccessDenied,
            format!("database {name} still has sessions of role(s) {} that this role may not terminate", roles.join(", ")),
        )
        .with_hint("end them first, or grant the restoring role pg_signal_backend (superuser sessions only a superuser can end)"));
    }
    Ok(row.get::<_, i64>(0) as u64)
}

async fn rename(client: &tokio_postgres::Client, from: &str, to: &str) -> Result<()> {
    alter_database(client, from, &format!("RENAME TO {}", quote_ident(to)), format!("cannot rename database {from} to {to}")).await
}

async fn allow(client: &tokio_postgres::Client, name: &str) -> Result<()> {
    alter_database(client, name, "ALLOW_CONNECTIONS true", format!("cannot reopen database {name}")).await
}

/// Replace `target` by `temp`: `target` becomes `<target>_old` (an existing
/// `<target>_old` is renamed `<target>_old_<timestamp>`, never dropped), and
/// `temp` becomes `target`. If the second rename fails, the first is undone.
pub async fn swap(server: &DbSettings, target: &str, temp: &str) -> Result<SwapOutcome> {
    let client = maintenance(server).await?;
    let old = format!("{target}_old");
    let mut outcome = SwapOutcome { sessions_terminated: 0, previous_renamed_to: None, older_kept_as: None };
    if database_exists(server, &old).await? {
        let kept = format!("{old}_{}", Utc::now().format("%Y%m%d_%H%M%S"));
        rename(&client, &old, &kept).await?;
        outcome.older_kept_as = Some(kept);
    }
    if database_exists(server, target).await? {
        outcome.sessions_terminated = close_database(&client, target).await?;
        if let Err(e) = rename(&client, target, &old).await {
            let _ = allow(&client, target).await;
            return Err(e);
        }
        allow(&client, &old).await?;
        outcome.previous_renamed_to = Some(old.clone());
    }
    if let Err(e) = rename(&client, temp, target).await {
        if outcome.previous_renamed_to.is_some() {
            let _ = rename(&client, &old, target).await;
        }
        return Err(e.context("swap undone"));
    }
    Ok(outcome)
}

/// Swap back: `target` becomes `<target>_rolled_back_<timestamp>` and
/// `<target>_old` becomes `target` again.
pub async fn rollback(server: &DbSettings, target: &str) -> Result<(String, u64)> {
    let client = maintenance(server).await?;
    let old = format!("{target}_old");
    if !database_exists(server, &old).await? {
        return Err(Error::new(ErrorKind::NotFound, format!("there is no database {old} on {}:{} to roll back to", server.host, server.port)));
    }
    let aside = format!("{target}_rolled_back_{}", Utc::now().format("%Y%m%d_%H%M%S"));
    let mut terminated = 0;
    if database_exists(server, target).await? {
        terminated = close_database(&client, target).await?;
        rename(&client, target, &aside).await?;
        allow(&client, &aside).await?;
    }
    close_database(&client, &old).await?;
    rename(&client, &old, target).await?;
    allow(&client, target).await?;
    Ok((aside, terminated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_name_is_known_by_its_code_in_any_language() {
        let failed = |text: &str| Error::new(ErrorKind::Database, format!("cannot create database x on h:5432: {text}"));
        assert!(is_name_taken(&failed("Datenbank »x« existiert bereits").with_sqlstate("42P04")));
        assert!(is_name_taken(&failed("doppelter Schlüsselwert verletzt Unique-Constraint").with_sqlstate("23505")));
        // The English words without the code (or under another one) are not enough.
        assert!(!is_name_taken(&failed("database \"x\" already exists")));
        assert!(!is_name_taken(&failed("database \"x\" already exists").with_sqlstate("42501")));
    }

    #[test]
    fn database_grants_become_grant_statements() {
        assert_eq!(grant_on_database("app", "PUBLIC:TEMPORARY:false").unwrap(), "GRANT TEMPORARY ON DATABASE \"app\" TO PUBLIC");
        assert_eq!(grant_on_database("app", "we:ird:CONNECT:true").unwrap(), "GRANT CONNECT ON DATABASE \"app\" TO \"we:ird\" WITH GRANT OPTION");
        assert!(grant_on_database("app", "bob:DROP TABLE x:false").is_none());
        assert!(grant_on_database("app", "garbage").is_none());
    }

    #[test]
    fn database_settings_keep_list_elements() {
        assert_eq!(
            alter_database_set("app", "search_path=\"$user\", public, \"My Schema\"").unwrap(),
            "ALTER DATABASE \"app\" SET search_path = '$user', 'public', 'My Schema'"
        );
        assert_eq!(alter_database_set("app", "statement_timeout=5min").unwrap(), "ALTER DATABASE \"app\" SET statement_timeout = '5min'");
        assert_eq!(alter_database_set("app", "work_mem=it's").unwrap(), "ALTER DATABASE \"app\" SET work_mem = 'it''s'");
        assert!(alter_database_set("app", "bad key;=x").is_none());
    }
}
