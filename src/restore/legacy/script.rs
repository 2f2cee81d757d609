//! Pure readers of what `pg_restore` says about a legacy archive: its table
//! of contents (`pg_restore --list`) and its data-only script
//! (`pg_restore --data-only -f -`), from which the rows of every table are
//! counted, and the line of its stderr that says why it failed. Nothing
//! here does I/O, and bad input is reported, never a panic.

use std::collections::HashMap;

use crate::pg::catalog::qualified;

/// What `pg_restore --list` shows of an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveToc {
    /// Entries in the table of contents.
    pub entries: usize,
    /// The `TABLE DATA` entries, as listed: `<schema> <table> <owner>`
    /// (names unquoted, so ambiguous when they hold spaces).
    pub table_data: Vec<String>,
}

/// Read the output of `pg_restore --list`. Lines look like
/// `3357; 0 16411 TABLE DATA public orders app`; comments start with `;`.
pub fn parse_toc(text: &str) -> ArchiveToc {
    let mut toc = ArchiveToc::default();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let Some((id, rest)) = line.split_once("; ") else { continue };
        if id.parse::<u32>().is_err() {
            continue;
        }
        toc.entries += 1;
        // Skip the catalog table OID and the object OID.
        let mut parts = rest.splitn(3, ' ');
        let (Some(_), Some(_), Some(desc_and_names)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if let Some(names) = desc_and_names.strip_prefix("TABLE DATA ") {
            toc.table_data.push(names.to_string());
        }
    }
    toc
}

/// The rows of one table's data in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Rows in the archive.
    pub rows: u64,
}

impl TableRows {
    /// `"schema"."name"`, quoted for SQL.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// Counts the rows of every `COPY … FROM stdin;` block of a data-only
/// script, fed one line at a time (with or without its `\n`).
#[derive(Debug, Default)]
pub struct RowCounter {
    current: Option<TableRows>,
    done: Vec<TableRows>,
}

impl RowCounter {
    /// Take the next line of the script.
    pub fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match &mut self.current {
            Some(t) if line == b"\\." => {
                self.done.push(t.clone());
                self.current = None;
            }
            // In COPY text format every row is one line: newlines in values are escaped.
            Some(t) => t.rows += 1,
            None if line.starts_with(b"COPY ") => {
                let text = String::from_utf8_lossy(line);
                let (schema, name) =
                    parse_copy_header(&text).ok_or_else(|| format!("cannot read the table name of `{}`", text.chars().take(200).collect::<String>()))?;
                self.current = Some(TableRows { schema, name, rows: 0 });
            }
            None => {}
        }
        Ok(())
    }

    /// The tables counted, in script order; an unterminated COPY is an error.
    pub fn finish(self) -> Result<Vec<TableRows>, String> {
        match self.current {
            Some(t) => Err(format!("the data of table {}.{} ends without its end marker", t.schema, t.name)),
            None => Ok(self.done),
        }
    }
}

/// The table of a `COPY "schema"."table" (cols) FROM stdin;` line.
pub fn parse_copy_header(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("COPY ")?;
    if !rest.trim_end().ends_with(" FROM stdin;") {
        return None;
    }
    let (schema, rest) = crate::pg::catalog::parse_ident(rest)?;
    let (name, rest) = crate::pg::catalog::parse_ident(rest.strip_prefix('.')?)?;
    rest.starts_with(' ').then_some((schema, name))
}

/// Lines describing `TABLE DATA` entries of the table of contents that have
/// no data in the script, and data the table of contents does not list.
/// Listed names are unquoted (`<schema> <table> <owner>`), so an entry
/// matches the data of the first `<schema> <table>` it starts with.
pub fn unmatched(toc: &ArchiveToc, tables: &[TableRows]) -> Vec<String> {
    let mut data: HashMap<String, usize> = HashMap::new();
    for t in tables {
        *data.entry(format!("{} {}", t.schema, t.name)).or_default() += 1;
    }
    let mut problems = Vec::new();
    for entry in &toc.table_data {
        // Candidate "<schema> <table>" prefixes: the entry up to each space, or all of it (no owner).
        let mut cuts = entry.match_indices(' ').map(|(i, _)| i).chain([entry.len()]);
        let key = cuts.find(|&i| data.get(&entry[..i]).is_some_and(|n| *n > 0)).map(|i| &entry[..i]);
        match key.and_then(|k| data.get_mut(k)) {
            Some(n) => *n -= 1,
            None => problems.push(format!("the archive lists data for `{entry}` but holds none")),
        }
    }
    for t in tables {
        if let Some(n) = data.get_mut(&format!("{} {}", t.schema, t.name))
            && *n > 0
        {
            *n -= 1;
            problems.push(format!("the archive holds data for {}.{} that its table of contents does not list", t.schema, t.name));
        }
    }
    problems
}

