//! Manifest envelope tests: round trip, tampering, unknown versions.

use super::*;
use chrono::TimeZone;

pub(crate) fn sample() -> BackupManifest {
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap();
    let chunk = ChunkRef {
        object: "data/000001.pack".into(),
        offset: 0,
        stored_size: 10,
        raw_size: 20,
        stored_sha256: "aa".into(),
        raw_xxh3: "bb".into(),
        rows: 2,
        continues: false,
    };
    BackupManifest {
        backup_id: BackupId::new(BackupKind::Full, at, 0),
        kind: BackupKind::Full,
        parent: None,
        database: "app".into(),
        database_info: Some(DatabaseInfo {
            encoding: "UTF8".into(),
            lc_collate: "C.UTF-8".into(),
            lc_ctype: "C.UTF-8".into(),
            owner: Some("app_owner".into()),
            settings: vec!["search_path=app, public".into()],
            grants: Some(vec!["PUBLIC:TEMPORARY:false".into()]),
        }),
        server: ServerInfo { version: "15.18".into(), version_num: 150018, system_identifier: "7312".into(), timeline: 1 },
        started_at: at,
        finished_at: at,
        snapshot: SnapshotInfo {
            method: SnapshotMethod::ReplicationSlot,
            consistent_lsn: Lsn(0x16B3748),
            slot_name: Some("pgkeep_app".into()),
            slot_kept: false,
            server_time: None,
        },
        started_by: RunInfo { os_user: "root".into(), host: "h".into(), pgkeep_version: "0.1.0".into() },
        compression: CompressionInfo { algorithm: "zstd".into(), level: 3 },
        encryption: None,
        schema: SchemaObjects { pre_data: chunk.clone(), post_data: chunk.clone(), globals: None },
        tables: vec![TableEntry {
            schema: "public".into(),
            name: "Ünïcode \"table\"".into(),
            oid: 16384,
            columns: vec![ColumnEntry { name: "id".into(), type_name: "integer".into(), not_null: true }],
            rows: 2,
            raw_bytes: 20,
            fingerprint: "00ff".into(),
            chunks: vec![chunk],
            extension: None,
        }],
        sequences: vec![SequenceEntry { schema: "public".into(), name: "s".into(), last_value: 5, is_called: true }],
        large_objects: LargeObjects { count: 0, covered: true },
        objects: vec![ObjectEntry { key: "data/000001.pack".into(), size: 10 }],
        stats: BackupStats::default(),
        warnings: vec![],
        changes: None,
        image: None,
    }
}

#[test]
fn round_trip() {
    let m = sample();
    let bytes = encode(&m).unwrap();
    assert_eq!(decode(&bytes, "k").unwrap(), m);
}

#[test]
fn any_edit_of_the_body_is_detected() {
    let bytes = encode(&sample()).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let edited = text.replace("\"rows\":2", "\"rows\":3");
    assert_ne!(edited, text);
    let e = decode(edited.as_bytes(), "backups/x/manifest.json").unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt);
    assert!(e.user_line().contains("backups/x/manifest.json"));
    assert!(e.user_line().contains("checksum"));
    // Flipping any single byte never yields a silently different manifest.
    let raw = text.as_bytes();
    for i in (0..raw.len()).step_by(7) {
        let mut b = raw.to_vec();
        b[i] ^= 0x01;
        if let Ok(m) = decode(&b, "k") {
            assert_eq!(m, sample(), "byte {i} changed the manifest without detection");
        }
    }
}

#[test]
fn unknown_version_and_garbage_are_rejected() {
    let text = String::from_utf8(encode(&sample()).unwrap()).unwrap();
    let v9 = text.replacen("\"version\":1", "\"version\":9", 1);
    let e = decode(v9.as_bytes(), "k").unwrap_err();
    assert!(e.user_line().contains("format version 9"), "{}", e.user_line());
    // Version 2 promises an encryption section; a plain body under it is refused.
    let v2 = text.replacen("\"version\":1", "\"version\":2", 1);
    let e = decode(v2.as_bytes(), "k").unwrap_err();
    assert!(e.user_line().contains("encryption section"), "{}", e.user_line());
    assert!(decode(b"", "k").is_err());
    assert!(decode(b"{\"format\":\"other\",\"version\":1,\"sha256\":\"\",\"body\":{}}", "k").is_err());
}

#[test]
fn split_rows_make_version_3_and_nothing_else_changes() {
    // Without a split row: version 1 and no `continues` key at all.
    let plain = String::from_utf8(encode(&sample()).unwrap()).unwrap();
    assert!(plain.contains("\"version\":1") && !plain.contains("continues"));
    let mut m = sample();
    m.tables[0].chunks[0].continues = true;
    let text = String::from_utf8(encode(&m).unwrap()).unwrap();
    assert!(text.contains("\"version\":3") && text.contains("\"continues\":true"), "{text}");
    assert_eq!(decode(text.as_bytes(), "k").unwrap(), m);
    // A split row under version 1 (or 2) is refused, and version 3 without one.
    let v1 = text.replacen("\"version\":3", "\"version\":1", 1);
    let e = decode(v1.as_bytes(), "k").unwrap_err();
    assert!(e.user_line().contains("row split across chunks"), "{}", e.user_line());
    let v3 = plain.replacen("\"version\":1", "\"version\":3", 1);
    assert!(decode(v3.as_bytes(), "k").is_err());
}
