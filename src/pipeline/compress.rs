//! Chunk compression: zstd (default), gzip, or none. Each chunk is one
//! independent frame, so any chunk can be read alone with a ranged GET.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// A compression algorithm and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// zstd at a level 1..=19, or a fast level -1..=-7.
    Zstd(i32),
    /// gzip at a level 1..=9.
    Gzip(u32),
}

impl Compression {
    /// zstd at `level`, checked.
    pub fn zstd(level: i32) -> Result<Self> {
        if !(-7..=19).contains(&level) || level == 0 {
            return Err(Error::config(format!("invalid --compress-level {level} for zstd: expected 1-19, or -1 to -7 for zstd's fast levels")));
        }
        Ok(Compression::Zstd(level))
    }

    /// gzip at `level`, checked.
    pub fn gzip(level: i32) -> Result<Self> {
        if !(1..=9).contains(&level) {
            return Err(Error::config(format!("invalid --compress-level {level} for gzip: expected 1-9")));
        }
        Ok(Compression::Gzip(level as u32))
    }

    /// Name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
            Compression::Gzip(_) => "gzip",
        }
    }

    /// Level recorded in the manifest.
    pub fn level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Zstd(l) => l,
            Compression::Gzip(l) => l as i32,
        }
    }

    /// Parse the manifest's (name, level).
    pub fn from_manifest(name: &str, level: i32) -> Result<Self> {
        match name {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd(level)),
            "gzip" => Ok(Compression::Gzip(level.clamp(0, 9) as u32)),
            other => Err(Error::corrupt(format!("unknown compression `{other}` in manifest"))),
        }
    }

    /// Compress one chunk.
    pub fn compress(self, raw: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::None => Ok(raw.to_vec()),
            Compression::Zstd(level) => zstd::bulk::compress(raw, level).map_err(|e| Error::internal(format!("zstd compression failed: {e}"))),
            Compression::Gzip(level) => {
                let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 3), flate2::Compression::new(level));
                enc.write_all(raw).and_then(|_| enc.finish()).map_err(|e| Error::internal(format!("gzip compression failed: {e}")))
            }
        }
    }

    /// Decompress one chunk whose raw size is known. `what` names it in errors.
    pub fn decompress(self, stored: &[u8], raw_size: usize, what: &str) -> Result<Vec<u8>> {
        let out = match self {
            Compression::None => stored.to_vec(),
            Compression::Zstd(_) => {
                let mut out = Vec::with_capacity(raw_size);
                zstd::stream::read::Decoder::new(stored)
                    .and_then(|mut d| d.read_to_end(&mut out))
                    .map_err(|e| Error::corrupt(format!("{what} is not a valid zstd frame: {e}")))?;
                out
            }
            Compression::Gzip(_) => {
                let mut out = Vec::with_capacity(raw_size);
                flate2::read::GzDecoder::new(stored).read_to_end(&mut out).map_err(|e| Error::corrupt(format!("{what} is not a valid gzip stream: {e}")))?;
                out
            }
        };
        if out.len() != raw_size {
            return Err(Error::corrupt(format!("{what} decompressed to {} bytes, manifest says {raw_size}", out.len())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| format!("{i}\trow {}\n", i % 97).into_bytes()).collect();
        for c in [Compression::None, Compression::Zstd(3), Compression::Gzip(6)] {
            let stored = c.compress(&raw).unwrap();
            assert_eq!(c.decompress(&stored, raw.len(), "chunk").unwrap(), raw);
            if c != Compression::None {
                assert!(stored.len() < raw.len() / 3);
                let mut bad = stored.clone();
                bad.truncate(bad.len() / 2);
                let e = c.decompress(&bad, raw.len(), "chunk data/1.pack@0").unwrap_err();
                assert!(e.user_line().contains("data/1.pack@0"));
            }
        }
        assert!(Compression::zstd(30).is_err());
        assert!(Compression::gzip(0).is_err());
    }
}
