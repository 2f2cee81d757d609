//! `pgkeep setup`: install, idempotently, DDL capture in the configured
//! database, and `pgkeep setup --remove` to take it out again.
//!
//! Logical decoding does not carry DDL. Setup installs, in schema `pgkeep`:
//!
//! - `pgkeep.ddl_trigger()`, the function of event trigger `pgkeep_ddl` on
//!   `ddl_command_end`. It is `SECURITY DEFINER` without a `SET` clause, so
//!   that it can read the caller's `search_path`; it does nothing but pass
//!   that, the caller's role (`SET ROLE`, else the session user) and the
//!   command tag, with schema-qualified names only, to
//! - `pgkeep.ddl_capture(text, text, text)`, `SECURITY DEFINER` with
//!   `SET search_path = pg_catalog, pg_temp`, callable only by its owner.
//!   For `CREATE TABLE` (also `CREATE TABLE AS`, `SELECT INTO` and
//!   partitions) and `ALTER TABLE` it puts each table of the command into
//!   the publication that fits its replica identity, in the same
//!   transaction, so no row of a new table is missed and a table that
//!   loses its identity never makes UPDATE or DELETE fail. Then it emits
//!   `pg_logical_emit_message(true, 'pgkeep.ddl', json)` with the
//!   [`DdlMessage`](super::ddl::DdlMessage) fields `sql`
//!   (`current_query()`), `search_path`, `tag` and `role` — once per
//!   statement string per transaction (a string of several commands fires
//!   the trigger once per command; a transaction-local setting holding a
//!   hash of the string dedupes them).
//!
//! - after that, for every command (also one run inside a function), a
//!   `pgkeep.command` message with its tables and what replay cannot
//!   reproduce, and the `table_rewrite` event trigger `pgkeep_rewrite`
//!   (`pgkeep.rewrite_trigger()`), which marks a rewritten table with rows
//!   (`pgkeep.inexact`); signed `pgkeep.missing` (a fast default's stored
//!   value) and `pgkeep.partition` (a plain partition's bound) messages for
//!   replay's exact paths; and the `sql_drop` event trigger `pgkeep_drop`,
//!   which tells the capture what a DROP dropped (nothing or only temporary
//!   objects: no message); see [`super::inexact`].
//!
//! Statements of sessions or transactions that set `pgkeep.maintenance =
//! on` — pgkeep's own publication upkeep, setup itself, and the
//! publication changes the capture makes — are skipped. A failure inside
//! the capture is a warning, never a failed DDL statement: the stream then
//! notices the schema change without captured DDL and takes a full backup.
//! `ddl_command_end` also fires for DROP commands; `sql_drop` only tells it
//! what they dropped (and whether only temporary objects). Commands on
//! temporary objects only are not captured: they are session-local and
//! never restored.
//!
//! Production safety, in the same transaction as the application's DDL:
//!
//! - after every command `ddl_trigger` also runs `pgkeep.identity_guard`:
//!   any table the main publication lists that has no usable replica
//!   identity any more — whatever took it away: `DROP INDEX`, `ALTER TABLE
//!   … DROP CONSTRAINT`, `REPLICA IDENTITY NOTHING/DEFAULT`, `DROP …
//!   CASCADE` — moves to the insert-only publication, so its next UPDATE or
//!   DELETE cannot fail;
//! - event trigger `pgkeep_ddl_start` (`ddl_command_start`, `ALTER TABLE`)
//!   runs `pgkeep.unlogged_guard`: PostgreSQL refuses `SET UNLOGGED` on a
//!   published table, so the caller's own tables that the statement makes
//!   unlogged leave pgkeep's publications first (an unlogged table is not
//!   archived; `SET LOGGED` puts it back).
//!
//! Creating an event trigger needs a superuser (on managed services the
//! provider's equivalent role, e.g. `rds_superuser`); without it setup
//! fails with one line naming the database and the missing privilege.

use serde::Serialize;
use tokio_postgres::Client;

use super::ddl::DDL_PREFIX;
use super::inexact::{COMMAND_PREFIX, INEXACT_PREFIX, MISSING_PREFIX, PARTITION_PREFIX};
use super::publication::{ARCHIVABLE_TABLE_SQL, MAINTENANCE_SETTING, PublicationNames, USABLE_IDENTITY_SQL};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::quote_literal;

