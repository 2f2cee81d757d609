//! Cutting COPY text output into chunks at row boundaries.
//!
//! In COPY text format every row ends with `\n` and a newline inside a value
//! is escaped as the two characters `\n`, so every 0x0A byte ends a row. The
//! splitter is pure: [`complete_rows_len`] finds where the last complete row
//! ends; [`Chunker`] accumulates stream pieces and yields chunks of at least
//! `chunk_size` bytes (or fewer at the end), ending at a row boundary when
//! the buffer holds one. A single row larger than a chunk is split: the
//! chunk is cut inside the row and marked [`CutChunk::continues`], so memory
//! stays bounded by about one chunk plus two pieces whatever the row size.

use bytes::{Bytes, BytesMut};

/// Length of the prefix of `buf` made of complete rows (0 if none).
pub fn complete_rows_len(buf: &[u8]) -> usize {
    memchr::memrchr(b'\n', buf).map(|i| i + 1).unwrap_or(0)
}

/// One chunk cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutChunk {
    /// The raw COPY bytes.
    pub raw: Bytes,
    /// The chunk ends inside a row that the next chunk continues.
    pub continues: bool,
}

/// Accumulates COPY output and cuts it into row-aligned chunks.
#[derive(Debug)]
pub struct Chunker {
    buf: BytesMut,
    chunk_size: usize,
    /// The last chunk cut ended inside a row.
    inside_row: bool,
}

impl Chunker {
    /// A chunker producing chunks of about `chunk_size` raw bytes.
    pub fn new(chunk_size: usize) -> Self {
        Chunker { buf: BytesMut::with_capacity(chunk_size + (chunk_size >> 3)), chunk_size: chunk_size.max(1), inside_row: false }
    }

    /// Add a piece of the stream; returns a chunk when one is ready.
    pub fn push(&mut self, data: &[u8]) -> Option<CutChunk> {
        self.buf.extend_from_slice(data);
        self.cut()
    }

    /// The buffer to append stream bytes to directly (a reader filling it
    /// up to [`Chunker::chunk_size`]), followed by [`Chunker::cut`].
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The chunk size asked for.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// A chunk, when the buffer holds at least a chunk's worth.
    pub fn cut(&mut self) -> Option<CutChunk> {
        if self.buf.len() < self.chunk_size {
            return None;
        }
        let cut = complete_rows_len(&self.buf);
        // No row ends in a full buffer: one row larger than a chunk. Cut
        // inside it; the next chunk continues the row.
        let (cut, continues) = if cut == 0 { (self.buf.len(), true) } else { (cut, false) };
        let raw = self.buf.split_to(cut).freeze();
        self.inside_row = continues;
        if self.buf.capacity() < self.chunk_size {
            self.buf.reserve(self.chunk_size + (self.chunk_size >> 3) - self.buf.len());
        }
        Some(CutChunk { raw, continues })
    }

    /// End of stream: the remaining bytes as a last chunk (`Ok(None)` if
    /// empty), or `Err(len)` when the stream ended in the middle of a row
    /// (`len` bytes of it still buffered, 0 when a cut chunk continued it).
    pub fn finish(self) -> Result<Option<CutChunk>, usize> {
        if self.buf.is_empty() {
            return if self.inside_row { Err(0) } else { Ok(None) };
        }
        if complete_rows_len(&self.buf) != self.buf.len() {
            return Err(self.buf.len());
        }
        Ok(Some(CutChunk { raw: self.buf.freeze(), continues: false }))
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
                    assert!(ch.raw.ends_with(b"\n") && !ch.continues);
                    assert!(!ch.raw.is_empty() && ch.raw.len() < 1000 + piece, "chunk of {} bytes", ch.raw.len());
                    out.push(ch.raw);
                }
            }
            if let Some(last) = c.finish().unwrap() {
                out.push(last.raw);
            }
            assert_eq!(out.concat(), all);
        }
    }

    #[test]
    fn huge_row_is_split_and_torn_end_detected() {
        let mut c = Chunker::new(10);
        let first = c.push(&[b'a'; 50]).unwrap();
        assert_eq!((first.raw.len(), first.continues), (50, true));
        // The row ends here; the chunk is cut after it.
        let second = c.push(b"aa\nbbbbbbbbbbbbb").unwrap();
        assert_eq!((&second.raw[..], second.continues), (&b"aa\n"[..], false));
        let third = c.push(b"b").unwrap();
        assert!(third.continues);
        assert_eq!(c.finish(), Err(0));
        let mut c = Chunker::new(10);
        assert!(c.push(b"a\nb").is_none());
        assert_eq!(c.finish(), Err(3));
        assert_eq!(complete_rows_len(b"abc"), 0);
        assert_eq!(complete_rows_len(b"a\nb"), 2);
    }

    #[test]
    fn split_rows_stay_bounded_by_chunk_plus_piece() {
        let row = vec![b'x'; 100_000];
        let mut c = Chunker::new(4096);
        let mut out = Vec::new();
        for p in row.chunks(1000).chain([&b"\n"[..]]) {
            if let Some(ch) = c.push(p) {
                assert!(ch.raw.len() < 4096 + 1000);
                out.push(ch);
            }
        }
        out.extend(c.finish().unwrap());
        assert!(out.len() > 20);
        assert!(out[..out.len() - 1].iter().all(|c| c.continues));
        assert!(!out.last().unwrap().continues);
        assert_eq!(out.iter().map(|c| c.raw.len()).sum::<usize>(), 100_001);
    }
}
