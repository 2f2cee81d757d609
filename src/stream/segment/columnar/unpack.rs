//! [`super::unpack`]: the stored streams decompressed and put back together
//! into the raw payload. Every read checks its length, every count and
//! length is checked against what its field can hold, and the output never
//! grows past `max_raw`.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use super::*;
use crate::error::Error;

fn damaged(why: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("columnar payload: {why}"))
}

/// [`super::unpack`].
pub(super) fn run(packed: &[u8], max_raw: u64) -> Result<Vec<u8>> {
    let streams = open(packed, max_raw)?;
    let cursor = |i: usize, what| Cursor { buf: &streams[i][..], what };
    let total: usize = streams.iter().map(|s| s.len()).sum();
    let max = usize::try_from(max_raw).unwrap_or(usize::MAX);
    let mut unpacker = Unpacker {
        out: Vec::with_capacity(max.min(total.saturating_mul(2))),
        max,
        directory: cursor(GROUPS, "group directory"),
        structure: cursor(STRUCTURE, "structure"),
        lsn: cursor(LSN, "LSN"),
        time: cursor(TIME, "time"),
        xid: cursor(XID, "xid"),
        commit: cursor(COMMIT, "commit"),
        lengths: cursor(LENGTHS, "lengths"),
        values: cursor(VALUES, "values"),
        groups: Vec::new(),
        columns: HashMap::new(),
        misc: None,
        recent: Vec::with_capacity(RECENT + 1),
        last: LastBegin::default(),
    };
    unpacker.payload()?;
    unpacker.finish()
}

/// Read the header and decompress every stream, each to exactly its
/// declared size.
fn open(packed: &[u8], max_raw: u64) -> Result<Vec<Cow<'_, [u8]>>> {
    let mut header = Cursor { buf: packed, what: "header" };
    let mut sizes = [(0u64, 0u64); STREAMS];
    for size in &mut sizes {
        *size = (header.varint()?, header.varint()?);
    }
    let limit = max_raw.saturating_mul(2).saturating_add(64);
    let total = sizes.iter().try_fold(0u64, |sum, (raw, _)| sum.checked_add(*raw));
    if total.is_none_or(|total| total > limit) {
        return Err(damaged("the streams declare more bytes than the payload allows"));
    }
    let mut body = header;
    body.what = "stored streams";
    let mut streams = Vec::with_capacity(STREAMS);
    for (i, (raw_len, stored_len)) in sizes.into_iter().enumerate() {
        let stored = body.take(stored_len)?;
        streams.push(match stored_len.cmp(&raw_len) {
            std::cmp::Ordering::Equal => Cow::Borrowed(stored),
            std::cmp::Ordering::Less => Cow::Owned(inflate(stored, raw_len, i)?),
            std::cmp::Ordering::Greater => {
                return Err(damaged(format!("stream {i} is stored larger than it is")));
            }
        });
    }
    if !body.buf.is_empty() {
        return Err(damaged("bytes after the last stream"));
    }
    Ok(streams)
}

/// One zstd frame that must decompress to exactly `len` bytes.
fn inflate(frame: &[u8], len: u64, stream: usize) -> Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| damaged(format!("stream {stream}: zstd: {e}"));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| bad(&e))?.single_frame();
    let mut out = Vec::new();
    (&mut decoder).take(len.saturating_add(1)).read_to_end(&mut out).map_err(|e| bad(&e))?;
    if out.len() as u64 != len {
        return Err(damaged(format!("stream {stream} does not have its declared size")));
    }
    if !decoder.finish().is_empty() {
        return Err(damaged(format!("stream {stream} has bytes after its zstd frame")));
    }
    Ok(out)
}

/// A reader over one stream; every read checks the length.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) what: &'static str,
}

impl<'a> Cursor<'a> {
    fn short(&self) -> Error {
        damaged(format!("the {} stream ends early", self.what))
    }

    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(damaged(format!("a varint in the {} stream overflows", self.what)))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|n| *n <= self.buf.len());
        let (taken, rest) = self.buf.split_at(n.ok_or_else(|| self.short())?);
        self.buf = rest;
        Ok(taken)
    }

    fn done(&self) -> Result<()> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => Err(damaged(format!("bytes left in the {} stream", self.what))),
        }
    }
}