/// The line of `pg_restore`'s stderr that says why it failed: the first
/// `error:` line (later ones are "a worker process died" or "Command was:"),
/// else the last line.
pub fn failure_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first_error = text.lines().map(str::trim).find(|l| l.contains("error:"));
    first_error.or_else(|| lines.next_back()).unwrap_or("no error output").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
;
; Archive created at 2026-11-24 23:10:34 UTC
;     dbname: src
;     TOC Entries: 18
;
; Selected TOC Entries:
;
6; 2615 16410 SCHEMA - Sp ace postgres
216; 1259 16411 TABLE Sp ace x y postgres
3357; 0 16411 TABLE DATA Sp ace x y postgres
3356; 0 16403 TABLE DATA public a postgres
3358; 0 16414 TABLE DATA public e app owner
3367; 0 0 SEQUENCE SET public s postgres
3213; 2606 16421 FK CONSTRAINT public b b_id_fkey postgres
";

    fn feed(script: &str) -> Result<Vec<TableRows>, String> {
        let mut c = RowCounter::default();
        for line in script.split_inclusive('\n') {
            c.line(line.as_bytes())?;
        }
        c.finish()
    }

    fn rows(schema: &str, name: &str, rows: u64) -> TableRows {
        TableRows { schema: schema.into(), name: name.into(), rows }
    }

    #[test]
    fn toc_lists_table_data_entries() {
        let toc = parse_toc(LIST);
        assert_eq!(toc.entries, 7);
        assert_eq!(toc.table_data, ["Sp ace x y postgres", "public a postgres", "public e app owner"]);
    }

    #[test]
    fn copy_headers_are_unquoted() {
        assert_eq!(parse_copy_header("COPY public.a (id, v) FROM stdin;"), Some(("public".into(), "a".into())));
        assert_eq!(parse_copy_header(r#"COPY "Sp ace"."x ""y"" (z)" (id) FROM stdin;"#), Some(("Sp ace".into(), r#"x "y" (z)"#.into())));
        assert_eq!(parse_copy_header("COPY public.nocols  FROM stdin;"), Some(("public".into(), "nocols".into())));
        for bad in ["COPY public.a (id) TO stdout;", "COPY a (id) FROM stdin;", r#"COPY "open.a FROM stdin;"#, "COPY .a FROM stdin;", "COPY "] {
            assert_eq!(parse_copy_header(bad), None, "{bad}");
        }
    }

    #[test]
    fn rows_are_counted_per_copy_block() {
        let script = "SET x = 1;\nCOPY public.a (id, v) FROM stdin;\n1\tone\n2\ttwo\\nlines\n\\.\n\nCOPY public.e (id) FROM stdin;\n\\.\nSELECT pg_catalog.setval('public.s', 100, true);\n";
        assert_eq!(feed(script).unwrap(), [rows("public", "a", 2), rows("public", "e", 0)]);
        // CRLF and a last line without newline.
        assert_eq!(feed("COPY public.a (id) FROM stdin;\r\n1\r\n\\.").unwrap(), [rows("public", "a", 1)]);
    }

    #[test]
    fn truncated_or_unreadable_scripts_are_errors() {
        let err = feed("COPY public.a (id) FROM stdin;\n1\n2\n").unwrap_err();
        assert!(err.contains("public.a"), "{err}");
        assert!(feed("COPY garbage\n").is_err());
    }

    #[test]
    fn toc_entries_match_data_even_with_spaces_in_names() {
        let toc = parse_toc(LIST);
        let data = [rows("Sp ace", "x y", 2), rows("public", "a", 5), rows("public", "e", 0)];
        assert!(unmatched(&toc, &data).is_empty(), "{:?}", unmatched(&toc, &data));
        let problems = unmatched(&toc, &data[..2]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("public e app owner"), "{problems:?}");
        let extra = [rows("Sp ace", "x y", 2), rows("public", "a", 5), rows("public", "e", 0), rows("public", "z", 1)];
        let problems = unmatched(&toc, &extra);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("public.z"), "{problems:?}");
    }

    #[test]
    fn stderr_failure_line_is_the_cause() {
        let parallel = b"pg_restore: error: could not read from input file: end of file\npg_restore: error: a worker process died unexpectedly\n";
        assert_eq!(failure_line(parallel), "pg_restore: error: could not read from input file: end of file");
        let query = b"pg_restore: error: could not execute query: ERROR:  role \"ghost\" does not exist\nCommand was: ALTER TABLE public.e OWNER TO ghost;\n\n";
        assert!(failure_line(query).contains("role \"ghost\" does not exist"));
        assert_eq!(failure_line(b"something odd\nlast words\n"), "last words");
        assert_eq!(failure_line(b""), "no error output");
    }
}
