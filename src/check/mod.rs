//! `daemonset-webhook check`: the webhook's engine over manifests, with no server and no
//! cluster, for CI pipelines and people. Each DaemonSet is judged exactly as the webhook would
//! judge it once the API server has converted it to apps/v1.

pub mod input;
pub mod node;
mod output;

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

pub use output::Format;

use crate::policy::{self, Decision, Policy, Verdict};
use input::Input;
use node::Node;

/// How `check` reports and what it demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    pub format: Format,
    /// The namespace of objects that name none, as `kubectl apply -n` would give them.
    pub namespace: &'a str,
    /// A DaemonSet the webhook would still patch fails the check too.
    pub require_mutated: bool,
    /// ANSI colour in text output.
    pub color: bool,
}

/// The exit codes, as documented in `--help` and the README.
pub const EXIT_VALID: u8 = 0;
pub const EXIT_VIOLATIONS: u8 = 1;
pub const EXIT_INPUT_ERROR: u8 = 2;

/// How one DaemonSet was judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding<'p> {
    pub file: String,
    /// 1-based index of the document in its stream, and the line it starts on.
    pub document: usize,
    pub line: u64,
    /// The index in a `kind: List` document's `items`.
    pub item: Option<usize>,
    pub api_version: String,
    pub namespace: String,
    pub name: String,
    /// Set when the object was converted to apps/v1 to be judged.
    pub note: Option<&'static str>,
    /// `None` when the apiVersion is not one Kubernetes ever served DaemonSets in.
    pub verdict: Option<Verdict<'p>>,
}

/// What `check` concludes about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Valid, and the webhook would change nothing.
    Complete,
    /// Valid; the webhook would patch it.
    Incomplete,
    Invalid,
    Unsupported,
    /// Exempt from the policy (annotation or namespace): allowed untouched.
    Exempt,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Incomplete => "incomplete",
            Status::Invalid => "invalid",
            Status::Unsupported => "unsupported",
            Status::Exempt => "exempt",
        }
    }
}

impl Finding<'_> {
    pub fn status(&self) -> Status {
        match self.verdict.as_ref().map(Verdict::decision) {
            None => Status::Unsupported,
            Some(Decision::Exempt(_)) => Status::Exempt,
            Some(Decision::Deny) => Status::Invalid,
            Some(Decision::Patch) => Status::Incomplete,
            Some(Decision::Allow) => Status::Complete,
        }
    }

    /// `file:line`, and the item of a list.
    pub fn location(&self) -> String {
        match self.item {
            Some(item) => format!("{}:{} (items[{item}])", self.file, self.line),
            None => format!("{}:{}", self.file, self.line),
        }
    }

    /// `namespace/name`, or the name alone for an object without a namespace.
    pub fn object(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// A file or document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

/// Counts for the summary and the exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub daemon_sets: usize,
    pub complete: usize,
    pub incomplete: usize,
    pub invalid: usize,
    pub unsupported: usize,
    pub exempt: usize,
    /// Objects that are not DaemonSets.
    pub skipped: usize,
    pub errors: usize,
}

impl Summary {
    fn count(&mut self, status: Status) {
        self.daemon_sets += 1;
        match status {
            Status::Complete => self.complete += 1,
            Status::Incomplete => self.incomplete += 1,
            Status::Invalid => self.invalid += 1,
            Status::Unsupported => self.unsupported += 1,
            Status::Exempt => self.exempt += 1,
        }
    }

    /// 2 if anything could not be read, else 1 if anything is invalid (or, with
    /// `require_mutated`, would still be patched), else 0.
    pub fn exit_code(&self, require_mutated: bool) -> u8 {
        if self.errors > 0 {
            EXIT_INPUT_ERROR
        } else if self.invalid + self.unsupported > 0 || (require_mutated && self.incomplete > 0) {
            EXIT_VIOLATIONS
        } else {
            EXIT_VALID
        }
    }
}

/// An object converted to apps/v1 as the API server converts it before calling a webhook
/// registered for apps/v1 with `matchPolicy: Equivalent`.
pub struct AppsV1<'a> {
    /// As written (see [`Node`]): a repeated key reaches the policy as it reaches the server.
    pub object: Cow<'a, Node>,
    pub note: Option<&'static str>,
}

/// What an object is to `check`.
pub enum Kind<'a> {
    /// Not a DaemonSet: passed over.
    Other,
    /// A DaemonSet in an apiVersion that never served DaemonSets.
    Unsupported,
    /// A DaemonSet, as the API server converts it to apps/v1.
    DaemonSet(AppsV1<'a>),
}

