//! The policy: what makes a DaemonSet valid and what to patch into it. Pure functions of the
//! object and the configuration; no I/O, no async, no clock.
//!
//! The object is read twice over: as k8s-openapi's typed `DaemonSet` to decide, and as raw JSON
//! for where the typed view cannot tell (absent versus empty `spec.selector`) and for patch
//! paths. The patch only ever adds or removes what a rule owns, so fields our types do not know
//! (from a newer Kubernetes) are never touched.

pub mod field;
pub mod quantity;
pub mod resources;
pub mod restart_policy;
pub mod selector;
pub mod tolerations;

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use jsonptr::PointerBuf;
use k8s_openapi::api::apps::v1::DaemonSet;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

pub use field::{FieldError, invalid_message};
pub use resources::{DefaultQuantity, ResourceDefaults};

/// The configurable part of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub resources: ResourceDefaults,
}

/// What a change does, for warnings, audit annotations and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A standard daemon toleration appended.
    TolerationAdded,
    /// A toleration matching a standard one made exactly it (its tolerationSeconds dropped).
    TolerationUpdated,
    /// A limit added to a resource that had a request (or no default request exists).
    Limit,
    /// A limit and a request added to a resource that had neither.
    LimitAndRequest,
}

impl ChangeKind {
    /// The name reports and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::TolerationAdded => "TolerationAdded",
            ChangeKind::TolerationUpdated => "TolerationUpdated",
            ChangeKind::Limit => "LimitAdded",
            ChangeKind::LimitAndRequest => "LimitAndRequestAdded",
        }
    }
}

/// One change the patch makes, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// What changed, briefly: `node.kubernetes.io/not-ready:NoExecute`, `container "app" cpu`.
    pub subject: String,
    /// One line for `response.warnings`.
    pub message: String,
}

/// The policy's judgement of one DaemonSet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Why the object is invalid; empty when it is valid.
    pub violations: Vec<FieldError>,
    /// The JSON Patch (RFC 6902) that completes a valid object; empty when nothing is missing.
    pub operations: Vec<PatchOperation>,
    /// The changes the operations make, one per thing changed.
    pub changes: Vec<Change>,
}

/// Kubernetes' limits on admission warnings.
pub const MAX_WARNING_LENGTH: usize = 256;
pub const MAX_WARNINGS_TOTAL: usize = 4096;

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn patch(&self) -> &[PatchOperation] {
        &self.operations
    }

    /// One warning per change, each within 256 characters and all within 4096; changes beyond
    /// that are counted in a last line rather than cut off silently.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut total = 0;
        for (i, change) in self.changes.iter().enumerate() {
            let line = truncate(&change.message, MAX_WARNING_LENGTH);
            let remaining = self.changes.len() - i;
            // Keep room for the summary line should a later change not fit.
            if total + line.len() + 64 > MAX_WARNINGS_TOTAL && remaining > 1 {
                warnings.push(format!(
                    "... and {remaining} more changes; the patch has them all"
                ));
                break;
            }
            total += line.len();
            warnings.push(line);
        }
        warnings
    }

    /// A summary of the changes by kind: `tolerations-added`, `tolerations-updated`,
    /// `limits-added`, `requests-added`, each listing what changed.
    pub fn audit_annotations(&self) -> BTreeMap<String, String> {
        let mut groups: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
        for change in &self.changes {
            let keys: &[&'static str] = match change.kind {
                ChangeKind::TolerationAdded => &["tolerations-added"],
                ChangeKind::TolerationUpdated => &["tolerations-updated"],
                ChangeKind::Limit => &["limits-added"],
                ChangeKind::LimitAndRequest => &["limits-added", "requests-added"],
            };
            for key in keys {
                groups.entry(key).or_default().push(&change.subject);
            }
        }
        groups
            .into_iter()
            .map(|(key, subjects)| (key.to_owned(), truncate(&subjects.join(", "), 1024)))
            .collect()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - "...".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Judges one DaemonSet given as a JSON value (a parsed manifest).
pub fn review(object: &Value, policy: &Policy) -> Verdict {
    judge(
        serde_path_to_error::deserialize(object),
        ObjectShape::deserialize(object).unwrap_or_default(),
        policy,
    )
}

/// Judges one DaemonSet given as JSON text, as an AdmissionReview carries it. No tree of the
/// whole object is built: the typed view skips fields it does not know without allocating, so
/// a huge unknown field costs time, not memory.
pub fn review_json(object: &str, policy: &Policy) -> Verdict {
    judge(
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(object)),
        serde_json::from_str(object).unwrap_or_default(),
        policy,
    )
}

