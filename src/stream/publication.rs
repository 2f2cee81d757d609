//! The two publications `pgkeep stream` archives, and keeping every table in
//! the right one (docs/FORMAT.md §5).
//!
//! - `<publication>`: the tables with a usable replica identity (a primary
//!   key, `REPLICA IDENTITY FULL`, or a replica-identity index). Every
//!   change is archived.
//! - `<publication>_insert_only`, created `WITH (publish = 'insert,
//!   truncate')`: the tables without one. Their inserts and truncates are
//!   archived; UPDATE and DELETE on them keep working, because a publication
//!   that does not publish them never makes them fail.
//!
//! Never `FOR ALL TABLES`: that would make UPDATE and DELETE fail on every
//! table without a replica identity. [`reconcile`] runs at every (re)start
//! and periodically while streaming: [`plan`] (pure) puts tables that are in
//! neither publication into the right one, moves a table that gained an
//! identity to the main publication (add there, then drop from the
//! insert-only one, in one transaction) and a table that lost it the other
//! way (so its UPDATE and DELETE do not start failing). pgkeep's own
//! statements run with `pgkeep.maintenance = on`, which tells the DDL
//! capture of `pgkeep setup` to ignore them.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{qualified, quote_ident};
use crate::pg::query_error;

/// Appended to the main publication's name for the insert-only one.
pub const INSERT_ONLY_SUFFIX: &str = "_insert_only";

/// The setting pgkeep's own sessions and statements carry so that the DDL
/// capture of `pgkeep setup` skips them (publication maintenance is not
/// schema the replay needs).
pub const MAINTENANCE_SETTING: &str = "pgkeep.maintenance";

pub(crate) use crate::pg::catalog::{ARCHIVABLE_TABLE_SQL, USABLE_IDENTITY_SQL};

/// The insert-only publication's name for `publication`: the suffix
/// appended, the base cut (at a character boundary) so the whole stays
/// within PostgreSQL's 63-byte identifiers.
pub fn insert_only_name(publication: &str) -> String {
    let mut cut = 63usize.saturating_sub(INSERT_ONLY_SUFFIX.len()).min(publication.len());
    while !publication.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{INSERT_ONLY_SUFFIX}", &publication[..cut])
}

/// The two publication names of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationNames {
    /// Tables with a usable replica identity: every change.
    pub main: String,
    /// Tables without one: inserts and truncates.
    pub insert_only: String,
}

impl PublicationNames {
    /// `publication` and its insert-only companion.
    pub fn new(publication: &str) -> PublicationNames {
        PublicationNames { main: publication.to_string(), insert_only: insert_only_name(publication) }
    }

    fn name(&self, target: Target) -> &str {
        match target {
            Target::Main => &self.main,
            Target::InsertOnly => &self.insert_only,
        }
    }
}

/// One of the two publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `<publication>`.
    Main,
    /// `<publication>_insert_only`.
    InsertOnly,
}

/// A table as the catalog sees it, for [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// `"schema"."name"`.
    pub table: String,
    /// It has a usable replica identity.
    pub usable_identity: bool,
    /// The main publication publishes it (listed, or through `FOR ALL TABLES`
    /// or `FOR TABLES IN SCHEMA`).
    pub in_main: bool,
    /// The main publication lists it explicitly (so it can be dropped from it).
    pub listed_in_main: bool,
    /// The insert-only publication lists it.
    pub in_insert_only: bool,
}

/// Why a table is (re)placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It was in neither publication.
    New,
    /// It gained a usable replica identity: from insert-only to main.
    GainedIdentity,
    /// It lost its replica identity: from main to insert-only.
    LostIdentity,
}

/// One table's change of publications, applied in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `"schema"."name"`.
    pub table: String,
    /// Added to this publication first…
    pub add: Option<Target>,
    /// …then dropped from this one.
    pub drop: Option<Target>,
    /// Why.
    pub reason: Reason,
}

impl Placement {
    /// The publication the table ends up in.
    pub fn target(&self) -> Target {
        self.add.unwrap_or(match self.drop {
            Some(Target::InsertOnly) => Target::Main,
            _ => Target::InsertOnly,
        })
    }
}

