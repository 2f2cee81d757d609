//! Fuzz the columnar transform of change segment payloads: unpack(pack(x))
//! must be x for any bytes, and unpack of any bytes must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/segment_columnar.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
