//! The statements replay writes (pure): COPY text rows, and the DELETE and
//! UPDATE statements that take keys and values as `text[]` parameters and
//! cast them to each column's type with its input function, as COPY would.

use bytes::{BufMut, BytesMut};

use super::batch::Value;
use crate::pg::catalog::quote_ident;

/// A column of a replay target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    /// Column name (unquoted).
    pub name: String,
    /// `format_type(atttypid, atttypmod)` on the target.
    pub type_sql: String,
}

/// Append one COPY text-format row.
pub fn copy_row(out: &mut BytesMut, row: &[Value]) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\t');
        }
        match v {
            None => out.put_slice(b"\\N"),
            Some(b) => copy_escape(out, b),
        }
    }
    out.put_u8(b'\n');
}

/// Escape a text value for COPY's text format.
fn copy_escape(out: &mut BytesMut, value: &[u8]) {
    let mut start = 0;
    for (i, &c) in value.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.put_slice(&value[start..i]);
        out.put_slice(esc);
        start = i + 1;
    }
    out.put_slice(&value[start..]);
}

/// `COPY t (a, b) FROM STDIN`.
pub fn copy_in(table: &str, cols: &[TargetColumn]) -> String {
    let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    format!("COPY {table} ({}) FROM STDIN", names.join(", "))
}

/// `$n::text[]` parameters unnested as `d(p0, p1, …)`.
fn unnest(first_param: usize, n: usize) -> String {
    let params: Vec<String> = (0..n).map(|i| format!("${}::text[]", first_param + i)).collect();
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    format!("unnest({}) AS d({})", params.join(", "), names.join(", "))
}

/// DELETE the rows whose key is in the parameters (one `text[]` per key column).
pub fn delete_by_keys(table: &str, key: &[&TargetColumn]) -> String {
    if let [k] = key {
        return format!("DELETE FROM {table} WHERE {} = ANY($1::text[]::{}[])", quote_ident(&k.name), k.type_sql);
    }
    format!("DELETE FROM {table} AS t USING {} WHERE {}", unnest(1, key.len()), key_match(key, 0))
}

/// `t.k0 = d.p0::type AND …` for key columns whose parameters start at `p{first}`.
fn key_match(key: &[&TargetColumn], first: usize) -> String {
    key.iter().enumerate().map(|(i, k)| format!("t.{} = d.p{}::{}", quote_ident(&k.name), first + i, k.type_sql)).collect::<Vec<_>>().join(" AND ")
}

/// DELETE the rows whose key is in the parameters, returning for each its
/// 1-based position in the parameters and every column of `cols` as text.
pub fn delete_returning(table: &str, key: &[&TargetColumn], cols: &[TargetColumn]) -> String {
    let params: Vec<String> = (0..key.len()).map(|i| format!("${}::text[]", i + 1)).collect();
    let names: Vec<String> = (0..key.len()).map(|i| format!("p{i}")).collect();
    let returning: Vec<String> = cols.iter().map(|c| format!("t.{}::text", quote_ident(&c.name))).collect();
    format!(
        "DELETE FROM {table} AS t USING unnest({}) WITH ORDINALITY AS d({}, ord) WHERE {} RETURNING d.ord, {}",
        params.join(", "),
        names.join(", "),
        key_match(key, 0),
        returning.join(", ")
    )
}

/// UPDATE the rows whose key is in the first parameters, setting `set`
/// columns from the parameters after them.
pub fn update_by_keys(table: &str, key: &[&TargetColumn], set: &[&TargetColumn]) -> String {
    let assignments: Vec<String> = set.iter().enumerate().map(|(i, c)| format!("{} = d.p{}::{}", quote_ident(&c.name), key.len() + i, c.type_sql)).collect();
    format!("UPDATE {table} AS t SET {} FROM {} WHERE {}", assignments.join(", "), unnest(1, key.len() + set.len()), key_match(key, 0))
}

/// `ctid` of one row equal to the parameters `$1…$n` (compared through the
/// same output function on both sides, so types without an equality
/// operator, such as json, compare too).
fn one_row_equal_to(table: &str, cols: &[TargetColumn]) -> String {
    let conds: Vec<String> =
        cols.iter().enumerate().map(|(i, c)| format!("{}::text IS NOT DISTINCT FROM (${}::text::{})::text", quote_ident(&c.name), i + 1, c.type_sql)).collect();
    let conds = if conds.is_empty() { "true".to_string() } else { conds.join(" AND ") };
    format!("(SELECT ctid FROM {table} WHERE {conds} LIMIT 1)")
}

/// DELETE one row equal to the parameters (tables without a key).
pub fn delete_one_equal(table: &str, cols: &[TargetColumn]) -> String {
    format!("DELETE FROM {table} WHERE ctid = {}", one_row_equal_to(table, cols))
}

/// UPDATE one row equal to the first `cols.len()` parameters with the next ones.
pub fn update_one_equal(table: &str, cols: &[TargetColumn]) -> String {
    let n = cols.len();
    let assignments: Vec<String> = cols.iter().enumerate().map(|(i, c)| format!("{} = ${}::text::{}", quote_ident(&c.name), n + i + 1, c.type_sql)).collect();
    format!("UPDATE {table} SET {} WHERE ctid = {}", assignments.join(", "), one_row_equal_to(table, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn col(name: &str, ty: &str) -> TargetColumn {
        TargetColumn { name: name.into(), type_sql: ty.into() }
    }

    #[test]
    fn copy_rows_escape_like_copy_text() {
        let mut out = BytesMut::new();
        let row = vec![Some(Bytes::from_static(b"a\tb\\c\nd\re")), None, Some(Bytes::new())];
        copy_row(&mut out, &row);
        assert_eq!(&out[..], b"a\\tb\\\\c\\nd\\re\t\\N\t\n");
        // What COPY splits on never survives unescaped.
        let chunked = crate::pipeline::chunker::complete_rows_len(&out);
        assert_eq!(chunked, out.len());
    }

    #[test]
    fn statements_quote_and_cast() {
        let id = col("id", "integer");
        let k2 = col("Tenant", "uuid");
        let v = col("v", "text");
        assert_eq!(delete_by_keys("t", &[&id]), "DELETE FROM t WHERE \"id\" = ANY($1::text[]::integer[])");
        assert_eq!(
            delete_by_keys("t", &[&id, &k2]),
            "DELETE FROM t AS t USING unnest($1::text[], $2::text[]) AS d(p0, p1) WHERE t.\"id\" = d.p0::integer AND t.\"Tenant\" = d.p1::uuid"
        );
        assert_eq!(
            update_by_keys("t", &[&id], &[&v]),
            "UPDATE t AS t SET \"v\" = d.p1::text FROM unnest($1::text[], $2::text[]) AS d(p0, p1) WHERE t.\"id\" = d.p0::integer"
        );
        assert_eq!(
            delete_returning("t", &[&id], &[id.clone(), v.clone()]),
            "DELETE FROM t AS t USING unnest($1::text[]) WITH ORDINALITY AS d(p0, ord) WHERE t.\"id\" = d.p0::integer RETURNING d.ord, t.\"id\"::text, t.\"v\"::text"
        );
        assert!(delete_one_equal("t", &[id.clone(), v.clone()]).contains("\"v\"::text IS NOT DISTINCT FROM ($2::text::text)::text"));
        assert!(update_one_equal("t", &[id, v]).starts_with("UPDATE t SET \"id\" = $3::text::integer, \"v\" = $4::text::text WHERE ctid = "));
    }
}
