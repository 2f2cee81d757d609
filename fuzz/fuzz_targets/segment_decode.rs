//! Fuzz the change segment decoder: arbitrary bytes must give a segment or
//! an error, never a panic; a decoded segment must re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/segment_decode.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