/// The schema holding the capture functions.
pub const SCHEMA: &str = "pgkeep";
/// The event trigger's name.
pub const EVENT_TRIGGER: &str = "pgkeep_ddl";
/// The `table_rewrite` event trigger's name.
pub const REWRITE_TRIGGER: &str = "pgkeep_rewrite";
/// The `sql_drop` event trigger's name (what a DROP dropped; temporary objects only).
pub const DROP_TRIGGER: &str = "pgkeep_drop";
/// The `ddl_command_start` event trigger's name (`SET UNLOGGED` guard).
pub const START_TRIGGER: &str = "pgkeep_ddl_start";

/// What `pgkeep setup` installed.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    /// The database.
    pub database: String,
    /// The publications new tables are put into.
    pub publications: Vec<String>,
    /// Whether the stream can receive the captured DDL (PostgreSQL 14+).
    pub messages_streamed: bool,
}

impl SetupReport {
    /// One line for the user.
    pub fn summary(&self) -> String {
        format!(
            "DDL capture installed in database {}: event trigger {EVENT_TRIGGER} (schema {SCHEMA}); new tables join {}{}",
            self.database,
            self.publications.join(" or "),
            if self.messages_streamed { "" } else { "; PostgreSQL 13 cannot stream the captured DDL (needs 14)" }
        )
    }
}

/// Install (or update) DDL capture in the configured database, for the
/// publications named after `publication`.
pub async fn install(settings: &Settings, publication: &str) -> Result<SetupReport> {
    let db = &settings.db;
    let conn = crate::pg::connect(db).await?;
    let client = &conn.client;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(crate::pg::query_error("cannot read the server version"))?
        .get(0);
    let names = PublicationNames::new(publication);
    let sql = format!("BEGIN;\nSET LOCAL {MAINTENANCE_SETTING} = 'on';\nSET LOCAL client_min_messages = warning;\n{}\nCOMMIT;", install_sql(&names));
    run_privileged(client, &sql, &db.dbname, &db.user, "install DDL capture").await?;
    let messages_streamed = crate::replication::stream::supports_messages(version as u32);
    if !messages_streamed {
        tracing::warn!(database = %db.dbname, "PostgreSQL 13's pgoutput cannot stream logical messages: DDL is captured but not archived (new tables still join the publications at once)");
    }
    tracing::info!(database = %db.dbname, event_trigger = EVENT_TRIGGER, "installed DDL capture");
    Ok(SetupReport { database: db.dbname.clone(), publications: vec![names.main, names.insert_only], messages_streamed })
}

/// Remove DDL capture: the event trigger, the functions and the schema
/// (when nothing else is in it). Returns what was removed.
pub async fn remove(settings: &Settings) -> Result<Vec<String>> {
    let db = &settings.db;
    let conn = crate::pg::connect(db).await?;
    let client = &conn.client;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $2)",
            &[&EVENT_TRIGGER, &SCHEMA],
        )
        .await
        .map_err(crate::pg::query_error("cannot look up pgkeep's DDL capture"))?;
    let (trigger, schema): (bool, bool) = (row.get(0), row.get(1));
    let mut removed = Vec::new();
    if trigger || schema {
        let sql = format!(
            "BEGIN;\nSET LOCAL {MAINTENANCE_SETTING} = 'on';\nSET LOCAL client_min_messages = warning;\n\
             DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER};\n\
             DROP EVENT TRIGGER IF EXISTS {REWRITE_TRIGGER};\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.rewrite_trigger();\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.missing_value(oid, smallint);\n\
             DROP EVENT TRIGGER IF EXISTS {DROP_TRIGGER};\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.drop_trigger();\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.ddl_trigger();\n\
             DROP EVENT TRIGGER IF EXISTS {START_TRIGGER};\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.temp_only(text);\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.ddl_start_trigger();\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.identity_guard(text);\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.unlogged_guard(text, text);\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.ddl_capture(text, text, text);\n\
             DROP TABLE IF EXISTS {SCHEMA}.ddl_key;\n\
             COMMIT;"
        );
        run_privileged(client, &sql, &db.dbname, &db.user, "remove DDL capture").await?;
        if trigger {
            removed.push(format!("event trigger {EVENT_TRIGGER}"));
        }
    }
    if schema {
        // Only when empty: RESTRICT keeps anything else someone put there.
        match client.batch_execute(&format!("DROP SCHEMA {SCHEMA} RESTRICT")).await {
            Ok(()) => removed.push(format!("schema {SCHEMA}")),
            Err(e) => tracing::warn!(schema = SCHEMA, error = %crate::pg::error_message(&e), "schema left in place"),
        }
    }
    Ok(removed)
}

