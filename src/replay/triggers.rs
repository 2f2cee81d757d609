//! Triggers that would fire twice during replay. Replay runs with
//! `session_replication_role = replica`, where ordinary triggers stay
//! quiet but those set `ENABLE ALWAYS` or `ENABLE REPLICA` fire — and
//! their effects are in the archive already. [`quiet`] disables them for the
//! replay (again after each captured DDL statement, which may create or
//! enable more); [`restore`] gives each its mode back at the end, unless a
//! replayed statement changed or dropped it meanwhile.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::catalog::quote_ident;

/// A trigger disabled for the replay: its oid and its mode (`A` or `R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quieted {
    oid: u32,
    mode: String,
}

/// Disable every user trigger set `ENABLE ALWAYS` or `ENABLE REPLICA`
/// (partition clones follow their parent); appends them to `quieted`.
pub async fn quiet(client: &Client, quieted: &mut Vec<Quieted>) -> Result<()> {
    let rows = client
        .query(
            "SELECT t.oid::oid::int8, t.tgenabled::text, t.tgrelid::regclass::text, t.tgname::text \
             FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R') AND t.tgparentid = 0 \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .map_err(crate::pg::query_error("cannot list the triggers that fire during replay"))?;
    for r in rows {
        let (oid, mode, table, name): (i64, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        client.batch_execute(&format!("ALTER TABLE {table} DISABLE TRIGGER {}", quote_ident(&name))).await.map_err(crate::pg::query_error(format!(
            "cannot disable trigger {name} of table {table} for the replay (it is set ENABLE {})",
            if mode == "A" { "ALWAYS" } else { "REPLICA" }
        )))?;
        tracing::info!(table = %table, trigger = %name, "trigger set ENABLE ALWAYS/REPLICA disabled during the replay (its effects are in the archive)");
        quieted.push(Quieted { oid: oid as u32, mode });
    }
    Ok(())
}

/// Give every trigger of `quieted` that is still disabled its mode back.
pub async fn restore(client: &Client, quieted: &[Quieted]) -> Result<()> {
    for q in quieted {
        let row = client
            .query_opt(
                "SELECT tgrelid::regclass::text, tgname::text FROM pg_catalog.pg_trigger WHERE oid = $1::int8::oid AND tgenabled = 'D'",
                &[&(q.oid as i64)],
            )
            .await
            .map_err(crate::pg::query_error("cannot look up a trigger disabled for the replay"))?;
        let Some(row) = row else { continue };
        let (table, name): (String, String) = (row.get(0), row.get(1));
        let mode = if q.mode == "A" { "ALWAYS" } else { "REPLICA" };
        client
            .batch_execute(&format!("ALTER TABLE {table} ENABLE {mode} TRIGGER {}", quote_ident(&name)))
            .await
            .map_err(crate::pg::query_error(format!("cannot enable trigger {name} of table {table} again after the replay")))?;
    }
    Ok(())
}
