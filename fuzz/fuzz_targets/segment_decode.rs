//! Fuzz the change segment decoder: arbitrary bytes must give a segment or
//! an error, never a panic; a decoded segment must re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgkeep::stream::segment;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = segment::decode(data, "fuzz") {
        let again = segment::encode(&s).expect("encode");
        let back = segment::decode(&again, "fuzz").expect("decode");
        assert_eq!((back.schema, back.transactions), (s.schema, s.transactions));
    }
});