/// Run `sql`; insufficient privilege becomes one line naming the database
/// and what is missing.
async fn run_privileged(client: &Client, sql: &str, dbname: &str, user: &str, what: &str) -> Result<()> {
    let result = client.batch_execute(sql).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            Error::config(format!(
                "cannot {what} in database {dbname}: role {user} is not a superuser; creating an event trigger needs \
                 SUPERUSER (on managed services the provider's admin role, e.g. rds_superuser, cloudsqlsuperuser or azure_pg_admin)"
            ))
        } else {
            Error::new(ErrorKind::Database, format!("cannot {what} in database {dbname}: {}", crate::pg::error_message(&e)))
        }
    })
}

/// The statements that install the capture (idempotent).
#[expect(clippy::too_many_lines, reason = "the install script is one SQL text")]
fn install_sql(names: &PublicationNames) -> String {
    let main = quote_literal(&names.main);
    let insert_only = quote_literal(&names.insert_only);
    let prefix = quote_literal(DDL_PREFIX);
    format!(
        r#"DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER};
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;
-- The key that authenticates captured DDL (replay runs only messages it
-- signed: any role may call pg_logical_emit_message). Readable by its owner
-- and by backup roles with pg_read_all_data; copied with every full backup,
-- which is where replay reads it.
CREATE TABLE IF NOT EXISTS {SCHEMA}.ddl_key (key text NOT NULL);
REVOKE ALL ON TABLE {SCHEMA}.ddl_key FROM PUBLIC;
INSERT INTO {SCHEMA}.ddl_key SELECT gen_random_uuid()::text || gen_random_uuid()::text
    WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.ddl_key);

CREATE OR REPLACE FUNCTION {SCHEMA}.ddl_capture(caller_search_path text, caller_role text, tag text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    main_pub constant text := {main};
    insert_only_pub constant text := {insert_only};
    stmt constant text := coalesce(current_query(), '');
    stmt_key text;
    mac_key text;
    payload text;
    role_name text;
    t record;
    in_main boolean;
    listed_in_main boolean;
    in_insert_only boolean;
    insert_only_exists boolean;
    cmd_skip boolean := false;
    cmd_tables jsonb;
    cmd_inexact jsonb;
    cmd_missing jsonb;
    cmd_partitions jsonb;
    cmd_dropped jsonb;
    fix record;
BEGIN
    IF coalesce(current_setting('{MAINTENANCE_SETTING}', true), '') = 'on' THEN
        RETURN;
    END IF;
    BEGIN
        -- 1. Tables of this command into the publication that fits their
        --    replica identity, in this transaction.
        IF tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
           AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = main_pub) THEN
            insert_only_exists := EXISTS (SELECT 1 FROM pg_publication WHERE pubname = insert_only_pub);
            FOR t IN
                SELECT DISTINCT c.oid, n.nspname, c.relname, {USABLE_IDENTITY_SQL} AS usable
                FROM pg_event_trigger_ddl_commands() d
                JOIN pg_class c ON c.oid = d.objid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table' AND NOT d.in_extension
                  AND {ARCHIVABLE_TABLE_SQL}
            LOOP
                in_main := EXISTS (SELECT 1 FROM pg_publication_tables pt
                                   WHERE pt.pubname = main_pub AND pt.schemaname = t.nspname AND pt.tablename = t.relname);
                listed_in_main := EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                                          WHERE p.pubname = main_pub AND pr.prrelid = t.oid);
                in_insert_only := EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                                          WHERE p.pubname = insert_only_pub AND pr.prrelid = t.oid);
                PERFORM set_config('{MAINTENANCE_SETTING}', 'on', true);
                IF t.usable THEN
                    IF NOT in_main THEN
                        EXECUTE format('ALTER PUBLICATION %I ADD TABLE ONLY %I.%I', main_pub, t.nspname, t.relname);
                    END IF;
                    IF in_insert_only THEN
                        EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %I.%I', insert_only_pub, t.nspname, t.relname);
                    END IF;
                ELSIF listed_in_main OR NOT in_main THEN
                    IF insert_only_exists AND NOT in_insert_only THEN
                        EXECUTE format('ALTER PUBLICATION %I ADD TABLE ONLY %I.%I', insert_only_pub, t.nspname, t.relname);
                    END IF;
                    IF listed_in_main THEN
                        EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %I.%I', main_pub, t.nspname, t.relname);
                    END IF;
                END IF;
                PERFORM set_config('{MAINTENANCE_SETTING}', '', true);
            END LOOP;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgkeep: could not put the table of % into its publication: %', tag, SQLERRM
            USING HINT = 'pgkeep stream adds it at its next publication check and takes a new full backup';
    END;
    -- 2. The statement string, once per transaction. Outside any EXCEPTION
    --    block on purpose: a message emitted in a subtransaction is decoded
    --    at the end of its transaction, after later changes, not where the
    --    DDL happened.
    stmt_key := hashtextextended(stmt, 0)::text || ':' || length(stmt)::text;
    IF coalesce(current_setting('pgkeep.ddl_statement', true), '') IS DISTINCT FROM stmt_key THEN
        PERFORM set_config('pgkeep.ddl_statement', stmt_key, true);
        role_name := CASE WHEN coalesce(caller_role, 'none') = 'none' THEN session_user::text ELSE caller_role END;
        mac_key := (SELECT k.key FROM {SCHEMA}.ddl_key k LIMIT 1);
        payload := stmt || chr(31) || coalesce(caller_search_path, '') || chr(31) || coalesce(tag, '') || chr(31) || role_name;
        PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
            'sql', stmt,
            'search_path', coalesce(caller_search_path, ''),
            'tag', coalesce(tag, ''),
            'role', role_name,
            -- SHA-256(key || hex SHA-256(key || payload)): a keyed hash without length extension.
            'mac', encode(sha256(convert_to(mac_key || encode(sha256(convert_to(mac_key || payload, 'UTF8')), 'hex'), 'UTF8')), 'hex')
        )::text);
    END IF;
    -- 3. One {command_prefix} message per command (every command, also those
    --    run inside functions): its tables, and what replay cannot reproduce
    --    (src/stream/inexact.rs). Found in a subtransaction, emitted outside.
    cmd_dropped := nullif(current_setting('pgkeep.dropped', true), '')::jsonb;
    PERFORM set_config('pgkeep.dropped', '', true);
    BEGIN
{command_sql}
        -- A DROP: what the sql_drop trigger saw. Nothing dropped, or only
        -- temporary objects: no message (functions that use temp tables).
        IF tag LIKE 'DROP %' THEN
            cmd_skip := cmd_dropped IS NULL OR coalesce((cmd_dropped->>'temporary_only')::boolean, false);
            cmd_tables := cmd_tables || coalesce(cmd_dropped->'tables', '[]');
        END IF;
    EXCEPTION WHEN OTHERS THEN
        cmd_skip := false;
        cmd_inexact := jsonb_build_array(jsonb_build_object('table', '*', 'reason', 'the capture could not inspect ' || coalesce(tag, '?') || ': ' || SQLERRM));
    END;
    -- Each such fast default's value as the source stored it, signed like
    -- the statement: replay writes it into the rows that existed.
    FOR fix IN SELECT f.v AS f FROM jsonb_array_elements(coalesce(cmd_missing, '[]')) AS f(v) WHERE f.v->>'value' IS NOT NULL LOOP
        mac_key := (SELECT k.key FROM {SCHEMA}.ddl_key k LIMIT 1);
        payload := concat_ws(chr(31), {missing_prefix}, fix.f->>'schema', fix.f->>'table', fix.f->>'column', fix.f->>'value');
        PERFORM pg_logical_emit_message(true, {missing_prefix}, jsonb_build_object(
            'schema', fix.f->>'schema', 'table', fix.f->>'table', 'column', fix.f->>'column', 'value', fix.f->>'value',
            'mac', encode(sha256(convert_to(mac_key || encode(sha256(convert_to(mac_key || payload, 'UTF8')), 'hex'), 'UTF8')), 'hex'))::text);
    END LOOP;
    -- Each plain partition's bound, signed: replay creates it when a
    -- function made it (the statement is not in the captured string).
    FOR fix IN SELECT f.v AS f FROM jsonb_array_elements(coalesce(cmd_partitions, '[]')) AS f(v) LOOP
        mac_key := (SELECT k.key FROM {SCHEMA}.ddl_key k LIMIT 1);
        payload := concat_ws(chr(31), {partition_prefix}, fix.f->>'schema', fix.f->>'table', fix.f->>'parent_schema', fix.f->>'parent', fix.f->>'bound');
        PERFORM pg_logical_emit_message(true, {partition_prefix}, (fix.f || jsonb_build_object(
            'mac', encode(sha256(convert_to(mac_key || encode(sha256(convert_to(mac_key || payload, 'UTF8')), 'hex'), 'UTF8')), 'hex')))::text);
    END LOOP;
    IF NOT cmd_skip THEN
        PERFORM pg_logical_emit_message(true, {command_prefix}, jsonb_build_object(
            'tag', coalesce(tag, ''), 'tables', coalesce(cmd_tables, '[]'), 'inexact', coalesce(cmd_inexact, '[]'))::text);
    END IF;
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.ddl_capture(text, text, text) FROM PUBLIC;

