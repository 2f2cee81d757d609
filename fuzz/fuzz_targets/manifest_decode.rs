//! Fuzz the manifest envelope decoder: arbitrary bytes must give a manifest or
//! an error, never a panic; a decoded manifest must re-encode and decode equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = pgkeep::repo::manifest::decode(data, "fuzz") {
        let again = pgkeep::repo::manifest::encode(&m).expect("encode");
        assert_eq!(pgkeep::repo::manifest::decode(&again, "fuzz").expect("decode"), m);
    }
});
