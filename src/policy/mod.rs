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
pub use tolerations::RequiredToleration;

/// The configurable part of the policy: what the policy file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rules: Rules,
    /// Tolerations every DaemonSet must carry besides the controller's.
    pub extra_tolerations: Vec<RequiredToleration>,
    pub resources: ResourceDefaults,
    /// Whether init containers (sidecars among them) get default resources too.
    pub init_containers: bool,
    pub exemptions: Exemptions,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rules: Rules::default(),
            extra_tolerations: Vec::new(),
            resources: ResourceDefaults::default(),
            init_containers: true,
            exemptions: Exemptions::default(),
        }
    }
}

/// What a rule does when it applies, as ValidatingAdmissionPolicy's Deny/Warn actions. Spelled
/// in the policy file as [`Mode::as_str`] gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny (validation rules) or patch (mutation rules).
    #[default]
    Enforce,
    /// Allow unchanged, but say in warnings and audit annotations what enforce would do.
    Warn,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}

/// The policy's rules. Each is one module of its own; the policy file, warnings, metrics and
/// logs name them by [`Rule::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// `spec.selector`: well-formed, not empty, selecting the template's labels.
    Selector,
    /// `spec.template.spec.restartPolicy`: `Always`.
    RestartPolicy,
    /// The tolerations daemon pods get.
    Tolerations,
    /// Default limits and requests, and well-formed quantities.
    Resources,
}

impl Rule {
    pub const ALL: [Rule; 4] = [
        Rule::Selector,
        Rule::RestartPolicy,
        Rule::Tolerations,
        Rule::Resources,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Selector => "selector",
            Rule::RestartPolicy => "restartPolicy",
            Rule::Tolerations => "tolerations",
            Rule::Resources => "resources",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Each rule's mode; every rule enforces unless told otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules([Mode; Rule::ALL.len()]);

impl Rules {
    pub fn mode(&self, rule: Rule) -> Mode {
        self.0[rule as usize]
    }

    pub fn set(&mut self, rule: Rule, mode: Mode) {
        self.0[rule as usize] = mode;
    }

    /// Every rule with its mode, in [`Rule::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Rule, Mode)> + '_ {
        Rule::ALL.into_iter().map(|rule| (rule, self.mode(rule)))
    }
}

/// Objects the policy leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// Namespaces whose DaemonSets are allowed untouched.
    pub namespaces: std::collections::BTreeSet<String>,
}

/// A DaemonSet annotated `daemonset-webhook.io/exclude: "true"` is allowed untouched.
pub const EXCLUDE_ANNOTATION: &str = "daemonset-webhook.io/exclude";

/// Why the policy leaves a DaemonSet alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exemption {
    /// Annotated [`EXCLUDE_ANNOTATION`]`: "true"`.
    Annotation,
    /// In a namespace the policy file exempts.
    Namespace(String),
}

impl Exemption {
    /// The reason as metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            Exemption::Annotation => "annotation",
            Exemption::Namespace(_) => "namespace",
        }
    }
}

impl std::fmt::Display for Exemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exemption::Annotation => write!(f, "annotation {EXCLUDE_ANNOTATION}=true"),
            Exemption::Namespace(namespace) => {
                write!(f, "namespace {namespace} is exempt in the policy file")
            }
        }
    }
}

/// A violation of a rule, or (`rule: None`) an object that could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Option<Rule>,
    pub error: FieldError,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// What the policy decided about a DaemonSet as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed untouched, whatever it holds.
    Exempt(&'a Exemption),
    /// Invalid: denied, never patched.
    Deny,
    /// Valid; the patch completes it.
    Patch,
    /// Valid and complete.
    Allow,
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
    /// The rule that makes changes of this kind.
    pub fn rule(self) -> Rule {
        match self {
            ChangeKind::TolerationAdded | ChangeKind::TolerationUpdated => Rule::Tolerations,
            ChangeKind::Limit | ChangeKind::LimitAndRequest => Rule::Resources,
        }
    }

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
    pub violations: Vec<Violation>,
    /// The JSON Patch (RFC 6902) that completes a valid object; empty when nothing is missing.
    pub operations: Vec<PatchOperation>,
    /// The changes the operations make, one per thing changed.
    pub changes: Vec<Change>,
    /// Violations of rules in `warn` mode: reported, not denied.
    pub warned_violations: Vec<Violation>,
    /// Changes rules in `warn` mode would make: reported, not patched.
    pub warned_changes: Vec<Change>,
    /// Why the object is exempt from the policy; then nothing else is set.
    pub exemption: Option<Exemption>,
}

