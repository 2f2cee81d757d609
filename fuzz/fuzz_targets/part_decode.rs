//! Fuzz the transaction part decoder: arbitrary bytes must give a part or an
//! error, never a panic; a decoded part must re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/part_decode.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
