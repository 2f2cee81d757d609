//! Schema capture under the backup's snapshot: `pg_dump --section=pre-data`
//! and `--section=post-data` with `--snapshot` (DDL only — data never goes
//! through pg_dump), and the roles the database needs from
//! `pg_dumpall --roles-only` (password hashes only when the role is a
//! superuser and may read them; `--no-role-passwords` otherwise).

use crate::config::DbSettings;
use crate::error::Result;
use crate::pg::tools;

/// The captured schema, as SQL text.
#[derive(Debug, Clone)]
pub(crate) struct SchemaDump {
    /// Types, tables, functions, … (run before loading data).
    pub pre_data: Vec<u8>,
    /// Indexes, constraints, triggers, policies, … (run after loading data).
    pub post_data: Vec<u8>,
    /// `CREATE ROLE`/`ALTER ROLE` statements, when they could be read.
    pub globals: Option<Vec<u8>>,
}

/// Dump the schema of `db` as of `snapshot`. `server_major` picks a compatible
/// pg_dump. Role password hashes are included only when `role_passwords`
/// (the role may read `pg_authid`, i.e. is a superuser). `only`: just these
/// tables (`(schema, name)`) and what pg_dump dumps with them (their owned
/// sequences, defaults, indexes, constraints, triggers, comments,
/// privileges), and no roles — a table image.
pub(crate) async fn capture(db: &DbSettings, snapshot: &str, server_major: u32, role_passwords: bool, only: Option<&[(String, String)]>) -> Result<SchemaDump> {
    if only.is_some_and(|t| t.is_empty()) {
        return Ok(SchemaDump { pre_data: Vec::new(), post_data: Vec::new(), globals: None });
    }
    let pg_dump = tools::find_tool("pg_dump", server_major)?;
    let section = |name: &str| {
        let mut cmd = tools::command(&pg_dump, db);
        cmd.arg(format!("--section={name}"));
        for (schema, table) in only.unwrap_or_default() {
            cmd.arg(format!("--table={}", exact_pattern(schema, table)));
        }
        // No snapshot: the schema as it is now (incremental backups).
        if !snapshot.is_empty() {
            cmd.arg(format!("--snapshot={snapshot}"));
        }
        cmd.arg("--no-password").arg("--format=plain").arg("--dbname").arg(&db.dbname);
        cmd
    };
    let (pre, post) = tokio::try_join!(
        tools::run_capture(section("pre-data"), "pg_dump --section=pre-data"),
        tools::run_capture(section("post-data"), "pg_dump --section=post-data"),
    )?;
    let globals = match tools::find_tool("pg_dumpall", server_major) {
        Ok(_) if only.is_some() => None,
        Ok(p) => {
            let mut cmd = tools::command(&p, db);
            cmd.arg("--roles-only").arg("--no-password").arg("-l").arg(&db.dbname);
            if !role_passwords {
                cmd.arg("--no-role-passwords");
            }
            match tools::run_capture(cmd, "pg_dumpall --roles-only").await {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(error = %e.user_line(), "roles not captured; a restore to a new server must create them first");
                    None
                }
            }
        }
        Err(_) => None,
    };
    Ok(SchemaDump { pre_data: pre, post_data: post, globals })
}

/// A pg_dump `--table` pattern matching exactly `schema.table`: inside
/// double quotes wildcards are literal, and a quote is doubled.
fn exact_pattern(schema: &str, table: &str) -> String {
    format!("\"{}\".\"{}\"", schema.replace('"', "\"\""), table.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_match_one_table_literally() {
        assert_eq!(super::exact_pattern("public", "t*"), r#""public"."t*""#);
        assert_eq!(super::exact_pattern("My \"S\"", "a.b"), r#""My ""S"""."a.b""#);
    }
}
