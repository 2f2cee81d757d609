//! [`super::pack`]: a raw payload taken apart into the uncompressed streams.

use std::collections::HashMap;
use std::ops::Range;

use super::*;

/// The eight uncompressed streams of `raw`.
pub(super) fn streams(raw: &[u8]) -> [Vec<u8>; STREAMS] {
    let mut packer = Packer {
        raw,
        out: Default::default(),
        groups: Vec::new(),
        columns: HashMap::new(),
        misc: None,
        recent: Vec::with_capacity(RECENT + 1),
        last: LastBegin::default(),
        frames: Vec::new(),
    };
    packer.payload();
    packer.finish()
}

/// The value bytes and lengths of one relation column (or of the verbatim
/// parts), and its previous literal value.
#[derive(Default)]
struct Group {
    lengths: Vec<u8>,
    values: Vec<u8>,
    prev: Range<usize>,
}

struct Packer<'a> {
    raw: &'a [u8],
    out: [Vec<u8>; STREAMS],
    groups: Vec<Group>,
    /// Relation id → group of each column position.
    columns: HashMap<u32, Vec<u32>>,
    misc: Option<usize>,
    /// The transaction's recent values, most recent first: kind and range in `raw`.
    recent: Vec<(u8, Range<usize>)>,
    last: LastBegin,
    /// Scratch: the message ranges of the current record.
    frames: Vec<Range<usize>>,
}

impl Packer<'_> {
    fn payload(&mut self) {
        let raw = self.raw;
        let mut at = 0;
        while at < raw.len() {
            let body = be_u32(raw, at).and_then(|len| (at + 4).checked_add(len as usize)).filter(|end| *end <= raw.len()).map(|end| at + 4..end);
            let Some(body) = body else {
                put_varint(&mut self.out[STRUCTURE], REC_TAIL);
                self.verbatim(at..raw.len());
                return;
            };
            if frame(raw, body.clone(), &mut self.frames) {
                put_varint(&mut self.out[STRUCTURE], REC_MESSAGES + self.frames.len() as u64);
                self.recent.clear();
                let frames = std::mem::take(&mut self.frames);
                for m in &frames {
                    self.message(m.clone());
                }
                self.frames = frames;
            } else {
                put_varint(&mut self.out[STRUCTURE], REC_VERBATIM);
                self.verbatim(body.clone());
            }
            at = body.end;
        }
    }

    /// Bytes stored as they are, in the verbatim group.
    fn verbatim(&mut self, range: Range<usize>) {
        let g = *self.misc.get_or_insert_with(|| {
            self.groups.push(Group::default());
            self.groups.len() - 1
        });
        let group = &mut self.groups[g];
        put_varint(&mut group.lengths, range.len() as u64);
        group.values.extend_from_slice(&self.raw[range]);
    }

    fn message(&mut self, range: Range<usize>) {
        let m = &self.raw[range.clone()];
        if let Some(begin) = parse_begin(m) {
            self.out[STRUCTURE].push(MSG_BEGIN);
            put_varint(&mut self.out[LSN], zigzag(begin.lsn.wrapping_sub(self.last.lsn) as i64));
            put_varint(&mut self.out[TIME], zigzag(begin.time.wrapping_sub(self.last.time)));
            put_varint(&mut self.out[XID], zigzag32(begin.xid.wrapping_sub(self.last.xid) as i32));
            self.last = begin;
        } else if let Some(commit) = parse_commit(m) {
            if commit.lsn == self.last.lsn && commit.time == self.last.time {
                self.out[STRUCTURE].push(MSG_COMMIT);
            } else {
                self.out[STRUCTURE].push(MSG_COMMIT_FULL);
                put_varint(&mut self.out[LSN], zigzag(commit.lsn.wrapping_sub(self.last.lsn) as i64));
                put_varint(&mut self.out[TIME], zigzag(commit.time.wrapping_sub(self.last.time)));
            }
            self.out[COMMIT].push(commit.flags);
            put_varint(&mut self.out[COMMIT], commit.end.wrapping_sub(commit.lsn));
        } else if let Some((shape, relation)) = row_layout(m) {
            self.out[STRUCTURE].push(shape.token);
            put_varint(&mut self.out[STRUCTURE], relation.into());
            let end = self.tuple(relation, range.start + 6);
            if shape.two_tuples {
                self.tuple(relation, end + 1);
            }
        } else {
            self.out[STRUCTURE].push(MSG_VERBATIM);
            self.verbatim(range);
        }
    }

    /// Emit the (validated) tuple at `at` of `raw`; returns where it ends.
    fn tuple(&mut self, relation: u32, at: usize) -> usize {
        let raw = self.raw;
        let count = be_i16(raw, at).unwrap_or(0).max(0) as usize;
        put_varint(&mut self.out[STRUCTURE], count as u64);
        let mut p = at + 2;
        for column in 0..count {
            let kind = raw[p];
            match kind {
                b'n' => self.out[STRUCTURE].push(COL_NULL),
                b'u' => self.out[STRUCTURE].push(COL_TOAST),
                _ => {
                    let len = be_u32(raw, p + 1).unwrap_or(0) as usize;
                    let value = p + 5..p + 5 + len;
                    p = value.end;
                    self.value(relation, column, kind, value);
                    continue;
                }
            }
            p += 1;
        }
        p
    }

    fn value(&mut self, relation: u32, column: usize, kind: u8, value: Range<usize>) {
        let raw = self.raw;
        let bytes = &raw[value.clone()];
        let seen = self.recent.iter().position(|(k, r)| *k == kind && raw[r.clone()] == *bytes);
        if let Some(i) = seen {
            self.out[STRUCTURE].push(COL_RECENT + i as u8);
            let entry = self.recent.remove(i);
            self.recent.insert(0, entry);
            return;
        }
        self.out[STRUCTURE].push(if kind == b't' { COL_TEXT } else { COL_BINARY });
        let columns = self.columns.entry(relation).or_default();
        if columns.len() <= column {
            columns.resize(column + 1, NO_GROUP);
        }
        if columns[column] == NO_GROUP {
            columns[column] = self.groups.len() as u32;
            self.groups.push(Group::default());
        }
        let group = &mut self.groups[columns[column] as usize];
        let prefix = common_prefix(&raw[group.prev.clone()], bytes);
        put_varint(&mut group.lengths, prefix as u64);
        put_varint(&mut group.lengths, (bytes.len() - prefix) as u64);
        group.values.extend_from_slice(&bytes[prefix..]);
        group.prev = value.clone();
        self.recent.insert(0, (kind, value));
        self.recent.truncate(RECENT);
    }

    /// The group directory, and the groups' lengths and values concatenated.
    fn finish(mut self) -> [Vec<u8>; STREAMS] {
        for group in &self.groups {
            put_varint(&mut self.out[GROUPS], group.lengths.len() as u64);
            put_varint(&mut self.out[GROUPS], group.values.len() as u64);
        }
        let sizes = |f: fn(&Group) -> usize| self.groups.iter().map(f).sum();
        let (lengths, values) = (sizes(|g| g.lengths.len()), sizes(|g| g.values.len()));
        self.out[LENGTHS].reserve_exact(lengths);
        self.out[VALUES].reserve_exact(values);
        for group in &self.groups {
            self.out[LENGTHS].extend_from_slice(&group.lengths);
            self.out[VALUES].extend_from_slice(&group.values);
        }
        self.out
    }
}