/// What to change so that every table is in the publication that fits its
/// replica identity (pure). Also returns tables that lost their identity but
/// are published by the main publication through `FOR ALL TABLES` or a
/// schema, which pgkeep cannot take out.
pub fn plan(tables: &[TableState]) -> (Vec<Placement>, Vec<String>) {
    let mut placements = Vec::new();
    let mut stuck = Vec::new();
    for t in tables {
        let p = |add, drop, reason| Placement { table: t.table.clone(), add, drop, reason };
        match (t.usable_identity, t.in_main, t.in_insert_only) {
            (true, false, false) => placements.push(p(Some(Target::Main), None, Reason::New)),
            (true, false, true) => placements.push(p(Some(Target::Main), Some(Target::InsertOnly), Reason::GainedIdentity)),
            // Published twice: the insert-only entry is redundant.
            (true, true, true) => placements.push(p(None, Some(Target::InsertOnly), Reason::GainedIdentity)),
            (false, false, false) => placements.push(p(Some(Target::InsertOnly), None, Reason::New)),
            (false, true, in_insert_only) if t.listed_in_main => {
                let add = (!in_insert_only).then_some(Target::InsertOnly);
                placements.push(p(add, Some(Target::Main), Reason::LostIdentity));
            }
            (false, true, _) => stuck.push(t.table.clone()),
            (true, true, false) | (false, false, true) => {}
        }
    }
    (placements, stuck)
}

/// The two publications as found in the catalog.
#[derive(Debug, Clone, Default)]
struct Existing {
    main: Option<PublicationFlags>,
    insert_only: Option<PublicationFlags>,
}

#[derive(Debug, Clone, Copy)]
struct PublicationFlags {
    all_tables: bool,
    update_or_delete: bool,
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, Default)]
pub struct Reconciled {
    /// It created the main publication (the very first run).
    pub created_main: bool,
    /// It created the insert-only publication.
    pub created_insert_only: bool,
    /// The insert-only publication exists (it may not, when pgkeep could
    /// not create it: then only the main one is streamed).
    pub insert_only_exists: bool,
    /// Tables placed, with where they went and why.
    pub placed: Vec<(String, Target, Reason)>,
    /// Tables whose placement failed.
    pub failed: Vec<String>,
    /// Tables in neither publication afterwards, with why (one line):
    /// nothing of theirs is archived ([`super::unarchived`]).
    pub unarchived: Vec<(String, String)>,
    /// Every table of the insert-only publication afterwards.
    pub insert_only_tables: Vec<String>,
}

impl Reconciled {
    /// Tables added to a publication after it existed: changes made to them
    /// before now are not in the archive.
    pub fn late_additions(&self) -> impl Iterator<Item = &str> {
        self.placed.iter().filter(|(_, _, r)| *r == Reason::New).map(|(t, _, _)| t.as_str())
    }
}

/// How [`reconcile`] runs.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileMode {
    /// Create missing publications (at start and after a reconnect, where
    /// a publication newer than the slot's position is taken care of; not
    /// in the periodic check).
    pub create: bool,
    /// Log what needs the operator: every table of the insert-only
    /// publication with the fix, tables pgkeep cannot take out of a
    /// `FOR ALL TABLES` publication (at start, not every check).
    pub announce: bool,
}

