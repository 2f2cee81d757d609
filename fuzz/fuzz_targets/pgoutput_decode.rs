//! Fuzz the pgoutput decoder: arbitrary bytes must give a message or an
//! error, never a panic; the copying and the zero-copy entry points must
//! agree; and a decoded message must encode back to exactly the input
//! (the decoder accepts nothing it would not write itself).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/pgoutput_decode.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
