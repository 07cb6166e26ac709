//! Default limits and requests for containers and init containers that lack them, in the spirit
//! of a LimitRange's `default` and `defaultRequest`. Like a LimitRange, this can change a pod's
//! QoS class: a container with no resources becomes Burstable, and one whose requests are all
//! above the default limits gets limits equal to them (Guaranteed, if every container does).
//! It never turns Guaranteed Burstable: a limit without a request is left for the API server to
//! copy into the request.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::{AddOperation, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Container, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use serde_json::{Map, Value};

use super::field::{FieldError, Path, go_quote};
use super::quantity::Quantity;
use super::{Change, ChangeKind};

/// A configured default: the text as written (what the patch carries) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultQuantity {
    pub text: String,
    pub value: Quantity,
}

impl DefaultQuantity {
    pub fn parse(text: &str) -> Result<Self, super::quantity::ParseQuantityError> {
        Ok(Self {
            text: text.to_owned(),
            value: Quantity::parse(text)?,
        })
    }
}

/// Defaults per resource name (`cpu`, `memory`, ...). Every resource with a default request
/// has a default limit at least as large; [`crate::config`] enforces that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDefaults {
    /// `default` in LimitRange terms: the limit a container gets.
    pub limits: BTreeMap<String, DefaultQuantity>,
    /// `defaultRequest`: the request a container with neither gets.
    pub requests: BTreeMap<String, DefaultQuantity>,
}

impl Default for ResourceDefaults {
    /// limits cpu 500m, memory 512Mi; requests cpu 50m, memory 64Mi.
    fn default() -> Self {
        let map = |pairs: [(&str, &str); 2]| {
            pairs
                .into_iter()
                .map(|(name, text)| {
                    let value = DefaultQuantity::parse(text).expect("built-in default parses");
                    (name.to_owned(), value)
                })
                .collect()
        };
        Self {
            limits: map([("cpu", "500m"), ("memory", "512Mi")]),
            requests: map([("cpu", "50m"), ("memory", "64Mi")]),
        }
    }
}

/// The container lists a pod template has, with their JSON and field-path names.
pub const CONTAINER_LISTS: [(&str, &str); 2] = [
    ("containers", "container"),
    ("initContainers", "init container"),
];

/// Every limit and request of every container, and of the pod (`spec.resources`), must be a
/// quantity. The API server rejects a malformed one when it decodes the object; we name the
/// field.
pub fn validate(
    lists: &[(&str, &[Container])],
    pod: Option<&ResourceRequirements>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let base = Path::new("spec").child("template").child("spec");
    if let Some(resources) = pod {
        validate_requirements(resources, &base.child("resources"), &mut errors);
    }
    for (list, containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            if let Some(resources) = &container.resources {
                let path = base.child(list).index(i).child("resources");
                validate_requirements(resources, &path, &mut errors);
            }
        }
    }
    errors
}

fn validate_requirements(
    resources: &ResourceRequirements,
    path: &Path,
    errors: &mut Vec<FieldError>,
) {
    for (kind, map) in [
        ("limits", &resources.limits),
        ("requests", &resources.requests),
    ] {
        for (name, quantity) in map.iter().flatten() {
            // Quantity's UnmarshalJSON trims the string before it parses it.
            if let Err(error) = Quantity::parse(quantity.0.trim()) {
                errors.push(FieldError::invalid(
                    &path.child(kind).key(name),
                    go_quote(&quantity.0),
                    error.to_string(),
                ));
            }
        }
    }
}

/// The resources a pod-level `spec.resources` names. Its containers share that budget: a
/// container limit above the pod's, or container requests summing above the pod's, make the
/// pod invalid, so containers get no defaults for these.
pub fn pod_level_names(pod: Option<&ResourceRequirements>) -> BTreeSet<String> {
    pod.into_iter()
        .flat_map(|r| r.limits.iter().flatten().chain(r.requests.iter().flatten()))
        .map(|(name, _)| name.clone())
        .collect()
}

impl ResourceDefaults {
    /// These defaults but for the resources in `names`.
    pub fn without(&self, names: &BTreeSet<String>) -> Self {
        let keep = |map: &BTreeMap<String, DefaultQuantity>| {
            map.iter()
                .filter(|(name, _)| !names.contains(*name))
                .map(|(name, q)| (name.clone(), q.clone()))
                .collect()
        };
        Self {
            limits: keep(&self.limits),
            requests: keep(&self.requests),
        }
    }
}