/// Make sure both publications exist and every archivable table is in the
/// right one. A table whose placement fails is warned about unless it is in
/// `quiet` (it failed before: the role may lack ownership of it).
pub async fn reconcile(client: &Client, names: &PublicationNames, mode: ReconcileMode, quiet: &HashSet<String>) -> Result<Reconciled> {
    let existing = existing(client, names).await?;
    let tables = table_states(client, names).await?;
    let (mut placements, stuck) = plan(&tables);
    let mut out = Reconciled { insert_only_exists: existing.insert_only.is_some(), ..Reconciled::default() };

    if mode.announce && existing.main.is_some_and(|m| m.all_tables) {
        tracing::warn!(publication = %names.main, "publication is FOR ALL TABLES: UPDATE and DELETE fail on tables without a replica identity");
    }
    // First run: create each missing publication with its tables in one statement.
    if existing.main.is_none() {
        if !mode.create {
            return Err(Error::new(ErrorKind::Database, format!("publication {} does not exist", names.main)));
        }
        let tables = take_new(&mut placements, Target::Main);
        placements.extend(create_with(client, &names.main, tables, "", Target::Main).await?);
        out.created_main = true;
    }
    if existing.insert_only.is_none() && mode.create {
        let tables = take_new(&mut placements, Target::InsertOnly);
        match create_with(client, &names.insert_only, tables.clone(), " WITH (publish = 'insert, truncate')", Target::InsertOnly).await {
            Ok(each) => {
                placements.extend(each);
                out.created_insert_only = true;
                out.insert_only_exists = true;
            }
            Err(e) => {
                // Those tables are recorded as not archived below.
                placements.extend(tables.iter().map(|table| Placement {
                    table: table.clone(),
                    add: Some(Target::InsertOnly),
                    drop: None,
                    reason: Reason::New,
                }));
                // Not fatal: the tables with an identity are archived all the same.
                let list = tables.iter().map(|t| format!("ONLY {t}")).collect::<Vec<_>>().join(", ");
                let for_tables = if list.is_empty() { String::new() } else { format!(" FOR TABLE {list}") };
                tracing::warn!(
                    error = %e.user_line(),
                    "tables without a replica identity are not archived: cannot create publication {}; fix, as the tables' owner: \
                     CREATE PUBLICATION {}{for_tables} WITH (publish = 'insert, truncate')",
                    names.insert_only,
                    quote_ident(&names.insert_only)
                );
            }
        }
    } else if existing.insert_only.is_some_and(|p| p.update_or_delete) {
        let sql = format!("ALTER PUBLICATION {} SET (publish = 'insert, truncate')", quote_ident(&names.insert_only));
        client.batch_execute(&sql).await.map_err(query_error(format!("cannot restrict publication {} to inserts and truncates", names.insert_only)))?;
        tracing::warn!(publication = %names.insert_only, "publication published updates or deletes; restricted to inserts and truncates");
    }
    let mut no_insert_only = Vec::new();
    if !out.insert_only_exists {
        // Nothing can go there, so those tables are not archived; a table
        // that lost its identity still leaves the main publication, so its
        // UPDATE and DELETE keep working.
        placements.retain_mut(|p| {
            if p.add != Some(Target::InsertOnly) {
                return true;
            }
            no_insert_only.push((
                p.table.clone(),
                format!("it has no replica identity and publication {} does not exist (pgkeep could not create it)", names.insert_only),
            ));
            p.add = None;
            p.drop.is_some()
        });
    }
    if mode.announce {
        for table in &stuck {
            tracing::warn!(
                table = %table,
                publication = %names.main,
                "table has no usable replica identity but the publication includes it through FOR ALL TABLES or its schema: UPDATE and DELETE on it fail; \
                 fix: ALTER TABLE {table} REPLICA IDENTITY FULL (or add a primary key)"
            );
        }
    }

    // One transaction for everything, or one per table if that fails.
    if !placements.is_empty() && apply(client, names, &placements).await.is_err() {
        for p in &placements {
            if let Err(e) = apply(client, names, std::slice::from_ref(p)).await {
                if !quiet.contains(&p.table) {
                    tracing::warn!(
                        table = %p.table,
                        error = %e.user_line(),
                        "cannot put table into publication {}; retrying every check (this warning is not repeated; \
                         the publication's and the table's owner can, or `pgkeep setup` does it as new tables are created)",
                        names.name(p.target())
                    );
                }
                out.failed.push(p.table.clone());
                if p.reason == Reason::New {
                    out.unarchived.push((p.table.clone(), format!("cannot put it into publication {}: {}", names.name(p.target()), e.user_line())));
                }
            }
        }
    }
    for p in placements.iter().filter(|p| !out.failed.contains(&p.table)) {
        log_placement(names, p);
        out.placed.push((p.table.clone(), p.target(), p.reason));
    }
    // (A table that lost its identity and could not leave the main publication stays archived there.)
    out.unarchived.extend(no_insert_only.into_iter().filter(|(t, _)| !out.failed.contains(t)));

    if out.insert_only_exists {
        out.insert_only_tables = listed(client, &names.insert_only).await?;
    }
    if mode.announce {
        for table in &out.insert_only_tables {
            tracing::warn!(
                table = %table,
                publication = %names.insert_only,
                "table has no usable replica identity: only its INSERTs and TRUNCATEs are archived, not its UPDATEs and DELETEs; \
                 fix: ALTER TABLE {table} ADD PRIMARY KEY (…) or ALTER TABLE {table} REPLICA IDENTITY FULL \
                 (pgkeep then moves it to publication {})",
                names.main
            );
        }
    }
    Ok(out)
}

