//! The policy: what makes a DaemonSet valid and what to patch into it. Pure functions of the
//! object and the configuration; no I/O, no async, no clock.
//!
//! The object is decoded once ([`object`]) into only the fields the rules read. Each rule is a
//! module of its own ([`selector`], [`restart_policy`], [`tolerations`], [`resources`]) that
//! reports its violations and changes; [`judge`] calls them in turn. The patch only ever adds or
//! removes what a rule owns, so fields our types do not know (from a newer Kubernetes) are never
//! touched.

pub(crate) mod field;
pub(crate) mod object;
pub mod patch;
pub(crate) mod quantity;
pub(crate) mod resources;
pub(crate) mod restart_policy;
pub(crate) mod selector;
pub(crate) mod tolerations;

use std::fmt;

pub use field::{ErrorList, FieldError, invalid_message};
use object::DaemonSet;
pub use patch::Patch;
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

/// One change the patch makes (or, for a rule in warn mode, would make).
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Toleration(&'a tolerations::TolerationChange<'a>),
    Resource(resources::ResourceChange<'a, 'a>),
}

impl<'a> Change<'a> {
    pub fn kind(&self) -> ChangeKind {
        match self {
            Change::Toleration(change) => change.kind(),
            Change::Resource(change) => change.kind(),
        }
    }

    pub fn rule(&self) -> Rule {
        self.kind().rule()
    }

    /// What changed, briefly: `node.kubernetes.io/not-ready:NoExecute`, `container "app" cpu`.
    pub fn subject(self) -> impl fmt::Display + 'a {
        ChangeText {
            change: self,
            message: false,
        }
    }

    /// One line for `response.warnings`.
    pub fn message(self) -> impl fmt::Display + 'a {
        ChangeText {
            change: self,
            message: true,
        }
    }
}

struct ChangeText<'a> {
    change: Change<'a>,
    message: bool,
}

impl fmt::Display for ChangeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.change, self.message) {
            (Change::Toleration(c), false) => c.subject().fmt(f),
            (Change::Toleration(c), true) => c.message().fmt(f),
            (Change::Resource(c), false) => c.subject().fmt(f),
            (Change::Resource(c), true) => c.message().fmt(f),
        }
    }
}

/// Violations found, the first [`ErrorList::MAX`] kept and the rest counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    kept: Vec<Violation>,
    omitted: usize,
    /// Violations found per rule, kept or not: [`Rule::ALL`]'s order, then unreadable.
    counts: [usize; Rule::ALL.len() + 1],
}

impl Violations {
    /// Takes `rule`'s errors (`None`: the object could not be read).
    fn extend(&mut self, rule: Option<Rule>, errors: ErrorList) {
        self.counts[rule.map_or(Rule::ALL.len(), |r| r as usize)] += errors.len();
        self.omitted += errors.omitted();
        for error in errors.kept() {
            if self.kept.len() < ErrorList::MAX {
                self.kept.push(Violation {
                    rule,
                    error: error.clone(),
                });
            } else {
                self.omitted += 1;
            }
        }
    }

    /// The violations kept, in the order found.
    pub fn kept(&self) -> &[Violation] {
        &self.kept
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Violation> {
        self.kept.iter()
    }

    /// Violations found beyond those kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// Violations of `rule` found (`None`: the object could not be read), kept or not.
    pub fn count(&self, rule: Option<Rule>) -> usize {
        self.counts[rule.map_or(Rule::ALL.len(), |r| r as usize)]
    }

    /// Violations found, kept or not.
    pub fn len(&self) -> usize {
        self.kept.len() + self.omitted
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The field errors kept.
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        self.kept.iter().map(|v| &v.error)
    }
}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a Violation;
    type IntoIter = std::slice::Iter<'a, Violation>;

    fn into_iter(self) -> Self::IntoIter {
        self.kept.iter()
    }
}

/// A mutation rule's changes and the mode they were found in: only `enforce` patches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mutated<T> {
    mode: Mode,
    mutation: T,
}

impl<T> Mutated<T> {
    fn in_mode(&self, mode: Mode) -> Option<&T> {
        (self.mode == mode).then_some(&self.mutation)
    }
}

