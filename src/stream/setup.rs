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
//! Statements of sessions or transactions that set `pgkeep.maintenance =
//! on` — pgkeep's own publication upkeep, setup itself, and the
//! publication changes the capture makes — are skipped. A failure inside
//! the capture is a warning, never a failed DDL statement: the stream then
//! notices the schema change without captured DDL and takes a full backup.
//! `ddl_command_end` also fires for DROP commands; `sql_drop` (event
//! trigger `pgkeep_ddl_drop`) only notes whether a command dropped
//! temporary objects only. Commands on temporary objects only are not
//! captured: they are session-local and never restored.
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
use super::publication::{ARCHIVABLE_TABLE_SQL, MAINTENANCE_SETTING, PublicationNames, USABLE_IDENTITY_SQL};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::quote_literal;

/// The schema holding the capture functions.
pub const SCHEMA: &str = "pgkeep";
/// The event trigger's name.
pub const EVENT_TRIGGER: &str = "pgkeep_ddl";
/// The `sql_drop` event trigger's name (notes drops of temporary objects only).
pub const DROP_TRIGGER: &str = "pgkeep_ddl_drop";
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
    let sql = format!(
        "BEGIN;\nSET LOCAL {MAINTENANCE_SETTING} = 'on';\nSET LOCAL client_min_messages = warning;\n{}\nCOMMIT;",
        install_sql(&names)
    );
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
             DROP FUNCTION IF EXISTS {SCHEMA}.ddl_trigger();\n\
             DROP EVENT TRIGGER IF EXISTS {START_TRIGGER};\n\
             DROP EVENT TRIGGER IF EXISTS {DROP_TRIGGER};\n\
             DROP FUNCTION IF EXISTS {SCHEMA}.drop_trigger();\n\
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
fn install_sql(names: &PublicationNames) -> String {
    let main = quote_literal(&names.main);
    let insert_only = quote_literal(&names.insert_only);
    let prefix = quote_literal(DDL_PREFIX);
    format!(
        r#"CREATE SCHEMA IF NOT EXISTS {SCHEMA};
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
END
$pgkeep$;
REVOKE ALL ON FUNCTION {SCHEMA}.ddl_capture(text, text, text) FROM PUBLIC;

-- Whether the command worked on temporary objects only (session-local,
-- never restored: not captured). sql_drop, which fires first, noted drops.
CREATE OR REPLACE FUNCTION {SCHEMA}.temp_only(tag text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
DECLARE
    temp_drop constant boolean := coalesce(current_setting('pgkeep.temp_drop', true), '') = 'on';
BEGIN
    PERFORM set_config('pgkeep.temp_drop', '', true);
    RETURN (tag LIKE 'DROP%' AND temp_drop)
        OR (EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands())
            AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() d
                            WHERE d.schema_name IS NULL OR d.schema_name NOT LIKE 'pg\_temp%'));
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

-- sql_drop fires before ddl_command_end: note whether the command dropped
-- temporary objects only.
CREATE OR REPLACE FUNCTION {SCHEMA}.drop_trigger()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgkeep$
BEGIN
    PERFORM set_config('pgkeep.temp_drop',
        CASE WHEN (SELECT bool_and(o.is_temporary) FROM pg_event_trigger_dropped_objects() o) THEN 'on' ELSE '' END, true);
END
$pgkeep$;

DROP EVENT TRIGGER IF EXISTS {DROP_TRIGGER};
CREATE EVENT TRIGGER {DROP_TRIGGER} ON sql_drop EXECUTE FUNCTION {SCHEMA}.drop_trigger();

DROP EVENT TRIGGER IF EXISTS {EVENT_TRIGGER};
CREATE EVENT TRIGGER {EVENT_TRIGGER} ON ddl_command_end EXECUTE FUNCTION {SCHEMA}.ddl_trigger();
{guards}"#,
        guards = identity_guard_sql(names)
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
