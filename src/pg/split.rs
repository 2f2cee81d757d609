//! Splitting SQL text into statements (pure): a small lexer that knows
//! quotes, `E''` strings, quoted identifiers, dollar quotes and (nested)
//! comments, so a `;` inside any of them does not end a statement. Used
//! for the query strings `pgkeep setup` captures (replay, and the stream's
//! inexact-change check) and for `drill`'s assertion files. Fuzzed through
//! `replay::ddl` (fuzz/bodies/ddl_split.rs).

/// Split `sql` into statements (without the `;`), skipping empty ones.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b';' => {
                push(&mut out, &sql[start..i]);
                start = i + 1;
                i += 1;
            }
            b'\'' => {
                // E'…' strings take backslash escapes.
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i + 1, b'\'', escapes);
            }
            b'"' => i = skip_quoted(b, i + 1, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i + 2),
            b'$' if i == 0 || !is_ident(b[i - 1]) => i = skip_dollar(sql, i),
            _ => i += 1,
        }
    }
    push(&mut out, &sql[start.min(sql.len())..]);
    out
}

fn push<'a>(out: &mut Vec<&'a str>, stmt: &'a str) {
    if !strip_comments(stmt).trim().is_empty() {
        out.push(stmt.trim());
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Past the closing quote (a doubled quote is an escaped one).
fn skip_quoted(b: &[u8], mut i: usize, q: u8, escapes: bool) -> usize {
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Past a (nested) block comment that starts before `i`.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Past a `$tag$ … $tag$` string starting at `i`, or one byte (a `$1` parameter).
fn skip_dollar(sql: &str, i: usize) -> usize {
    let b = sql.as_bytes();
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' || b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
        return i + 1;
    }
    let tag = &sql[i..=j];
    match sql[j + 1..].find(tag) {
        Some(n) => j + 1 + n + tag.len(),
        None => b.len(),
    }
}

/// The statement without leading comments.
pub fn strip_comments(stmt: &str) -> &str {
    let mut s = stmt.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |n| &rest[n + 1..]).trim_start();
        } else if s.starts_with("/*") {
            let end = skip_block_comment(s.as_bytes(), 2);
            s = s.get(end..).unwrap_or("").trim_start();
        } else {
            return s;
        }
    }
}
