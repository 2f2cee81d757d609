//! Fuzz the pgoutput decoder: arbitrary bytes must give a message or an
//! error, never a panic; the copying and the zero-copy entry points must
//! agree; and a decoded message must encode back to exactly the input
//! (the decoder accepts nothing it would not write itself).
//!
//! Shared by the cargo-fuzz target `fuzz_targets/pgoutput_decode.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::replication::pgoutput;

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    let decoded = pgoutput::decode(data);
    assert_eq!(pgoutput::decode_shared(&data.to_vec().into()), decoded);
    if let Ok(message) = decoded {
        let mut again = Default::default();
        pgoutput::encode(&message, &mut again).expect("encode");
        assert_eq!(&again[..], data);
    }
}