/// One group while unpacking: its part of the lengths and values streams.
struct GroupCursor<'a> {
    lengths: Cursor<'a>,
    values: Cursor<'a>,
    prev: Range<usize>,
}

struct Unpacker<'a> {
    out: Vec<u8>,
    max: usize,
    directory: Cursor<'a>,
    structure: Cursor<'a>,
    lsn: Cursor<'a>,
    time: Cursor<'a>,
    xid: Cursor<'a>,
    commit: Cursor<'a>,
    lengths: Cursor<'a>,
    values: Cursor<'a>,
    groups: Vec<GroupCursor<'a>>,
    columns: HashMap<u32, Vec<u32>>,
    misc: Option<usize>,
    recent: Vec<(u8, Range<usize>)>,
    last: LastBegin,
}

impl Unpacker<'_> {
    fn payload(&mut self) -> Result<()> {
        while !self.structure.buf.is_empty() {
            match self.structure.varint()? {
                REC_TAIL => {
                    self.verbatim()?;
                    if !self.structure.buf.is_empty() {
                        return Err(damaged("records after the verbatim tail"));
                    }
                }
                REC_VERBATIM => {
                    let at = self.open_len()?;
                    self.verbatim()?;
                    self.close_len(at)?;
                }
                n => {
                    let at = self.open_len()?;
                    self.recent.clear();
                    for _ in REC_MESSAGES..n {
                        self.message()?;
                    }
                    self.close_len(at)?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        for c in [&self.directory, &self.lsn, &self.time, &self.xid, &self.commit] {
            c.done()?;
        }
        for c in [&self.lengths, &self.values] {
            c.done()?;
        }
        for g in &self.groups {
            g.lengths.done()?;
            g.values.done()?;
        }
        Ok(self.out)
    }

    fn room(&self, n: usize) -> Result<()> {
        match self.out.len().checked_add(n) {
            Some(len) if len <= self.max => Ok(()),
            _ => Err(damaged("it unpacks to more bytes than declared")),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.room(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Copy earlier output.
    fn repeat(&mut self, range: Range<usize>) -> Result<()> {
        self.room(range.len())?;
        if range.end > self.out.len() {
            return Err(damaged("a reference past the output"));
        }
        self.out.extend_from_within(range);
        Ok(())
    }

    /// A `u32` length placeholder; returns where it is.
    fn open_len(&mut self) -> Result<usize> {
        let at = self.out.len();
        self.put(&[0; 4])?;
        Ok(at)
    }

    fn close_len(&mut self, at: usize) -> Result<()> {
        let len = u32::try_from(self.out.len() - at - 4).map_err(|_| damaged("a record or message exceeds 4 GiB"))?;
        self.out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn new_group(&mut self) -> Result<usize> {
        let (lengths, values) = (self.directory.varint()?, self.directory.varint()?);
        let group = GroupCursor {
            lengths: Cursor { buf: self.lengths.take(lengths)?, what: "lengths" },
            values: Cursor { buf: self.values.take(values)?, what: "values" },
            prev: 0..0,
        };
        self.groups.push(group);
        Ok(self.groups.len() - 1)
    }

    fn verbatim(&mut self) -> Result<()> {
        let g = match self.misc {
            Some(g) => g,
            None => {
                let g = self.new_group()?;
                *self.misc.insert(g)
            }
        };
        let len = self.groups[g].lengths.varint()?;
        let bytes = self.groups[g].values.take(len)?;
        self.put(bytes)
    }

    fn message(&mut self) -> Result<()> {
        let token = self.structure.byte()?;
        let at = self.open_len()?;
        match token {
            MSG_VERBATIM => self.verbatim()?,
            MSG_BEGIN => {
                let lsn = self.last.lsn.wrapping_add(unzigzag(self.lsn.varint()?) as u64);
                let time = self.last.time.wrapping_add(unzigzag(self.time.varint()?));
                let xid = u32::try_from(self.xid.varint()?).map_err(|_| damaged("an xid delta overflows"))?;
                let xid = self.last.xid.wrapping_add(unzigzag32(xid) as u32);
                self.last = LastBegin { lsn, time, xid };
                self.put(b"B")?;
                self.put(&lsn.to_be_bytes())?;
                self.put(&time.to_be_bytes())?;
                self.put(&xid.to_be_bytes())?;
            }
            MSG_COMMIT | MSG_COMMIT_FULL => {
                let (mut lsn, mut time) = (self.last.lsn, self.last.time);
                if token == MSG_COMMIT_FULL {
                    lsn = lsn.wrapping_add(unzigzag(self.lsn.varint()?) as u64);
                    time = time.wrapping_add(unzigzag(self.time.varint()?));
                }
                let flags = self.commit.byte()?;
                let end = lsn.wrapping_add(self.commit.varint()?);
                self.put(&[b'C', flags])?;
                self.put(&lsn.to_be_bytes())?;
                self.put(&end.to_be_bytes())?;
                self.put(&time.to_be_bytes())?;
            }
            token => {
                let shape = ROWS.iter().find(|s| s.token == token).ok_or_else(|| damaged(format!("unknown message token {token}")))?;
                let relation = u32::try_from(self.structure.varint()?).map_err(|_| damaged("a relation id overflows"))?;
                self.put(&[shape.tag])?;
                self.put(&relation.to_be_bytes())?;
                self.put(&[shape.marker])?;
                self.tuple(relation)?;
                if shape.two_tuples {
                    self.put(b"N")?;
                    self.tuple(relation)?;
                }
            }
        }
        self.close_len(at)
    }

    fn tuple(&mut self, relation: u32) -> Result<()> {
        let count = i16::try_from(self.structure.varint()?).map_err(|_| damaged("a column count overflows"))?;
        self.put(&count.to_be_bytes())?;
        for column in 0..count as usize {
            match self.structure.byte()? {
                COL_NULL => self.put(b"n")?,
                COL_TOAST => self.put(b"u")?,
                token @ (COL_TEXT | COL_BINARY) => {
                    let kind = if token == COL_TEXT { b't' } else { b'b' };
                    self.literal(relation, column, kind)?;
                }
                token => {
                    let i = usize::from(token.wrapping_sub(COL_RECENT));
                    if token < COL_RECENT || i >= self.recent.len() {
                        return Err(damaged(format!("unknown column token {token}")));
                    }
                    let entry = self.recent.remove(i);
                    self.value_header(entry.0, entry.1.len())?;
                    self.repeat(entry.1.clone())?;
                    self.recent.insert(0, entry);
                }
            }
        }
        Ok(())
    }

    fn value_header(&mut self, kind: u8, len: usize) -> Result<()> {
        let len = i32::try_from(len).map_err(|_| damaged("a value exceeds 2 GiB"))?;
        self.put(&[kind])?;
        self.put(&len.to_be_bytes())
    }

    fn literal(&mut self, relation: u32, column: usize, kind: u8) -> Result<()> {
        let columns = self.columns.entry(relation).or_default();
        if columns.len() <= column {
            columns.resize(column + 1, NO_GROUP);
        }
        let current = columns[column];
        let g = match current {
            NO_GROUP => {
                let g = self.new_group()?;
                if let Some(slot) = self.columns.get_mut(&relation).and_then(|c| c.get_mut(column)) {
                    *slot = g as u32;
                }
                g
            }
            g => g as usize,
        };
        let group = &mut self.groups[g];
        let (prefix, suffix) = (group.lengths.varint()?, group.lengths.varint()?);
        let prev = group.prev.clone();
        let prefix = usize::try_from(prefix).ok().filter(|p| *p <= prev.len()).ok_or_else(|| damaged("a prefix longer than the previous value"))?;
        let suffix = group.values.take(suffix)?;
        self.value_header(kind, prefix.saturating_add(suffix.len()))?;
        let start = self.out.len();
        self.repeat(prev.start..prev.start + prefix)?;
        self.put(suffix)?;
        let value = start..self.out.len();
        self.groups[g].prev = value.clone();
        self.recent.insert(0, (kind, value));
        self.recent.truncate(RECENT);
        Ok(())
    }
}
