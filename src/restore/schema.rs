//! Running the schema SQL that `pg_dump` captured at backup time, without
//! psql: pre-data as one script, post-data split into pg_dump's own object
//! blocks so indexes and (non-foreign-key) constraints build in parallel,
//! and roles created only where they are missing.
//!
//! pg_dump's plain output is SQL plus, since the 2025 security releases,
//! `\restrict KEY` / `\unrestrict KEY` psql meta-commands around it; those
//! two lines are the only ones removed, besides opening settings of
//! parameters the target does not have ([`session_settings`]). Each object block starts with a
//! comment header `-- Name: …; Type: …; Schema: …; Owner: …`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{parse_ident, qualified, quote_literal};
use crate::pg::connect;
use crate::repo::manifest::SequenceEntry;
use crate::restore::platform::{self, PlatformTarget};
use crate::restore::privileges::{self, OwnerPolicy, OwnershipReport};
use crate::restore::session_settings;

fn sql_error(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| {
        let msg = match e.as_db_error() {
            Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
            None => e.to_string(),
        };
        Error::new(ErrorKind::Database, format!("{what} failed: {msg}"))
    }
}

/// Run the pre-data script (types, tables, functions…) in one transaction.
pub async fn run_pre_data(db: &DbSettings, sql: &str) -> Result<()> {
    let conn = connect(db).await?;
    let sql = session_settings::for_server(&conn.client, &strip_psql_guards(sql)).await?;
    let script = format!("BEGIN;\n{sql}\nCOMMIT;");
    conn.client.batch_execute(&script).await.map_err(sql_error("the schema (pre-data) script"))
}

/// Run the pre-data script as the restoring role, which may not be a
/// superuser (see [`privileges`](super::privileges)): each owner statement
/// gives the object to the role the policy chooses (left out where that is
/// the restoring role), in place, or, when the
/// new owner lacks a privilege the script grants later (CREATE on its
/// schema, say), after the script's grants. With `platform` (restoring
/// into a database the platform set up), blocks touching its schemas whose
/// object is already there are left to the platform and listed. One
/// transaction. Returns what differs from the backup.
pub async fn run_pre_data_as(db: &DbSettings, sql: &str, policy: &OwnerPolicy, platform: Option<&PlatformTarget>) -> Result<OwnershipReport> {
    if policy.exact() && platform.is_none() {
        run_pre_data(db, sql).await?;
        return Ok(OwnershipReport::default());
    }
    let conn = connect(db).await?;
    let (preamble, blocks) = split_blocks(&session_settings::for_server(&conn.client, &strip_psql_guards(sql)).await?);
    let mut report = OwnershipReport { restoring_role: policy.access.current.clone(), ..Default::default() };
    let client = &conn.client;
    let failed = || sql_error("the schema (pre-data) script");
    client.batch_execute(&format!("BEGIN;\n{preamble}")).await.map_err(failed())?;
    let mut pending = String::new();
    let mut deferred = Vec::new();
    for block in &blocks {
        let (script, r) = privileges::rewrite_script("", std::slice::from_ref(block), policy);
        // 1. The platform's schemas: its version stays when the object is there.
        if let Some(p) = platform.filter(|p| p.touches(block)) {
            client.batch_execute(&std::mem::take(&mut pending)).await.map_err(failed())?;
            match client.batch_execute(&format!("SAVEPOINT pgkeep_block;\n{script}")).await {
                Ok(()) => {
                    client.batch_execute("RELEASE SAVEPOINT pgkeep_block").await.map_err(failed())?;
                    report.merge(r);
                }
                Err(e) if platform::kept_by_platform(&e) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT pgkeep_block").await.map_err(failed())?;
                    tracing::debug!(object = %block_name(block), database = %p.database, "kept as the platform made it");
                    report.kept_by_platform.push(block_name(block));
                }
                Err(e) => return Err(sql_error(&format!("creating {}", block_name(block)))(e)),
            }
            continue;
        }
        report.merge(r);
        // 2. Owner statements in savepoints, deferred when the new owner lacks a later grant.
        let mut previous_blank = false;
        for line in script.lines() {
            let owner = privileges::owner_statement(line).filter(|o| previous_blank && o.role != policy.access.current);
            previous_blank = line.trim().is_empty();
            let Some(owner) = owner else {
                pending.push_str(line);
                pending.push('\n');
                continue;
            };
            client.batch_execute(&std::mem::take(&mut pending)).await.map_err(failed())?;
            match client.batch_execute(&format!("SAVEPOINT pgkeep_owner; {line}")).await {
                Ok(()) => client.batch_execute("RELEASE SAVEPOINT pgkeep_owner").await.map_err(failed())?,
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT pgkeep_owner").await.map_err(failed())?;
                    deferred.push((line.to_string(), owner));
                }
                Err(e) => return Err(sql_error(&format!("giving {} to {}", owner.object, owner.role))(e)),
            }
        }
    }
    client.batch_execute(&pending).await.map_err(failed())?;
    for (line, owner) in deferred {
        client.batch_execute(&line).await.map_err(sql_error(&format!("giving {} to {}", owner.object, owner.role)))?;
    }
    client.batch_execute("COMMIT").await.map_err(failed())?;
    Ok(report)
}

