//! Catalog queries used by backup and restore: server facts, tables with
//! their columns and sizes, sequences, large objects. Also identifier quoting.

use tokio_postgres::Client;

use crate::error::Result;
use crate::repo::manifest::{ColumnEntry, DatabaseInfo, SequenceEntry};

/// Session settings that make COPY text output deterministic, so a
/// fingerprint computed at backup time can be recomputed after a restore.
/// Also disables timeouts that would kill a long backup transaction.
pub const SESSION_SETUP: &str = "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC'; \
    SET bytea_output = 'hex'; SET row_security = off; SET statement_timeout = 0; \
    SET idle_in_transaction_session_timeout = 0";

/// Quote an identifier the way PostgreSQL's `quote_ident` does (always quoted).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// SQL: whether table `c` has a usable replica identity.
pub const USABLE_IDENTITY_SQL: &str = "(c.relreplident = 'f' \
     OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
     OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))";

/// SQL: whether `c` in namespace `n` is a table pgkeep archives: an ordinary
/// (or partition leaf) permanent table outside the system schemas, not
/// owned by an extension.
pub const ARCHIVABLE_TABLE_SQL: &str = "c.relkind = 'r' AND c.relpersistence = 'p' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgkeep') AND n.nspname NOT LIKE 'pg\\_%' \
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                     AND e.objid = c.oid AND e.deptype = 'e')";

/// One identifier at the start of `s`, as pg_dump writes it: `"quoted
/// ""like"" this"` or bare (letters, digits, `_`, `$`). Returns it unquoted
/// and the text after it; `None` for anything else (an unterminated or
/// empty quoted identifier, or no identifier at all).
pub fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                out.push(c);
            } else if body[i + 1..].starts_with('"') {
                out.push('"');
                chars.next();
            } else {
                return (!out.is_empty()).then_some((out, &body[i + 1..]));
            }
        }
        None
    } else {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// `(schema, name)` of a table named `"schema"."name"` (quoted, as
/// [`qualified`] writes it) or `schema.name` (unquoted: split at the first
/// dot); `None` for anything else.
pub fn split_table_name(s: &str) -> Option<(String, String)> {
    fn quoted(s: &str) -> Option<(String, &str)> {
        let mut out = String::new();
        let mut chars = s.strip_prefix('"')?.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if s[1 + i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &s[1 + i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    }
    if s.starts_with('"') {
        let (schema, rest) = quoted(s)?;
        let (name, rest) = quoted(rest.strip_prefix('.')?)?;
        return (rest.is_empty() && !schema.is_empty() && !name.is_empty()).then_some((schema, name));
    }
    let (schema, name) = s.split_once('.')?;
    (!schema.is_empty() && !name.is_empty()).then(|| (schema.to_string(), name.to_string()))
}

/// Quote a string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

use super::query_error as db_err;

/// What pgkeep needs to know about the server and the role.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// `server_version`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: u32,
    /// `wal_level`.
    pub wal_level: String,
    /// The role is a superuser.
    pub is_superuser: bool,
    /// The role has the REPLICATION attribute (or is superuser).
    pub can_replicate: bool,
    /// Cluster system identifier, when readable.
    pub system_identifier: Option<String>,
    /// Current timeline, when readable.
    pub timeline: Option<u32>,
    /// `pg_database_size(current_database())`.
    pub database_size: u64,
    /// The role name.
    pub current_user: String,
    /// Encoding and locale of the current database.
    pub database_info: Option<DatabaseInfo>,
}

/// Read [`ServerFacts`].
pub async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int4, \
             current_setting('wal_level'), r.rolsuper, (r.rolreplication OR r.rolsuper), \
             pg_database_size(current_database())::int8, current_user::text, \
             pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, \
             pg_get_userbyid(d.datdba)::text, \
             coalesce((SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')::text[], \
             CASE WHEN d.datacl IS NULL THEN NULL ELSE coalesce((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END \
                 || ':' || a.privilege_type || ':' || a.is_grantable::text ORDER BY 1) FROM aclexplode(d.datacl) a), '{}') END::text[] \
             FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(db_err("cannot read server settings"))?;
    // pg_control_* may be restricted; these are informational.
    let control = client
        .query_opt("SELECT s.system_identifier::text, c.timeline_id::int4 FROM pg_control_system() s, pg_control_checkpoint() c", &[])
        .await
        .ok()
        .flatten();
    Ok(ServerFacts {
        version: row.get(0),
        version_num: row.get::<_, i32>(1) as u32,
        wal_level: row.get(2),
        is_superuser: row.get(3),
        can_replicate: row.get(4),
        system_identifier: control.as_ref().map(|r| r.get(0)),
        timeline: control.as_ref().map(|r| r.get::<_, i32>(1) as u32),
        database_size: row.get::<_, i64>(5) as u64,
        current_user: row.get(6),
        database_info: Some(DatabaseInfo {
            encoding: row.get(7),
            lc_collate: row.get(8),
            lc_ctype: row.get(9),
            owner: Some(row.get(10)),
            settings: row.get(11),
            grants: row.get(12),
        }),
    })
}

/// A table whose rows a backup copies.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// OID.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns in attnum order, generated columns excluded.
    pub columns: Vec<ColumnEntry>,
    /// Size of the main fork in bytes.
    pub bytes: u64,
    /// The role may SELECT from it.
    pub can_select: bool,
    /// For an extension's configuration table (`pg_extension_config_dump`):
    /// the extension and the row filter it registered (a `WHERE …` clause or empty).
    pub extension: Option<(String, String)>,
}

impl TableInfo {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `schema.name` for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The quoted column list, `("a", "b")`, or empty when there are no columns.
    pub fn column_list(&self) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!("({})", cols.join(", "))
    }
}

/// User relations: not system or temporary schemas, not temporary, and not
/// owned by an extension — except an extension's configuration tables,
/// whose user rows pg_dump also dumps.
const USER_RELATION_FILTER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
    AND c.relpersistence <> 't' \
    AND (NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                     AND d.objid = c.oid AND d.deptype = 'e') \
         OR c.oid IN (SELECT unnest(extconfig) FROM pg_extension))";