-- Whether the command worked on temporary objects only (session-local,
-- never restored: not captured). sql_drop, which fires first, noted what a
-- DROP dropped in pgkeep.dropped; cleared here when the command is skipped
-- (ddl_capture reads and clears it otherwise).
CREATE OR REPLACE FUNCTION {SCHEMA}.temp_only(tag text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    dropped constant jsonb := nullif(current_setting('pgkeep.dropped', true), '')::jsonb;
BEGIN
    IF (tag LIKE 'DROP%' AND coalesce((dropped->>'temporary_only')::boolean, false))
       OR (EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands())
           AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() d
                           WHERE d.schema_name IS NULL OR d.schema_name NOT LIKE 'pg\_temp%')) THEN
        PERFORM set_config('pgkeep.dropped', '', true);
        RETURN true;
    END IF;
    RETURN false;
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.temp_only(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION {SCHEMA}.ddl_trigger()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $pgkeep$
BEGIN
    IF {SCHEMA}.temp_only(TG_TAG) THEN
        RETURN;
    END IF;
    PERFORM {SCHEMA}.ddl_capture(pg_catalog.current_setting('search_path'), pg_catalog.current_setting('role'), TG_TAG);
    PERFORM {SCHEMA}.identity_guard(TG_TAG);
END
$pgkeep$;

{rewrite_sql}{guards}
-- Last: the capture fires for the statements above otherwise, before the
-- functions it calls exist (an upgrade from an older setup, too).
CREATE EVENT TRIGGER {EVENT_TRIGGER} ON ddl_command_end EXECUTE FUNCTION {SCHEMA}.ddl_trigger();
"#,
        command_prefix = quote_literal(COMMAND_PREFIX),
        missing_prefix = quote_literal(MISSING_PREFIX),
        partition_prefix = quote_literal(PARTITION_PREFIX),
        command_sql = COMMAND_SQL,
        rewrite_sql = rewrite_sql(),
        guards = identity_guard_sql(names),
    )
}

