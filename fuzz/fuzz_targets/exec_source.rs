#![no_main]
//! An exec source's output (a kubelet CredentialProviderResponse) and Go
//! durations: never panic; what parses yields a docker config that parses.
use libfuzzer_sys::fuzz_target;
use pullbroker_core::DockerConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok((config, json, lifetime)) = pullbroker_credentials::source::parse_response(data) {
        DockerConfig::parse(&json).expect("the config handed on parses");
        assert_eq!(DockerConfig::parse(&json).unwrap().entries().len(), config.entries().len());
        if let Some(l) = lifetime {
            assert!(l.as_secs_f64().is_finite());
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pullbroker_credentials::source::parse_go_duration(s);
    }
});
