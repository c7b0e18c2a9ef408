#![no_main]
//! AdmissionReview bodies: parsing, pod specs, per-image actions and the
//! patch never panic, whatever the API server (or anyone) sends.
use libfuzzer_sys::fuzz_target;
use pullbroker_core::admission;

fuzz_target!(|data: &[u8]| {
    let Ok((_, Some(req))) = admission::parse_review(data) else {
        return;
    };
    let _ = admission::pinned_owner(&req.object);
    let Ok(spec) = admission::pod_spec(req.kind, &req.object) else {
        return;
    };
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| admission::pod_spec(req.kind, o).ok());
    let ops: Vec<admission::PatchOp> = spec
        .slots
        .iter()
        .map(|s| {
            let _ = admission::action(s, old.as_ref());
            admission::PatchOp::ReplaceImage {
                pointer: s.pointer.clone(),
                value: s.image.clone(),
            }
        })
        .collect();
    let _ = admission::json_patch(&ops, &spec);
});
