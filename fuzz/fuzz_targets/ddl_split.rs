//! Fuzz the splitter of captured DDL query strings: no panics, statements
//! are pieces of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../bodies/ddl_split.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
