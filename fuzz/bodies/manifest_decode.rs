//! Fuzz the manifest envelope decoder: arbitrary bytes must give a manifest or
//! an error, never a panic; a decoded manifest must re-encode and decode equal.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/manifest_decode.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    if let Ok(m) = pgkeep::repo::manifest::decode(data, "fuzz") {
        let again = pgkeep::repo::manifest::encode(&m).expect("encode");
        assert_eq!(pgkeep::repo::manifest::decode(&again, "fuzz").expect("decode"), m);
    }
}