/// Step 3 of the capture (variables `tag`, `cmd_skip`, `cmd_tables`,
/// `cmd_inexact`): the command's tables (an index counts as its table), no
/// message at all for commands on temporary relations only, and marks for
/// `CREATE TABLE AS` / `SELECT INTO` (their rows are not decoded). Columns
/// this transaction added with a fast default that is not immutable
/// (`now()`, `CURRENT_USER`, …: existing rows read the value the source
/// computed) to a table with rows go into `cmd_missing` with that value
/// (`pgkeep.missing` messages, the exact path); a mark when it is unreadable.
/// A created partition that has nothing of its own (columns, constraints,
/// indexes, options all from its parent) goes into `cmd_partitions` with
/// its bound (`pgkeep.partition` messages), so that replay can create it
/// when a function did.
const COMMAND_SQL: &str = r#"        SELECT coalesce(bool_and(c.relpersistence = 't'), false),
               coalesce(jsonb_agg(DISTINCT n.nspname || '.' || c.relname) FILTER (WHERE c.relkind IN ('r', 'p')), '[]')
          INTO cmd_skip, cmd_tables
          FROM pg_event_trigger_ddl_commands() d
          JOIN pg_class c ON c.oid = coalesce((SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = d.objid), d.objid)
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE d.classid = 'pg_class'::regclass;
        IF tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
            SELECT coalesce(jsonb_agg(jsonb_build_object('table', x.tbl, 'reason', tag || ': the rows it wrote are not in the archive')), '[]')
              INTO cmd_inexact FROM jsonb_array_elements_text(cmd_tables) AS x(tbl);
        ELSIF tag = 'ALTER TABLE' THEN
            SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object('schema', n.nspname, 'table', c.relname, 'column', a.attname::text,
                       'value', pgkeep.missing_value(c.oid, a.attnum), 'default', pg_get_expr(ad.adbin, ad.adrelid))), '[]')
              INTO cmd_missing
              FROM pg_event_trigger_ddl_commands() d
              CROSS JOIN LATERAL (SELECT d.objid AS relid UNION SELECT p.relid FROM pg_partition_tree(d.objid) p) pt
              JOIN pg_class c ON c.oid = pt.relid AND c.relkind = 'r' AND c.relpersistence <> 't'
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.atthasmissing
              JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
             WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table'
               AND age(a.xmin) <= 0 AND pg_relation_size(c.oid) > 0
               AND (ad.adbin::text ~ '\{(SQLVALUEFUNCTION|COERCEVIAIO|ARRAYCOERCEEXPR|NEXTVALUEEXPR)'
                    OR EXISTS (SELECT 1 FROM regexp_matches(ad.adbin::text, ':(?:opfuncid|funcid) (\d+)', 'g') m
                               JOIN pg_proc p ON p.oid = m[1]::oid WHERE p.provolatile <> 'i'));
            -- A value that cannot be read back is a mark instead.
            SELECT coalesce(jsonb_agg(jsonb_build_object('table', (f.v->>'schema') || '.' || (f.v->>'table'), 'reason',
                       format('column %s added with the default %s, which is not immutable, and its value on the source is unreadable',
                              f.v->>'column', f.v->>'default'))), '[]')
              INTO cmd_inexact FROM jsonb_array_elements(cmd_missing) AS f(v) WHERE f.v->>'value' IS NULL;
        ELSIF tag = 'CREATE TABLE' THEN
            -- A plain partition (everything it has comes from its parent) can
            -- be created again from its bound, also when a function made it.
            SELECT coalesce(jsonb_agg(jsonb_build_object('schema', n.nspname, 'table', c.relname, 'parent_schema', pn.nspname,
                       'parent', pc.relname, 'bound', pg_get_expr(c.relpartbound, c.oid))), '[]')
              INTO cmd_partitions
              FROM pg_event_trigger_ddl_commands() d
              JOIN pg_class c ON c.oid = d.objid AND c.relispartition AND c.relkind = 'r' AND c.relpersistence = 'p'
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_inherits h ON h.inhrelid = c.oid
              JOIN pg_class pc ON pc.oid = h.inhparent
              JOIN pg_namespace pn ON pn.oid = pc.relnamespace
             WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table'
               AND c.reloptions IS NULL AND c.reltablespace = 0
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attislocal)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conislocal)
               AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                               AND NOT EXISTS (SELECT 1 FROM pg_inherits hi WHERE hi.inhrelid = i.indexrelid));
        END IF;"#;

