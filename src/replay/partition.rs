//! Creating a plain partition from its captured bound (`pgkeep.partition`,
//! [`PartitionMessage`]): a function that runs `EXECUTE format('CREATE
//! TABLE … PARTITION OF …')` leaves no statement replay could run, but a
//! partition with nothing of its own is fully described by its parent and
//! its bound.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::catalog::qualified;
use crate::stream::inexact::PartitionMessage;

/// Create the partition unless it exists (a captured top-level statement
/// created it already). Returns whether it was created.
pub async fn create(client: &Client, p: &PartitionMessage) -> Result<bool> {
    let table = qualified(&p.schema, &p.table);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(crate::pg::query_error(format!("looking up partition {table}")))?
        .get(0);
    if exists {
        return Ok(false);
    }
    let parent = qualified(&p.parent_schema, &p.parent);
    client
        .batch_execute(&format!("CREATE TABLE {table} PARTITION OF {parent} {}", p.bound))
        .await
        .map_err(crate::pg::query_error(format!("creating partition {table} of {parent}")))?;
    Ok(true)
}
