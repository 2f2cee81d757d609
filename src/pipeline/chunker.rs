//! Cutting COPY text output into chunks at row boundaries.
//!
//! In COPY text format every row ends with `\n` and a newline inside a value
//! is escaped as the two characters `\n`, so every 0x0A byte ends a row. The
//! splitter is pure: [`complete_rows_len`] finds where the last complete row
//! ends; [`Chunker`] accumulates stream pieces and yields chunks of at least
//! `chunk_size` bytes (or fewer at the end), always ending at a row boundary.

use bytes::{Bytes, BytesMut};

/// Length of the prefix of `buf` made of complete rows (0 if none).
pub fn complete_rows_len(buf: &[u8]) -> usize {
    memchr::memrchr(b'\n', buf).map(|i| i + 1).unwrap_or(0)
}

/// Accumulates COPY output and cuts it into row-aligned chunks.
#[derive(Debug)]
pub struct Chunker {
    buf: BytesMut,
    chunk_size: usize,
}

impl Chunker {
    /// A chunker producing chunks of about `chunk_size` raw bytes.
    pub fn new(chunk_size: usize) -> Self {
        Chunker {
            buf: BytesMut::with_capacity(chunk_size + (chunk_size >> 3)),
            chunk_size,
        }
    }

    /// Add a piece of the stream; returns a chunk when one is ready.
    pub fn push(&mut self, data: &[u8]) -> Option<Bytes> {
        self.buf.extend_from_slice(data);
        if self.buf.len() < self.chunk_size {
            return None;
        }
        let cut = complete_rows_len(&self.buf);
        if cut == 0 {
            // One row larger than a chunk: keep accumulating until it ends.
            return None;
        }
        let chunk = self.buf.split_to(cut).freeze();
        if self.buf.capacity() < self.chunk_size {
            self.buf.reserve(self.chunk_size + (self.chunk_size >> 3) - self.buf.len());
        }
        Some(chunk)
    }

    /// End of stream: the remaining bytes as a last chunk (`Ok(None)` if
    /// empty), or `Err(len)` when the stream ended in the middle of a row.
    pub fn finish(self) -> Result<Option<Bytes>, usize> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if complete_rows_len(&self.buf) != self.buf.len() {
            return Err(self.buf.len());
        }
        Ok(Some(self.buf.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_at_rows_and_lose_nothing() {
        let rows: Vec<String> = (0..5000).map(|i| format!("{i}\tvalue with \\n escaped {}\n", "x".repeat(i % 50))).collect();
        let all: Vec<u8> = rows.concat().into_bytes();
        for piece in [1usize, 7, 100, 4096] {
            let mut c = Chunker::new(1000);
            let mut out = Vec::new();
            for p in all.chunks(piece) {
                if let Some(ch) = c.push(p) {
                    assert!(ch.ends_with(b"\n"));
                    assert!(!ch.is_empty() && ch.len() < 1000 + piece, "chunk of {} bytes", ch.len());
                    out.push(ch);
                }
            }
            if let Some(last) = c.finish().unwrap() {
                out.push(last);
            }
            assert_eq!(out.concat(), all);
        }
    }

    #[test]
    fn huge_row_and_torn_end() {
        let mut c = Chunker::new(10);
        assert!(c.push(&[b'a'; 50]).is_none());
        let ch = c.push(b"b\nc").unwrap();
        assert_eq!(ch.len(), 52);
        assert_eq!(c.finish(), Err(1));
        assert_eq!(complete_rows_len(b"abc"), 0);
        assert_eq!(complete_rows_len(b"a\nb"), 2);
    }
}
