//! Putting a table image in place during a point-in-time replay
//! ([`crate::replay::image`] decides when; this does the database work).
//!
//! On the replay's own session (a replica session, so no user trigger or
//! foreign key fires), in one transaction:
//!
//! 1. the image is found in the first repository with a valid copy, and
//!    opened with the keys when encrypted;
//! 2. when every table of the image exists with the same columns (names,
//!    types, NOT NULL, in order): its rows are replaced — `TRUNCATE ONLY`,
//!    or `DELETE` when a foreign key references it — by one `COPY` of the
//!    image's chunks, each checked like any restore;
//! 3. otherwise, for an image of one plain table: the table is dropped
//!    (never `CASCADE`: a view or foreign key depending on it stops the
//!    restore, named) and created again from the image's schema (pg_dump's
//!    pre-data of that table), loaded, then its post-data (indexes,
//!    constraints, triggers) built; an image without tables (the table did
//!    not exist at its point) drops the table;
//! 4. anything else (a partitioned table whose definition differs) is
//!    refused, naming the table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use super::load::copy_in_sql;
use super::schema::strip_psql_guards;
use super::session_settings;
use super::source::{BackupSelector, BackupSource};
use crate::crypto::Keyring;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::qualified;
use crate::replay::image::ImageHook;
use crate::repo::manifest::{BackupManifest, ColumnEntry, TableEntry};
use crate::storage::Storage;

/// The [`ImageHook`] of restores and `verify --deep`: images read from
/// `repos`, opened with `keys`.
pub struct TableImages {
    repos: Vec<Arc<dyn Storage>>,
    keys: Arc<Keyring>,
}

impl TableImages {
    /// Images from `repos`, encrypted ones opened with `keys`.
    pub fn new(repos: &[Arc<dyn Storage>], keys: &Arc<Keyring>) -> TableImages {
        TableImages { repos: repos.to_vec(), keys: keys.clone() }
    }
}

impl ImageHook for TableImages {
    fn put_in_place<'a>(&'a self, client: &'a Client, image: &'a BackupManifest) -> Pin<Box<dyn Future<Output = Result<String>> + Send + 'a>> {
        Box::pin(async move {
            let source = BackupSource::find_with_keys(&self.repos, &BackupSelector::Id(image.backup_id.clone()), &image.database, &self.keys).await?;
            client.batch_execute("BEGIN").await.map_err(crate::pg::query_error("starting to put a table image in place"))?;
            match put(client, &source).await {
                Ok(line) => {
                    client.batch_execute("COMMIT").await.map_err(crate::pg::query_error("committing a table image"))?;
                    Ok(line)
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }
}

/// Steps 2–4, inside the caller's transaction.
async fn put(client: &Client, source: &BackupSource) -> Result<String> {
    let m = &source.manifest;
    let info = m.image.as_ref().ok_or_else(|| Error::corrupt(format!("table image {} has no `image` section", m.backup_id)))?;
    let table = qualified(&info.schema, &info.name);
    let at = m.snapshot.consistent_lsn;
    // 2. Same definition: the rows only.
    let mut same = !m.tables.is_empty();
    for t in &m.tables {
        same &= columns_of(client, t).await?.as_deref() == Some(&t.columns[..]);
    }
    if same {
        for t in &m.tables {
            clear(client, t).await?;
            copy_rows(client, source, t).await?;
        }
        return Ok(format!("table {} replaced by table image {} at LSN {at} ({} rows)", info.table(), m.backup_id, m.stats.rows));
    }
    // 4. Only one plain table is created again.
    let plain = match &m.tables[..] {
        [] => true,
        [t] => t.schema == info.schema && t.name == info.name,
        _ => false,
    };
    if !plain {
        return Err(Error::new(
            ErrorKind::CheckFailed,
            format!("table {} changed its definition, and its table image {} holds its partitions: replay cannot put it in place", info.table(), m.backup_id),
        ));
    }
    // 3. Dropped, and created again from the image.
    drop_table(client, &table, &info.table()).await?;
    let Some(t) = m.tables.first() else {
        return Ok(format!("table {} dropped: it did not exist at LSN {at} (table image {})", info.table(), m.backup_id));
    };
    run_schema(client, source, &m.schema.pre_data, "pre-data").await?;
    copy_rows(client, source, t).await?;
    run_schema(client, source, &m.schema.post_data, "post-data").await?;
    Ok(format!("table {} created again from table image {} at LSN {at} ({} rows)", info.table(), m.backup_id, m.stats.rows))
}

/// The columns of `t` in the database as the backup lists them (no
/// generated or dropped columns, in order); `None` when it does not exist.
async fn columns_of(client: &Client, t: &TableEntry) -> Result<Option<Vec<ColumnEntry>>> {
    let rel = qualified(&t.schema, &t.name);
    let exists = client
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&rel])
        .await
        .map_err(crate::pg::query_error(format!("looking up table {}.{}", t.schema, t.name)))?
        .get::<_, bool>(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&rel],
        )
        .await
        .map_err(crate::pg::query_error(format!("reading the columns of table {}.{}", t.schema, t.name)))?;
    Ok(Some(rows.iter().map(|r| ColumnEntry { name: r.get(0), type_name: r.get(1), not_null: r.get(2) }).collect()))
}

