//! Fuzz the COPY row splitter: whatever the input and piece sizes, chunks end
//! at row boundaries unless marked as continued (a row larger than a chunk),
//! their concatenation is the input, and the fingerprint of the rows
//! computed chunk by chunk (interior rows plus the spanning row) equals the
//! fingerprint of the whole input.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/copy_chunker.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use pgkeep::pipeline::TableFingerprint;
use pgkeep::pipeline::chunker::Chunker;
use pgkeep::pipeline::process::{RowFingerprinter, SpanningRow, interior_rows};

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
    let mut cuts = Vec::new();
    let mut piecewise = RowFingerprinter::default();
    for p in input.chunks(piece) {
        piecewise.push(p);
        if let Some(ch) = c.push(p) {
            assert!(ch.raw.ends_with(b"\n") != ch.continues, "a chunk ends at a row or continues");
            // The rest of a row after a cut, plus the next piece.
            assert!(ch.raw.len() < chunk_size + 2 * piece);
            out.extend_from_slice(&ch.raw);
            cuts.push(ch);
        }
    }
    match c.finish() {
        Ok(Some(last)) => {
            out.extend_from_slice(&last.raw);
            cuts.push(last);
        }
        Ok(None) => {}
        Err(rest) => {
            assert!(!input.ends_with(b"\n"));
            assert_eq!(out.len() + rest, input.len());
            assert!(piecewise.finish().is_none());
            return;
        }
    }
    assert_eq!(out, input);
    let (mut fp, mut span, mut inside) = (TableFingerprint::default(), SpanningRow::default(), false);
    for ch in &cuts {
        fp.merge(interior_rows(&ch.raw, inside));
        fp.merge(span.feed(&ch.raw, ch.continues));
        inside = ch.continues;
    }
    let whole = TableFingerprint::of_rows(input);
    assert_eq!(fp, whole);
    assert_eq!(piecewise.finish(), Some(whole));
}