/// Create publication `name` with `tables` in one statement. When some
/// table is not the role's (42501), it is created empty and the tables come
/// back as placements into `target`, each added on its own (those that fail
/// are not archived, and are recorded so).
async fn create_with(client: &Client, name: &str, tables: Vec<String>, with: &str, target: Target) -> Result<Vec<Placement>> {
    match create(client, name, &tables, with).await {
        Ok(()) => {
            tracing::info!(publication = %name, tables = tables.len(), "created publication{with}");
            Ok(Vec::new())
        }
        Err(e) if !tables.is_empty() && e.sqlstate() == Some(INSUFFICIENT_PRIVILEGE) => {
            create(client, name, &[], with).await?;
            tracing::info!(publication = %name, "created publication{with}; not every table could go in at once, so each is added on its own");
            Ok(tables.into_iter().map(|table| Placement { table, add: Some(target), drop: None, reason: Reason::New }).collect())
        }
        Err(e) => Err(e),
    }
}

/// Remove and return the tables of new placements into `target`.
fn take_new(placements: &mut Vec<Placement>, target: Target) -> Vec<String> {
    let (taken, rest): (Vec<Placement>, Vec<Placement>) =
        std::mem::take(placements).into_iter().partition(|p| p.reason == Reason::New && p.add == Some(target));
    *placements = rest;
    taken.into_iter().map(|p| p.table).collect()
}

fn log_placement(names: &PublicationNames, p: &Placement) {
    let to = names.name(p.target());
    match p.reason {
        Reason::New => tracing::info!(table = %p.table, publication = %to, "added table to publication"),
        Reason::GainedIdentity => tracing::info!(
            table = %p.table,
            publication = %to,
            "table has a usable replica identity now: moved to the main publication, its UPDATEs and DELETEs are archived from here on"
        ),
        Reason::LostIdentity => tracing::warn!(
            table = %p.table,
            publication = %to,
            "table lost its replica identity: moved to the insert-only publication so that UPDATE and DELETE on it keep working; \
             only its INSERTs and TRUNCATEs are archived now; fix: ALTER TABLE {} REPLICA IDENTITY FULL (or add a primary key)",
            p.table
        ),
    }
}

async fn create(client: &Client, name: &str, tables: &[String], with: &str) -> Result<()> {
    let mut sql = format!("CREATE PUBLICATION {}", quote_ident(name));
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(|t| format!("ONLY {t}")).collect();
        sql.push_str(" FOR TABLE ");
        sql.push_str(&list.join(", "));
    }
    sql.push_str(with);
    client
        .batch_execute(&sql)
        .await
        .map_err(query_error(format!("cannot create publication {name}")))
        .map_err(|e| e.with_hint("the role needs CREATE on the database and ownership of the tables; or create the publication as their owner"))
}

/// Apply `placements` in one transaction: each table added before it is dropped.
async fn apply(client: &Client, names: &PublicationNames, placements: &[Placement]) -> Result<()> {
    let mut sql = String::from("BEGIN;\n");
    for p in placements {
        if let Some(to) = p.add {
            sql.push_str(&format!("ALTER PUBLICATION {} ADD TABLE ONLY {};\n", quote_ident(names.name(to)), p.table));
        }
        if let Some(from) = p.drop {
            sql.push_str(&format!("ALTER PUBLICATION {} DROP TABLE ONLY {};\n", quote_ident(names.name(from)), p.table));
        }
    }
    sql.push_str("COMMIT;");
    let result = client.batch_execute(&sql).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(query_error("cannot change publication membership"))
}