/// The `table_rewrite` event trigger `pgkeep_rewrite`: a table with rows
/// that is rewritten (volatile default, identity or serial added, `ALTER …
/// TYPE`, `SET LOGGED`/`UNLOGGED`, access method) gets a `pgkeep.inexact`
/// message in the rewriting transaction; the rewritten rows are not
/// decoded. Temporary tables and pgkeep's own sessions are skipped.
fn rewrite_sql() -> String {
    let prefix = quote_literal(INEXACT_PREFIX);
    format!(
        r#"
CREATE OR REPLACE FUNCTION {SCHEMA}.rewrite_trigger()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    tbl constant oid := pg_event_trigger_table_rewrite_oid();
    why constant int := pg_event_trigger_table_rewrite_reason();
    t record;
BEGIN
    IF coalesce(current_setting('{MAINTENANCE_SETTING}', true), '') = 'on' THEN
        RETURN;
    END IF;
    SELECT n.nspname, c.relname, c.relpersistence,
           pg_relation_size(c.oid) + (SELECT coalesce(sum(pg_relation_size(pt.relid)), 0) FROM pg_partition_tree(c.oid) pt) AS size
      INTO t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF NOT FOUND OR t.relpersistence = 't' OR t.size = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
        'table', t.nspname || '.' || t.relname,
        'reason', 'table rewrite (' || concat_ws(', ',
            CASE WHEN why & 1 <> 0 THEN 'persistence changed' END, CASE WHEN why & 2 <> 0 THEN 'default value' END,
            CASE WHEN why & 4 <> 0 THEN 'column type' END, CASE WHEN why & 8 <> 0 THEN 'access method' END)
            || '): the rewritten rows are not in the archive')::text);
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.rewrite_trigger() FROM PUBLIC;

