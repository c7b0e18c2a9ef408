#![no_main]
//! Image references: never panic; whatever parses re-parses to itself.
use libfuzzer_sys::fuzz_target;
use pullbroker_core::Reference;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = Reference::parse(s) {
            let again = Reference::parse(&r.to_string()).expect("a normalized reference re-parses");
            assert_eq!(r, again);
        }
    }
});