async fn existing(client: &Client, names: &PublicationNames) -> Result<Existing> {
    let rows = client
        .query(
            "SELECT pubname::text, puballtables, pubupdate OR pubdelete FROM pg_catalog.pg_publication WHERE pubname = ANY($1)",
            &[&vec![names.main.as_str(), names.insert_only.as_str()]],
        )
        .await
        .map_err(query_error("cannot look up the publications"))?;
    let mut out = Existing::default();
    for row in rows {
        let flags = PublicationFlags { all_tables: row.get(1), update_or_delete: row.get(2) };
        if row.get::<_, String>(0) == names.main {
            out.main = Some(flags);
        } else {
            out.insert_only = Some(flags);
        }
    }
    Ok(out)
}

/// Every archivable table with its identity and publication membership.
async fn table_states(client: &Client, names: &PublicationNames) -> Result<Vec<TableState>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, {USABLE_IDENTITY_SQL},
                EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                        WHERE pt.pubname = $1 AND pt.schemaname = n.nspname AND pt.tablename = c.relname),
                EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = $1 AND pr.prrelid = c.oid),
                EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = $2 AND pr.prrelid = c.oid)
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE {ARCHIVABLE_TABLE_SQL}
         ORDER BY 1, 2"
    );
    let rows = client.query(&sql, &[&names.main, &names.insert_only]).await.map_err(query_error("cannot list tables for the publications"))?;
    Ok(rows
        .iter()
        .map(|r| TableState {
            table: qualified(&r.get::<_, String>(0), &r.get::<_, String>(1)),
            usable_identity: r.get(2),
            in_main: r.get(3),
            listed_in_main: r.get(4),
            in_insert_only: r.get(5),
        })
        .collect())
}

/// The tables `publication` lists, `"schema"."name"`, sorted.
async fn listed(client: &Client, publication: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_catalog.pg_publication_rel pr
             JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
             JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(query_error(format!("cannot list the tables of publication {publication}")))?;
    Ok(rows.iter().map(|r| qualified(&r.get::<_, String>(0), &r.get::<_, String>(1))).collect())
}

/// In a restored database: every pair of pgkeep publications (a
/// publication and its `_insert_only` companion) with each table placed by
/// its replica identity, as `setup`'s capture and `stream` placed them on
/// the source (their statements are not in the archive). Returns the tables
/// placed. The session must carry [`MAINTENANCE_SETTING`].
pub async fn place_restored(client: &Client) -> Result<Vec<String>> {
    let names: Vec<String> = client
        .query("SELECT pubname::text FROM pg_catalog.pg_publication ORDER BY 1", &[])
        .await
        .map_err(query_error("cannot list the publications"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut placed = Vec::new();
    for main in names.iter().filter(|n| names.contains(&insert_only_name(n))) {
        let done = reconcile(client, &PublicationNames::new(main), ReconcileMode { create: false, announce: false }, &HashSet::new()).await?;
        placed.extend(done.placed.into_iter().map(|(t, _, _)| t));
        placed.extend(done.failed);
    }
    Ok(placed)
}

/// Drop both publications if they exist; returns what was dropped.
pub async fn drop_all(client: &Client, names: &PublicationNames) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    for name in [&names.main, &names.insert_only] {
        let exists = client
            .query_opt("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", &[name])
            .await
            .map_err(query_error(format!("cannot look up publication {name}")))?
            .is_some();
        if exists {
            client
                .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(name)))
                .await
                .map_err(query_error(format!("cannot drop publication {name}")))
                .map_err(|e| e.with_hint("drop it as the publication's owner"))?;
            dropped.push(format!("publication {name}"));
        }
    }
    Ok(dropped)
}

/// SQLSTATE insufficient_privilege: not the owner of a table.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// SQLSTATE undefined_object: pgoutput's "publication … does not exist".
pub const UNDEFINED_OBJECT: &str = "42704";

/// Whether `e` is pgoutput refusing to stream because `publication` did not
/// exist yet at the position being decoded (it was created after the slot's
/// confirmed position; PostgreSQL before 18 stops the stream then).
///
/// Decided on the SQLSTATE, never the wording (servers speak their
/// `lc_messages` language). The code does not say which publication is
/// missing, so the server's message must name `publication` itself, as a
/// whole identifier (the main publication's name is a prefix of the
/// insert-only one's).
pub fn is_missing_publication(e: &Error, publication: &str) -> bool {
    e.sqlstate() == Some(UNDEFINED_OBJECT) && names_identifier(&server_message(e), publication)
}