/// Tells a DaemonSet from other objects, and converts it to apps/v1.
pub fn as_apps_v1(object: &Node) -> Kind<'_> {
    if object.get("kind").and_then(Node::as_str) != Some("DaemonSet") {
        return Kind::Other;
    }
    let api_version = object.get("apiVersion").and_then(Node::as_str);
    let converted = |note| {
        let mut copy = object.clone();
        copy.set_first("apiVersion", Node::String("apps/v1".to_owned()));
        (copy, note)
    };
    match api_version {
        Some("apps/v1") => Kind::DaemonSet(AppsV1 {
            object: Cow::Borrowed(object),
            note: None,
        }),
        Some("apps/v1beta2") => {
            let (copy, note) = converted(
                "apps/v1beta2 is not served since Kubernetes 1.16; judged as apps/v1, as the API server converts it",
            );
            Kind::DaemonSet(AppsV1 {
                object: Cow::Owned(copy),
                note: Some(note),
            })
        }
        Some("extensions/v1beta1") => {
            let (mut copy, note) = converted(
                "extensions/v1beta1 is not served since Kubernetes 1.16; judged as apps/v1, with spec.selector defaulted from the template labels as that version did",
            );
            default_selector(&mut copy);
            Kind::DaemonSet(AppsV1 {
                object: Cow::Owned(copy),
                note: Some(note),
            })
        }
        _ => Kind::Unsupported,
    }
}

/// extensions/v1beta1 defaulting: a missing selector becomes the template's labels. Decided on
/// the merged object; the selector is added to the last `spec` written, where a decoder would
/// leave it.
fn default_selector(object: &mut Node) {
    let merged = object.merged();
    let selector_missing = merged.pointer("/spec/selector").is_none_or(Value::is_null);
    let labels = merged
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()));
    let (true, Some(labels), Node::Map(entries)) = (selector_missing, labels, object) else {
        return;
    };
    let last_spec = entries.iter_mut().rev().find(|(k, _)| k == "spec");
    if let Some((_, Node::Map(spec))) = last_spec {
        spec.retain(|(k, _)| k != "selector");
        spec.push((
            "selector".to_owned(),
            Node::from(&serde_json::json!({ "matchLabels": labels })),
        ));
    }
}

