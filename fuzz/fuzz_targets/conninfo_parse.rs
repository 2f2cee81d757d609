//! Fuzz the connection string parser (URLs and key=value strings): no panics,
//! and errors never echo the input (it may hold a password).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pgkeep::config::db::ConnFields::parse(s, "fuzz input");
    }
});
