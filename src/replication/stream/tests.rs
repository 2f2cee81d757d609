//! Unit tests of the pure parts of logical streaming: the START_REPLICATION
//! command text and the CopyData formats.

use super::*;

#[test]
fn command_quotes_slot_and_publications() {
    let cmd = |pubs: &[&str], messages, version| start_logical_replication_command("s_1", Lsn(0x16_B374_D848), pubs, messages, version);
    assert_eq!(
        cmd(&["a", "b"], true, 150_004).unwrap(),
        "START_REPLICATION SLOT \"s_1\" LOGICAL 16/B374D848 \
         (proto_version '1', publication_names '\"a\",\"b\"', messages 'true')"
    );
    assert_eq!(
        cmd(&["It's \"odd\", really"], false, 130_000).unwrap(),
        "START_REPLICATION SLOT \"s_1\" LOGICAL 16/B374D848 \
         (proto_version '1', publication_names '\"It''s \"\"odd\"\", really\"')"
    );
    for (pubs, messages, version, needle) in [
        (&[][..], false, 150_000, "no publication"),
        (&[""][..], false, 150_000, "empty"),
        (&["a\0b"][..], false, 150_000, "NUL"),
        (&["a"][..], true, 130_011, "PostgreSQL 13"),
    ] {
        let e = cmd(pubs, messages, version).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let e = start_logical_replication_command("Bad", Lsn(0), &["a"], false, 150_000).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}

fn xlog_data(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b'w'];
    out.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
    out.extend_from_slice(&0x0000_0001_0000_0FF0u64.to_be_bytes());
    out.extend_from_slice(&762_609_600_000_000i64.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn xlog_data_is_parsed_and_its_payload_copied_out_of_the_read_buffer() {
    let bytes = Bytes::from(xlog_data(b"B-payload"));
    let event = parse_copy_data(bytes.clone()).unwrap();
    let StreamEvent::XLogData { wal_start, wal_end, server_time, data } = event else {
        panic!("not XLogData: {event:?}");
    };
    assert_eq!(wal_start, Lsn(0x1_0000_0010));
    assert_eq!(wal_end, Lsn(0x1_0000_0FF0));
    assert_eq!(server_time.to_utc().unwrap().to_rfc3339(), "2024-03-01T12:00:00+00:00");
    assert_eq!(&data[..], b"B-payload");
    // Its own allocation: holding the message must not keep the read buffer alive.
    let buffer = bytes.as_ptr_range();
    assert!(!buffer.contains(&data.as_ptr()), "the payload still points into the read buffer");
    // An empty payload is fine; a short header is not.
    assert!(parse_xlog_data(Bytes::from(xlog_data(b""))).is_ok());
    let header = xlog_data(b"");
    for cut in 1..header.len() {
        let e = parse_copy_data(Bytes::copy_from_slice(&header[..cut])).unwrap_err();
        assert!(e.contains("shorter than its 25-byte header"), "{e}");
    }
}

#[test]
fn keepalives_are_parsed() {
    let mut k = vec![b'k'];
    k.extend_from_slice(&0x2A_0000_0100u64.to_be_bytes());
    k.extend_from_slice(&(-1i64).to_be_bytes());
    k.push(1);
    assert_eq!(
        parse_copy_data(Bytes::from(k.clone())).unwrap(),
        StreamEvent::Keepalive { wal_end: Lsn(0x2A_0000_0100), server_time: PgTimestamp(-1), reply_requested: true }
    );
    let mut quiet = k.clone();
    quiet[17] = 0;
    quiet.push(0xEE); // trailing bytes are ignored
    assert!(matches!(parse_keepalive(&quiet).unwrap(), StreamEvent::Keepalive { reply_requested: false, .. }));
    for cut in 0..k.len() {
        assert!(parse_keepalive(&k[..cut]).is_err(), "cut at {cut}");
    }
    assert!(parse_copy_data(Bytes::from_static(b"x123")).unwrap_err().contains("0x78"));
    assert!(parse_copy_data(Bytes::new()).unwrap_err().contains("empty"));
}

#[test]
fn status_update_layout() {
    let update = encode_standby_status(Lsn(0x1_0000_0003), Lsn(0x1_0000_0002), Lsn(0x1_0000_0001), PgTimestamp(0x0102_0304_0506_0708), true);
    let mut expected = vec![b'r'];
    for v in [0x1_0000_0003u64, 0x1_0000_0002, 0x1_0000_0001, 0x0102_0304_0506_0708] {
        expected.extend_from_slice(&v.to_be_bytes());
    }
    expected.push(1);
    assert_eq!(&update[..], &expected[..]);
    let quiet = encode_standby_status(Lsn(0), Lsn(0), Lsn(0), PgTimestamp(0), false);
    assert_eq!(quiet[33], 0);
}
