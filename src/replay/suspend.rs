//! Replay without `session_replication_role = replica`, for roles that may
//! not set it (every managed service's admin role unless granted
//! `SET ON PARAMETER`): the restored (temporary) database's user triggers
//! and foreign keys are suspended for the replay and put back after it.
//!
//! - user triggers that would fire in an ordinary session (enabled `O`) are
//!   disabled one by one (`ALTER TABLE ONLY … DISABLE TRIGGER name`), as
//!   the replica role would skip them; `ENABLE ALWAYS` triggers fire either
//!   way; `ENABLE REPLICA` ones are named in a warning (they would fire in
//!   a replica session, here they do not);
//! - foreign keys are dropped, so set-based batches may write rows in any
//!   order, and added back after the replay, which validates every row: a
//!   replay that broke one fails, naming it.
//!
//! Everything happens in the database being restored into, never in
//! production. Suspending needs ownership of the tables (and REFERENCES on
//! the referenced ones); when a table is not the role's, the replay stops
//! before changing anything, naming the table and the privilege.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::quote_ident;
use crate::pg::query_error;

/// Whether this session may set `session_replication_role = replica`; it is
/// left set when it may. Decided on SQLSTATE 42501 (insufficient privilege).
pub async fn try_replica_role(client: &Client) -> Result<bool> {
    match client.batch_execute("SET session_replication_role = replica").await {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => Ok(false),
        Err(e) => Err(query_error("cannot set session_replication_role")(e)),
    }
}

/// A trigger disabled for the replay.
#[derive(Debug, Clone)]
struct Trigger {
    table: u32,
    name: String,
    /// `O` (origin) or `A` (always): how to enable it again.
    enabled: String,
}

/// A foreign key dropped for the replay.
#[derive(Debug, Clone)]
struct ForeignKey {
    table: u32,
    display: String,
    name: String,
    definition: String,
}

/// What is suspended in the restored database.
#[derive(Debug, Default)]
pub struct Suspended {
    /// Only the triggers of these tables (`schema`, `name`), and the foreign
    /// keys from or to them, when the replay writes only these.
    only: Option<Vec<(String, String)>>,
    triggers: Vec<Trigger>,
    foreign_keys: Vec<ForeignKey>,
    seen_triggers: HashSet<(u32, String)>,
    seen_keys: HashSet<(u32, String)>,
}

const TRIGGERS: &str = "SELECT t.tgrelid::oid, t.tgrelid::regclass::text, t.tgname::text, t.tgenabled::text, \
        pg_has_role(c.relowner, 'USAGE'), n.nspname::text, c.relname::text \
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'R') ORDER BY 1, 3";

const FOREIGN_KEYS: &str = "SELECT con.conrelid::oid, con.conrelid::regclass::text, con.conname::text, \
        pg_get_constraintdef(con.oid), pg_has_role(c.relowner, 'USAGE'), \
        has_table_privilege(con.confrelid, 'REFERENCES'), con.confrelid::regclass::text, \
        n.nspname::text, c.relname::text, fn.nspname::text, f.relname::text \
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_class f ON f.oid = con.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace \
    WHERE con.contype = 'f' AND con.conparentid = 0 ORDER BY 1, 3";

impl Suspended {
    /// Check, then suspend every enabled user trigger and foreign key of the
    /// database of `client` (`db` names it in messages).
    pub async fn engage(client: &Client, db: &str, only: Option<Vec<(String, String)>>) -> Result<Suspended> {
        let mut s = Suspended { only, ..Suspended::default() };
        s.catch_up(client, db).await?;
        if !s.triggers.is_empty() || !s.foreign_keys.is_empty() {
            tracing::info!(
                database = db,
                triggers = s.triggers.len(),
                foreign_keys = s.foreign_keys.len(),
                "session_replication_role = replica is not permitted: user triggers and foreign keys are suspended in the restored database during the replay"
            );
        }
        Ok(s)
    }

    /// Before a restore into an existing database: when this session may not
    /// set `session_replication_role`, whether the role could suspend every
    /// trigger and foreign key there. Changes nothing.
    pub async fn preflight(client: &Client, db: &str, only: Option<Vec<(String, String)>>) -> Result<()> {
        if try_replica_role(client).await? {
            client.batch_execute("RESET session_replication_role").await.map_err(query_error("cannot reset session_replication_role"))?;
            return Ok(());
        }
        Suspended { only, ..Suspended::default() }.plan(client, db).await.map(|_| ())
    }

