#![no_main]
//! A standalone broker config (BrokerConfig, RegistryCredential, PullGrant,
//! Secret documents in one YAML stream): never panics; what loads has a
//! listener and a policy. Paths resolve under a directory that does not
//! exist, so nothing outside is read.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent-pullbroker-fuzz/broker.yaml");
    if let Ok(snapshot) = pullbroker_broker::config::parse(text, path) {
        let _ = snapshot.policy.grants().len();
    }
});