-- sql_drop: what a DROP dropped, for the capture's message of the command
-- (transaction-local; ddl_command_end of the same command reads and clears it).
CREATE OR REPLACE FUNCTION {SCHEMA}.drop_trigger()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
BEGIN
    PERFORM set_config('pgkeep.dropped', coalesce((
        SELECT jsonb_build_object('temporary_only', bool_and(o.is_temporary),
                   'tables', coalesce(jsonb_agg(DISTINCT o.schema_name || '.' || o.object_name)
                                      FILTER (WHERE o.object_type = 'table' AND NOT o.is_temporary), '[]'))::text
          FROM pg_event_trigger_dropped_objects() o), ''), true);
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.drop_trigger() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS {DROP_TRIGGER};
CREATE EVENT TRIGGER {DROP_TRIGGER} ON sql_drop EXECUTE FUNCTION {SCHEMA}.drop_trigger();

-- The value a fast default stored for existing rows (attmissingval), as
-- text that reads back the same on any server settings.
CREATE OR REPLACE FUNCTION {SCHEMA}.missing_value(rel oid, att smallint)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres'
SET extra_float_digits = 3 SET bytea_output = 'hex' SET TimeZone = 'UTC' AS $pgkeep$
    SELECT (a.attmissingval::text::text[])[1] FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum = att AND a.atthasmissing
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.missing_value(oid, smallint) FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS {REWRITE_TRIGGER};
CREATE EVENT TRIGGER {REWRITE_TRIGGER} ON table_rewrite EXECUTE FUNCTION {SCHEMA}.rewrite_trigger();
"#
    )
}