/// Whether `raw[body]` is exactly a sequence of `u32 len` + bytes frames;
/// their ranges go to `frames`.
pub(super) fn frame(raw: &[u8], body: Range<usize>, frames: &mut Vec<Range<usize>>) -> bool {
    frames.clear();
    let mut at = body.start;
    while at < body.end {
        let Some(end) = be_u32(raw, at).and_then(|len| (at + 4).checked_add(len as usize)) else {
            return false;
        };
        if end > body.end {
            return false;
        }
        frames.push(at + 4..end);
        at = end;
    }
    true
}

/// The fields of a Begin message.
fn parse_begin(m: &[u8]) -> Option<LastBegin> {
    if m.len() != BEGIN_LEN || m[0] != b'B' {
        return None;
    }
    Some(LastBegin { lsn: be_u64(m, 1)?, time: be_u64(m, 9)? as i64, xid: be_u32(m, 17)? })
}

/// The fields of a Commit message.
struct CommitFields {
    flags: u8,
    lsn: u64,
    end: u64,
    time: i64,
}

fn parse_commit(m: &[u8]) -> Option<CommitFields> {
    if m.len() != COMMIT_LEN || m[0] != b'C' {
        return None;
    }
    Some(CommitFields { flags: m[1], lsn: be_u64(m, 2)?, end: be_u64(m, 10)?, time: be_u64(m, 18)? as i64 })
}

/// The shape and relation id of an Insert, Update or Delete message that
/// this transform can take apart, or `None` (then it is stored verbatim).
fn row_layout(m: &[u8]) -> Option<(&'static RowShape, u32)> {
    let (tag, marker) = (*m.first()?, *m.get(5)?);
    let shape = ROWS.iter().find(|s| s.tag == tag && s.marker == marker)?;
    let relation = be_u32(m, 1)?;
    let mut end = tuple_end(m, 6)?;
    if shape.two_tuples {
        if m.get(end) != Some(&b'N') {
            return None;
        }
        end = tuple_end(m, end + 1)?;
    }
    (end == m.len()).then_some((shape, relation))
}

/// Where the TupleData at `m[at..]` ends, if it is one.
fn tuple_end(m: &[u8], at: usize) -> Option<usize> {
    let count = usize::try_from(be_i16(m, at)?).ok()?;
    let mut p = at + 2;
    for _ in 0..count {
        p = match m.get(p)? {
            b'n' | b'u' => p + 1,
            b't' | b'b' => {
                let len = usize::try_from(be_u32(m, p + 1)? as i32).ok()?;
                (p + 5).checked_add(len).filter(|end| *end <= m.len())?
            }
            _ => return None,
        };
    }
    Some(p)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(buf.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn be_i16(buf: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(buf.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
