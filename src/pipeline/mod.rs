//! The chunk pipeline: cut COPY output into chunks at row boundaries
//! ([`chunker`]), then — on the rayon pool, off the async runtime — count
//! rows, fingerprint them, checksum the raw bytes, compress, encrypt when the
//! backup is encrypted (`crate::crypto`), and checksum the stored bytes
//! ([`process`]); finally append to pack objects in every
//! repository at once ([`pack`]), dropping a repository that fails while the
//! others carry on ([`targets`]).

pub mod chunker;
pub mod compress;
pub mod pack;
pub mod process;
pub mod targets;

pub use compress::Compression;
pub use process::{ProcessedChunk, TableFingerprint};