/// The production-safety guards (module docs): `identity_guard`, run by
/// `ddl_trigger` after every command, and `unlogged_guard` with its
/// `ddl_command_start` trigger.
fn identity_guard_sql(names: &PublicationNames) -> String {
    let main = quote_literal(&names.main);
    let insert_only = quote_literal(&names.insert_only);
    format!(
        r#"
CREATE OR REPLACE FUNCTION {SCHEMA}.identity_guard(tag text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    main_pub constant text := {main};
    insert_only_pub constant text := {insert_only};
    insert_only_exists boolean;
    t record;
BEGIN
    IF coalesce(current_setting('{MAINTENANCE_SETTING}', true), '') = 'on' THEN
        RETURN;
    END IF;
    BEGIN
        insert_only_exists := EXISTS (SELECT 1 FROM pg_publication WHERE pubname = insert_only_pub);
        -- Every table the main publication lists that has no usable replica
        -- identity any more, whatever took it away (DROP INDEX, DROP
        -- CONSTRAINT, REPLICA IDENTITY, DROP … CASCADE): its next UPDATE or
        -- DELETE would fail. Moved in this transaction.
        FOR t IN
            SELECT n.nspname, c.relname, c.relpersistence = 'p' AS permanent,
                   EXISTS (SELECT 1 FROM pg_publication_rel pr2 JOIN pg_publication p2 ON p2.oid = pr2.prpubid
                           WHERE p2.pubname = insert_only_pub AND pr2.prrelid = c.oid) AS in_insert_only
            FROM pg_publication_rel pr
            JOIN pg_publication p ON p.oid = pr.prpubid
            JOIN pg_class c ON c.oid = pr.prrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE p.pubname = main_pub AND NOT {USABLE_IDENTITY_SQL}
        LOOP
            PERFORM set_config('{MAINTENANCE_SETTING}', 'on', true);
            IF insert_only_exists AND t.permanent AND NOT t.in_insert_only THEN
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE ONLY %I.%I', insert_only_pub, t.nspname, t.relname);
            END IF;
            EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %I.%I', main_pub, t.nspname, t.relname);
            PERFORM set_config('{MAINTENANCE_SETTING}', '', true);
            RAISE WARNING 'pgkeep: table %.% lost its replica identity (%): moved from publication % to %, so its UPDATE and DELETE keep working; only its INSERTs and TRUNCATEs are archived now',
                quote_ident(t.nspname), quote_ident(t.relname), tag, main_pub, insert_only_pub
                USING HINT = format('ALTER TABLE %I.%I REPLICA IDENTITY FULL (or add a primary key) and pgkeep moves it back', t.nspname, t.relname);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgkeep: could not check the replica identities of the tables of publication % after %: %', main_pub, tag, SQLERRM
            USING HINT = 'pgkeep stream moves a table without a replica identity at its next publication check';
    END;
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.identity_guard(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION {SCHEMA}.unlogged_guard(caller_search_path text, caller_role text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    main_pub constant text := {main};
    insert_only_pub constant text := {insert_only};
    role_name text;
    m text[];
    rel regclass;
    pub text;
BEGIN
    IF coalesce(current_setting('{MAINTENANCE_SETTING}', true), '') = 'on' THEN
        RETURN;
    END IF;
    BEGIN
        role_name := CASE WHEN coalesce(caller_role, 'none') = 'none' THEN session_user::text ELSE caller_role END;
        -- PostgreSQL refuses SET UNLOGGED on a published table. An unlogged
        -- table cannot be archived anyway: the caller's own tables that the
        -- statement makes unlogged leave pgkeep's publications first.
        FOR m IN
            SELECT regexp_matches(coalesce(current_query(), ''),
                'alter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?((?:"(?:[^"]|"")+"|[^\s".;,]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[^\s".;,]+))?)[^;]*\mset\s+unlogged\M', 'gi')
        LOOP
            PERFORM set_config('search_path', coalesce(caller_search_path, ''), true);
            rel := to_regclass(m[1]);
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
            CONTINUE WHEN rel IS NULL;
            CONTINUE WHEN NOT pg_has_role(role_name, (SELECT c.relowner FROM pg_class c WHERE c.oid = rel), 'USAGE');
            FOR pub IN
                SELECT p.pubname::text FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE pr.prrelid = rel AND p.pubname IN (main_pub, insert_only_pub)
            LOOP
                PERFORM set_config('{MAINTENANCE_SETTING}', 'on', true);
                EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %s', pub, rel);
                PERFORM set_config('{MAINTENANCE_SETTING}', '', true);
                RAISE WARNING 'pgkeep: table % becomes UNLOGGED: removed from publication %; its changes are not archived until ALTER TABLE % SET LOGGED', rel, pub, rel;
            END LOOP;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgkeep: could not take an UNLOGGED table out of publication %: %', main_pub, SQLERRM
            USING HINT = format('as a superuser: ALTER PUBLICATION %I DROP TABLE ONLY <table>; then ALTER TABLE <table> SET UNLOGGED', main_pub);
    END;
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.unlogged_guard(text, text) FROM PUBLIC;

-- No operator here: this function runs with the caller's search_path (the
-- event trigger's WHEN clause picks ALTER TABLE).
CREATE OR REPLACE FUNCTION {SCHEMA}.ddl_start_trigger()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $pgkeep$
BEGIN
    PERFORM {SCHEMA}.unlogged_guard(pg_catalog.current_setting('search_path'), pg_catalog.current_setting('role'));
END
$pgkeep$;

DROP EVENT TRIGGER IF EXISTS {START_TRIGGER};
CREATE EVENT TRIGGER {START_TRIGGER} ON ddl_command_start WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION {SCHEMA}.ddl_start_trigger();
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_sql_names_the_publications_and_quotes_them() {
        let sql = install_sql(&PublicationNames::new("pgkeep_it's"));
        assert!(sql.contains("main_pub constant text := 'pgkeep_it''s';"), "{sql}");
        assert!(sql.contains("insert_only_pub constant text := 'pgkeep_it''s_insert_only';"));
        assert!(sql.contains("SET search_path = pg_catalog, pg_temp"));
        assert!(sql.contains("pg_logical_emit_message(true, 'pgkeep.ddl'"));
        // The outer function runs with the caller's search_path: qualified names only.
        let outer = &sql[sql.find("ddl_trigger()\nRETURNS").unwrap()..];
        let body = &outer[outer.find("BEGIN").unwrap()..outer.find("\nEND\n").unwrap()];
        // No operator may run with the caller's search_path in a SECURITY DEFINER function.
        for op in [" = ", " LIKE ", " <> "] {
            assert!(!body.contains(op), "{body}");
        }
        let start = &sql[sql.find("ddl_start_trigger()\nRETURNS").unwrap()..];
        let start = &start[start.find("BEGIN").unwrap()..start.find("\nEND\n").unwrap()];
        assert!(![" = ", " LIKE "].iter().any(|op| start.contains(op)), "{start}");
        assert!(body.contains("pg_catalog.current_setting('search_path')") && body.contains("pgkeep.ddl_capture("), "{body}");
    }
}
