//! Fuzz the COPY OUT framer (`pgkeep::replication::copy_out`): on any byte
//! stream, fed in pieces of any size, it never panics, hands out payload
//! only from CopyData messages, and the payload it hands out starts with
//! exactly the payload of the CopyData messages a whole-message parse
//! finds before the first incomplete or invalid message. The bulk path
//! (`drain_into`, asked for a few bytes at a time) hands out the same.
//!
//! Shared by the cargo-fuzz target `fuzz_targets/copy_out_frame.rs` and the seed-corpus
//! smoke test `tests/it/fuzz_smoke.rs` (no nightly toolchain needed).

use bytes::BytesMut;
use pgkeep::replication::copy_out::{CopyOutFramer, CopyOutItem, Drained};
use pgkeep::replication::wire::{BackendMessage, parse_backend_message};
use postgres_protocol::message::backend::Message;

/// One fuzz input: the first byte sets the piece size, the rest is the stream.
pub fn run(data: &[u8]) {
    let Some((&size, input)) = data.split_first() else { return };
    let piece = 1 + size as usize;

    // The framer, fed piece by piece.
    let mut framer = CopyOutFramer::default();
    let mut buf = BytesMut::new();
    let mut framed = Vec::new();
    'feed: for p in input.chunks(piece) {
        buf.extend_from_slice(p);
        loop {
            match framer.next(&mut buf) {
                Ok(Some(CopyOutItem::Data(d))) => framed.extend_from_slice(&d),
                Ok(Some(CopyOutItem::Message(_))) => {}
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert!(framed.len() <= input.len());

    // The bulk path, asking for `piece` bytes at a time.
    let mut framer = CopyOutFramer::default();
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    'bulk: for p in input.chunks(piece) {
        buf.extend_from_slice(p);
        loop {
            let want = out.len() + piece;
            match framer.drain_into(&mut buf, &mut out, want) {
                Ok(Drained::Full | Drained::Message(_)) => {}
                Ok(Drained::NeedMore) => break,
                Err(_) => break 'bulk,
            }
        }
    }
    assert_eq!(&out[..], &framed[..], "the bulk path hands out what the piecewise one does");

    // The reference: whole messages.
    let mut whole = BytesMut::from(input);
    let mut expected = Vec::new();
    while let Ok(Some(msg)) = parse_backend_message(&mut whole) {
        if let BackendMessage::Protocol(Message::CopyData(body)) = msg {
            expected.extend_from_slice(body.data());
        }
    }
    assert!(framed.starts_with(&expected), "framed payload must extend the whole-message payload");
}
