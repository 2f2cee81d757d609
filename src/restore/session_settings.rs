//! pg_dump's session settings that the target server does not know.
//!
//! Every script pg_dump writes opens with the settings its restore needs
//! (`SET statement_timeout = 0;`, `SELECT pg_catalog.set_config('search_path',
//! '', false);`, …). A newer pg_dump sets parameters an older server lacks —
//! pg_dump 17 and later emit `SET transaction_timeout = 0;`, which
//! PostgreSQL 14 to 16 reject — and pgkeep uses any pg_dump at least as new
//! as the source server. Those opening settings only relax limits or fix
//! output formats for the restoring session; a parameter the server does
//! not have has no limit to relax. So a preamble setting whose parameter the
//! target reports as unknown (SQLSTATE 42704 from `current_setting`) is left
//! out, and said so. Settings inside object blocks describe the objects and
//! come from the source server, which is never newer than the target
//! (`restore` refuses an older target), so they are never touched.

use std::collections::BTreeSet;

use tokio_postgres::error::SqlState;

use crate::error::Result;
use crate::restore::schema::split_blocks;

/// The parameter a preamble line sets: `SET <name> = …;` / `SET <name> TO …;`
/// or `SELECT pg_catalog.set_config('<name>', …);` at the start of the line.
/// Custom parameters (`ext.name`) are never unknown to a server, and other
/// `SET` forms (`SET ROLE`, `SET SESSION AUTHORIZATION`) set no parameter.
pub fn set_parameter(line: &str) -> Option<&str> {
    let is_name = |n: &str| n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if let Some(rest) = line.strip_prefix("SET ") {
        let (name, after) = rest.split_once(' ')?;
        let valid = is_name(name) && (after.starts_with("= ") || after.starts_with("TO ")) && line.trim_end().ends_with(';');
        return valid.then_some(name);
    }
    let rest = line.strip_prefix("SELECT pg_catalog.set_config('")?;
    let (name, _) = rest.split_once("', ")?;
    is_name(name).then_some(name)
}

/// The distinct parameters the preamble of `script` sets, in order.
pub fn preamble_parameters(script: &str) -> Vec<String> {
    let (preamble, _) = split_blocks(script);
    let mut seen = BTreeSet::new();
    preamble.lines().filter_map(set_parameter).filter(|p| seen.insert(p.to_string())).map(str::to_string).collect()
}

/// `script` without the preamble lines that set a parameter in `unknown`.
pub fn without_parameters(script: &str, unknown: &[String]) -> String {
    if unknown.is_empty() {
        return script.to_string();
    }
    let (preamble, blocks) = split_blocks(script);
    let mut out = String::with_capacity(script.len());
    for line in preamble.lines() {
        if !set_parameter(line).is_some_and(|p| unknown.iter().any(|u| u == p)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    for b in blocks {
        out.push_str(&b.sql);
    }
    out
}

/// The parameters of `script`'s preamble that the server of `client` does
/// not know (`current_setting` fails with SQLSTATE 42704).
pub async fn unknown_parameters(client: &tokio_postgres::Client, script: &str) -> Result<Vec<String>> {
    let mut unknown = Vec::new();
    for param in preamble_parameters(script) {
        match client.query_one("SELECT pg_catalog.current_setting($1)", &[&param]).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => unknown.push(param),
            Err(e) => return Err(crate::pg::query_error(format!("reading setting {param}"))(e)),
        }
    }
    Ok(unknown)
}

/// `script` ready for the server of `client`: preamble settings of unknown
/// parameters left out, with one log line naming them.
pub async fn for_server(client: &tokio_postgres::Client, script: &str) -> Result<String> {
    let unknown = unknown_parameters(client, script).await?;
    if !unknown.is_empty() {
        tracing::info!(parameters = %unknown.join(", "), "pg_dump settings this server does not have (a newer pg_dump) are left out");
    }
    Ok(without_parameters(script, &unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\nSET transaction_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\nSET myext.flag = on;\nSET SESSION AUTHORIZATION 'x';\nSET ROLE app;\n\n--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: postgres\n--\n\nCREATE FUNCTION public.f() RETURNS void\n    LANGUAGE plpgsql\n    AS $$\nBEGIN\nSET transaction_timeout = 0;\nEND $$;\n";

    #[test]
    fn finds_parameters_of_preamble_settings_only() {
        assert_eq!(preamble_parameters(SCRIPT), vec!["statement_timeout", "transaction_timeout", "client_encoding", "search_path"]);
        assert_eq!(set_parameter("SET search_path TO 'a';"), Some("search_path"));
        assert_eq!(set_parameter("SET TIME ZONE 'UTC';"), None);
        assert_eq!(set_parameter("    SET search_path TO 'a'"), None);
    }

    #[test]
    fn leaves_out_unknown_parameters_in_the_preamble_and_nothing_else() {
        let out = without_parameters(SCRIPT, &["transaction_timeout".to_string()]);
        assert_eq!(out.matches("transaction_timeout").count(), 1, "{out}");
        assert!(out.contains("BEGIN\nSET transaction_timeout = 0;\nEND $$;"), "function body kept: {out}");
        assert_eq!(out.len(), SCRIPT.len() - "SET transaction_timeout = 0;\n".len());
        assert_eq!(without_parameters(SCRIPT, &[]), SCRIPT);
    }
}
