//! Fuzz the manifest envelope decoder: arbitrary bytes must give a manifest or
//! an error, never a panic; a decoded manifest must re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/manifest_decode.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
