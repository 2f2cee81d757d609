//! Fuzz the COPY row splitter: whatever the input and piece sizes, chunks end
//! at row boundaries and their concatenation is the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/copy_chunker.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
