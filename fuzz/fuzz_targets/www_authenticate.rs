#![no_main]
//! WWW-Authenticate headers: never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pullbroker_registry::challenge::parse(s);
    }
});