/// Kubernetes' limits on admission warnings.
pub const MAX_WARNING_LENGTH: usize = 256;
pub const MAX_WARNINGS_TOTAL: usize = 4096;

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn decision(&self) -> Decision<'_> {
        match &self.exemption {
            Some(exemption) => Decision::Exempt(exemption),
            None if !self.allowed() => Decision::Deny,
            None if !self.operations.is_empty() => Decision::Patch,
            None => Decision::Allow,
        }
    }

    /// The violations' field errors, in order.
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        self.violations.iter().map(|v| &v.error)
    }

    pub fn patch(&self) -> &[PatchOperation] {
        &self.operations
    }

    /// The lines for `response.warnings`: the exemption, warned violations, and (with
    /// `mutations`) the changes made and those only warned about. Each within 256 characters
    /// and all within 4096; lines beyond that are counted in a last line, not dropped silently.
    pub fn warnings(&self, mutations: bool) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        if let Some(exemption) = &self.exemption {
            lines.push(format!(
                "daemonset-webhook: exempt ({exemption}); allowed untouched"
            ));
        }
        lines.extend(
            self.warned_violations
                .iter()
                .map(|v| format!("would be denied (policy mode warn): {v}")),
        );
        if mutations {
            lines.extend(self.changes.iter().map(|c| c.message.clone()));
            lines.extend(
                self.warned_changes
                    .iter()
                    .map(|c| format!("not applied (policy mode warn): {}", c.message)),
            );
        }
        fit_warnings(lines)
    }

    /// A summary of the changes by kind: `tolerations-added`, `tolerations-updated`,
    /// `limits-added`, `requests-added`, each listing what changed.
    pub fn audit_annotations(&self, mutations: bool) -> BTreeMap<String, String> {
        let mut groups: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
        if mutations {
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
            for change in &self.warned_changes {
                groups
                    .entry("warned-changes")
                    .or_default()
                    .push(&change.subject);
            }
        }
        for violation in &self.violations {
            groups
                .entry("violations")
                .or_default()
                .push(&violation.error.field);
        }
        for violation in &self.warned_violations {
            groups
                .entry("warned-violations")
                .or_default()
                .push(&violation.error.field);
        }
        let exemption = self.exemption.as_ref().map(ToString::to_string);
        if let Some(exemption) = &exemption {
            groups.entry("exempt").or_default().push(exemption);
        }
        groups
            .into_iter()
            .map(|(key, subjects)| (key.to_owned(), truncate(&subjects.join(", "), 1024)))
            .collect()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
/// Room kept for the summary line, longer than any it can be.
const SUMMARY_RESERVE: usize = 96;

/// Bounds `lines` as the API server bounds `response.warnings`: each line on one line and within
/// 256 bytes, all within 4096. Lines that do not fit are counted in a last line, never dropped
/// silently.
fn fit_warnings(lines: Vec<String>) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut total = 0;
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let line = truncate(&one_line(&line), MAX_WARNING_LENGTH);
        let remaining = count - i;
        // The last line needs no room after it; any other keeps room for the summary.
        let reserve = if remaining > 1 { SUMMARY_RESERVE } else { 0 };
        if total + line.len() + reserve > MAX_WARNINGS_TOTAL {
            warnings.push(format!(
                "... and {remaining} more warnings; the patch and audit annotations have every change"
            ));
            break;
        }
        total += line.len();
        warnings.push(line);
    }
    warnings
}

/// Escapes control characters (a map key may hold a newline), since a warning becomes an HTTP
/// `Warning` header and one line of `kubectl` output.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

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

/// Judges one DaemonSet given as a JSON value (a parsed manifest). `namespace` is the request's
/// namespace where the object does not say.
pub fn review(object: &Value, namespace: Option<&str>, policy: &Policy) -> Verdict {
    judge(
        serde_path_to_error::deserialize(object),
        ObjectShape::deserialize(object).unwrap_or_default(),
        namespace,
        policy,
    )
}

