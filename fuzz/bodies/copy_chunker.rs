//! Fuzz the COPY row splitter: whatever the input and piece sizes, chunks end
//! at row boundaries and their concatenation is the input.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/copy_chunker.rs` and the seed-corpus
//! smoke test `tests/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::pipeline::chunker::Chunker;

/// One fuzz input: must not panic, and must hold the properties above.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let chunk_size = 1 + data[0] as usize * 4;
    let piece = 1 + data[1] as usize;
    let input = &data[2..];
    let mut c = Chunker::new(chunk_size);
    let mut out = Vec::new();
    for p in input.chunks(piece) {
        if let Some(ch) = c.push(p) {
            assert!(ch.ends_with(b"\n"));
            out.extend_from_slice(&ch);
        }
    }
    match c.finish() {
        Ok(Some(last)) => out.extend_from_slice(&last),
        Ok(None) => {}
        Err(rest) => {
            assert!(!input.ends_with(b"\n"));
            assert_eq!(out.len() + rest, input.len());
            return;
        }
    }
    assert_eq!(out, input);
}
