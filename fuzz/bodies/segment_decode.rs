//! Fuzz the change segment decoder: arbitrary bytes must give a segment or
//! an error, never a panic; a decoded segment must re-encode and decode equal.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/segment_decode.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::stream::segment;

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    if let Ok(s) = segment::decode(data, "fuzz") {
        let again = segment::encode(&s).expect("encode");
        let back = segment::decode(&again, "fuzz").expect("decode");
        assert_eq!((back.schema, back.transactions), (s.schema, s.transactions));
    }
}
