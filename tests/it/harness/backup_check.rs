//! Reading a backup back from a repository the slow, independent way:
//! every object's size and checksum, every chunk's checksums, row boundaries,
//! row counts and table fingerprints against the manifest; and the
//! [`Settings`] the backup tests run with.

use pgkeep::config::{DbSettings, LogFormat, RepoSpec, Settings};
use pgkeep::pipeline::{Compression, TableFingerprint};
use pgkeep::repo::manifest::BackupManifest;
use pgkeep::storage::Storage;
use sha2::{Digest, Sha256};

/// Settings for a backup of `db` into `repos`: 2 jobs, default retention,
/// no notifications, text logs.
pub fn settings(db: DbSettings, repos: Vec<RepoSpec>) -> Settings {
    Settings {
        db,
        repos,
        jobs: 2,
        retention_days: 30,
        local_retention_days: 7,
        log_retention_days: 90,
        audit_retention_days: 365,
        slack_webhook_url: None,
        notification_email: None,
        notify: Default::default(),
        log_format: LogFormat::Text,
        config_file: None,
        critical_tables: Vec::new(),
        expire_after_backup: false,
        encryption: Default::default(),
        provenance: Vec::new(),
    }
}

/// Read every chunk of every table back, checking sizes, checksums, row
/// boundaries and row counts; returns the decoded rows per table.
pub async fn read_back(storage: &dyn Storage, m: &BackupManifest) -> Vec<Vec<u8>> {
    let comp = Compression::from_manifest(&m.compression.algorithm, m.compression.level).unwrap();
    for o in &m.objects {
        let bytes = storage.get(&m.backup_id.key(&o.key), None).await.unwrap();
        assert_eq!(bytes.len() as u64, o.size, "size of {}", o.key);
        // Chunks must tile each object exactly: their checksums then cover every byte.
        let mut chunks: Vec<(u64, u64)> = m
            .tables
            .iter()
            .flat_map(|t| t.chunks.iter())
            .chain([&m.schema.pre_data, &m.schema.post_data])
            .chain(m.schema.globals.iter())
            .filter(|c| c.object == o.key)
            .map(|c| (c.offset, c.stored_size))
            .collect();
        chunks.sort();
        let mut at = 0;
        for (off, len) in chunks {
            assert_eq!(off, at, "gap or overlap in {}", o.key);
            at += len;
        }
        assert_eq!(at, o.size, "chunks do not cover {}", o.key);
    }
    let mut out = Vec::new();
    for t in &m.tables {
        let mut raw_all = Vec::new();
        let mut rows = 0;
        for c in &t.chunks {
            let stored = storage.get(&m.backup_id.key(&c.object), Some(c.offset..c.offset + c.stored_size)).await.unwrap();
            assert_eq!(hex::encode(Sha256::digest(&stored)), c.stored_sha256);
            let raw = comp.decompress(&stored, c.raw_size as usize, "chunk").unwrap();
            assert_eq!(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&raw)), c.raw_xxh3);
            assert_eq!(raw.ends_with(b"\n"), !c.continues, "chunk of {} ends at a row boundary unless it continues", t.name);
            let n = raw.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(n, c.rows);
            rows += n;
            raw_all.extend_from_slice(&raw);
        }
        assert_eq!(rows, t.rows, "rows of {}", t.name);
        let fp = TableFingerprint::of_rows(&raw_all);
        assert_eq!(fp.to_hex(), t.fingerprint, "fingerprint of {}", t.name);
        out.push(raw_all);
    }
    out
}
