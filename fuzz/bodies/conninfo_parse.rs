//! Fuzz the connection string parser (URLs and key=value strings): no panics,
//! and errors never echo the input (it may hold a password).
//!
//! Shared by the cargo-fuzz target `fuzz_targets/conninfo_parse.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pgkeep::config::db::ConnFields::parse(s, "fuzz input");
    }
}
