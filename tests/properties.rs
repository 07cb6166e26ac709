//! Property tests over generated DaemonSets: random labels, selectors, tolerations, quantities,
//! nulls and unknown fields.
//!
//! - nothing panics, whatever the object;
//! - a valid object's patch always applies, and touches only tolerations and resources;
//! - mutation is idempotent: the patched object asks for nothing more;
//! - validation agrees with an independent, straightforward model of LabelSelector matching;
//! - the server path (JSON text) and the manifest path (parsed value) agree.

mod common;

use daemonset_webhook::policy::patch::without_owned_fields;

use daemonset_webhook::policy::{self, Policy};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Label keys: mostly valid (some with a DNS prefix), a few not.
const KEYS: [&str; 8] = [
    "app",
    "tier",
    "app.kubernetes.io/name",
    "example.com/x.y",
    "k8s-app",
    "zone",
    "bad key",
    "-leading-dash",
];
const INVALID_KEYS: [&str; 2] = ["bad key", "-leading-dash"];
const VALUES: [&str; 6] = ["web", "db", "", "v1.2", "x_y", "not valid!"];
const INVALID_VALUES: [&str; 1] = ["not valid!"];
const OPERATORS: [&str; 6] = ["In", "NotIn", "Exists", "DoesNotExist", "in", "Equals"];
const QUANTITIES: [&str; 12] = [
    "100m", "1", "0.5", "2Gi", "512Mi", "1e3", "129M", "0", "lots", "1.5.5", "", "8Ei",
];
const TOLERATION_KEYS: [&str; 5] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/network-unavailable",
    "example.com/dedicated",
];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn labels() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(pick(&KEYS), pick(&VALUES), 0..4).prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect()
    })
}

fn requirement() -> impl Strategy<Value = Value> {
    (
        pick(&KEYS),
        pick(&OPERATORS),
        prop::collection::vec(pick(&VALUES), 0..3),
        any::<bool>(),
    )
        .prop_map(|(key, operator, values, omit_values)| {
            let mut r = json!({ "key": key, "operator": operator });
            if !omit_values {
                r["values"] = json!(values);
            }
            r
        })
}

/// `None`: spec.selector absent; else a selector that may be empty, null-valued or malformed.
fn selector() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => (
            prop::option::of(labels()),
            prop::option::of(prop::collection::vec(requirement(), 0..3)),
        )
            .prop_map(|(match_labels, expressions)| {
                let mut s = Map::new();
                if let Some(m) = match_labels {
                    s.insert("matchLabels".into(), Value::Object(m));
                }
                if let Some(e) = expressions {
                    s.insert("matchExpressions".into(), Value::Array(e));
                }
                Some(Value::Object(s))
            }),
    ]
}

fn quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => pick(&QUANTITIES).prop_map(Value::from),
        1 => (0u32..4).prop_map(Value::from),
    ]
}

fn resource_map() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        6 => prop::collection::btree_map(
            pick(&["cpu", "memory", "ephemeral-storage", "example.com/gpu"]),
            quantity(),
            0..3,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
    ]
}

fn container(name: String) -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(json!({ "name": name.clone() })),
        1 => Just(json!({ "name": name.clone(), "resources": null })),
        1 => Just(json!({ "name": name.clone(), "resources": {} })),
        5 => (prop::option::of(resource_map()), prop::option::of(resource_map()), any::<bool>())
            .prop_map(move |(limits, requests, unknown)| {
                let mut resources = Map::new();
                if let Some(l) = limits {
                    resources.insert("limits".into(), l);
                }
                if let Some(r) = requests {
                    resources.insert("requests".into(), r);
                }
                let mut c = json!({ "name": name.clone(), "image": "i", "resources": resources });
                if unknown {
                    c["futureField"] = json!({ "nested": [1, null] });
                }
                c
            }),
    ]
}

fn toleration() -> impl Strategy<Value = Value> {
    (
        pick(&TOLERATION_KEYS),
        pick(&["Exists", "Equal", ""]),
        pick(&["NoExecute", "NoSchedule", ""]),
        prop::option::of(0i64..600),
        any::<bool>(),
    )
        .prop_map(|(key, operator, effect, seconds, unknown)| {
            let mut t = json!({ "key": key });
            if !operator.is_empty() {
                t["operator"] = json!(operator);
            }
            if !effect.is_empty() {
                t["effect"] = json!(effect);
            }
            if let Some(s) = seconds {
                t["tolerationSeconds"] = json!(s);
            }
            if unknown {
                t["futureField"] = json!(true);
            }
            t
        })
}

fn tolerations() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => prop::collection::vec(toleration(), 0..5).prop_map(|v| Some(Value::Array(v))),
    ]
}

