//! Fuzz the COPY OUT framer: payload in pieces equals the payload of whole
//! CopyData messages, on any stream and any piece size.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/copy_out_frame.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