/// Judges one DaemonSet given as JSON text, as an AdmissionReview carries it. No tree of the
/// whole object is built: the typed view skips fields it does not know without allocating, so
/// a huge unknown field costs time, not memory.
///
/// Text that is not JSON at all (a bad escape, say, which skipping scanners let through) is an
/// error rather than a verdict: it is the request that is malformed, not the DaemonSet.
pub fn review_json(
    object: &str,
    namespace: Option<&str>,
    policy: &Policy,
) -> Result<Verdict, serde_json::Error> {
    let decoded = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(object));
    if let Err(error) = &decoded {
        let inner = error.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Err(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {inner}", error.path()),
            )));
        }
    }
    Ok(judge(
        decoded,
        serde_json::from_str(object).unwrap_or_default(),
        namespace,
        policy,
    ))
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
    namespace: Option<&str>,
    policy: &Policy,
) -> Verdict {
    let daemonset = match decoded {
        Ok(daemonset) => daemonset,
        Err(error) => {
            return Verdict {
                violations: vec![Violation {
                    rule: None,
                    error: FieldError::type_invalid(
                        &field::Path::new(&error.path().to_string()),
                        format!(
                            "not readable as an apps/v1 DaemonSet: {}",
                            without_position(error.inner())
                        ),
                    ),
                }],
                ..Verdict::default()
            };
        }
    };
    if let Some(exemption) = exemption(&daemonset, namespace, &policy.exemptions) {
        return Verdict {
            exemption: Some(exemption),
            ..Verdict::default()
        };
    }
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
        .filter(|_| policy.init_containers)
        .unwrap_or_default();
    let lists = [
        (resources::CONTAINER_LISTS[0], containers),
        (resources::CONTAINER_LISTS[1], init_containers),
    ];

    let mut verdict = Verdict::default();
    let rules = policy.rules;
    let mut judged = |rule: Rule, errors: Vec<FieldError>| {
        let violations = errors.into_iter().map(|error| Violation {
            rule: Some(rule),
            error,
        });
        match rules.mode(rule) {
            Mode::Enforce => verdict.violations.extend(violations),
            Mode::Warn => verdict.warned_violations.extend(violations),
            Mode::Off => {}
        }
    };
    judged(
        Rule::Selector,
        selector::validate(selector_given.then_some(&spec.selector), template_labels),
    );
    judged(
        Rule::RestartPolicy,
        restart_policy::validate(pod.and_then(|p| p.restart_policy.as_deref())),
    );
    judged(
        Rule::Resources,
        resources::validate(
            &lists.map(|((list, _), containers)| (list, containers)),
            pod.and_then(|p| p.resources.as_ref()),
        ),
    );
    if !verdict.violations.is_empty() {
        return verdict;
    }

    // Without a pod spec there is nowhere to patch; the API server rejects such an object for
    // its missing containers anyway.
    let Some(pod) = pod.filter(|_| pod_spec_given) else {
        return verdict;
    };
    let pod_path = PointerBuf::from_tokens(["spec", "template", "spec"]);
    let mut patched = |rule: Rule, operations: Vec<PatchOperation>, changes: Vec<Change>| {
        debug_assert!(changes.iter().all(|c| c.kind.rule() == rule));
        match rules.mode(rule) {
            Mode::Enforce => {
                verdict.operations.extend(operations);
                verdict.changes.extend(changes);
            }
            Mode::Warn => verdict.warned_changes.extend(changes),
            Mode::Off => {}
        }
    };
    if rules.mode(Rule::Tolerations) != Mode::Off {
        // An extra toleration the controller's list (or the policy, twice) already has is
        // required once: added one after another, the second would match the first.
        let mut required: Vec<RequiredToleration> = Vec::new();
        for toleration in tolerations::daemon_tolerations(pod.host_network == Some(true))
            .chain(policy.extra_tolerations.iter().cloned())
        {
            if !required.iter().any(|r| r.same_toleration(&toleration)) {
                required.push(toleration);
            }
        }
        let (mut operations, mut changes) = (Vec::new(), Vec::new());
        tolerations::mutate(
            pod.tolerations.as_deref(),
            &required,
            &pod_path.with_trailing_token("tolerations"),
            &mut operations,
            &mut changes,
        );
        patched(Rule::Tolerations, operations, changes);
    }
    if rules.mode(Rule::Resources) != Mode::Off {
        let (mut operations, mut changes) = (Vec::new(), Vec::new());
        let pod_level = resources::pod_level_names(pod.resources.as_ref());
        let defaults = if pod_level.is_empty() {
            std::borrow::Cow::Borrowed(&policy.resources)
        } else {
            std::borrow::Cow::Owned(policy.resources.without(&pod_level))
        };
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
                    &defaults,
                    &mut operations,
                    &mut changes,
                );
            }
        }
        patched(Rule::Resources, operations, changes);
    }
    verdict
}