/// The policy's judgement of one DaemonSet. It borrows the policy (the tolerations and defaults
/// it patches in), not the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// Why the object is invalid; empty when it is valid.
    pub violations: Violations,
    /// Violations of rules in `warn` mode: reported, not denied.
    pub warned_violations: Violations,
    tolerations: Mutated<tolerations::Mutation<'p>>,
    resources: Mutated<resources::Mutation<'p>>,
    /// Why the object is exempt from the policy; then nothing else is set.
    pub exemption: Option<Exemption>,
    /// Where keys the rules read are repeated in the object, as the API server's decoder reports
    /// them (`spec.template.spec.containers[0].name`); the verdict is on their merged values.
    pub repeated_keys: Vec<String>,
}

impl<'p> Verdict<'p> {
    pub fn allowed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn decision(&self) -> Decision<'_> {
        match &self.exemption {
            Some(exemption) => Decision::Exempt(exemption),
            None if !self.allowed() => Decision::Deny,
            None if self.operations().next().is_some() => Decision::Patch,
            None => Decision::Allow,
        }
    }

    /// The enforced violations' field errors, in order.
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        self.violations.errors()
    }

    fn changes_in(&self, mode: Mode) -> impl Iterator<Item = Change<'_>> {
        let tolerations = self.tolerations.in_mode(mode).into_iter();
        let resources = self.resources.in_mode(mode).into_iter();
        tolerations
            .flat_map(|m| m.changes.iter().map(Change::Toleration))
            .chain(resources.flat_map(|m| m.changes().map(Change::Resource)))
    }

    /// The changes the patch makes, one per thing changed.
    pub fn changes(&self) -> impl Iterator<Item = Change<'_>> {
        self.changes_in(Mode::Enforce)
    }

    /// The changes rules in `warn` mode would make: reported, not patched.
    pub fn warned_changes(&self) -> impl Iterator<Item = Change<'_>> {
        self.changes_in(Mode::Warn)
    }

    /// The JSON Patch operations, in order: tolerations, then resources.
    pub fn operations(&self) -> impl Iterator<Item = patch::Operation<'_>> {
        let tolerations = self.tolerations.in_mode(Mode::Enforce).into_iter();
        let resources = self.resources.in_mode(Mode::Enforce).into_iter();
        tolerations
            .flat_map(tolerations::Mutation::operations)
            .chain(resources.flat_map(resources::Mutation::operations))
    }

    /// The JSON Patch (RFC 6902) that completes a valid object; empty when nothing is missing.
    pub fn patch(&self) -> Patch<'_, 'p> {
        Patch::of(self)
    }

    /// The lines explaining the verdict, for `response.warnings`: repeated keys, the
    /// exemption, warned violations, and (with `mutations`) the changes made and those only
    /// warned about. Not yet fitted to the API server's limits (the envelope does that).
    pub fn warning_lines(&self, mutations: bool) -> impl Iterator<Item = WarningLine<'_>> {
        let repeated = self
            .repeated_keys
            .iter()
            .map(|path| WarningLine::RepeatedKey(path));
        let exemption = self.exemption.iter().map(WarningLine::Exempt);
        let warned = self
            .warned_violations
            .iter()
            .map(WarningLine::WarnedViolation)
            .chain(
                (self.warned_violations.omitted() > 0)
                    .then_some(WarningLine::WarnedOmitted(self.warned_violations.omitted())),
            );
        let changes = self
            .changes()
            .filter(move |_| mutations)
            .map(WarningLine::Change);
        let warned_changes = self
            .warned_changes()
            .filter(move |_| mutations)
            .map(WarningLine::WarnedChange);
        repeated
            .chain(exemption)
            .chain(warned)
            .chain(changes)
            .chain(warned_changes)
    }
}

/// One line explaining a verdict.
#[derive(Debug, Clone, Copy)]
pub enum WarningLine<'a> {
    RepeatedKey(&'a str),
    Exempt(&'a Exemption),
    WarnedViolation(&'a Violation),
    WarnedOmitted(usize),
    Change(Change<'a>),
    WarnedChange(Change<'a>),
}

impl fmt::Display for WarningLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The API server's own words for a repeated key in a request body.
            WarningLine::RepeatedKey(path) => {
                write!(f, "duplicate field {}", field::go_quote(path))
            }
            WarningLine::Exempt(exemption) => {
                write!(
                    f,
                    "daemonset-webhook: exempt ({exemption}); allowed untouched"
                )
            }
            WarningLine::WarnedViolation(v) => {
                f.write_str("would be denied (policy mode warn): ")?;
                fmt::Display::fmt(v, f)
            }
            WarningLine::WarnedOmitted(n) => {
                write!(f, "would be denied (policy mode warn): and {n} more errors")
            }
            WarningLine::Change(change) => change.message().fmt(f),
            WarningLine::WarnedChange(change) => {
                f.write_str("not applied (policy mode warn): ")?;
                fmt::Display::fmt(&change.message(), f)
            }
        }
    }
}

/// Judges one DaemonSet given as a value (a parsed manifest; one that keeps a repeated key as
/// written is judged with it). `namespace` is the request's namespace where the object does not
/// say. The same engine as [`review_json`]: the value is written out as JSON and judged as an
/// AdmissionReview's object is.
pub fn review<'p>(
    object: &impl serde::Serialize,
    namespace: Option<&str>,
    policy: &'p Policy,
) -> Verdict<'p> {
    match serde_json::to_string(object) {
        Ok(text) => review_json(&text, namespace, policy)
            .unwrap_or_else(|error| unreadable(&error.path, &error.message)),
        Err(error) => unreadable(".", &error.to_string()),
    }
}