/// What the typed view cannot tell: k8s-openapi makes an absent `spec.selector` an empty one,
/// and a patch may only add under a pod spec that exists as an object.
#[derive(Debug, Default, Deserialize)]
struct ObjectShape {
    #[serde(default)]
    spec: Option<SpecShape>,
}

#[derive(Debug, Default, Deserialize)]
struct SpecShape {
    #[serde(default)]
    selector: Given,
    #[serde(default)]
    template: Option<TemplateShape>,
}

#[derive(Debug, Default, Deserialize)]
struct TemplateShape {
    #[serde(default)]
    spec: Given,
}

/// Whether a field was absent, null, an object, or something else. Its content is skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Given {
    #[default]
    Absent,
    Null,
    Object,
    Other,
}

impl<'de> Deserialize<'de> for Given {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Given;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Given, E> {
                Ok(Given::Null)
            }
            fn visit_none<E>(self) -> Result<Given, E> {
                Ok(Given::Null)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Given, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Given::Object)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Given, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Given::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Given, E> {
                Ok(Given::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Given, E> {
                Ok(Given::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Given, E> {
                Ok(Given::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Given, E> {
                Ok(Given::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Given, E> {
                Ok(Given::Other)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// serde_json's message without " at line L column C": the position in the API server's
/// serialization of the object means nothing to the person who wrote it; the field path does.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    message
        .strip_suffix(&position)
        .map_or_else(|| message.clone(), str::to_owned)
}

fn judge(
    decoded: Result<DaemonSet, serde_path_to_error::Error<serde_json::Error>>,
    shape: ObjectShape,
    policy: &Policy,
) -> Verdict {
    let daemonset = match decoded {
        Ok(daemonset) => daemonset,
        Err(error) => {
            return Verdict {
                violations: vec![FieldError::type_invalid(
                    &field::Path::new(&error.path().to_string()),
                    format!(
                        "not readable as an apps/v1 DaemonSet: {}",
                        without_position(error.inner())
                    ),
                )],
                ..Verdict::default()
            };
        }
    };
    let spec_shape = shape.spec.unwrap_or_default();
    let selector_given = matches!(spec_shape.selector, Given::Object | Given::Other);
    let pod_spec_given = spec_shape.template.is_some_and(|t| t.spec == Given::Object);

    let spec = &daemonset.spec;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let pod = spec.template.spec.as_ref();
    let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
    let init_containers = pod
        .and_then(|p| p.init_containers.as_deref())
        .unwrap_or_default();
    let lists = [
        (resources::CONTAINER_LISTS[0], containers),
        (resources::CONTAINER_LISTS[1], init_containers),
    ];

    let mut verdict = Verdict::default();
    verdict.violations.extend(selector::validate(
        selector_given.then_some(&spec.selector),
        template_labels,
    ));
    verdict.violations.extend(restart_policy::validate(
        pod.and_then(|p| p.restart_policy.as_deref()),
    ));
    verdict.violations.extend(resources::validate(
        &lists.map(|((list, _), containers)| (list, containers)),
    ));
    if !verdict.violations.is_empty() {
        return verdict;
    }

    // Without a pod spec there is nowhere to patch; the API server rejects such an object for
    // its missing containers anyway.
    let Some(pod) = pod.filter(|_| pod_spec_given) else {
        return verdict;
    };
    let pod_path = PointerBuf::from_tokens(["spec", "template", "spec"]);
    tolerations::mutate(
        pod.tolerations.as_deref(),
        pod.host_network == Some(true),
        &pod_path.with_trailing_token("tolerations"),
        &mut verdict.operations,
        &mut verdict.changes,
    );
    for ((list, noun), containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            let label = if container.name.is_empty() {
                format!("{list}[{i}]")
            } else {
                format!("{noun} {:?}", container.name)
            };
            resources::mutate_container(
                container,
                &label,
                &pod_path
                    .with_trailing_token(list)
                    .with_trailing_token(i.to_string()),
                &policy.resources,
                &mut verdict.operations,
                &mut verdict.changes,
            );
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn daemonset(pod_spec: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": { "name": "agent", "namespace": "kube-system", "labels": { "app": "agent" } },
            "spec": {
                "selector": { "matchLabels": { "app.kubernetes.io/name": "agent" } },
                "template": {
                    "metadata": { "labels": { "app.kubernetes.io/name": "agent", "tier": "node" } },
                    "spec": pod_spec,
                },
            },
        })
    }

    fn apply(object: &Value, verdict: &Verdict) -> Value {
        let mut patched = object.clone();
        json_patch::patch(&mut patched, verdict.patch()).expect("patch applies");
        patched
    }

    /// Removes what the policy may change, so the rest can be compared.
    fn without_owned_fields(mut object: Value) -> Value {
        if let Some(pod) = object
            .pointer_mut("/spec/template/spec")
            .and_then(Value::as_object_mut)
        {
            pod.remove("tolerations");
            for list in ["containers", "initContainers"] {
                for c in pod
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    c.as_object_mut().unwrap().remove("resources");
                }
            }
        }
        object
    }

    #[test]
    fn a_plain_daemonset_is_completed_and_then_left_alone() {
        let object = daemonset(json!({
            "initContainers": [{ "name": "init", "image": "busybox" }],
            "containers": [
                { "name": "agent", "image": "agent:1", "resources": { "requests": { "memory": "1Gi" } } },
                { "name": "sidecar", "image": "proxy:1", "resources": {} },
            ],
        }));
        let policy = Policy::default();
        let verdict = review(&object, &policy);
        assert!(verdict.allowed());
        let patched = apply(&object, &verdict);

        let typed: DaemonSet = serde_json::from_value(patched.clone()).unwrap();
        let pod = typed.spec.template.spec.unwrap();
        assert_eq!(pod.tolerations.unwrap().len(), 6);
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
            assert!(
                limits.contains_key("cpu") && limits.contains_key("memory"),
                "{}",
                c.name
            );
        }
        assert_eq!(
            patched.pointer("/spec/template/spec/containers/0/resources"),
            Some(
                &json!({ "requests": { "memory": "1Gi", "cpu": "50m" }, "limits": { "cpu": "500m", "memory": "1Gi" } })
            )
        );
        assert_eq!(
            without_owned_fields(patched.clone()),
            without_owned_fields(object)
        );

        let again = review(&patched, &policy);
        assert!(again.allowed());
        assert!(again.operations.is_empty(), "{:?}", again.operations);
        assert!(again.changes.is_empty());
    }

    #[test]
    fn fields_unknown_to_our_types_survive() {
        let mut object = daemonset(json!({
            "futurePodField": { "x": 1 },
            "containers": [{ "name": "c", "futureContainerField": [1, 2], "resources": { "futureResourceField": true } }],
            "tolerations": [{ "key": "k", "operator": "Exists", "futureTolerationField": "y" }],
        }));
        object["spec"]["futureSpecField"] = json!("keep me");
        object["metadata"]["futureMetadataField"] = json!({ "a": "b" });
        object["status"] = json!({ "numberReady": 3 });
        let verdict = review(&object, &Policy::default());
        let patched = apply(&object, &verdict);
        assert_eq!(patched["spec"]["futureSpecField"], "keep me");
        assert_eq!(
            patched["metadata"]["futureMetadataField"],
            json!({ "a": "b" })
        );
        assert_eq!(patched["status"], json!({ "numberReady": 3 }));
        let pod = &patched["spec"]["template"]["spec"];
        assert_eq!(pod["futurePodField"], json!({ "x": 1 }));
        assert_eq!(pod["containers"][0]["futureContainerField"], json!([1, 2]));
        assert_eq!(
            pod["containers"][0]["resources"]["futureResourceField"],
            json!(true)
        );
        assert_eq!(pod["tolerations"][0]["futureTolerationField"], "y");
        assert!(review(&patched, &Policy::default()).operations.is_empty());
    }

    #[test]
    fn an_invalid_daemonset_gets_every_violation_and_no_patch() {
        let mut object = daemonset(json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "c", "resources": { "limits": { "cpu": "x" } } }],
        }));
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "other" } });
        let verdict = review(&object, &Policy::default());
        assert!(!verdict.allowed());
        assert!(verdict.operations.is_empty());
        let fields: Vec<&str> = verdict
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.restartPolicy",
                "spec.template.spec.containers[0].resources.limits[cpu]",
            ]
        );
        let message = invalid_message("agent", &verdict.violations);
        assert!(message.starts_with(r#"DaemonSet.apps "agent" is invalid: [spec.template.metadata.labels: Invalid value: {"app.kubernetes.io/name":"agent","tier":"node"}: `selector` does not match template `labels`, spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always", "#), "{message}");
    }

    #[test]
    fn an_object_our_types_cannot_read_is_denied_naming_the_field() {
        let object = daemonset(json!({ "containers": "not a list" }));
        let verdict = review(&object, &Policy::default());
        assert_eq!(verdict.violations.len(), 1);
        let message = verdict.violations[0].to_string();
        assert!(message.starts_with("spec.template.spec.containers: Invalid value: not readable as an apps/v1 DaemonSet: invalid type: string"), "{message}");
    }

    #[test]
    fn without_a_pod_spec_nothing_is_patched() {
        let mut object = daemonset(json!(null));
        object["spec"]["template"]
            .as_object_mut()
            .unwrap()
            .remove("spec");
        let verdict = review(&object, &Policy::default());
        assert!(verdict.allowed());
        assert!(verdict.operations.is_empty());
    }

    #[test]
    fn host_network_pods_also_tolerate_network_unavailable() {
        let object =
            daemonset(json!({ "hostNetwork": true, "tolerations": null, "containers": [] }));
        let verdict = review(&object, &Policy::default());
        let patched = apply(&object, &verdict);
        let keys: Vec<&str> = patched["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys.len(), 7);
        assert_eq!(keys[6], "node.kubernetes.io/network-unavailable");
    }

    #[test]
    fn warnings_stay_within_the_api_servers_limits() {
        let containers: Vec<Value> = (0..60)
            .map(|i| json!({ "name": format!("container-with-a-rather-long-name-{i:03}") }))
            .collect();
        let object = daemonset(json!({ "containers": containers }));
        let verdict = review(&object, &Policy::default());
        assert_eq!(verdict.changes.len(), 6 + 120);
        let warnings = verdict.warnings();
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_TOTAL, "{total}");
        assert!(
            warnings
                .iter()
                .all(|w| w.len() <= MAX_WARNING_LENGTH && !w.contains('\n'))
        );
        let last = warnings.last().unwrap();
        assert!(
            last.starts_with("... and ") && last.ends_with("more changes; the patch has them all"),
            "{last}"
        );
        let shown = warnings.len() - 1;
        assert!(
            last.contains(&format!("and {} more", verdict.changes.len() - shown)),
            "{last}"
        );
    }

    #[test]
    fn audit_annotations_summarize_by_kind() {
        let object = daemonset(json!({
            "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30 }],
            "containers": [{ "name": "a", "resources": { "requests": { "cpu": "1" } } }],
        }));
        let annotations = review(&object, &Policy::default()).audit_annotations();
        assert_eq!(
            annotations["tolerations-updated"],
            "node.kubernetes.io/not-ready:NoExecute"
        );
        assert!(
            annotations["tolerations-added"]
                .starts_with("node.kubernetes.io/unreachable:NoExecute, ")
        );
        assert_eq!(
            annotations["limits-added"],
            "container \"a\" cpu, container \"a\" memory"
        );
        assert_eq!(annotations["requests-added"], "container \"a\" memory");
        for key in annotations.keys() {
            assert!(
                selector::label_key_errors(key).is_empty() && !key.contains('/'),
                "{key}"
            );
        }
    }

    #[test]
    fn value_and_text_entry_points_agree() {
        let mut no_selector = daemonset(json!({ "containers": [{ "name": "c" }] }));
        no_selector["spec"]
            .as_object_mut()
            .unwrap()
            .remove("selector");
        let mut null_selector = no_selector.clone();
        null_selector["spec"]["selector"] = Value::Null;
        let mut null_pod_spec = daemonset(Value::Null);
        null_pod_spec["spec"]["template"]["spec"] = Value::Null;
        for object in [
            daemonset(json!({ "containers": [{ "name": "c" }], "hostNetwork": true })),
            daemonset(json!({ "containers": "not a list" })),
            daemonset(json!({ "restartPolicy": "Never", "containers": [] })),
            no_selector,
            null_selector,
            null_pod_spec,
            json!({}),
        ] {
            let text = serde_json::to_string(&object).unwrap();
            assert_eq!(
                review(&object, &Policy::default()),
                review_json(&text, &Policy::default()),
                "{text}"
            );
        }
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let cut = truncate(&"é".repeat(200), 256);
        assert!(cut.len() <= 256 && cut.ends_with("..."));
    }
}