    /// Suspend triggers and foreign keys not seen yet (after captured DDL).
    pub async fn catch_up(&mut self, client: &Client, db: &str) -> Result<()> {
        let (new_triggers, new_keys) = self.plan(client, db).await?;
        // 2. Suspend, in one transaction.
        let mut sql = String::from("BEGIN;\n");
        for (t, display) in &new_triggers {
            sql.push_str(&format!("ALTER TABLE ONLY {display} DISABLE TRIGGER {};\n", quote_ident(&t.name)));
        }
        for k in &new_keys {
            sql.push_str(&format!("ALTER TABLE {} DROP CONSTRAINT {};\n", k.display, quote_ident(&k.name)));
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.map_err(query_error(format!("cannot suspend triggers and foreign keys in {db}")))?;
        for (t, _) in new_triggers {
            self.seen_triggers.insert((t.table, t.name.clone()));
            self.triggers.push(t);
        }
        for k in new_keys {
            self.seen_keys.insert((k.table, k.name.clone()));
            self.foreign_keys.push(k);
        }
        Ok(())
    }

    /// What is to suspend that was not yet, checked (step 1 of [`catch_up`](Self::catch_up)).
    #[allow(clippy::type_complexity)]
    async fn plan(&mut self, client: &Client, db: &str) -> Result<(Vec<(Trigger, String)>, Vec<ForeignKey>)> {
        // 1. What is there, and may this role change it? Nothing changes before every check passed.
        let triggers = client.query(TRIGGERS, &[]).await.map_err(query_error(format!("cannot list the triggers of {db}")))?;
        let keys = client.query(FOREIGN_KEYS, &[]).await.map_err(query_error(format!("cannot list the foreign keys of {db}")))?;
        let mut new_triggers = Vec::new();
        let mut replica_only = Vec::new();
        for r in &triggers {
            let (table, display, name, enabled, owned): (u32, String, String, String, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            if !self.written(r.get(5), r.get(6)) || self.seen_triggers.contains(&(table, name.clone())) {
                continue;
            }
            if enabled == "R" {
                replica_only.push(format!("{name} on {display}"));
                self.seen_triggers.insert((table, name));
                continue;
            }
            if !owned {
                return Err(missing(db, &format!("ownership of table {display}, to disable its trigger {name}")));
            }
            new_triggers.push((Trigger { table, name, enabled }, display));
        }
        if !replica_only.is_empty() {
            tracing::warn!(triggers = %replica_only.join(", "), "ENABLE REPLICA triggers do not fire during this replay (the role may not set session_replication_role = replica)");
        }
        let mut new_keys = Vec::new();
        for r in &keys {
            let (table, display, name, definition, owned, references, referenced): (u32, String, String, String, bool, bool, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            if !(self.written(r.get(7), r.get(8)) || self.written(r.get(9), r.get(10))) || self.seen_keys.contains(&(table, name.clone())) {
                continue;
            }
            if !owned {
                return Err(missing(db, &format!("ownership of table {display}, to suspend its foreign key {name}")));
            }
            if !references {
                return Err(missing(db, &format!("REFERENCES on table {referenced}, to add foreign key {name} of {display} back")));
            }
            new_keys.push(ForeignKey { table, display, name, definition });
        }
        Ok((new_triggers, new_keys))
    }

    /// Whether the replay writes table `schema.name`.
    fn written(&self, schema: String, name: String) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&(schema, name)))
    }

    /// Put everything back: foreign keys added again (each validated against
    /// every row), triggers enabled as they were. Tables dropped by the
    /// replay are skipped.
    pub async fn restore(self, client: &Client, db: &str) -> Result<()> {
        for k in &self.foreign_keys {
            let Some(table) = current_name(client, k.table).await? else { continue };
            let sql = format!("ALTER TABLE {table} ADD CONSTRAINT {} {}", quote_ident(&k.name), k.definition);
            client.batch_execute(&sql).await.map_err(|e| {
                Error::new(
                    ErrorKind::CheckFailed,
                    format!("after the replay, foreign key {} of {} cannot be added back in {db}: {}", k.name, k.display, crate::pg::error_message(&e)),
                )
            })?;
        }
        for t in &self.triggers {
            let Some(table) = current_name(client, t.table).await? else { continue };
            let how = if t.enabled == "A" { "ENABLE ALWAYS" } else { "ENABLE" };
            let sql = format!("ALTER TABLE ONLY {table} {how} TRIGGER {}", quote_ident(&t.name));
            if let Err(e) = client.batch_execute(&sql).await {
                // A trigger dropped by a replayed DDL statement is gone, as on the source.
                if e.code() != Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) {
                    return Err(query_error(format!("cannot enable trigger {} on {table} in {db} again", t.name))(e));
                }
            }
        }
        Ok(())
    }
}

/// The table's current qualified name, `None` when it no longer exists.
async fn current_name(client: &Client, oid: u32) -> Result<Option<String>> {
    let row = client.query_opt("SELECT oid::regclass::text FROM pg_class WHERE oid = $1", &[&oid]).await.map_err(query_error("cannot look a table up"))?;
    Ok(row.map(|r| r.get(0)))
}

fn missing(db: &str, what: &str) -> Error {
    Error::new(ErrorKind::AccessDenied, format!("replaying changes into {db} without session_replication_role = replica needs {what}"))
        .with_hint("restore as the owner of every table, or GRANT SET ON PARAMETER session_replication_role TO the restoring role (PostgreSQL 15+)")
}