/// Why the policy leaves this DaemonSet alone, if it does.
fn exemption(
    daemonset: &DaemonSet,
    request_namespace: Option<&str>,
    exemptions: &Exemptions,
) -> Option<Exemption> {
    let metadata = &daemonset.metadata;
    let annotated = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXCLUDE_ANNOTATION))
        .is_some_and(|v| v == "true");
    if annotated {
        return Some(Exemption::Annotation);
    }
    let namespace = metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(request_namespace)?;
    exemptions
        .namespaces
        .contains(namespace)
        .then(|| Exemption::Namespace(namespace.to_owned()))
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
        let verdict = review(&object, None, &policy);
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

        let again = review(&patched, None, &policy);
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
        let verdict = review(&object, None, &Policy::default());
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
        assert!(
            review(&patched, None, &Policy::default())
                .operations
                .is_empty()
        );
    }

    #[test]
    fn an_invalid_daemonset_gets_every_violation_and_no_patch() {
        let mut object = daemonset(json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "c", "resources": { "limits": { "cpu": "x" } } }],
        }));
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "other" } });
        let verdict = review(&object, None, &Policy::default());
        assert!(!verdict.allowed());
        assert!(verdict.operations.is_empty());
        let fields: Vec<&str> = verdict
            .violations
            .iter()
            .map(|v| v.error.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.restartPolicy",
                "spec.template.spec.containers[0].resources.limits[cpu]",
            ]
        );
        let message = invalid_message("agent", verdict.errors());
        assert!(message.starts_with(r#"DaemonSet.apps "agent" is invalid: [spec.template.metadata.labels: Invalid value: {"app.kubernetes.io/name":"agent","tier":"node"}: `selector` does not match template `labels`, spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always", "#), "{message}");
    }

    #[test]
    fn an_object_our_types_cannot_read_is_denied_naming_the_field() {
        let object = daemonset(json!({ "containers": "not a list" }));
        let verdict = review(&object, None, &Policy::default());
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
        let verdict = review(&object, None, &Policy::default());
        assert!(verdict.allowed());
        assert!(verdict.operations.is_empty());
    }

    #[test]
    fn host_network_pods_also_tolerate_network_unavailable() {
        let object =
            daemonset(json!({ "hostNetwork": true, "tolerations": null, "containers": [] }));
        let verdict = review(&object, None, &Policy::default());
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
    fn pod_level_resources_are_the_containers_shared_budget() {
        // spec.resources (pod-level resources) names cpu: no container gets a cpu default,
        // which could exceed the pod's limit or sum above its request; memory is still defaulted.
        let object = daemonset(json!({
            "resources": { "limits": { "cpu": "200m" } },
            "containers": [{ "name": "a" }, { "name": "b", "resources": { "requests": { "memory": "1Gi" } } }],
        }));
        let verdict = review(&object, None, &Policy::default());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        let patched = apply(&object, &verdict);
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[0]["resources"],
            json!({ "limits": { "memory": "512Mi" }, "requests": { "memory": "64Mi" } })
        );
        assert_eq!(
            containers[1]["resources"],
            json!({ "limits": { "memory": "1Gi" }, "requests": { "memory": "1Gi" } })
        );
        assert_eq!(
            patched["spec"]["template"]["spec"]["resources"],
            json!({ "limits": { "cpu": "200m" } })
        );
        // Both resources at pod level: nothing to default.
        let object = daemonset(json!({
            "resources": { "requests": { "cpu": "100m" }, "limits": { "memory": "256Mi" } },
            "containers": [{ "name": "a" }],
        }));
        let verdict = review(&object, None, &Policy::default());
        assert!(
            verdict
                .changes
                .iter()
                .all(|c| !matches!(c.kind, ChangeKind::Limit | ChangeKind::LimitAndRequest))
        );
        assert!(
            apply(&object, &verdict)["spec"]["template"]["spec"]["containers"][0]
                .get("resources")
                .is_none()
        );
    }

    #[test]
    fn pod_level_quantities_must_parse_and_may_be_padded() {
        let object = daemonset(json!({
            "resources": { "limits": { "cpu": "lots", "memory": " 1Gi " } },
            "containers": [{ "name": "a", "resources": { "requests": { "cpu": " 100m" } } }],
        }));
        let verdict = review(&object, None, &Policy::default());
        let messages: Vec<String> = verdict.violations.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with(r#"spec.template.spec.resources.limits[cpu]: Invalid value: "lots": quantities must match"#),
            "{}",
            messages[0]
        );
        // A padded request (Kubernetes trims it) gets a limit written without the padding.
        let object = daemonset(json!({
            "containers": [{ "name": "a", "resources": { "requests": { "cpu": " 1", "memory": "1Mi" } } }],
        }));
        let verdict = review(&object, None, &Policy::default());
        let patched = apply(&object, &verdict);
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn warnings_stay_within_the_api_servers_limits() {
        let containers: Vec<Value> = (0..60)
            .map(|i| json!({ "name": format!("container-with-a-rather-long-name-{i:03}") }))
            .collect();
        let object = daemonset(json!({ "containers": containers }));
        let verdict = review(&object, None, &Policy::default());
        assert_eq!(verdict.changes.len(), 6 + 120);
        let warnings = verdict.warnings(true);
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_TOTAL, "{total}");
        assert!(
            warnings
                .iter()
                .all(|w| w.len() <= MAX_WARNING_LENGTH && !w.contains('\n'))
        );
        let last = warnings.last().unwrap();
        assert!(
            last.starts_with("... and ")
                && last
                    .ends_with("more warnings; the patch and audit annotations have every change"),
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
        let annotations = review(&object, None, &Policy::default()).audit_annotations(true);
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
                review(&object, None, &Policy::default()),
                review_json(&text, None, &Policy::default()).unwrap(),
                "{text}"
            );
        }
    }

    fn plain() -> Value {
        daemonset(json!({
            "initContainers": [{ "name": "init" }],
            "containers": [{ "name": "c", "resources": { "limits": { "cpu": "lots" } } }],
        }))
    }

    #[test]
    fn warn_mode_reports_without_denying_or_patching() {
        let mut policy = Policy::default();
        policy.rules.set(Rule::RestartPolicy, Mode::Warn);
        policy.rules.set(Rule::Resources, Mode::Warn);
        policy.rules.set(Rule::Tolerations, Mode::Warn);
        let mut object = plain();
        object["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let verdict = review(&object, None, &policy);
        assert!(verdict.allowed());
        assert!(verdict.operations.is_empty() && verdict.changes.is_empty());
        let fields: Vec<&str> = verdict
            .warned_violations
            .iter()
            .map(|v| v.error.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.restartPolicy",
                "spec.template.spec.containers[0].resources.limits[cpu]"
            ]
        );
        // Six tolerations; the init container's cpu and memory; the container's memory.
        assert_eq!(verdict.warned_changes.len(), 9);
        let warnings = verdict.warnings(true);
        assert!(warnings[0].starts_with("would be denied (policy mode warn): spec.template.spec.restartPolicy: Unsupported value"), "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("not applied (policy mode warn): added toleration"))
        );
        assert_eq!(
            verdict.warnings(false).len(),
            2,
            "validation sees no changes"
        );
        let annotations = verdict.audit_annotations(true);
        assert!(annotations["warned-violations"].contains("restartPolicy"));
        assert!(annotations["warned-changes"].contains("container \"init\" cpu"));
    }

    #[test]
    fn off_mode_skips_the_rule_entirely() {
        let mut policy = Policy::default();
        policy.rules.set(Rule::Resources, Mode::Off);
        policy.rules.set(Rule::Selector, Mode::Off);
        let mut object = plain();
        object["spec"]["selector"] = json!({});
        let verdict = review(&object, None, &policy);
        assert!(verdict.allowed());
        assert!(verdict.warned_violations.is_empty());
        assert!(
            verdict
                .changes
                .iter()
                .all(|c| c.kind == ChangeKind::TolerationAdded)
        );
        assert_eq!(verdict.changes.len(), 6);
    }

    #[test]
    fn enforce_mode_still_denies_what_warn_mode_only_reports() {
        let mut policy = Policy::default();
        policy.rules.set(Rule::Selector, Mode::Warn);
        let mut object = plain();
        object["spec"]["selector"] = json!({});
        let verdict = review(&object, None, &policy);
        assert!(!verdict.allowed(), "the quantity rule still enforces");
        assert_eq!(verdict.warned_violations[0].error.field, "spec.selector");
    }

    #[test]
    fn exempt_objects_are_allowed_untouched_with_the_reason() {
        let mut policy = Policy::default();
        policy
            .exemptions
            .namespaces
            .insert("kube-system".to_owned());
        let object = plain();
        let by_object_namespace = review(&object, None, &policy);
        assert!(by_object_namespace.allowed() && by_object_namespace.operations.is_empty());
        assert_eq!(
            by_object_namespace.exemption,
            Some(Exemption::Namespace("kube-system".to_owned()))
        );
        // An object without a namespace is in the request's (or, offline, the assumed) one.
        let mut unnamespaced = object.clone();
        unnamespaced["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        assert!(
            review(&unnamespaced, Some("kube-system"), &policy)
                .exemption
                .is_some()
        );
        let elsewhere = review(&unnamespaced, Some("other"), &policy);
        assert!(elsewhere.exemption.is_none() && !elsewhere.allowed());

        let mut annotated = plain();
        annotated["metadata"]["annotations"] = json!({ EXCLUDE_ANNOTATION: "true" });
        let verdict = review(&annotated, Some("other"), &Policy::default());
        assert_eq!(verdict.exemption, Some(Exemption::Annotation));
        assert_eq!(
            verdict.warnings(false),
            [
                "daemonset-webhook: exempt (annotation daemonset-webhook.io/exclude=true); allowed untouched"
            ]
        );
        annotated["metadata"]["annotations"][EXCLUDE_ANNOTATION] = json!("false");
        assert!(
            review(&annotated, None, &Policy::default())
                .exemption
                .is_none()
        );
    }

    #[test]
    fn init_containers_can_be_left_out_and_extra_tolerations_added() {
        let mut policy = Policy {
            init_containers: false,
            ..Policy::default()
        };
        policy.extra_tolerations.push(RequiredToleration {
            key: "node-role.kubernetes.io/control-plane".into(),
            operator: "Exists".into(),
            value: "".into(),
            effect: "NoSchedule".into(),
            origin: tolerations::Origin::Policy,
        });
        let object = daemonset(json!({ "initContainers": [{ "name": "init" }], "containers": [] }));
        let verdict = review(&object, None, &policy);
        let patched = apply(&object, &verdict);
        assert!(
            patched["spec"]["template"]["spec"]["initContainers"][0]
                .get("resources")
                .is_none()
        );
        let tolerations = patched["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .unwrap();
        assert_eq!(tolerations.len(), 7);
        assert_eq!(
            tolerations[6]["key"],
            "node-role.kubernetes.io/control-plane"
        );
        assert!(review(&patched, None, &policy).operations.is_empty());

        // Listed twice, or repeating the controller's: added once.
        let not_ready = RequiredToleration {
            key: "node.kubernetes.io/not-ready".into(),
            operator: "Exists".into(),
            value: "".into(),
            effect: "NoExecute".into(),
            origin: tolerations::Origin::Policy,
        };
        let twice = policy.extra_tolerations[0].clone();
        policy.extra_tolerations.extend([twice, not_ready]);
        let verdict = review(&object, None, &policy);
        let patched = apply(&object, &verdict);
        assert_eq!(
            patched["spec"]["template"]["spec"]["tolerations"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
    }

    #[test]
    fn text_that_is_not_json_is_an_error_not_a_verdict() {
        let text = r#"{"spec":{"template":{"metadata":{"labels":{"a\uDBBBb":"c"}}}}}"#;
        let error = review_json(text, None, &Policy::default()).unwrap_err();
        assert!(
            error.to_string().contains("spec.template.metadata.labels"),
            "{error}"
        );
        assert!(review_json("{", None, &Policy::default()).is_err());
    }

    #[test]
    fn the_last_warning_too_stays_within_the_total() {
        // Sixteen lines of 250 bytes leave 96 bytes: too few for a last line of 200.
        let mut lines = vec!["w".repeat(250); 16];
        lines.push("x".repeat(200));
        let warnings = fit_warnings(lines);
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_TOTAL, "{total}");
        assert_eq!(warnings.len(), 17);
        assert!(
            warnings[16].starts_with("... and 1 more warnings"),
            "{}",
            warnings[16]
        );
        // A last line that fits is shown, using the room no summary needs.
        let mut lines = vec!["w".repeat(250); 16];
        lines.push("x".repeat(90));
        let warnings = fit_warnings(lines);
        assert_eq!(warnings.last().unwrap(), &"x".repeat(90));
    }

    #[test]
    fn warnings_are_single_lines() {
        let warnings = fit_warnings(vec!["key \"a\nb\r\u{7}\" ignored".to_owned()]);
        assert_eq!(warnings, ["key \"a\\nb\\r\\u{7}\" ignored"]);
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let cut = truncate(&"é".repeat(200), 256);
        assert!(cut.len() <= 256 && cut.ends_with("..."));
    }
}
