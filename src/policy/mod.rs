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

/// Judges one DaemonSet, given as the JSON object the API server sent.
pub fn review(object: &Value, policy: &Policy) -> Verdict {
    let daemonset: DaemonSet = match serde_path_to_error::deserialize(object) {
        Ok(daemonset) => daemonset,
        Err(error) => {
            return Verdict {
                violations: vec![FieldError::type_invalid(
                    &field::Path::new(&error.path().to_string()),
                    format!("not readable as an apps/v1 DaemonSet: {}", error.inner()),
                )],
                ..Verdict::default()
            };
        }
    };

    let spec = &daemonset.spec;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let selector_given = object
        .pointer("/spec/selector")
        .is_some_and(|s| !s.is_null());
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
    let Some(pod) = pod.filter(|_| {
        object
            .pointer("/spec/template/spec")
            .is_some_and(Value::is_object)
    }) else {
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
