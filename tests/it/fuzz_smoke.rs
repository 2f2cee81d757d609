//! The fuzz targets on stable Rust, as part of `cargo test`: every seed of
//! `fuzz/corpus/<target>/` goes through the target's body
//! (`fuzz/bodies/<target>.rs`, the same code cargo-fuzz runs), followed by a
//! few thousand deterministic mutations of each seed — every truncation of
//! its first 256 bytes, single-bit flips and byte overwrites from a fixed
//! PRNG. Not a substitute for `cargo +nightly fuzz run`, but a finding in
//! the corpus or next to it fails CI with the target, seed and mutation.
//!
//! `PGKEEP_WRITE_FUZZ_SEEDS=1` also writes the seeds made here: an encrypted
//! (version 2) manifest.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/bodies/conninfo_parse.rs"]
mod conninfo_parse;
#[path = "../../fuzz/bodies/copy_chunker.rs"]
mod copy_chunker;
#[path = "../../fuzz/bodies/copy_out_frame.rs"]
mod copy_out_frame;
#[path = "../../fuzz/bodies/ddl_split.rs"]
mod ddl_split;
#[path = "../../fuzz/bodies/manifest_decode.rs"]
mod manifest_decode;
#[path = "../../fuzz/bodies/part_decode.rs"]
mod part_decode;
#[path = "../../fuzz/bodies/pgoutput_decode.rs"]
mod pgoutput_decode;
#[path = "../../fuzz/bodies/segment_columnar.rs"]
mod segment_columnar;
#[path = "../../fuzz/bodies/segment_decode.rs"]
mod segment_decode;

/// Mutations per seed, besides truncations.
const MUTATIONS: usize = 1500;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut seeds: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display())).map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Run `body` on every seed of `target` and its mutations; name any panic.
fn smoke(target: &str, body: fn(&[u8])) {
    for seed in corpus(target) {
        let data = std::fs::read(&seed).unwrap();
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let mut inputs: Vec<(String, Vec<u8>)> = vec![("seed".into(), data.clone())];
        for n in 0..data.len().min(256) {
            inputs.push((format!("truncated to {n}"), data[..n].to_vec()));
        }
        let mut rng = Prng(0x9E37_79B9_7F4A_7C15 ^ data.len() as u64);
        for i in 0..MUTATIONS {
            if data.is_empty() {
                break;
            }
            let mut m = data.clone();
            let at = (rng.next() % m.len() as u64) as usize;
            if i % 2 == 0 {
                m[at] ^= 1 << (rng.next() % 8);
            } else {
                m[at] = rng.next() as u8;
            }
            inputs.push((format!("mutation {i} at byte {at}"), m));
        }
        for (what, input) in inputs {
            if std::panic::catch_unwind(|| body(&input)).is_err() {
                panic!("fuzz target {target} panicked on seed {name}, {what}: input {:02x?}", &input[..input.len().min(64)]);
            }
        }
    }
}

#[test]
fn ddl_split_corpus() {
    smoke("ddl_split", ddl_split::run);
}

#[test]
fn conninfo_parse_corpus() {
    smoke("conninfo_parse", conninfo_parse::run);
}

#[test]
fn copy_chunker_corpus() {
    smoke("copy_chunker", copy_chunker::run);
}

#[test]
fn copy_out_frame_corpus() {
    smoke("copy_out_frame", copy_out_frame::run);
}

#[test]
fn manifest_decode_corpus() {
    smoke("manifest_decode", manifest_decode::run);
}

#[test]
fn pgoutput_decode_corpus() {
    smoke("pgoutput_decode", pgoutput_decode::run);
}

#[test]
fn segment_columnar_corpus() {
    smoke("segment_columnar", segment_columnar::run);
}

#[test]
fn segment_decode_corpus() {
    smoke("segment_decode", segment_decode::run);
}

#[test]
fn part_decode_corpus() {
    smoke("part_decode", part_decode::run);
}

/// With `PGKEEP_WRITE_FUZZ_SEEDS=1`: an encrypted manifest (version 2,
/// `encryption` with a MAC) as a `manifest_decode` seed.
#[test]
fn write_encrypted_manifest_seed() {
    if std::env::var("PGKEEP_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
        return;
    }
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/manifest_decode/seed.json");
    let mut m = pgkeep::repo::manifest::decode(&std::fs::read(seed).unwrap(), "seed").unwrap_or_else(|e| panic!("{}", e.user_line()));
    let id = age::x25519::Identity::generate();
    let settings = pgkeep::config::EncryptionSettings { recipients: vec![id.to_public().to_string()], ..Default::default() };
    let sealer = pgkeep::crypto::Sealer::from_settings(&settings).unwrap().unwrap();
    pgkeep::repo::manifest_mac::seal(&sealer, &mut m).unwrap();
    let bytes = pgkeep::repo::manifest::encode(&m).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/manifest_decode/encrypted-v2.json");
    std::fs::write(path, bytes).unwrap();
}