/// The post-data script as `policy` runs it (see [`privileges::rewrite_script`]).
pub fn post_data_as(sql: &str, policy: &OwnerPolicy) -> (String, OwnershipReport) {
    if policy.exact() {
        return (sql.to_string(), OwnershipReport::default());
    }
    let (preamble, blocks) = split_blocks(&strip_psql_guards(sql));
    privileges::rewrite_script(&preamble, &blocks, policy)
}

/// Session settings for building indexes and constraints: more sort memory
/// per build than the usual default (64 MB), never more than 1 GB in total.
fn build_settings(jobs: usize) -> String {
    let per_job_mb = (1024 / jobs.max(1)).clamp(64, 512);
    format!("SET maintenance_work_mem = '{per_job_mb}MB'; SET synchronous_commit = off;")
}

/// Run the post-data script: index and constraint blocks on `jobs`
/// connections at once, then every other block in order on one. With
/// `partial` (a table-level restore, where tables not asked for stay empty),
/// a foreign key whose check fails against an empty table is skipped with a
/// warning instead of failing the restore; returns the skipped blocks.
pub async fn run_post_data(db: &DbSettings, sql: &str, jobs: usize, partial: bool) -> Result<Vec<String>> {
    run_post_data_into(db, sql, jobs, partial, None).await
}

/// A post-data script split for running: the preamble every session runs
/// first, the blocks that may build concurrently (indexes and
/// non-foreign-key constraints) and the rest, in script order.
#[derive(Debug, Clone, Default)]
pub struct PostData {
    /// Settings before the first object (search path, encoding…).
    pub preamble: Arc<String>,
    /// Index and constraint blocks ([`Block::parallel_safe`]).
    pub parallel: Vec<Block>,
    /// Every other block, run in order on one session after the parallel ones.
    pub serial: Vec<Block>,
}

/// Split the post-data script `sql` for `db`'s server (settings it lacks removed).
pub async fn split_post_data(db: &DbSettings, sql: &str) -> Result<PostData> {
    let conn = connect(db).await?;
    let (preamble, blocks) = split_blocks(&session_settings::for_server(&conn.client, &strip_psql_guards(sql)).await?);
    let (parallel, serial) = blocks.into_iter().partition(Block::parallel_safe);
    Ok(PostData { preamble: Arc::new(preamble), parallel, serial })
}

