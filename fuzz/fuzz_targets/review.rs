//! The whole request path: bytes → AdmissionReview → policy → response bytes, for both
//! endpoints. Beyond "no panic": every answer is a well-formed admission.k8s.io/v1 review with
//! the request's uid, and a patch always applies to the object and asks for nothing more when
//! the patched object is reviewed again.
#![no_main]

use base64::Engine as _;
use daemonset_webhook::admission::{self, Endpoint};
use daemonset_webhook::policy::Policy;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default();
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let Ok(outcome) = admission::review(data, endpoint, &policy) else {
            continue;
        };
        let answer: Value = serde_json::from_slice(&outcome.body).expect("the answer is JSON");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let request: Value = serde_json::from_slice(data).expect("a review we answered is JSON");
        assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
        let Some(patch) = answer["response"]["patch"].as_str() else {
            continue;
        };
        assert_eq!(endpoint, Endpoint::Mutate, "/validate never patches");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64");
        let operations: Vec<json_patch::PatchOperation> =
            serde_json::from_slice(&bytes).expect("the patch is a JSON Patch");
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &operations).expect("the patch applies");
        let mut again = request.clone();
        again["request"]["object"] = object;
        let again = admission::review(&serde_json::to_vec(&again).unwrap(), endpoint, &policy)
            .expect("the patched review is answered");
        assert_eq!(
            again.record.patch_operations, 0,
            "the patched object asked for more"
        );
    }
});
