//! Fuzz the columnar transform of change segment payloads: any bytes, as a
//! raw payload, must pack and unpack back to themselves exactly; any bytes,
//! as a packed payload, must unpack to an error or to at most the allowed
//! size, never a panic; and what unpacks must pack back to itself.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/segment_columnar.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::stream::segment::columnar::{pack, unpack};

/// The most a packed fuzz input may unpack to.
const MAX_RAW: u64 = 1 << 20;

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    let back = unpack(&pack(data), data.len() as u64).expect("unpack(pack(x))");
    assert!(back == data, "unpack(pack(x)) != x");
    if let Ok(raw) = unpack(data, MAX_RAW) {
        assert!(raw.len() as u64 <= MAX_RAW);
        let again = unpack(&pack(&raw), raw.len() as u64).expect("unpack(pack(x))");
        assert!(again == raw, "unpack(pack(x)) != x");
    }
}