/// A session for index and constraint builds: more sort memory, the
/// post-data preamble.
pub async fn build_session(db: &DbSettings, jobs: usize, preamble: &str) -> Result<crate::pg::Connection> {
    let conn = connect(db).await?;
    conn.client.batch_execute(&build_settings(jobs)).await.map_err(sql_error("index build settings"))?;
    conn.client.batch_execute(preamble).await.map_err(sql_error("the post-data preamble"))?;
    Ok(conn)
}

/// Run one parallel-safe block. With `platform`, a block touching its
/// schemas whose object is already there is left to the platform: returns
/// `Ok(Some(name))` for the skipped list.
pub async fn run_parallel_block(client: &tokio_postgres::Client, block: &Block, platform: Option<&PlatformTarget>) -> Result<Option<String>> {
    match client.batch_execute(&block.sql).await {
        Ok(()) => Ok(None),
        Err(e) if platform.is_some_and(|p| p.touches(block)) && platform::kept_by_platform(&e) => Ok(Some(block_name(block))),
        Err(e) => Err(sql_error(&format!("building {}", block_name(block)))(e)),
    }
}

/// [`run_post_data`]; with `platform`, blocks touching its schemas whose
/// object is already there are left to the platform (returned as skipped).
pub async fn run_post_data_into(db: &DbSettings, sql: &str, jobs: usize, partial: bool, platform: Option<&PlatformTarget>) -> Result<Vec<String>> {
    let post = split_post_data(db, sql).await?;
    let platform_arc = platform.cloned().map(Arc::new);
    let kept = Arc::new(Mutex::new(Vec::<String>::new()));
    let queue = Arc::new(Mutex::new(post.parallel.iter().cloned().collect::<VecDeque<_>>()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..jobs.max(1) {
        let (queue, preamble, db, platform, kept) = (queue.clone(), post.preamble.clone(), db.clone(), platform_arc.clone(), kept.clone());
        set.spawn(async move {
            let conn = build_session(&db, jobs, &preamble).await?;
            loop {
                let Some(block) = queue.lock().await.pop_front() else { break };
                if let Some(name) = run_parallel_block(&conn.client, &block, platform.as_deref()).await? {
                    kept.lock().await.push(name);
                }
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(j) = set.join_next().await {
        if let Err(e) = j.map_err(|e| Error::internal(format!("index worker crashed: {e}"))).and_then(|r| r) {
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(e);
        }
    }
    let mut skipped = std::mem::take(&mut *kept.lock().await);
    skipped.extend(run_serial_blocks(db, &post, partial, platform).await?);
    Ok(skipped)
}

/// Run the serial blocks of `post` in order on one session (after every
/// parallel block). Returns the blocks skipped: foreign keys to tables a
/// table-level restore (`partial`) leaves empty, objects the platform
/// already has, and event triggers and publications the role may not create.
pub async fn run_serial_blocks(db: &DbSettings, post: &PostData, partial: bool, platform: Option<&PlatformTarget>) -> Result<Vec<String>> {
    let conn = connect(db).await?;
    conn.client.batch_execute(&post.preamble).await.map_err(sql_error("the post-data preamble"))?;
    let mut skipped: Vec<String> = Vec::new();
    for block in &post.serial {
        let what = format!("creating {}", block_name(block));
        match conn.client.batch_execute(&block.sql).await {
            Ok(()) => {}
            Err(e) if platform.is_some_and(|p| p.touches(block)) && platform::kept_by_platform(&e) => {
                skipped.push(block_name(block));
            }
            Err(e) if partial && block.kind == "FK CONSTRAINT" && e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                tracing::warn!(constraint = %block_name(block), "foreign key skipped: it refers to a table this table-level restore leaves empty");
                skipped.push(block_name(block));
            }
            // Event triggers (such as `pgkeep setup`'s DDL capture) need a superuser; a
            // restore by another role goes on without them, and says so.
            Err(e) if block.kind == "EVENT TRIGGER" && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::warn!(trigger = %block_name(block), "event trigger not restored: creating it needs a superuser (run `pgkeep setup` again as one)");
                skipped.push(block_name(block));
            }
            // A publication FOR ALL TABLES (or of a table the role does not own) needs a
            // superuser or the owner: the restore goes on without it, and says so.
            Err(e)
                if block.kind.starts_with("PUBLICATION")
                    && (e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                        || (e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT)
                            && skipped.iter().any(|s: &String| s.starts_with("PUBLICATION ")))) =>
            {
                tracing::warn!(publication = %block_name(block), error = %crate::pg::error_message(&e), "publication not restored: the restoring role may not create it");
                skipped.push(block_name(block));
            }
            Err(e) => return Err(sql_error(&what)(e)),
        }
    }
    Ok(skipped)
}

/// "INDEX t_v_idx" from a block's header, for messages.
fn block_name(b: &Block) -> String {
    let name = b.sql.lines().find_map(|l| l.strip_prefix("-- Name: ").and_then(|r| r.split(';').next())).unwrap_or("?");
    format!("{} {name}", b.kind)
}

/// Create the roles of the backup's globals that the server lacks. Returns how many.
pub async fn apply_globals(db: &DbSettings, globals: &str) -> Result<usize> {
    let conn = connect(db).await?;
    let rows = conn.client.query("SELECT rolname::text FROM pg_roles", &[]).await.map_err(sql_error("listing roles"))?;
    let existing: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let stmts = missing_role_statements(globals, &existing);
    let created = stmts.iter().filter(|s| s.starts_with("CREATE ROLE")).count();
    for stmt in &stmts {
        // Never log the statement: ALTER ROLE may carry a password hash.
        conn.client.batch_execute(stmt).await.map_err(sql_error("creating a role of the backup"))?;
    }
    Ok(created)
}

/// Set every sequence to its value in the backup.
pub async fn set_sequences(db: &DbSettings, seqs: &[SequenceEntry]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let conn = connect(db).await?;
    for batch in seqs.chunks(200) {
        let sql: Vec<String> = batch
            .iter()
            .map(|s| format!("SELECT pg_catalog.setval({}, {}, {});", quote_literal(&qualified(&s.schema, &s.name)), s.last_value, s.is_called))
            .collect();
        conn.client.batch_execute(&sql.join("\n")).await.map_err(sql_error("setting sequence values"))?;
    }
    Ok(())
}

/// Remove pg_dump's `\restrict KEY` / `\unrestrict KEY` lines (psql-only
/// guards). The key is taken from the first `\restrict` line and only lines
/// with exactly that key are removed, so text inside function bodies stays.
pub fn strip_psql_guards(sql: &str) -> String {
    let key = sql.lines().find_map(|l| {
        let mut parts = l.trim_end().split(' ');
        (parts.next() == Some("\\restrict"))
            .then(|| parts.next())
            .flatten()
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()) && parts.next().is_none())
            .map(str::to_string)
    });
    let Some(key) = key else { return sql.to_string() };
    let (open, close) = (format!("\\restrict {key}"), format!("\\unrestrict {key}"));
    sql.lines()
        .filter(|l| {
            let t = l.trim_end();
            t != open && t != close
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One object block of a pg_dump script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The `Type:` of the header, e.g. `INDEX`, `FK CONSTRAINT`, `TRIGGER`.
    pub kind: String,
    /// The SQL of the block, header included.
    pub sql: String,
}

impl Block {
    /// Blocks that may run concurrently with each other: index builds and
    /// primary-key / unique / check / exclusion constraints. They lock one
    /// table each; conflicting locks only wait. Foreign keys (two tables),
    /// index attachments (need both indexes) and the rest run serially after.
    pub fn parallel_safe(&self) -> bool {
        self.kind == "INDEX" || self.kind == "CONSTRAINT"
    }
}

/// The table an index or constraint block builds on, as (schema, name):
/// `CREATE [UNIQUE] INDEX name ON [ONLY] schema.table …` or `ALTER TABLE
/// [ONLY] schema.table …`, as pg_dump writes them (identifiers quoted where
/// needed). `None` for anything else; such blocks wait for every table.
pub fn block_table(block: &Block) -> Option<(String, String)> {
    let statement: String = block.sql.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join(" ");
    let mut rest = statement.as_str();
    if keyword(&mut rest, "CREATE") {
        keyword(&mut rest, "UNIQUE");
        // The index name (never schema-qualified in pg_dump's output), then ON.
        if !keyword(&mut rest, "INDEX") {
            return None;
        }
        rest = parse_ident(rest.trim_start())?.1;
        if !keyword(&mut rest, "ON") {
            return None;
        }
    } else if !(keyword(&mut rest, "ALTER") && keyword(&mut rest, "TABLE")) {
        return None;
    }
    keyword(&mut rest, "ONLY");
    let (schema, after) = parse_ident(rest.trim_start())?;
    let (name, _) = parse_ident(after.strip_prefix('.')?)?;
    Some((schema, name))
}

/// Take the bare (unquoted, any case) keyword `word` off the front of
/// `rest`, spaces before it skipped; whether it was there.
fn keyword(rest: &mut &str, word: &str) -> bool {
    let s = rest.trim_start();
    match parse_ident(s) {
        Some((w, after)) if !s.starts_with('"') && w.eq_ignore_ascii_case(word) => {
            *rest = after;
            true
        }
        _ => false,
    }
}

/// Split a pg_dump plain script into its preamble (settings before the first
/// object) and object blocks, in order.
pub fn split_blocks(sql: &str) -> (String, Vec<Block>) {
    let mut preamble = String::new();
    let mut blocks: Vec<Block> = Vec::new();
    let lines: Vec<&str> = sql.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        // A header is "--" / "-- Name: …; Type: X; …" / "--".
        if line == "--"
            && let Some(next) = lines.get(i + 1)
            && let Some(kind) = header_kind(next)
        {
            blocks.push(Block { kind, sql: String::new() });
        }
        match blocks.last_mut() {
            Some(b) => {
                b.sql.push_str(line);
                b.sql.push('\n');
            }
            None => {
                preamble.push_str(line);
                preamble.push('\n');
            }
        }
        i += 1;
    }
    (preamble, blocks)
}

fn header_kind(line: &str) -> Option<String> {
    let rest = line.strip_prefix("-- ")?;
    if !(rest.starts_with("Name: ") || rest.starts_with("Data for Name: ")) {
        return None;
    }
    rest.split("; ").find_map(|part| part.strip_prefix("Type: ").map(str::to_string))
}

/// `CREATE ROLE`/`ALTER ROLE` statements of a `pg_dumpall --roles-only`
/// script for roles not in `existing`. Existing roles are never altered:
/// a restore must not change passwords or attributes on the target server.
pub fn missing_role_statements(globals: &str, existing: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for line in globals.lines() {
        let stmt = line.trim();
        let name = stmt.strip_prefix("CREATE ROLE ").or_else(|| stmt.strip_prefix("ALTER ROLE ")).map(role_name);
        if let Some(Some(name)) = name
            && !existing.contains(&name)
        {
            out.push(stmt.to_string());
        }
    }
    out
}

/// The role name at the start of `rest`: a plain identifier or a quoted one.
fn role_name(rest: &str) -> Option<String> {
    if let Some(q) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = rest.find([' ', ';']).unwrap_or(rest.len());
        (end > 0).then(|| rest[..end].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST: &str = "--\n-- PostgreSQL database dump\n--\n\\restrict abc123\nSET statement_timeout = 0;\n\n--\n-- Name: t_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n\n--\n-- Name: t_v_idx; Type: INDEX; Schema: public; Owner: postgres\n--\n\nCREATE INDEX t_v_idx ON public.t USING btree (v);\n\n\n--\n-- Name: c c_t_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres\n--\n\nALTER TABLE ONLY public.c\n    ADD CONSTRAINT c_t_fkey FOREIGN KEY (t) REFERENCES public.t(id);\n\n\\unrestrict abc123\n";

    #[test]
    fn splits_pg_dump_blocks_and_strips_guards() {
        let sql = strip_psql_guards(POST);
        assert!(!sql.contains("\\restrict") && !sql.contains("\\unrestrict"));
        let (pre, blocks) = split_blocks(&sql);
        assert!(pre.contains("SET statement_timeout"));
        let kinds: Vec<&str> = blocks.iter().map(|b| b.kind.as_str()).collect();
        assert_eq!(kinds, vec!["CONSTRAINT", "INDEX", "FK CONSTRAINT"]);
        assert!(blocks[0].sql.contains("PRIMARY KEY") && blocks[0].parallel_safe());
        assert!(blocks[1].sql.contains("CREATE INDEX") && blocks[1].parallel_safe());
        assert!(!blocks[2].parallel_safe());
        // Nothing is lost.
        let joined: String = pre.clone() + &blocks.iter().map(|b| b.sql.clone()).collect::<String>();
        assert_eq!(joined.trim_end(), sql.trim_end());
    }

    #[test]
    fn blocks_name_their_table() {
        let block = |kind: &str, sql: &str| Block { kind: kind.into(), sql: format!("--\n-- Name: x; Type: {kind}; Schema: s; Owner: o\n--\n\n{sql}\n") };
        let t = |s: &str, n: &str| Some((s.to_string(), n.to_string()));
        assert_eq!(block_table(&block("INDEX", "CREATE INDEX t_v_idx ON public.t USING btree (v);")), t("public", "t"));
        assert_eq!(block_table(&block("INDEX", "CREATE UNIQUE INDEX \"On\" ON ONLY \"My \"\"S\".\"T.x\" USING btree (v);")), t("My \"S", "T.x"));
        assert_eq!(block_table(&block("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);")), t("public", "t"));
        assert_eq!(block_table(&block("CONSTRAINT", "ALTER TABLE s1.\"Tab\"\n    ADD CONSTRAINT c CHECK (v > 0) NOT VALID;")), t("s1", "Tab"));
        assert_eq!(block_table(&block("INDEX", "CREATE INDEX i ON t USING btree (v);")), None);
        assert_eq!(block_table(&block("INDEX", "ALTER INDEX public.p_idx ATTACH PARTITION public.c_idx;")), None);
        assert_eq!(block_table(&block("INDEX", "CREATE INDEX \"unterminated ON public.t")), None);
        assert_eq!(block_table(&block("TRIGGER", "CREATE TRIGGER tr AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f();")), None);
    }

    #[test]
    fn guards_inside_function_bodies_are_kept() {
        let sql = "\\restrict k1\nCREATE FUNCTION f() RETURNS text AS $$\n\\restrict other\n$$ LANGUAGE sql;\n\\unrestrict k1\n";
        assert_eq!(strip_psql_guards(sql), "CREATE FUNCTION f() RETURNS text AS $$\n\\restrict other\n$$ LANGUAGE sql;");
        let plain = "SELECT 1;\n";
        assert_eq!(strip_psql_guards(plain), plain);
    }

    #[test]
    fn only_missing_roles_are_created() {
        let globals = "SET default_transaction_read_only = off;\nCREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\nCREATE ROLE \"Odd \"\"Name\";\nALTER ROLE \"Odd \"\"Name\" WITH NOLOGIN;\nGRANT app TO \"Odd \"\"Name\" GRANTED BY postgres;\n";
        let existing: BTreeSet<String> = ["postgres".to_string()].into_iter().collect();
        let stmts = missing_role_statements(globals, &existing);
        assert_eq!(stmts.len(), 4);
        assert!(stmts.iter().all(|s| !s.contains("ROLE postgres")));
        assert!(stmts[2].starts_with("CREATE ROLE \"Odd \"\"Name\""));
    }
}