/// Text that is not JSON at all (a bad escape, say, which skipping scanners let through): it is
/// the request that is malformed, not the DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct NotJson {
    /// Where in the object (`spec.template`), `.` for the whole.
    pub path: String,
    pub message: String,
}

/// Judges one DaemonSet given as JSON text, as an AdmissionReview carries it.
pub fn review_json<'p>(
    object: &str,
    namespace: Option<&str>,
    policy: &'p Policy,
) -> Result<Verdict<'p>, NotJson> {
    match object::decode(object) {
        Ok(decoded) => {
            let mut verdict = judge(&decoded.daemon_set, namespace, policy);
            if decoded.repeated_keys {
                verdict.repeated_keys = object::repeated_keys(object);
            }
            Ok(verdict)
        }
        Err(_) => {
            let error = match object::decode_with_path(object) {
                Err(error) => error,
                // The plain decode failed, so the tracked one does too; should it not, the
                // object is still not one to judge.
                Ok(()) => return Ok(unreadable(".", "not readable")),
            };
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(NotJson {
                    path,
                    message: inner.to_string(),
                });
            }
            Ok(unreadable(&path, &without_position(&inner)))
        }
    }
}

/// The verdict on an object whose fields have the wrong JSON types where a rule reads them.
fn unreadable<'p>(path: &str, message: &str) -> Verdict<'p> {
    let mut errors = ErrorList::default();
    errors.push(FieldError::type_invalid(
        &field::Path::new(path),
        format!("not readable as an apps/v1 DaemonSet: {message}"),
    ));
    let mut verdict = Verdict::default();
    verdict.violations.extend(None, errors);
    verdict
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

/// The policy's judgement of a decoded DaemonSet: each rule in turn, in its mode.
pub fn judge<'p>(
    daemon_set: &DaemonSet<'_>,
    namespace: Option<&str>,
    policy: &'p Policy,
) -> Verdict<'p> {
    if let Some(exemption) = exemption(daemon_set, namespace, &policy.exemptions) {
        return Verdict {
            exemption: Some(exemption),
            ..Verdict::default()
        };
    }
    let spec = &daemon_set.spec;
    let pod = &spec.template.spec;
    let rules = policy.rules;
    let mut verdict = Verdict::default();
    let mut validate = |rule: Rule, check: &dyn Fn(&mut ErrorList)| {
        let mut errors = ErrorList::default();
        match rules.mode(rule) {
            Mode::Off => {}
            Mode::Enforce => {
                check(&mut errors);
                verdict.violations.extend(Some(rule), errors);
            }
            Mode::Warn => {
                check(&mut errors);
                verdict.warned_violations.extend(Some(rule), errors);
            }
        }
    };
    validate(Rule::Selector, &|errors| {
        selector::validate(
            spec.selector.as_ref(),
            spec.template.labels.as_ref(),
            errors,
        )
    });
    validate(Rule::RestartPolicy, &|errors| {
        restart_policy::validate(pod.value.restart_policy.as_deref(), errors)
    });
    validate(Rule::Resources, &|errors| {
        resources::validate(&pod.value, policy.init_containers, errors)
    });
    // An invalid object is never patched. Without a pod spec there is nowhere to patch; the API
    // server rejects such an object for its missing containers anyway.
    if !verdict.allowed() || !pod.given {
        return verdict;
    }
    let mode = rules.mode(tolerations::Mutation::RULE);
    if mode != Mode::Off {
        let required = tolerations::required(pod.value.host_network, &policy.extra_tolerations);
        verdict.tolerations = Mutated {
            mode,
            mutation: tolerations::mutate(&pod.value.tolerations, &required),
        };
    }
    let mode = rules.mode(resources::Mutation::RULE);
    if mode != Mode::Off {
        verdict.resources = Mutated {
            mode,
            mutation: resources::mutate(&pod.value, policy.init_containers, &policy.resources),
        };
    }
    verdict
}

