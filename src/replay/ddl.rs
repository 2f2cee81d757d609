//! What of a captured query string replay runs again (pure).
//!
//! The event trigger captures `current_query()`: the whole string the
//! client sent, which may hold several statements — `BEGIN`, DML, the DDL,
//! `COMMIT`. The DML's row changes are in the archive already and must not
//! run twice, and transaction control must not break the replay's own
//! transaction. So the string is split into statements
//! ([`crate::pg::split`]) and only schema statements and session settings
//! are kept.

pub use crate::pg::split::split_statements;
use crate::pg::split::strip_comments;

/// Whether replay runs this statement: schema statements and session
/// settings yes; transaction control, DML and queries no.
pub fn replays(stmt: &str) -> bool {
    let s = strip_comments(stmt);
    let word: String = s.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase();
    match word.as_str() {
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE" | "SECURITY" | "IMPORT" | "REINDEX" | "CLUSTER" | "REFRESH" | "SET" | "RESET" => true,
        // `SELECT … INTO new_table` creates a table; any other SELECT is a query.
        "SELECT" => select_into(s),
        _ => false,
    }
}

fn select_into(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    let from = upper.find(" FROM ").unwrap_or(upper.len());
    upper[..from].contains(" INTO ")
}

fn first_word(stmt: &str) -> String {
    strip_comments(stmt).chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase()
}

/// One script per transaction of the string that holds DDL, in order.
///
/// A string with several transactions (`BEGIN; …; COMMIT; BEGIN; …`) makes
/// the capture trigger emit one message per transaction, each with the whole
/// string: the n-th message of a run of equal strings replays the n-th
/// script. Statements between `BEGIN`/`START` and `COMMIT`/`END` form one
/// transaction; a block ended by `ROLLBACK`/`ABORT` never committed (and
/// emitted nothing); statements outside explicit blocks are split at them.
pub fn scripts_by_transaction(sql: &str) -> Vec<String> {
    let mut groups: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for stmt in split_statements(sql) {
        let word = first_word(stmt);
        match word.as_str() {
            "BEGIN" | "START" => groups.push(std::mem::take(&mut current)),
            "COMMIT" | "END" => groups.push(std::mem::take(&mut current)),
            "ROLLBACK" | "ABORT" if !strip_comments(stmt).to_ascii_uppercase().contains(" TO ") => current.clear(),
            _ if replays(stmt) => current.push(stmt),
            _ => {}
        }
    }
    groups.push(current);
    groups.into_iter().filter(|g| g.iter().any(|s| !matches!(first_word(s).as_str(), "SET" | "RESET"))).map(|g| g.join(";\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_quotes_comments_and_dollar_quotes() {
        let sql = "BEGIN; ALTER TABLE \"a;b\" ADD c text DEFAULT 'x;y'; -- c;\nUPDATE t SET v = E'it\\'s;'; \
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; /* x; /* y; */ z; */ COMMIT;";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 5, "{parts:?}");
        assert_eq!(parts[1], "ALTER TABLE \"a;b\" ADD c text DEFAULT 'x;y'");
        assert!(parts[3].starts_with("CREATE FUNCTION") && parts[3].ends_with("LANGUAGE sql"));
        assert!(parts[4].ends_with("COMMIT"));
    }

    #[test]
    fn keeps_schema_statements_and_drops_dml_and_transaction_control() {
        let sql = "BEGIN; INSERT INTO t VALUES (1); ALTER TABLE t ADD w int; UPDATE t SET w = 1; \
                   SET search_path = app; CREATE TABLE n AS SELECT * FROM t; SELECT 1; SELECT * INTO copy FROM t; COMMIT";
        assert_eq!(
            scripts_by_transaction(sql),
            vec!["ALTER TABLE t ADD w int;\nSET search_path = app;\nCREATE TABLE n AS SELECT * FROM t;\nSELECT * INTO copy FROM t".to_string()]
        );
        assert!(scripts_by_transaction("-- only\n/* comments */").is_empty());
        assert_eq!(scripts_by_transaction("  /* lead */ drop table x"), vec!["/* lead */ drop table x".to_string()]);
    }

    #[test]
    fn one_script_per_committed_transaction() {
        let sql = "BEGIN; ALTER TABLE a ADD x int; INSERT INTO a VALUES (1); COMMIT; \
                   BEGIN; ALTER TABLE b ADD y int; ROLLBACK; \
                   SET search_path = s; CREATE INDEX i ON a (x); UPDATE a SET x = 1; SAVEPOINT p; ROLLBACK TO p; DROP TABLE c";
        assert_eq!(
            scripts_by_transaction(sql),
            vec!["ALTER TABLE a ADD x int".to_string(), "SET search_path = s;\nCREATE INDEX i ON a (x);\nDROP TABLE c".to_string()]
        );
        assert_eq!(scripts_by_transaction("ALTER TABLE t ADD c int"), vec!["ALTER TABLE t ADD c int".to_string()]);
        assert!(scripts_by_transaction("SELECT f(); SET x = 1").is_empty());
    }

    #[test]
    fn never_panics_on_unterminated_input() {
        for s in ["'", "\"", "$a$ never closed", "/* open", "E'\\", "$", "$1;", "--", "a;;;b", "é'x"] {
            let _ = scripts_by_transaction(s);
        }
        assert_eq!(split_statements("SELECT $1; SELECT 2"), vec!["SELECT $1", "SELECT 2"]);
    }
}
