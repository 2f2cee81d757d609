//! Restoring into a database the platform already set up — a new Supabase
//! project, say — where the platform's schemas (`auth`, `storage`,
//! `realtime`, `extensions`, `graphql`, `vault`…) exist, owned by roles the
//! restoring role cannot become, with their tables empty. There the right
//! restore leaves the platform's objects as they are and restores their
//! table *data*, and everything of the customer's.
//!
//! - [`inspect`] decides, read-only, before anything is touched: which
//!   schemas are the platform's (existing and owned by a role the restoring
//!   role cannot become; with `--platform-schemas keep`, every existing
//!   schema but `public`), that the database is new (no table of the backup
//!   outside them; theirs empty), or refuses naming the table.
//! - Schema blocks that touch a platform schema run in a savepoint; when the
//!   object is already there (`duplicate_*`), or belongs to the platform
//!   (insufficient privilege), the platform's version stays and the block is
//!   listed. Every other block must succeed.
//! - Tables load in the order of the foreign keys the platform's tables
//!   already have ([`load_waves`]).
//!
//! The database is restored in place: there is no temporary database and
//! no swap, so a failure leaves it partly restored (it was new: recreate it).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::error::SqlState;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::qualified;
use crate::pg::{connect, query_error};
use crate::repo::manifest::BackupManifest;
use crate::restore::schema::Block;

/// `--platform-schemas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlatformSchemas {
    /// Keep the platform's schemas when restoring into an existing database that has them.
    #[default]
    Auto,
    /// Keep every existing schema of an existing target database (but `public`).
    Keep,
    /// Never keep: restore every schema from the backup (into a new database).
    Restore,
}

impl std::str::FromStr for PlatformSchemas {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(PlatformSchemas::Auto),
            "keep" => Ok(PlatformSchemas::Keep),
            "restore" => Ok(PlatformSchemas::Restore),
            _ => Err(Error::config(format!("`{s}` is not a --platform-schemas mode")).with_hint("use auto, keep or restore")),
        }
    }
}

/// An existing database with the platform's schemas, to restore into in place.
#[derive(Debug, Clone)]
pub struct PlatformTarget {
    /// The database.
    pub database: String,
    /// The platform's schemas, kept as they are.
    pub schemas: BTreeSet<String>,
    /// Tables of the backup (manifest indexes) whose rows stay the platform's:
    /// the restoring role may not write them, or (with `keep`) they have rows.
    pub tables_kept: Vec<usize>,
}