/// The OIDs of the leaf tables of `schema.name`: the table itself, or a
/// partitioned table's leaf partitions; none when it does not exist.
pub async fn leaf_tables_of(client: &Client, schema: &str, name: &str) -> Result<Vec<u32>> {
    let rows = client
        .query(
            "WITH r AS (SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) AS rel) \
             SELECT c.oid FROM pg_class c, r WHERE c.oid = r.rel AND c.relkind = 'r' \
             UNION SELECT t.relid::oid FROM r, pg_partition_tree(r.rel) t WHERE t.isleaf",
            &[&schema, &name],
        )
        .await
        .map_err(db_err(format!("cannot list the tables of {}", qualified(schema, name))))?;
    Ok(rows.iter().map(|r| r.get::<_, u32>(0)).collect())
}

/// Every table with data to copy: ordinary tables and leaf partitions (not
/// partitioned parents, views, foreign tables or extension members other
/// than extension configuration tables), largest first.
pub async fn list_tables(client: &Client) -> Result<Vec<TableInfo>> {
    let sql = format!(
        "WITH extcfg AS (SELECT e.extname::text AS extname, u.cfg, coalesce(u.cond, '') AS cond \
                         FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(cfg, cond)) \
         SELECT c.oid, n.nspname::text, c.relname::text, pg_relation_size(c.oid)::int8, \
         has_table_privilege(c.oid, 'SELECT'), x.extname, x.cond \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN extcfg x ON x.cfg = c.oid \
         WHERE c.relkind = 'r' AND {USER_RELATION_FILTER} ORDER BY 4 DESC, 2, 3"
    );
    let rows = client.query(&sql, &[]).await.map_err(db_err("cannot list tables"))?;
    let mut tables: Vec<TableInfo> = rows
        .iter()
        .map(|r| TableInfo {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            columns: Vec::new(),
            bytes: r.get::<_, i64>(3) as u64,
            can_select: r.get(4),
            extension: r.get::<_, Option<String>>(5).map(|e| (e, r.get::<_, Option<String>>(6).unwrap_or_default())),
        })
        .collect();
    let generated_filter = "AND a.attgenerated = ''";
    let sql = format!(
        "SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND {USER_RELATION_FILTER} AND a.attnum > 0 AND NOT a.attisdropped {generated_filter} \
         ORDER BY a.attrelid, a.attnum"
    );
    let rows = client.query(&sql, &[]).await.map_err(db_err("cannot list columns"))?;
    let index: std::collections::HashMap<u32, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    for r in rows {
        let oid: u32 = r.get(0);
        if let Some(&i) = index.get(&oid) {
            tables[i].columns.push(ColumnEntry { name: r.get(1), type_name: r.get(2), not_null: r.get(3) });
        }
    }
    Ok(tables)
}

