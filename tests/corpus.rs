//! The real-world corpus (tests/corpus/daemonsets, copied from ../shared/corpus with its
//! provenance in SOURCES.tsv): every apps/v1 DaemonSet published by other projects is allowed,
//! its patch applies, the result is still a DaemonSet, nothing outside tolerations and
//! resources changed, and a second review asks for nothing more.

mod common;

use daemonset_webhook::policy::patch::without_owned_fields;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use daemonset_webhook::admission::{self, Endpoint};
use daemonset_webhook::policy::Policy;
use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{Value, json};

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/daemonsets");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The file's one document, read as `check` reads manifests.
fn load(path: &Path) -> Value {
    let file = std::fs::File::open(path).unwrap();
    let mut documents = Vec::new();
    daemonset_webhook::check::input::for_each_document(file, |doc| documents.push(doc));
    assert_eq!(documents.len(), 1, "{}", path.display());
    documents
        .remove(0)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .value
}

fn admission_review(object: &Value, uid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "apps", "version": "v1", "kind": "DaemonSet" },
            "resource": { "group": "apps", "version": "v1", "resource": "daemonsets" },
            "name": object.pointer("/metadata/name"),
            "namespace": object.pointer("/metadata/namespace").cloned().unwrap_or(json!("default")),
            "operation": "CREATE",
            "object": object,
        }
    }))
    .unwrap()
}

fn response(object: &Value, endpoint: Endpoint, uid: &str) -> Value {
    let outcome = admission::review(&admission_review(object, uid), endpoint, &Policy::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let review: Value = serde_json::from_slice(&outcome.body).unwrap();
    assert_eq!(review["response"]["uid"], uid);
    review["response"].clone()
}

fn patch_of(response: &Value) -> Option<Vec<json_patch::PatchOperation>> {
    let patch = response
        .get("patch")?
        .as_str()
        .expect("patch is base64 text");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn every_apps_v1_manifest_is_allowed_and_completed_idempotently() {
    let mut judged = 0;
    let mut patched_count = 0;
    for path in corpus_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let object = load(&path);
        if object["apiVersion"] != "apps/v1" {
            continue;
        }
        judged += 1;

        let validated = response(&object, Endpoint::Validate, "v");
        assert_eq!(validated["allowed"], true, "{name}: {validated}");
        assert!(
            validated.get("patch").is_none(),
            "{name}: /validate patched"
        );

        let mutated = response(&object, Endpoint::Mutate, "m");
        assert_eq!(mutated["allowed"], true, "{name}: {mutated}");
        let Some(patch) = patch_of(&mutated) else {
            continue;
        };
        patched_count += 1;
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));

        let typed: DaemonSet = serde_json::from_value(patched.clone())
            .unwrap_or_else(|e| panic!("{name}: patched object is no DaemonSet: {e}"));
        let pod = typed.spec.template.spec.expect("pod spec");
        let tolerations = pod.tolerations.clone().unwrap_or_default();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
            "node.kubernetes.io/unschedulable",
        ] {
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(key)
                    && t.operator.as_deref() == Some("Exists")
                    && t.toleration_seconds.is_none()),
                "{name}: no {key} toleration"
            );
        }
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let resources = container.resources.clone().unwrap_or_default();
            for resource in ["cpu", "memory"] {
                let limit = resources.limits.as_ref().and_then(|l| l.get(resource));
                let request = resources.requests.as_ref().and_then(|r| r.get(resource));
                assert!(
                    limit.is_some(),
                    "{name}: container {} has no {resource} limit (request {request:?})",
                    container.name
                );
            }
        }
        assert_eq!(
            without_owned_fields(&patched),
            without_owned_fields(&object),
            "{name}: the patch changed something it does not own"
        );

        let again = response(&patched, Endpoint::Mutate, "again");
        assert_eq!(again["allowed"], true, "{name}");
        assert!(
            again.get("patch").is_none(),
            "{name}: second review asked for {again}"
        );
    }
    assert_eq!(judged, 31, "the corpus holds 31 apps/v1 DaemonSets");
    assert!(
        patched_count > 25,
        "only {patched_count} corpus objects were patched"
    );
}

#[test]
fn user_tolerations_are_kept_in_order() {
    for path in corpus_files() {
        let object = load(&path);
        if object["apiVersion"] != "apps/v1" {
            continue;
        }
        let Some(before) = object
            .pointer("/spec/template/spec/tolerations")
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mutated = response(&object, Endpoint::Mutate, "t");
        let Some(patch) = patch_of(&mutated) else {
            continue;
        };
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let after = patched["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .unwrap();
        assert!(after.len() >= before.len());
        for (old, new) in before.iter().zip(after) {
            let mut old = old.clone();
            // The one change allowed to a user's toleration: a standard one loses its
            // tolerationSeconds.
            if new.get("tolerationSeconds").is_none() {
                old.as_object_mut().map(|o| o.remove("tolerationSeconds"));
            }
            assert_eq!(&old, new, "{}", path.display());
        }
    }
}
