//! The offline path: YAML/JSON streams as `check` reads them, every object judged. No input may
//! panic, loop, or blow the stack; a patch of a valid DaemonSet always applies (to the object as
//! printed, a repeated key merged).
#![no_main]

use daemonset_webhook::check::{self, input};
use daemonset_webhook::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default();
    input::for_each_document(data, |document| {
        let Ok(document) = document else {
            return;
        };
        for (_, object) in input::objects(&document.written) {
            let Some((_, _, Some(verdict))) = check::judge(&object, None, &policy) else {
                continue;
            };
            if verdict.allowed() {
                let mut patched = object.merged();
                json_patch::patch(&mut patched, &verdict.patch().to_json_patch())
                    .expect("the patch applies");
            }
        }
    });
});