fn daemonset() -> impl Strategy<Value = Value> {
    (
        selector(),
        prop::option::of(labels()),
        tolerations(),
        prop::collection::vec(container("c".into()), 0..3),
        prop::option::of(prop::collection::vec(container("init".into()), 0..2)),
        prop::option::of(pick(&["Always", "Never", "OnFailure", "always", ""])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(selector, labels, tolerations, containers, init, restart, host_network, unknown)| {
                let mut pod = json!({ "containers": containers });
                if let Some(t) = tolerations {
                    pod["tolerations"] = t;
                }
                if let Some(i) = init {
                    pod["initContainers"] = json!(i);
                }
                if let Some(r) = restart {
                    pod["restartPolicy"] = json!(r);
                }
                if host_network {
                    pod["hostNetwork"] = json!(true);
                }
                let mut template = json!({ "spec": pod });
                if let Some(l) = labels {
                    template["metadata"] = json!({ "labels": l });
                }
                let mut spec = json!({ "template": template });
                if let Some(s) = selector {
                    spec["selector"] = s;
                }
                let mut ds = json!({
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "metadata": { "name": "generated", "namespace": "default" },
                    "spec": spec,
                });
                if unknown {
                    ds["spec"]["futureSpecField"] = json!({ "a": [1, 2, { "b": null }] });
                    ds["status"] = json!({ "numberReady": 1 });
                }
                ds
            },
        )
}

/// The straightforward model: `None` if the selector is malformed (so no match check), else
/// whether it selects `labels`. A missing or null selector selects nothing; an empty one all.
fn model_matches(selector: Option<&Value>, labels: &Map<String, Value>) -> Option<bool> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return Some(false);
    };
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let mut matches = true;
    if let Some(match_labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in match_labels {
            let value = value.as_str().unwrap_or_default();
            if INVALID_KEYS.contains(&key.as_str()) || INVALID_VALUES.contains(&value) {
                return None;
            }
            matches &= label(key) == Some(value);
        }
    }
    for requirement in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = requirement["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = requirement["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if INVALID_KEYS.contains(&key) || values.iter().any(|v| INVALID_VALUES.contains(v)) {
            return None;
        }
        let holds = match requirement["operator"].as_str().unwrap_or_default() {
            "In" if !values.is_empty() => label(key).is_some_and(|v| values.contains(&v)),
            "NotIn" if !values.is_empty() => label(key).is_none_or(|v| !values.contains(&v)),
            "Exists" if values.is_empty() => label(key).is_some(),
            "DoesNotExist" if values.is_empty() => label(key).is_none(),
            _ => return None,
        };
        matches &= holds;
    }
    Some(matches)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_policy_holds_its_promises(object in daemonset()) {
        let policy = Policy::default();
        let verdict = policy::review(&object, None, &policy);
        let text = serde_json::to_string(&object).unwrap();
        // The server path (the object decoded in the same pass as its AdmissionReview) reaches
        // the same verdict and the same patch as the manifest path.
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"DaemonSet"}},"operation":"CREATE","object":{text}}}}}"#
        );
        let reviewed = daemonset_webhook::admission::review(
            body.as_bytes(),
            daemonset_webhook::admission::Endpoint::Mutate,
            &policy,
        )
        .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(reviewed.record.allowed, verdict.allowed());
        let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
        let served_patch = common::decode_patch(&answer["response"])
            .map_or_else(|| json!([]), |p| serde_json::to_value(p).unwrap());
        prop_assert_eq!(
            served_patch,
            verdict.patch().to_value(),
            "{}", text
        );

        // Validation agrees with the model of selector matching.
        let selector = object.pointer("/spec/selector");
        let labels = object
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mismatch_reported = verdict
            .violations
            .iter()
            .any(|v| v.error.detail == "`selector` does not match template `labels`");
        match model_matches(selector, &labels) {
            Some(matches) => prop_assert_eq!(mismatch_reported, !matches, "{}", text),
            None => prop_assert!(!mismatch_reported, "malformed selector matched: {}", text),
        }

        if !verdict.allowed() {
            prop_assert!(verdict.patch().is_empty());
            return Ok(());
        }
        // The patch applies, changes only what the webhook owns, and is idempotent.
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &verdict.patch().to_json_patch())
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(without_owned_fields(&patched), without_owned_fields(&object));
        let again = policy::review(&patched, None, &policy);
        prop_assert!(again.allowed());
        prop_assert!(again.patch().is_empty(), "second review of {} asked for {:?}", patched, again.patch());
    }

    #[test]
    fn nothing_panics_on_arbitrary_json(text in "\\PC{0,200}") {
        let _ = policy::review_json(&text, None, &Policy::default());
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"DaemonSet"}},"operation":"CREATE","object":{text}}}}}"#
        );
        let _ = daemonset_webhook::admission::review(
            body.as_bytes(),
            daemonset_webhook::admission::Endpoint::Mutate,
            &Policy::default(),
        );
    }
}