/// Patches limits and requests into one container at `path` (its JSON Pointer):
/// - neither request nor limit: the default limit and the default request;
/// - a request but no limit: limit = max(default limit, request), so request ≤ limit holds;
/// - a limit but no request: nothing. Kubernetes defaults the request to the limit; inventing a
///   smaller one would turn a Guaranteed pod Burstable.
///
/// Quantities that do not parse are left to [`validate`].
pub fn mutate_container(
    container: &Container,
    label: &str,
    path: &PointerBuf,
    defaults: &ResourceDefaults,
    operations: &mut Vec<PatchOperation>,
    changes: &mut Vec<Change>,
) {
    let resources = container.resources.as_ref();
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let has = |map: Option<&BTreeMap<String, ApiQuantity>>, name: &str| {
        map.is_some_and(|m| m.contains_key(name))
    };

    let mut new_limits = Map::new();
    let mut new_requests = Map::new();
    for (name, default_limit) in &defaults.limits {
        if has(limits, name) {
            continue;
        }
        let request = requests.and_then(|m| m.get(name));
        match request {
            None => {
                new_limits.insert(name.clone(), Value::String(default_limit.text.clone()));
                let change = match defaults.requests.get(name) {
                    Some(default_request) => {
                        new_requests
                            .insert(name.clone(), Value::String(default_request.text.clone()));
                        Change {
                            kind: ChangeKind::LimitAndRequest,
                            subject: format!("{label} {name}"),
                            message: format!(
                                "{label}: set {name} limit {} and request {} (it had neither)",
                                default_limit.text, default_request.text
                            ),
                        }
                    }
                    None => Change {
                        kind: ChangeKind::Limit,
                        subject: format!("{label} {name}"),
                        message: format!(
                            "{label}: set {name} limit {} (it had neither limit nor request)",
                            default_limit.text
                        ),
                    },
                };
                changes.push(change);
            }
            Some(request) => {
                let request_text = request.0.trim();
                let Ok(request_value) = Quantity::parse(request_text) else {
                    continue;
                };
                let (limit, message) = if request_value > default_limit.value {
                    (
                        request_text.to_owned(),
                        format!(
                            "{label}: set {name} limit {request_text} equal to its request (above the default limit {})",
                            default_limit.text
                        ),
                    )
                } else {
                    (
                        default_limit.text.clone(),
                        format!(
                            "{label}: set {name} limit {} (it had a request of {request_text} but no limit)",
                            default_limit.text
                        ),
                    )
                };
                new_limits.insert(name.clone(), Value::String(limit));
                changes.push(Change {
                    kind: ChangeKind::Limit,
                    subject: format!("{label} {name}"),
                    message,
                });
            }
        }
    }

    let resources_path = path.with_trailing_token("resources");
    if resources.is_none() {
        let mut value = Map::new();
        if !new_limits.is_empty() {
            value.insert("limits".to_owned(), Value::Object(new_limits));
        }
        if !new_requests.is_empty() {
            value.insert("requests".to_owned(), Value::Object(new_requests));
        }
        if !value.is_empty() {
            operations.push(add(resources_path, Value::Object(value)));
        }
        return;
    }
    for (field, existing, new) in [
        ("limits", limits, new_limits),
        ("requests", requests, new_requests),
    ] {
        if new.is_empty() {
            continue;
        }
        let field_path = resources_path.with_trailing_token(field);
        if existing.is_none() {
            operations.push(add(field_path, Value::Object(new)));
        } else {
            for (name, value) in new {
                operations.push(add(field_path.with_trailing_token(name), value));
            }
        }
    }
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(value: Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    fn run_with(value: Value, defaults: &ResourceDefaults) -> (Value, Vec<Change>) {
        let mut operations = Vec::new();
        let mut changes = Vec::new();
        let path = PointerBuf::parse("/spec/template/spec/containers/0").unwrap();
        mutate_container(
            &container(value),
            "container \"c\"",
            &path,
            defaults,
            &mut operations,
            &mut changes,
        );
        (serde_json::to_value(operations).unwrap(), changes)
    }

    fn run(value: Value) -> (Value, Vec<Change>) {
        run_with(value, &ResourceDefaults::default())
    }

    const R: &str = "/spec/template/spec/containers/0/resources";

    #[test]
    fn no_resources_get_every_default_in_one_add() {
        let (ops, changes) = run(json!({ "name": "c" }));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": R, "value": {
                "limits": { "cpu": "500m", "memory": "512Mi" },
                "requests": { "cpu": "50m", "memory": "64Mi" },
            }}])
        );
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|c| c.kind == ChangeKind::LimitAndRequest)
        );
        assert_eq!(
            changes[0].message,
            "container \"c\": set cpu limit 500m and request 50m (it had neither)"
        );
    }

    #[test]
    fn null_resources_are_replaced_like_absent_ones() {
        let (ops, _) = run(json!({ "name": "c", "resources": null }));
        assert_eq!(ops[0]["path"], R);
    }

    #[test]
    fn empty_resources_get_limits_and_requests_added_inside() {
        let (ops, _) = run(json!({ "name": "c", "resources": {} }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "512Mi" } },
                { "op": "add", "path": format!("{R}/requests"), "value": { "cpu": "50m", "memory": "64Mi" } },
            ])
        );
        let (ops, _) = run(json!({ "name": "c", "resources": { "limits": null, "requests": {} } }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "512Mi" } },
                { "op": "add", "path": format!("{R}/requests/cpu"), "value": "50m" },
                { "op": "add", "path": format!("{R}/requests/memory"), "value": "64Mi" },
            ])
        );
    }

    #[test]
    fn a_request_without_limit_gets_the_larger_of_default_and_request() {
        let (ops, changes) = run(json!({ "name": "c", "resources": {
            "requests": { "cpu": "100m", "memory": "1Gi" }
        }}));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "1Gi" } }])
        );
        assert!(changes.iter().all(|c| c.kind == ChangeKind::Limit));
        assert_eq!(
            changes[1].message,
            "container \"c\": set memory limit 1Gi equal to its request (above the default limit 512Mi)"
        );
    }

    #[test]
    fn quantities_compare_by_value_not_text() {
        // 0.5 = 500m: not above the default, so the default's text is used.
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": "0.5", "memory": "536870912" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "500m", "memory": "512Mi" }));
        // 1e3m = 1 > 500m; 513Mi > 512Mi; 1G < 1Gi.
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": "1", "memory": "513Mi" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "1", "memory": "513Mi" }));
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": 2, "memory": "600M" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "2", "memory": "600M" }));
    }

    #[test]
    fn a_limit_without_request_is_left_alone() {
        let (ops, changes) = run(json!({ "name": "c", "resources": {
            "limits": { "cpu": "1", "memory": "128Mi" }
        }}));
        assert_eq!(ops, json!([]));
        assert!(changes.is_empty());
    }

    #[test]
    fn each_resource_is_judged_on_its_own() {
        // memory limit only (Kubernetes defaults its request to it); cpu has nothing.
        let (ops, _) =
            run(json!({ "name": "c", "resources": { "limits": { "memory": "128Mi" } } }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits/cpu"), "value": "500m" },
                { "op": "add", "path": format!("{R}/requests"), "value": { "cpu": "50m" } },
            ])
        );
    }

    #[test]
    fn complete_resources_ask_for_nothing() {
        let (ops, _) = run(json!({ "name": "c", "resources": {
            "limits": { "cpu": "1", "memory": "1Gi" },
            "requests": { "cpu": "1", "memory": "1Gi" },
            "claims": [{ "name": "gpu" }],
        }}));
        assert_eq!(ops, json!([]));
    }

    #[test]
    fn resource_names_are_escaped_in_the_pointer() {
        let mut defaults = ResourceDefaults::default();
        defaults.limits.clear();
        defaults.requests.clear();
        defaults.limits.insert(
            "example.com/gpu~x".to_owned(),
            DefaultQuantity::parse("1").unwrap(),
        );
        let (ops, _) = run_with(
            json!({ "name": "c", "resources": { "limits": { "cpu": "1" } } }),
            &defaults,
        );
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits/example.com~1gpu~0x"), "value": "1" }])
        );
    }

    #[test]
    fn a_default_limit_without_default_request_adds_only_the_limit() {
        let mut defaults = ResourceDefaults::default();
        defaults.requests.remove("memory");
        let (ops, changes) = run_with(json!({ "name": "c" }), &defaults);
        assert_eq!(
            ops[0]["value"],
            json!({ "limits": { "cpu": "500m", "memory": "512Mi" }, "requests": { "cpu": "50m" } })
        );
        assert_eq!(changes[1].kind, ChangeKind::Limit);
    }

    #[test]
    fn validate_names_every_malformed_quantity() {
        let c = container(json!({ "name": "c", "resources": {
            "limits": { "cpu": "lots", "memory": "1Gi" },
            "requests": { "example.com/x": "1.2.3" },
        }}));
        let init =
            container(json!({ "name": "i", "resources": { "limits": { "memory": "1 Gi" } } }));
        let errors: Vec<String> = validate(
            &[
                ("containers", std::slice::from_ref(&c)),
                ("initContainers", std::slice::from_ref(&init)),
            ],
            None,
        )
        .iter()
        .map(ToString::to_string)
        .collect();
        let regex = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
        assert_eq!(
            errors,
            [
                format!(
                    r#"spec.template.spec.containers[0].resources.limits[cpu]: Invalid value: "lots": {regex}"#
                ),
                format!(
                    r#"spec.template.spec.containers[0].resources.requests[example.com/x]: Invalid value: "1.2.3": {regex}"#
                ),
                format!(
                    r#"spec.template.spec.initContainers[0].resources.limits[memory]: Invalid value: "1 Gi": {regex}"#
                ),
            ]
        );
    }

    #[test]
    fn a_malformed_request_is_not_patched() {
        let (ops, _) = run(json!({ "name": "c", "resources": { "requests": { "cpu": "lots" } } }));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits"), "value": { "memory": "512Mi" } },
                   { "op": "add", "path": format!("{R}/requests/memory"), "value": "64Mi" }])
        );
    }
}