/// Why the policy leaves this DaemonSet alone, if it does.
fn exemption(
    daemon_set: &DaemonSet<'_>,
    request_namespace: Option<&str>,
    exemptions: &Exemptions,
) -> Option<Exemption> {
    let metadata = &daemon_set.metadata;
    if metadata.exclude.as_deref() == Some("true") {
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
    use serde_json::{Value, json};

    /// The built-in policy, for verdicts that borrow it.
    static DEFAULT: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

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

    fn fitted(verdict: &Verdict<'_>, mutations: bool) -> Vec<String> {
        crate::admission::fit_warnings(verdict.warning_lines(mutations))
    }

    fn annotations(
        verdict: &Verdict<'_>,
        mutations: bool,
    ) -> std::collections::BTreeMap<&'static str, String> {
        crate::admission::audit_annotations(verdict, mutations)
            .into_iter()
            .collect()
    }

    fn apply(object: &Value, verdict: &Verdict) -> Value {
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &verdict.patch().to_json_patch()).expect("patch applies");
        patched
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

        let typed: k8s_openapi::api::apps::v1::DaemonSet =
            serde_json::from_value(patched.clone()).unwrap();
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
            patch::without_owned_fields(&patched),
            patch::without_owned_fields(&object)
        );

        let again = review(&patched, None, &policy);
        assert!(again.allowed());
        assert!(again.patch().is_empty(), "{:?}", again.patch());
        assert!(again.changes().next().is_none());
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
        let verdict = review(&object, None, &DEFAULT);
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
        assert!(review(&patched, None, &DEFAULT).patch().is_empty());
    }

    #[test]
    fn an_invalid_daemonset_gets_every_violation_and_no_patch() {
        let mut object = daemonset(json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "c", "resources": { "limits": { "cpu": "x" } } }],
        }));
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "other" } });
        let verdict = review(&object, None, &DEFAULT);
        assert!(!verdict.allowed());
        assert!(verdict.patch().is_empty());
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
        let message = invalid_message("agent", verdict.errors(), 0);
        assert!(message.starts_with(r#"DaemonSet.apps "agent" is invalid: [spec.template.metadata.labels: Invalid value: {"app.kubernetes.io/name":"agent","tier":"node"}: `selector` does not match template `labels`, spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always", "#), "{message}");
    }

    #[test]
    fn an_object_our_types_cannot_read_is_denied_naming_the_field() {
        let object = daemonset(json!({ "containers": "not a list" }));
        let verdict = review(&object, None, &DEFAULT);
        assert_eq!(verdict.violations.len(), 1);
        let message = verdict.violations.kept()[0].to_string();
        assert!(message.starts_with("spec.template.spec.containers: Invalid value: not readable as an apps/v1 DaemonSet: invalid type: string"), "{message}");
    }

    #[test]
    fn without_a_pod_spec_nothing_is_patched() {
        let mut object = daemonset(json!(null));
        object["spec"]["template"]
            .as_object_mut()
            .unwrap()
            .remove("spec");
        let verdict = review(&object, None, &DEFAULT);
        assert!(verdict.allowed());
        assert!(verdict.patch().is_empty());
    }

    #[test]
    fn host_network_pods_also_tolerate_network_unavailable() {
        let object =
            daemonset(json!({ "hostNetwork": true, "tolerations": null, "containers": [] }));
        let verdict = review(&object, None, &DEFAULT);
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
        let verdict = review(&object, None, &DEFAULT);
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
        let verdict = review(&object, None, &DEFAULT);
        assert!(
            verdict
                .changes()
                .all(|c| !matches!(c.kind(), ChangeKind::Limit | ChangeKind::LimitAndRequest))
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
        let verdict = review(&object, None, &DEFAULT);
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
        let verdict = review(&object, None, &DEFAULT);
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
        let verdict = review(&object, None, &DEFAULT);
        assert_eq!(verdict.changes().count(), 6 + 120);
        let warnings = fitted(&verdict, true);
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= crate::admission::MAX_WARNINGS_TOTAL, "{total}");
        assert!(
            warnings
                .iter()
                .all(|w| w.len() <= crate::admission::MAX_WARNING_LENGTH && !w.contains('\n'))
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
            last.contains(&format!("and {} more", verdict.changes().count() - shown)),
            "{last}"
        );
    }

    #[test]
    fn audit_annotations_summarize_by_kind() {
        let object = daemonset(json!({
            "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30 }],
            "containers": [{ "name": "a", "resources": { "requests": { "cpu": "1" } } }],
        }));
        let annotations = annotations(&review(&object, None, &DEFAULT), true);
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
    fn the_order_of_keys_makes_no_difference() {
        /// The same JSON with every object's keys in reverse order.
        fn reversed(value: &Value) -> Value {
            match value {
                Value::Object(map) => Value::Object(
                    map.iter()
                        .rev()
                        .map(|(k, v)| (k.clone(), reversed(v)))
                        .collect(),
                ),
                Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
                other => other.clone(),
            }
        }
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
            daemonset(json!({
                "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5 }],
                "initContainers": [{ "name": "i", "resources": { "requests": { "memory": "1Gi", "cpu": "1" } } }],
                "containers": [{ "resources": { "limits": { "memory": "1Gi" } }, "name": "c" }],
            })),
            no_selector,
            null_selector,
            null_pod_spec,
            json!({}),
        ] {
            let text = serde_json::to_string(&reversed(&object)).unwrap();
            assert_eq!(
                review(&object, None, &DEFAULT),
                review_json(&text, None, &DEFAULT).unwrap(),
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
        assert!(verdict.patch().is_empty() && verdict.changes().next().is_none());
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
        assert_eq!(verdict.warned_changes().count(), 9);
        let warnings = fitted(&verdict, true);
        assert!(warnings[0].starts_with("would be denied (policy mode warn): spec.template.spec.restartPolicy: Unsupported value"), "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("not applied (policy mode warn): added toleration"))
        );
        assert_eq!(
            fitted(&verdict, false).len(),
            2,
            "validation sees no changes"
        );
        let summary = annotations(&verdict, true);
        assert!(summary["warned-violations"].contains("restartPolicy"));
        assert!(summary["warned-changes"].contains("container \"init\" cpu"));
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
                .changes()
                .all(|c| c.kind() == ChangeKind::TolerationAdded)
        );
        assert_eq!(verdict.changes().count(), 6);
    }

    #[test]
    fn enforce_mode_still_denies_what_warn_mode_only_reports() {
        let mut policy = Policy::default();
        policy.rules.set(Rule::Selector, Mode::Warn);
        let mut object = plain();
        object["spec"]["selector"] = json!({});
        let verdict = review(&object, None, &policy);
        assert!(!verdict.allowed(), "the quantity rule still enforces");
        assert_eq!(
            verdict.warned_violations.kept()[0].error.field,
            "spec.selector"
        );
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
        assert!(by_object_namespace.allowed() && by_object_namespace.patch().is_empty());
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
        let verdict = review(&annotated, Some("other"), &DEFAULT);
        assert_eq!(verdict.exemption, Some(Exemption::Annotation));
        assert_eq!(
            fitted(&verdict, false),
            [
                "daemonset-webhook: exempt (annotation daemonset-webhook.io/exclude=true); allowed untouched"
            ]
        );
        annotated["metadata"]["annotations"][EXCLUDE_ANNOTATION] = json!("false");
        assert!(review(&annotated, None, &DEFAULT).exemption.is_none());
    }

    #[test]
    fn init_containers_can_be_left_out_and_extra_tolerations_added() {
        let mut policy = Policy {
            init_containers: false,
            ..Policy::default()
        };
        policy.extra_tolerations.push(RequiredToleration::new(
            "node-role.kubernetes.io/control-plane".into(),
            "Exists".into(),
            "".into(),
            "NoSchedule".into(),
            tolerations::Origin::Policy,
        ));
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
        assert!(review(&patched, None, &policy).patch().is_empty());

        // Listed twice, or repeating the controller's: added once.
        let not_ready = RequiredToleration::new(
            "node.kubernetes.io/not-ready".into(),
            "Exists".into(),
            "".into(),
            "NoExecute".into(),
            tolerations::Origin::Policy,
        );
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
        let error = review_json(text, None, &DEFAULT).unwrap_err();
        assert!(
            error.to_string().contains("spec.template.metadata.labels"),
            "{error}"
        );
        assert!(review_json("{", None, &DEFAULT).is_err());
    }
}