/// Empty `t`: TRUNCATE, or DELETE when a foreign key references it
/// (which TRUNCATE refuses; in a replica session no foreign-key trigger fires).
async fn clear(client: &Client, t: &TableEntry) -> Result<()> {
    let rel = qualified(&t.schema, &t.name);
    let referenced: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = $1::text::regclass)", &[&rel])
        .await
        .map_err(crate::pg::query_error(format!("reading the foreign keys of table {}.{}", t.schema, t.name)))?
        .get(0);
    let sql = if referenced { format!("DELETE FROM ONLY {rel}") } else { format!("TRUNCATE ONLY {rel}") };
    client.batch_execute(&sql).await.map_err(crate::pg::query_error(format!("emptying table {}.{} for its image", t.schema, t.name)))
}

/// One COPY of every chunk of `t`, in order (their concatenation is the table's COPY text).
async fn copy_rows(client: &Client, source: &BackupSource, t: &TableEntry) -> Result<()> {
    let fail = crate::pg::query_error(format!("loading table {}.{} from its image", t.schema, t.name));
    let sink = client.copy_in::<_, Bytes>(copy_in_sql(t).as_str()).await.map_err(&fail)?;
    futures::pin_mut!(sink);
    for chunk in &t.chunks {
        let rows = source.read_chunk(chunk).await?;
        sink.send(rows).await.map_err(&fail)?;
    }
    sink.finish().await.map_err(&fail)?;
    Ok(())
}

/// DROP TABLE IF EXISTS, never CASCADE: what depends on it stops the restore, named.
async fn drop_table(client: &Client, rel: &str, name: &str) -> Result<()> {
    match client.batch_execute(&format!("DROP TABLE IF EXISTS {rel}")).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
            let detail = e.as_db_error().and_then(|d| d.detail().map(str::to_string)).unwrap_or_default();
            Err(Error::new(
                ErrorKind::CheckFailed,
                format!(
                    "table {name} changed its definition, and replay cannot create it again from its table image: other objects depend on it ({})",
                    detail.replace('\n', "; ")
                ),
            ))
        }
        Err(e) => Err(crate::pg::query_error(format!("dropping table {name} to create it again from its image"))(e)),
    }
}

/// One of the image's schema scripts, on this session (the caller resets
/// it after). A role that may not give objects to their owners (not a
/// member of the owning role, as on managed services) runs it again
/// without the `OWNER TO` statements: the objects are then its own, and
/// the warning says so.
async fn run_schema(client: &Client, source: &BackupSource, chunk: &crate::repo::manifest::ChunkRef, what: &str) -> Result<()> {
    let id = &source.manifest.backup_id;
    let raw = source.read_chunk(chunk).await?;
    let sql = String::from_utf8(raw.to_vec()).map_err(|_| Error::corrupt(format!("the {what} script of table image {id} is not UTF-8")))?;
    let sql = session_settings::for_server(client, &strip_psql_guards(&sql)).await?;
    let fail = || crate::pg::query_error(format!("the {what} script of table image {id}"));
    client.batch_execute("SAVEPOINT pgkeep_image_schema").await.map_err(fail())?;
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) && sql.lines().any(is_owner_statement) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT pgkeep_image_schema").await.map_err(fail())?;
            tracing::warn!(image = %id, "the restoring role may not give the table to its owner; it owns what the image creates");
            let without: Vec<&str> = sql.lines().filter(|l| !is_owner_statement(l)).collect();
            client.batch_execute(&without.join("\n")).await.map_err(fail())
        }
        Err(e) => Err(fail()(e)),
    }
}

/// A pg_dump `ALTER … OWNER TO …;` line.
fn is_owner_statement(line: &str) -> bool {
    line.starts_with("ALTER ") && line.contains(" OWNER TO ") && line.ends_with(';')
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_statements_are_pg_dump_lines() {
        assert!(super::is_owner_statement("ALTER TABLE public.t OWNER TO app;"));
        assert!(super::is_owner_statement("ALTER SEQUENCE public.t_id_seq OWNER TO app;"));
        assert!(!super::is_owner_statement("ALTER TABLE ONLY public.t ALTER COLUMN id SET DEFAULT nextval('public.t_id_seq'::regclass);"));
        assert!(!super::is_owner_statement("-- ALTER TABLE x OWNER TO y"));
    }
}
