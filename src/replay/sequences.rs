//! Sequences after a replay. Sequence increments are not transactional and
//! logical decoding does not carry them, so each sequence is set to the
//! largest of: its value now (from the base backup), the value sampled when
//! the last replayed segment was sealed, and the largest value in a column
//! that owns it (serial and identity columns) — never behind a value the
//! replayed rows already use.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::catalog::{qualified, quote_ident, quote_literal};
use crate::stream::segment::SequenceSample;

/// Advance the sequences of the database `client` is connected to; returns how many moved.
pub async fn advance(client: &Client, samples: &[SequenceSample]) -> Result<usize> {
    let fail = || crate::pg::query_error("advancing sequences after the replay");
    // Every sequence, with its current value and the column that owns it (if any).
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, s.last_value::int8, s.is_called, \
                    tn.nspname::text, t.relname::text, a.attname::text, s.ascending \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL pg_sequence_last_value(c.oid) AS lv(v) \
             JOIN LATERAL (SELECT COALESCE(lv.v, sq.seqstart - sq.seqincrement) AS last_value, lv.v IS NOT NULL AS is_called, sq.seqincrement > 0 AS ascending \
                           FROM pg_sequence sq WHERE sq.seqrelid = c.oid) s ON true \
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i') \
             LEFT JOIN pg_class t ON t.oid = d.refobjid \
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE c.relkind = 'S'",
            &[],
        )
        .await
        .map_err(fail())?;
    let sampled: HashMap<(&str, &str), &SequenceSample> = samples.iter().map(|s| ((s.schema.as_str(), s.name.as_str()), s)).collect();
    let mut moved = 0;
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let (mut value, mut called): (i64, bool) = (r.get(2), r.get(3));
        let ascending: bool = r.get(7);
        // Further along: larger for ascending sequences, smaller for descending ones.
        let further = |a: i64, b: i64| if ascending { a > b } else { a < b };
        if let Some(s) = sampled.get(&(schema.as_str(), name.as_str()))
            && (further(s.last_value, value) || (s.last_value == value && s.is_called && !called))
        {
            (value, called) = (s.last_value, s.is_called);
        }
        if let (Some(ts), Some(tn), Some(col)) = (r.get::<_, Option<String>>(4), r.get::<_, Option<String>>(5), r.get::<_, Option<String>>(6)) {
            let agg = if ascending { "max" } else { "min" };
            let max: Option<i64> =
                client.query_one(&format!("SELECT {agg}({})::int8 FROM {}", quote_ident(&col), qualified(&ts, &tn)), &[]).await.ok().and_then(|row| row.get(0));
            if let Some(m) = max
                && (further(m, value) || (m == value && !called))
            {
                (value, called) = (m, true);
            }
        }
        if (value, called) != (r.get::<_, i64>(2), r.get::<_, bool>(3)) {
            client
                .batch_execute(&format!("SELECT pg_catalog.setval({}, {value}, {called})", quote_literal(&qualified(&schema, &name))))
                .await
                .map_err(fail())?;
            moved += 1;
        }
    }
    Ok(moved)
}