/// Every sequence's value, read in the current transaction.
pub async fn sequence_values(client: &Client) -> Result<Vec<SequenceEntry>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'S' AND {USER_RELATION_FILTER} ORDER BY 1, 2"
    );
    let rows = client.query(&sql, &[]).await.map_err(db_err("cannot list sequences"))?;
    let names: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out = Vec::with_capacity(names.len());
    for batch in names.chunks(200) {
        let parts: Vec<String> =
            batch.iter().enumerate().map(|(i, (s, n))| format!("SELECT {i} AS i, last_value::int8, is_called FROM {}", qualified(s, n))).collect();
        let rows = client.query(&parts.join(" UNION ALL "), &[]).await.map_err(db_err("cannot read sequence values"))?;
        for r in rows {
            let i: i32 = r.get(0);
            let (schema, name) = batch[i as usize].clone();
            out.push(SequenceEntry { schema, name, last_value: r.get(1), is_called: r.get(2) });
        }
    }
    Ok(out)
}

/// Like [`sequence_values`], but one sequence that cannot be read (no
/// privilege, dropped meanwhile) costs only its own value: a failed batch is
/// read again one sequence at a time. Returns the values and, per sequence
/// left out, `"schema"."name": reason`.
pub async fn sequence_values_each(client: &Client) -> Result<(Vec<SequenceEntry>, Vec<String>)> {
    if let Ok(all) = sequence_values(client).await {
        return Ok((all, Vec::new()));
    }
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'S' AND {USER_RELATION_FILTER} ORDER BY 1, 2"
    );
    let rows = client.query(&sql, &[]).await.map_err(db_err("cannot list sequences"))?;
    let (mut out, mut failed) = (Vec::new(), Vec::new());
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let q = format!("SELECT last_value::int8, is_called FROM {}", qualified(&schema, &name));
        match client.query_one(&q, &[]).await {
            Ok(v) => out.push(SequenceEntry { last_value: v.get(0), is_called: v.get(1), schema, name }),
            Err(e) => failed.push(format!("{}: {}", qualified(&schema, &name), crate::pg::error_message(&e))),
        }
    }
    Ok((out, failed))
}

/// Number of large objects.
pub async fn large_object_count(client: &Client) -> Result<u64> {
    let row = client.query_one("SELECT count(*)::int8 FROM pg_largeobject_metadata", &[]).await.map_err(db_err("cannot count large objects"))?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("My \"T\""), "\"My \"\"T\"\"\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn table_names_split_quoted_or_not() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(split_table_name(&qualified("My \"S\"", "a.b")), pair("My \"S\"", "a.b"));
        assert_eq!(split_table_name("public.t"), pair("public", "t"));
        assert_eq!(split_table_name("public.a.b"), pair("public", "a.b"));
        for bad in ["", "t", "*", "\"s\"", "\"s\".", "\"s\".\"t", "\"s\".\"t\"x", ".t", "s."] {
            assert_eq!(split_table_name(bad), None, "{bad}");
        }
    }
}