/// The server's own message behind `e` (its ErrorResponse in the source
/// chain), or `e`'s message when there is none.
fn server_message(e: &Error) -> String {
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(server) = cause.downcast_ref::<crate::replication::ServerError>() {
            return server.message().to_string();
        }
        next = cause.source();
    }
    e.message().to_string()
}

/// Whether `text` holds `name` with no identifier character right before or
/// after it, whatever quotes the server's language puts around it.
fn names_identifier(text: &str, name: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    !name.is_empty() && text.match_indices(name).any(|(at, _)| !ident(text[..at].chars().next_back()) && !ident(text[at + name.len()..].chars().next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, usable: bool, in_main: bool, listed: bool, io: bool) -> TableState {
        TableState { table: name.into(), usable_identity: usable, in_main, listed_in_main: listed, in_insert_only: io }
    }

    #[test]
    fn every_table_goes_where_its_identity_fits() {
        let (plan, stuck) = plan(&[
            t("new_pk", true, false, false, false),
            t("new_loose", false, false, false, false),
            t("gained", true, false, false, true),
            t("twice", true, true, true, true),
            t("lost", false, true, true, false),
            t("lost_both", false, true, true, true),
            t("lost_all_tables", false, true, false, false),
            t("fine_main", true, true, true, false),
            t("fine_io", false, false, false, true),
        ]);
        let got: Vec<(&str, Option<Target>, Option<Target>, Reason)> = plan.iter().map(|p| (p.table.as_str(), p.add, p.drop, p.reason)).collect();
        use Target::*;
        assert_eq!(
            got,
            [
                ("new_pk", Some(Main), None, Reason::New),
                ("new_loose", Some(InsertOnly), None, Reason::New),
                ("gained", Some(Main), Some(InsertOnly), Reason::GainedIdentity),
                ("twice", None, Some(InsertOnly), Reason::GainedIdentity),
                ("lost", Some(InsertOnly), Some(Main), Reason::LostIdentity),
                ("lost_both", None, Some(Main), Reason::LostIdentity),
            ]
        );
        assert_eq!(plan.iter().map(Placement::target).collect::<Vec<_>>(), [Main, InsertOnly, Main, Main, InsertOnly, InsertOnly]);
        assert_eq!(stuck, ["lost_all_tables"]);
    }

    #[test]
    fn insert_only_name_fits_63_bytes() {
        assert_eq!(insert_only_name("pgkeep_app"), "pgkeep_app_insert_only");
        let long = "p".repeat(63);
        let n = insert_only_name(&long);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with(INSERT_ONLY_SUFFIX));
        let wide = "é".repeat(40);
        let n = insert_only_name(&wide);
        assert!(n.len() <= 63 && n.ends_with(INSERT_ONLY_SUFFIX), "{n}");
    }

    #[test]
    fn missing_publication_errors_are_recognised_by_code_and_name() {
        let error = |text: &str, code: &str| {
            Error::new(crate::error::ErrorKind::Database, format!("cannot stream changes from replication slot s: {text}")).with_sqlstate(code)
        };
        let english = error("publication \"p_insert_only\" does not exist", UNDEFINED_OBJECT);
        assert!(is_missing_publication(&english, "p_insert_only"));
        assert!(!is_missing_publication(&english, "p"), "the main name is only a prefix");
        // Another language, other quotes: the code and the name decide.
        let german = error("Publikation »p_insert_only« existiert nicht", UNDEFINED_OBJECT);
        assert!(is_missing_publication(&german, "p_insert_only"));
        let french = error("la publication « p » n'existe pas", UNDEFINED_OBJECT);
        assert!(is_missing_publication(&french, "p"));
        assert!(!is_missing_publication(&french, "p_insert_only"));
        // The English words under another code (or none) are not it.
        assert!(!is_missing_publication(&error("publication \"p_insert_only\" does not exist", "XX000"), "p_insert_only"));
        assert!(!is_missing_publication(&Error::new(crate::error::ErrorKind::Database, "publication \"p_insert_only\" does not exist"), "p_insert_only"));
        assert!(names_identifier("x »a$b« y", "a$b"));
        assert!(!names_identifier("ab_c", "ab"));
        assert!(!names_identifier("anything", ""));
    }
}