/// Decide whether `db` (which exists) is a database the platform set up,
/// to restore backup `m` into in place; refuse otherwise, naming why.
pub async fn inspect(db: &DbSettings, m: &BackupManifest, mode: PlatformSchemas) -> Result<PlatformTarget> {
    let exists_error = || {
        Error::config(format!("database {} already exists on {}:{}", db.dbname, db.host, db.port))
            .with_hint("--target-db creates a new database; choose another name, or --platform-schemas keep to restore into a new project's database")
    };
    if mode == PlatformSchemas::Restore {
        return Err(exists_error());
    }
    let conn = connect(db).await?;
    let rows = conn
        .client
        .query(
            "SELECT nspname::text, pg_has_role(nspowner, 'MEMBER') FROM pg_namespace \
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'public')",
            &[],
        )
        .await
        .map_err(query_error(format!("cannot list the schemas of {}", db.dbname)))?;
    let schemas: BTreeSet<String> = rows.iter().filter(|r| mode == PlatformSchemas::Keep || !r.get::<_, bool>(1)).map(|r| r.get(0)).collect();
    if schemas.is_empty() {
        return Err(exists_error());
    }
    // New: the platform's tables empty, nothing of the customer's there yet.
    let mut tables_kept = Vec::new();
    for (i, t) in m.tables.iter().enumerate() {
        let name = qualified(&t.schema, &t.name);
        let found = conn
            .client
            .query_opt("SELECT has_table_privilege(to_regclass($1), 'INSERT') FROM pg_class WHERE oid = to_regclass($1)", &[&name])
            .await
            .map_err(query_error(format!("cannot look up table {}.{} in {}", t.schema, t.name, db.dbname)))?;
        let Some(found) = found else { continue };
        if !schemas.contains(&t.schema) {
            return Err(Error::config(format!(
                "database {} is not a new project: it already has table {}.{} (schemas kept as the platform's: {})",
                db.dbname,
                t.schema,
                t.name,
                schemas.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .with_hint("restore into a database that has only the platform's schemas, or into a new database (--target-db)"));
        }
        // The platform's own bookkeeping (a table this role may not write): its rows stay.
        if !found.get::<_, bool>(0) {
            tables_kept.push(i);
            continue;
        }
        let rows = conn
            .client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[])
            .await
            .map_err(query_error(format!("cannot read table {}.{} in {}", t.schema, t.name, db.dbname)))?;
        if rows.get::<_, bool>(0) {
            if mode == PlatformSchemas::Keep {
                tables_kept.push(i);
                continue;
            }
            return Err(Error::config(format!(
                "table {}.{} of the platform's schema {} in database {} is not empty; its rows would mix with the backup's",
                t.schema, t.name, t.schema, db.dbname
            ))
            .with_hint("--platform-schemas keep keeps the rows it has instead of the backup's (listed in a warning)"));
        }
    }
    if !tables_kept.is_empty() {
        let names: Vec<String> = tables_kept.iter().map(|&i| format!("{}.{}", m.tables[i].schema, m.tables[i].name)).collect();
        tracing::warn!(database = %db.dbname, tables = %names.join(", "), "the platform's tables keep their own rows, not the backup's (this role may not write them, or they have rows)");
    }
    tracing::info!(database = %db.dbname, schemas = %schemas.iter().cloned().collect::<Vec<_>>().join(", "), "restoring into an existing database: the platform's schemas stay as they are, their tables' data is restored");
    Ok(PlatformTarget { database: db.dbname.clone(), schemas, tables_kept })
}

impl PlatformTarget {
    /// Whether a schema block creates or changes something of a platform
    /// schema (or an extension, which the platform installed).
    pub fn touches(&self, block: &Block) -> bool {
        let header = block.sql.lines().find(|l| l.starts_with("-- Name: ")).unwrap_or("");
        let field = |key: &str| header.split("; ").find_map(|p| p.strip_prefix(key)).map(str::trim);
        let name = header.strip_prefix("-- Name: ").and_then(|r| r.split(';').next()).unwrap_or("");
        field("Schema: ").is_some_and(|s| self.schemas.contains(s))
            || (block.kind == "SCHEMA" && self.schemas.contains(name))
            || name.strip_prefix("SCHEMA ").is_some_and(|s| self.schemas.contains(s.trim_matches('"')))
            || block.kind == "EXTENSION"
            || name.starts_with("EXTENSION ")
            // The platform's publications (Supabase's supabase_realtime) exist in a new project.
            || block.kind == "PUBLICATION"
    }
}

/// Whether a failed block touching a platform schema means "the platform's
/// version is there" (kept) rather than a real failure.
pub fn kept_by_platform(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else { return false };
    [
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::DUPLICATE_FUNCTION,
        SqlState::DUPLICATE_SCHEMA,
        SqlState::DUPLICATE_COLUMN,
        SqlState::INVALID_TABLE_DEFINITION,
    ]
    .contains(code)
}

/// The tables to load (`selected`, indexes into the manifest) in waves, so
/// that a table referenced by a foreign key the database already has is
/// loaded before the tables referring to it. Cycles end up in one last wave.
pub async fn load_waves(db: &DbSettings, m: &BackupManifest, selected: &[usize]) -> Result<Vec<Vec<usize>>> {
    let conn = connect(db).await?;
    let rows = conn
        .client
        .query(
            "SELECT cn.nspname::text, c.relname::text, fn.nspname::text, f.relname::text FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace \
             WHERE k.contype = 'f' AND k.conrelid <> k.confrelid",
            &[],
        )
        .await
        .map_err(query_error(format!("cannot list the foreign keys of {}", db.dbname)))?;
    let index: BTreeMap<(String, String), usize> = selected.iter().map(|&i| ((m.tables[i].schema.clone(), m.tables[i].name.clone()), i)).collect();
    let mut needs: BTreeMap<usize, BTreeSet<usize>> = selected.iter().map(|&i| (i, BTreeSet::new())).collect();
    for r in &rows {
        let (from, to) = ((r.get::<_, String>(0), r.get::<_, String>(1)), (r.get::<_, String>(2), r.get::<_, String>(3)));
        if let (Some(&a), Some(&b)) = (index.get(&from), index.get(&to)) {
            needs.entry(a).or_default().insert(b);
        }
    }
    Ok(waves(needs))
}

/// Topological levels of `needs` (table -> tables it needs first).
fn waves(mut needs: BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    while !needs.is_empty() {
        let ready: Vec<usize> = needs.iter().filter(|(_, n)| n.iter().all(|d| !needs.contains_key(d))).map(|(&t, _)| t).collect();
        let wave = if ready.is_empty() { needs.keys().copied().collect() } else { ready };
        for t in &wave {
            needs.remove(t);
        }
        out.push(wave);
    }
    out
}

/// A failure after the restore into an existing database began.
pub fn partial_failure(target: &PlatformTarget, err: Error) -> Error {
    Error::new(
        ErrorKind::Database,
        format!(
            "{}; database {} was restored into in place and is now partly restored (it was a new project: recreate it, then restore again)",
            err.user_line(),
            target.database
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(kind: &str, header: &str) -> Block {
        Block { kind: kind.into(), sql: format!("--\n-- Name: {header}\n--\n\nSQL;\n") }
    }

    #[test]
    fn blocks_of_platform_schemas_are_recognised() {
        let p =
            PlatformTarget { database: "postgres".into(), schemas: ["auth".to_string(), "storage".to_string()].into_iter().collect(), tables_kept: Vec::new() };
        assert!(p.touches(&block("TABLE", "users; Type: TABLE; Schema: auth; Owner: supabase_auth_admin")));
        assert!(p.touches(&block("SCHEMA", "auth; Type: SCHEMA; Schema: -; Owner: supabase_admin")));
        assert!(p.touches(&block("ACL", "SCHEMA storage; Type: ACL; Schema: -; Owner: supabase_admin")));
        assert!(p.touches(&block("EXTENSION", "pgcrypto; Type: EXTENSION; Schema: -; Owner: -")));
        assert!(p.touches(&block("COMMENT", "EXTENSION pgcrypto; Type: COMMENT; Schema: -; Owner: ")));
        assert!(!p.touches(&block("TABLE", "profiles; Type: TABLE; Schema: public; Owner: customer")));
        assert!(!p.touches(&block("SCHEMA", "authx; Type: SCHEMA; Schema: -; Owner: customer")));
        assert!(p.touches(&block("PUBLICATION", "supabase_realtime; Type: PUBLICATION; Schema: -; Owner: postgres")));
        assert!(!p.touches(&block("PUBLICATION TABLE", "supabase_realtime messages; Type: PUBLICATION TABLE; Schema: public; Owner: postgres")));
    }

    #[test]
    fn waves_follow_foreign_keys() {
        let needs: BTreeMap<usize, BTreeSet<usize>> = [(0, [1].into()), (1, BTreeSet::new()), (2, [0, 1].into()), (3, BTreeSet::new())].into_iter().collect();
        assert_eq!(waves(needs), vec![vec![1, 3], vec![0], vec![2]]);
        let cycle: BTreeMap<usize, BTreeSet<usize>> = [(0, [1].into()), (1, [0].into())].into_iter().collect();
        assert_eq!(waves(cycle), vec![vec![0, 1]]);
    }
}
