//! Fuzz the transaction part decoder: arbitrary bytes must give a part or an
//! error, never a panic; a decoded part must re-encode and decode equal.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/part_decode.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::crypto::Keyring;
use pgkeep::stream::segment::part;

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    if let Ok(p) = part::decode_with(data, "fuzz", &Keyring::none()) {
        let again = part::encode(p.clone(), None).expect("encode");
        let back = part::decode_with(&again, "fuzz", &Keyring::none()).expect("decode");
        assert_eq!((back.meta, back.messages), (p.meta, p.messages));
    }
}
