#![no_main]
//! Docker config JSON (modern and legacy): never panic; matching never panics.
use libfuzzer_sys::fuzz_target;
use pullbroker_core::{DockerConfig, Keychain, Reference};

fuzz_target!(|data: &[u8]| {
    for config in [DockerConfig::parse(data), DockerConfig::parse_legacy(data)].into_iter().flatten() {
        for image in ["nginx", "reg.example.com:5000/a/b:c", "[::1]:5000/x"] {
            let _ = config.credentials_for(&Reference::parse(image).unwrap());
        }
        let _ = DockerConfig::parse(config.to_json_exposing_secrets().as_bytes()).expect("round trip");
    }
});
