//! The exact path for a column added with a fast default that is not
//! immutable (`ADD COLUMN at timestamptz DEFAULT now()`): replaying the
//! statement computes the default again, on the restore; the source's
//! value, captured from the catalog (`pgkeep.missing`,
//! [`MissingValue`]), is then written into every row the table held at
//! that point — exactly the rows that existed when the column was added.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::catalog::qualified;
use crate::stream::inexact::MissingValue;

/// Set `v.column` to `v.value` in every row of `v.table` (not its
/// partitions: each leaf has its own message). Returns the rows written.
pub async fn apply(client: &Client, v: &MissingValue) -> Result<u64> {
    let table = qualified(&v.schema, &v.table);
    let ty: String = client
        .query_one(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
            &[&table, &v.column],
        )
        .await
        .map_err(crate::pg::query_error(format!("looking up column {} of {table} for its default value", v.column)))?
        .get(0);
    let col = crate::pg::catalog::quote_ident(&v.column);
    client
        .execute(&format!("UPDATE ONLY {table} SET {col} = $1::text::{ty}"), &[&v.value])
        .await
        .map_err(crate::pg::query_error(format!("writing the source's default value of {table}.{col}")))
}
