//! Fuzz the connection string parser (URLs and key=value strings): no panics,
//! and errors never echo the input (it may hold a password).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/conninfo_parse.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
