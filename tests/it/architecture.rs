//! The house layering (ARCHITECTURE.md, "Layering"), enforced: every
//! top-level module of `src/` has a layer, and no `crate::…` path runs from
//! a module up to a higher layer, or back along a cycle between two
//! modules, except the edges in [`ALLOWED`], each with the reason it is
//! still there. Only `cli` (and `main`) reach `commands`.
//!
//! Plain file reading: every `crate::x` and `crate::{x, y::…}` in code
//! (comment lines and trailing comments are skipped) counts as an import of
//! top-level module `x`. An allowed edge that no longer exists fails too, so
//! the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, bottom (0) to top. A module may use its own layer and those below.
const LAYERS: &[(&str, u8)] = &[
    // Leaf types and process plumbing.
    ("error", 0),
    ("failpoint", 0),
    ("interrupt", 0),
    ("logging", 0),
    ("lsn", 0),
    ("progress", 0),
    ("secret", 0),
    // Storage, PostgreSQL, the replication protocol, and the settings they are built from.
    ("config", 1),
    ("pg", 1),
    ("replication", 1),
    ("storage", 1),
    // The repository format, the chunk pipeline, encryption.
    ("crypto", 2),
    ("pipeline", 2),
    ("repo", 2),
    // Capabilities: they never import commands.
    ("backup", 3),
    ("expire", 3),
    ("notify", 3),
    ("replay", 3),
    ("restore", 3),
    ("stream", 3),
    ("verify", 3),
    // One orchestrator per verb.
    ("commands", 4),
    // The CLI and the crate root.
    ("cli", 5),
    ("lib", 5),
    ("main", 5),
];

/// Edges (file, imported top-level module) that break the layering today.
/// Each is an upward import (none closes a cycle: [`no_cycles_between_modules`]
/// counts them too); remove the entry with the edge. A file ending in `/` stands for every file under it.
const ALLOWED: &[(&str, &str, &str)] = &[
    // config → crypto: config sits in layer 1 because pg and replication take its
    // `DbSettings`; it resolves crypto's `EncryptionSettings` and checks recipients with
    // crypto's parser. Goes when `DbSettings` moves to pg and config rises above crypto.
    ("src/config/encryption.rs", "crypto", "crypto::settings::EncryptionSettings, crypto::sealer::parse_recipients"),
    // pg → repo: the catalog queries return manifest types.
    ("src/pg/catalog.rs", "repo", "catalog queries return repo::manifest::{ColumnEntry, DatabaseInfo, SequenceEntry}"),
    // stream → notify: automatic backups, taken while `stream` runs, send their own
    // notifications (cli sends one per command; these are not a command's).
    ("src/stream/autobackup.rs", "notify", "automatic backups send their own notifications"),
];

/// One `crate::…` import: file, line, importing module, imported module.
#[derive(Debug, Clone)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/repo/layout.rs` → `repo`).
fn top_module(rel: &str) -> String {
    let rest = rel.strip_prefix("src/").expect("under src/");
    let first = rest.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// The code of a line: nothing for comment lines, and up to a trailing `//`.
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules named by each `crate::` path in `text`, with their line numbers.
fn imports(text: &str) -> Vec<(usize, String)> {
    // Code only, lines kept so offsets map back to line numbers.
    let code_text: String = text.lines().map(|l| format!("{}\n", code(l))).collect();
    let line_of = |offset: usize| code_text[..offset].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code_text[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        let before = code_text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `some_crate::`, not ours
        }
        let rest = &code_text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first name of each top-level item.
            let (mut depth, mut item_start) = (0usize, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        item_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            out.push((line_of(from + 1 + j), name.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((line_of(at), name.to_string()));
            }
        }
    }
    out
}

fn edges() -> Vec<Edge> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let from = top_module(&rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        for (line, to) in imports(&text) {
            // Crate-root items (`crate::Result`, `crate::ErrorKind`) are the error leaf.
            let to = if to.starts_with(|c: char| c.is_ascii_uppercase()) { "error".to_string() } else { to };
            if to != from {
                out.push(Edge { file: rel.clone(), line, from: from.clone(), to });
            }
        }
    }
    out
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn covers(allowed_file: &str, file: &str) -> bool {
    allowed_file == file || (allowed_file.ends_with('/') && file.starts_with(allowed_file))
}

fn allowed(e: &Edge) -> bool {
    ALLOWED.iter().any(|(f, to, _)| covers(f, &e.file) && *to == e.to)
}

fn show(e: &Edge) -> String {
    format!("  {}:{}: {} (layer {:?}) imports crate::{} (layer {:?})", e.file, e.line, e.from, layer(&e.from), e.to, layer(&e.to))
}

#[test]
fn every_module_has_a_layer() {
    let unknown: BTreeSet<String> = edges().iter().flat_map(|e| [e.from.clone(), e.to.clone()]).filter(|m| layer(m).is_none()).collect();
    assert!(unknown.is_empty(), "modules with no layer in tests/architecture.rs LAYERS (add them, and to ARCHITECTURE.md): {unknown:?}");
}

#[test]
fn no_import_runs_up_a_layer() {
    let bad: Vec<String> = edges().iter().filter(|e| matches!((layer(&e.from), layer(&e.to)), (Some(f), Some(t)) if t > f) && !allowed(e)).map(show).collect();
    assert!(bad.is_empty(), "imports that run up the layering (ARCHITECTURE.md, \"Layering\"):\n{}", bad.join("\n"));
}

#[test]
fn only_cli_imports_commands() {
    let bad: Vec<String> = edges().iter().filter(|e| e.to == "commands" && !matches!(e.from.as_str(), "cli" | "main" | "lib")).map(show).collect();
    assert!(bad.is_empty(), "only cli imports commands; these modules do:\n{}", bad.join("\n"));
}

#[test]
fn no_cycles_between_modules() {
    // The module graph must have no cycle (through any number of modules),
    // within a layer as across layers: every edge counts, the allowed
    // upward ones too.
    let all = edges();
    let kept: Vec<&Edge> = all.iter().collect();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &kept {
        graph.entry(e.from.as_str()).or_default().insert(e.to.as_str());
    }
    let reaches = |a: &str, b: &str| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![a]);
        while let Some(m) = todo.pop() {
            if m == b {
                return true;
            }
            if seen.insert(m) {
                todo.extend(graph.get(m).into_iter().flatten().copied());
            }
        }
        false
    };
    // Such a cycle stays in one layer: name its edges.
    let bad: Vec<String> = kept.iter().filter(|e| reaches(&e.to, &e.from)).map(|e| show(e)).collect();
    assert!(bad.is_empty(), "imports on a cycle between modules (one direction must go):\n{}", bad.join("\n"));
}

#[test]
fn every_allowed_edge_still_exists() {
    let all = edges();
    let stale: Vec<String> = ALLOWED
        .iter()
        .filter(|(f, to, _)| !all.iter().any(|e| covers(f, &e.file) && e.to == *to))
        .map(|(f, to, why)| format!("  {f} → {to} ({why})"))
        .collect();
    assert!(stale.is_empty(), "allowed edges that are gone: remove them from ALLOWED in tests/architecture.rs:\n{}", stale.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports() {
    let text = "use crate::{commands, repo::{a, b}, self};\n// use crate::stream;\nlet x = crate::backup::run(); // crate::verify\nuse other_crate::notify;\n";
    let got: Vec<(usize, String)> = imports(text);
    assert_eq!(got, vec![(1, "commands".to_string()), (1, "repo".to_string()), (3, "backup".to_string())]);
}