fn text_at(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Checks every input, reporting to `out` (and, for the data formats, problems to `err`) as it
/// goes, one document in memory at a time. Returns the summary; its exit code is the command's.
pub fn run(
    paths: &[PathBuf],
    policy: &Policy,
    options: Options<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Summary {
    let mut reporter = output::Reporter::new(options, out, err);
    let (inputs, listing_errors) = input::expand(paths);
    for (file, message) in listing_errors {
        reporter.error(&InputError {
            file,
            line: None,
            column: None,
            message,
        });
    }
    let several = inputs.len() > 1;
    for source in &inputs {
        check_input(source, several, policy, options.namespace, &mut reporter);
    }
    reporter.finish()
}

fn check_input(
    source: &Input,
    several: bool,
    policy: &Policy,
    namespace: &str,
    reporter: &mut output::Reporter<'_>,
) {
    let file = source.name();
    reporter.start_file(&file, several);
    let reader = match source.open() {
        Ok(reader) => reader,
        Err(error) => {
            reporter.error(&InputError {
                file,
                line: None,
                column: None,
                message: error.to_string(),
            });
            return;
        }
    };
    input::for_each_document(reader, |document| match document {
        Err(error) => reporter.error(&InputError {
            file: file.clone(),
            line: error.line,
            column: error.column,
            message: error.message,
        }),
        Ok(mut document) => {
            let mut findings = Vec::new();
            for (item, written) in input::objects(&document.written) {
                let object = written.merged();
                match judge(&written, Some(namespace), policy) {
                    None => reporter.skipped(),
                    Some((api_version, note, verdict)) => findings.push(Finding {
                        file: file.clone(),
                        document: document.index,
                        line: document.line,
                        item,
                        api_version,
                        namespace: text_at(&object, "/metadata/namespace"),
                        name: text_at(&object, "/metadata/name"),
                        note,
                        verdict,
                    }),
                }
            }
            apply_patches(&mut document.value, &findings);
            reporter.document(&findings, &document.value);
        }
    });
}

/// Judges one object: `None` if it is not a DaemonSet, else its apiVersion, the conversion note
/// and the verdict (`None` for an apiVersion that never served DaemonSets).
pub fn judge<'p>(
    object: &Node,
    namespace: Option<&str>,
    policy: &'p Policy,
) -> Option<(String, Option<&'static str>, Option<Verdict<'p>>)> {
    let api_version = object
        .get("apiVersion")
        .and_then(Node::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(match as_apps_v1(object) {
        Kind::Other => return None,
        Kind::DaemonSet(converted) => (
            api_version,
            converted.note,
            Some(policy::review(&converted.object, namespace, policy)),
        ),
        Kind::Unsupported => (api_version, None, None),
    })
}

/// Applies each valid finding's patch to its object in the document. The patch's paths lie
/// under `spec.template.spec`, which conversion to apps/v1 does not move, so the patch of the
/// converted object applies to the original.
fn apply_patches(document: &mut Value, findings: &[Finding<'_>]) {
    for finding in findings {
        let Some(verdict) = finding.verdict.as_ref().filter(|v| v.allowed()) else {
            continue;
        };
        let target = match finding.item {
            Some(i) => document.pointer_mut(&format!("/items/{i}")),
            None => Some(&mut *document),
        };
        if let Some(target) = target {
            // json_patch::patch is atomic: on failure the object is left as it was.
            let _ = json_patch::patch(target, &verdict.patch().to_json_patch());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static POLICY: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

    fn daemonset(api_version: &str) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": "DaemonSet",
            "metadata": { "name": "agent", "namespace": "ops" },
            "spec": {
                "template": {
                    "metadata": { "labels": { "app": "agent" } },
                    "spec": { "containers": [{ "name": "agent", "image": "agent:1" }] },
                },
            },
        })
    }

    #[test]
    fn apps_v1_is_judged_as_it_is() {
        let mut object = daemonset("apps/v1");
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "agent" } });
        let (api_version, note, verdict) = judge(&Node::from(&object), None, &POLICY).unwrap();
        assert_eq!(api_version, "apps/v1");
        assert!(note.is_none());
        let verdict = verdict.unwrap();
        assert!(verdict.allowed());
        assert_eq!(verdict, policy::review(&object, None, &POLICY));
    }

    #[test]
    fn extensions_v1beta1_gets_its_selector_defaulted_then_judged_as_apps_v1() {
        let object = Node::from(&daemonset("extensions/v1beta1"));
        let Kind::DaemonSet(converted) = as_apps_v1(&object) else {
            panic!("a DaemonSet")
        };
        let converted = converted.object.merged();
        assert_eq!(converted["apiVersion"], "apps/v1");
        assert_eq!(
            converted["spec"]["selector"],
            json!({ "matchLabels": { "app": "agent" } })
        );
        let (_, note, verdict) = judge(&object, None, &POLICY).unwrap();
        assert!(note.unwrap().contains("extensions/v1beta1"));
        assert!(verdict.unwrap().allowed());
    }

    #[test]
    fn apps_v1beta2_keeps_its_missing_selector_and_is_invalid() {
        let (_, note, verdict) =
            judge(&Node::from(&daemonset("apps/v1beta2")), None, &POLICY).unwrap();
        assert!(note.unwrap().contains("apps/v1beta2"));
        assert!(!verdict.unwrap().allowed());
    }

    #[test]
    fn unknown_versions_are_unsupported_and_other_kinds_are_not_daemonsets() {
        let (api_version, _, verdict) =
            judge(&Node::from(&daemonset("apps/v2")), None, &POLICY).unwrap();
        assert_eq!(api_version, "apps/v2");
        assert!(verdict.is_none());
        assert!(judge(&Node::from(&json!({ "kind": "Deployment" })), None, &POLICY).is_none());
        assert!(judge(&Node::from(&json!("text")), None, &POLICY).is_none());
    }

    #[test]
    fn exit_codes_follow_the_worst_finding() {
        let mut summary = Summary::default();
        assert_eq!(summary.exit_code(true), EXIT_VALID);
        summary.count(Status::Incomplete);
        assert_eq!(summary.exit_code(false), EXIT_VALID);
        assert_eq!(summary.exit_code(true), EXIT_VIOLATIONS);
        summary.count(Status::Unsupported);
        assert_eq!(summary.exit_code(false), EXIT_VIOLATIONS);
        summary.errors += 1;
        assert_eq!(summary.exit_code(false), EXIT_INPUT_ERROR);
    }

    #[test]
    fn patches_apply_to_list_items_in_place() {
        let mut object = daemonset("apps/v1");
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "agent" } });
        let mut list = json!({ "apiVersion": "v1", "kind": "List", "items": [{ "kind": "ConfigMap" }, object] });
        let verdict = policy::review(&list["items"][1], None, &POLICY);
        let finding = Finding {
            file: "f".into(),
            document: 1,
            line: 1,
            item: Some(1),
            api_version: "apps/v1".into(),
            namespace: "ops".into(),
            name: "agent".into(),
            note: None,
            verdict: Some(verdict),
        };
        apply_patches(&mut list, &[finding]);
        assert_eq!(list["items"][0], json!({ "kind": "ConfigMap" }));
        assert_eq!(
            list["items"][1]["spec"]["template"]["spec"]["tolerations"]
                .as_array()
                .unwrap()
                .len(),
            6
        );
        assert!(
            policy::review(&list["items"][1], None, &POLICY)
                .patch()
                .is_empty()
        );
    }
}
