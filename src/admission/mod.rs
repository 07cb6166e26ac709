//! The `admission.k8s.io/v1` envelope: decodes an AdmissionReview, routes its object to the
//! policy, and encodes the AdmissionReview the API server expects back, with its warnings and
//! audit annotations fitted to the API server's limits. No sockets here. What was decided is
//! handed on as a [`Record`], in labels and counts, so that the server's logs and metrics need
//! nothing of DaemonSets.
//!
//! The envelope types are our own rather than kube-core's: kube-core encodes `response.patch`
//! as an array of numbers instead of base64 (kube-rs/kube#1781), its `invalid()` answers
//! v1beta1 (kube-rs/kube#1904), and its typed `ObjectMeta` would drop metadata fields a newer
//! Kubernetes adds. Here the object stays JSON text, read once into what the policy needs.

mod decode;
mod encode;

use std::fmt;

use http::StatusCode;
use serde::Serialize;

pub use decode::{GroupVersionKind, Operation};
pub use encode::{MAX_WARNING_LENGTH, MAX_WARNINGS_TOTAL, audit_annotations, fit_warnings};

use crate::policy::{self, ChangeKind, Decision, Policy, Rule, Verdict};
use decode::{Object, Request};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// The largest AdmissionReview accepted. An object may be up to ~3 MiB in etcd and a review of an
/// UPDATE carries it twice, plus the envelope.
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;

/// Which webhook is being asked: the mutating one may patch, the validating one never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Endpoint::Mutate, Endpoint::Validate];

    /// The route, also the metrics' `webhook` label (controller-runtime's convention).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Mutate => "/mutate",
            Endpoint::Validate => "/validate",
        }
    }
}

/// A review request that is not a well-formed AdmissionReview. Rendered as an HTTP error with a
/// `metav1.Status` JSON body; the API server never sends these, people with curl do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    pub status: StatusCode,
    pub message: String,
    /// When to try again (`Retry-After`, and `details.retryAfterSeconds` of the Status).
    pub retry_after_seconds: Option<u32>,
}

impl EnvelopeError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_seconds: None,
        }
    }

    /// The server has no room for the request now: 503, try again in a second.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            retry_after_seconds: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A body over [`MAX_REVIEW_BYTES`].
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_REVIEW_BYTES} bytes"),
        )
    }

    /// The error as a `metav1.Status` object, the shape Kubernetes clients expect of an error.
    pub fn to_status_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Status<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: Empty,
            status: &'static str,
            message: &'a str,
            reason: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<Details>,
            code: u16,
        }
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Details {
            retry_after_seconds: u32,
        }
        serde_json::to_vec(&Status {
            api_version: "v1",
            kind: "Status",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: status_reason(self.status),
            details: self.retry_after_seconds.map(|retry_after_seconds| Details {
                retry_after_seconds,
            }),
            code: self.status.as_u16(),
        })
        .unwrap_or_default()
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for EnvelopeError {}

fn status_reason(code: StatusCode) -> &'static str {
    match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    }
}

// ---------------------------------------------------------------------------------------------
// What a review decided, for logs and metrics.

/// The review's outcome as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Patched,
    Denied,
    Exempt,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Patched => "patched",
            Outcome::Denied => "denied",
            Outcome::Exempt => "exempt",
        }
    }
}

/// What a rule did in a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Deny,
    Warn,
    Patch,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Deny, Action::Warn, Action::Patch];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::Patch => "patch",
        }
    }
}

/// The `rule` label of a violation of no rule: an object that could not be read.
pub const UNREADABLE: &str = "unreadable";

/// Every `rule` label a violation may carry: the policy's rules, and [`UNREADABLE`].
pub fn violation_labels() -> impl Iterator<Item = &'static str> {
    Rule::ALL.into_iter().map(Rule::as_str).chain([UNREADABLE])
}

/// Every `rule` label a rule's action may carry.
pub fn rule_labels() -> impl Iterator<Item = &'static str> {
    Rule::ALL.into_iter().map(Rule::as_str)
}

/// The `kind` labels of patched changes.
pub const MUTATION_KINDS: [&str; 3] = ["toleration", "limits", "requests"];
/// The `reason` labels of exemptions.
pub const EXEMPTION_REASONS: [&str; 2] = ["namespace", "annotation"];

/// Changes a patch made, by what they set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Patched {
    pub tolerations: usize,
    pub limits: usize,
    pub requests: usize,
}

/// What a review decided, in labels and counts: everything the server logs and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: String,
    pub operation: Operation,
    /// `group/version/kind` as the request names it.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub allowed: bool,
    /// The response's status code: 200, or the denial's.
    pub code: u16,
    pub outcome: Outcome,
    /// Why it was exempt (one of [`EXEMPTION_REASONS`]).
    pub exemption: Option<&'static str>,
    pub patch_operations: usize,
    pub patched: Patched,
    /// Violations found, by rule label (rules in warn mode included), each rule once.
    pub violations: Vec<(&'static str, usize)>,
    /// What each rule that acted did, each (rule, action) once.
    pub actions: Vec<(&'static str, Action)>,
    /// The fields of the violations kept (enforced, then warned).
    pub violation_fields: Vec<String>,
    pub warnings: usize,
}

/// A decided review: the AdmissionReview to send back, encoded, and what was decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub body: Vec<u8>,
    pub record: Record,
}

fn rule_label(rule: Option<Rule>) -> &'static str {
    rule.map_or(UNREADABLE, Rule::as_str)
}

impl Record {
    fn of(request: &Request<'_>, name: String) -> Self {
        Record {
            uid: request.uid.clone().into_owned(),
            operation: request.operation.clone(),
            kind: request.kind.to_string(),
            namespace: request.namespace.clone().unwrap_or_default().into_owned(),
            name,
            allowed: true,
            code: StatusCode::OK.as_u16(),
            outcome: Outcome::Allowed,
            exemption: None,
            patch_operations: 0,
            patched: Patched::default(),
            violations: Vec::new(),
            actions: Vec::new(),
            violation_fields: Vec::new(),
            warnings: 0,
        }
    }

    /// Fills in what `verdict` decided; `patched` when its patch went out.
    fn judged(&mut self, verdict: &Verdict<'_>, patch_operations: usize) {
        self.allowed = verdict.allowed();
        if !self.allowed {
            self.code = StatusCode::UNPROCESSABLE_ENTITY.as_u16();
        }
        self.patch_operations = patch_operations;
        self.outcome = match verdict.decision() {
            Decision::Exempt(_) => Outcome::Exempt,
            Decision::Deny => Outcome::Denied,
            _ if patch_operations > 0 => Outcome::Patched,
            _ => Outcome::Allowed,
        };
        if let Some(exemption) = &verdict.exemption {
            self.exemption = Some(exemption.reason());
            return;
        }
        let mut actions = Vec::new();
        for (violations, action) in [
            (&verdict.violations, Action::Deny),
            (&verdict.warned_violations, Action::Warn),
        ] {
            for rule in Rule::ALL.into_iter().map(Some).chain([None]) {
                let count = violations.count(rule);
                if count == 0 {
                    continue;
                }
                let label = rule_label(rule);
                match self.violations.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, total)) => *total += count,
                    None => self.violations.push((label, count)),
                }
                if rule.is_some() {
                    actions.push((label, action));
                }
            }
            self.violation_fields
                .extend(violations.iter().map(|v| v.error.field.clone()));
        }
        actions.extend(
            verdict
                .warned_changes()
                .map(|c| (c.rule().as_str(), Action::Warn)),
        );
        if patch_operations > 0 {
            for change in verdict.changes() {
                actions.push((change.rule().as_str(), Action::Patch));
                match change.kind() {
                    ChangeKind::TolerationAdded | ChangeKind::TolerationUpdated => {
                        self.patched.tolerations += 1;
                    }
                    ChangeKind::Limit => self.patched.limits += 1,
                    ChangeKind::LimitAndRequest => {
                        self.patched.limits += 1;
                        self.patched.requests += 1;
                    }
                }
            }
        }
        actions.sort_unstable();
        actions.dedup();
        self.actions = actions;
    }
}

// ---------------------------------------------------------------------------------------------
// The review.

/// Reviews under the policy in force, which a reload replaces whole: a review in flight keeps
/// the policy it started with. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Reviewer {
    policy: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Policy>>>,
}

impl Reviewer {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(policy))),
        }
    }

    /// Puts `policy` in force for the reviews that start from now on.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(policy);
    }

    fn current(&self) -> std::sync::Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`review`] under the policy in force.
    pub fn review(&self, body: &[u8], endpoint: Endpoint) -> Result<Reviewed, EnvelopeError> {
        review(body, endpoint, &self.current())
    }
}

impl fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reviewer").finish_non_exhaustive()
    }
}

/// Reviews one encoded AdmissionReview.
pub fn review(body: &[u8], endpoint: Endpoint, policy: &Policy) -> Result<Reviewed, EnvelopeError> {
    let request = decode::request(decode::text(body)?)?;
    let judged = judge(&request, policy)?;
    let name = object_name(&request);
    let mut record = Record::of(&request, name);
    // The verdict does not borrow the object's view: free it before the answer is written.
    drop(request);
    let Some(verdict) = judged else {
        let answer = encode::Answer {
            uid: &record.uid,
            denied: None,
            patch: None,
            explained: None,
        };
        let (body, _) = answer.encode(256);
        return Ok(Reviewed { body, record });
    };
    let mutates = endpoint == Endpoint::Mutate && verdict.allowed();
    let patch = mutates.then(|| verdict.patch());
    let patch_operations = patch.as_ref().map_or(0, policy::Patch::len);
    record.judged(&verdict, patch_operations);
    let answer = encode::Answer {
        uid: &record.uid,
        denied: (!verdict.allowed()).then_some((record.name.as_str(), &verdict.violations)),
        patch,
        explained: Some((&verdict, mutates)),
    };
    // Room for the warnings and annotations, and for the patch, base64, at ~200 bytes an
    // operation.
    let (body, warnings) = answer.encode(5 * 1024 + patch_operations * 256);
    record.warnings = warnings;
    Ok(Reviewed { body, record })
}

/// The policy's verdict, or `None` for a review the webhook does not judge.
fn judge<'p>(
    request: &Request<'_>,
    policy: &'p Policy,
) -> Result<Option<Verdict<'p>>, EnvelopeError> {
    if !request.kind.is_daemon_set()
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        tracing::warn!(
            uid = %request.uid,
            kind = %request.kind,
            sub_resource = request.sub_resource.as_deref().unwrap_or(""),
            "allowing a review of something other than an apps/v1 DaemonSet untouched; \
             check the webhook configuration's rules"
        );
        return Ok(None);
    }
    if !request.operation.writes() {
        return Ok(None);
    }
    let namespace = request.namespace.as_deref();
    match &request.object {
        Object::DaemonSet(daemon_set) => Ok(Some(policy::judge(daemon_set, namespace, policy))),
        Object::Text(text) => policy::review_json(text, namespace, policy)
            .map(Some)
            .map_err(|error| {
                EnvelopeError::bad_request(format!(
                    "request body is not valid JSON: request.object.{error}"
                ))
            }),
        Object::Malformed => Err(EnvelopeError::bad_request(
            "request.object must be a JSON object",
        )),
        Object::Missing => Err(EnvelopeError::bad_request(format!(
            "request.object is missing; a {} review must carry the DaemonSet",
            request.operation
        ))),
    }
}

/// The object's name as the API server's messages use it.
fn object_name(request: &Request<'_>) -> String {
    if let Some(name) = request.name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    match &request.object {
        Object::DaemonSet(daemon_set) => daemon_set
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        Object::Text(text) => {
            #[derive(serde::Deserialize)]
            struct Named {
                metadata: Option<Metadata>,
            }
            #[derive(serde::Deserialize)]
            struct Metadata {
                name: Option<String>,
            }
            serde_json::from_str::<Named>(text)
                .ok()
                .and_then(|n| n.metadata?.name)
                .unwrap_or_default()
        }
        Object::Missing | Object::Malformed => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::{Value, json};

    fn daemonset() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": { "name": "agent", "namespace": "default" },
            "spec": {
                "selector": { "matchLabels": { "app": "agent" } },
                "template": {
                    "metadata": { "labels": { "app": "agent" } },
                    "spec": { "containers": [{ "name": "agent", "image": "agent:1" }] },
                },
            },
        })
    }

    fn review_of(object: Value, operation: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "apps", "version": "v1", "kind": "DaemonSet" },
                "resource": { "group": "apps", "version": "v1", "resource": "daemonsets" },
                "name": "agent",
                "namespace": "default",
                "operation": operation,
                "userInfo": { "username": "admin" },
                "object": object,
                "oldObject": null,
                "dryRun": false,
            }
        })
    }

    fn send(body: &Value, endpoint: Endpoint) -> Value {
        let outcome = review(
            &serde_json::to_vec(body).unwrap(),
            endpoint,
            &Policy::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_slice(&outcome.body).unwrap()
    }

    fn decoded_patch(response: &Value) -> Vec<json_patch::PatchOperation> {
        let patch = response["response"]["patch"]
            .as_str()
            .expect("patch is a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn answers_v1_with_the_uid_and_a_base64_patch() {
        let answer = send(&review_of(daemonset(), "CREATE"), Endpoint::Mutate);
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        assert!(response.get("status").is_none());
        let patch = decoded_patch(&answer);
        assert_eq!(patch.len(), 2, "tolerations and one container's resources");
        let mut object = daemonset();
        json_patch::patch(&mut object, &patch).unwrap();
        assert_eq!(response["warnings"].as_array().unwrap().len(), 8);
        assert!(response["auditAnnotations"]["tolerations-added"].is_string());
    }

    #[test]
    fn validate_never_patches() {
        let answer = send(&review_of(daemonset(), "CREATE"), Endpoint::Validate);
        let response = &answer["response"];
        assert_eq!(response["allowed"], true);
        for field in [
            "patch",
            "patchType",
            "warnings",
            "auditAnnotations",
            "status",
        ] {
            assert!(response.get(field).is_none(), "{field} in {response}");
        }
    }

    #[test]
    fn update_and_dry_run_are_judged_like_create() {
        let create = send(&review_of(daemonset(), "CREATE"), Endpoint::Mutate);
        let mut update = review_of(daemonset(), "UPDATE");
        update["request"]["oldObject"] = daemonset();
        let mut dry_run = review_of(daemonset(), "CREATE");
        dry_run["request"]["dryRun"] = json!(true);
        for other in [update, dry_run] {
            let answer = send(&other, Endpoint::Mutate);
            assert_eq!(answer["response"]["patch"], create["response"]["patch"]);
        }
    }

    #[test]
    fn invalid_daemonsets_are_denied_by_both_endpoints_like_the_api_server() {
        let mut object = daemonset();
        object["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let answer = send(&review_of(object.clone(), "CREATE"), endpoint);
            let response = &answer["response"];
            assert_eq!(response["allowed"], false);
            assert!(response.get("patch").is_none());
            assert_eq!(
                response["status"],
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": r#"DaemonSet.apps "agent" is invalid: spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
                    "reason": "Invalid",
                    "details": {
                        "name": "agent",
                        "group": "apps",
                        "kind": "DaemonSet",
                        "causes": [{
                            "reason": "FieldValueNotSupported",
                            "message": r#"Unsupported value: "Never": supported values: "Always""#,
                            "field": "spec.template.spec.restartPolicy",
                        }],
                    },
                    "code": 422,
                })
            );
            assert_eq!(
                response["auditAnnotations"]["violations"],
                "spec.template.spec.restartPolicy"
            );
        }
    }

    #[test]
    fn other_kinds_subresources_and_operations_are_allowed_untouched() {
        let mut deployment = review_of(json!({ "kind": "Deployment" }), "CREATE");
        deployment["request"]["kind"] =
            json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
        let mut status = review_of(daemonset(), "UPDATE");
        status["request"]["subResource"] = json!("status");
        let mut old_version = review_of(daemonset(), "CREATE");
        old_version["request"]["kind"]["version"] = json!("v1beta2");
        let delete = review_of(Value::Null, "DELETE");
        for review in [deployment, status, old_version, delete] {
            let answer = send(&review, Endpoint::Mutate);
            assert_eq!(
                answer["response"],
                json!({ "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true })
            );
        }
    }

    fn error_of(body: &[u8]) -> EnvelopeError {
        review(body, Endpoint::Mutate, &Policy::default()).unwrap_err()
    }

    #[test]
    fn malformed_reviews_are_bad_requests_saying_what_is_wrong() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "request body is empty"),
            (b"  \n".to_vec(), "request body is empty"),
            (b"{".to_vec(), "not valid JSON"),
            (b"null".to_vec(), "not an AdmissionReview"),
            (b"[1]".to_vec(), "not an AdmissionReview"),
            (br#"["admission.k8s.io/v1","AdmissionReview",{}]"#.to_vec(), "expected a JSON object"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":["u"]}"#.to_vec(), "request must be a JSON object"),
            (b"{}".to_vec(), "expected apiVersion \"admission.k8s.io/v1\""),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#.to_vec(), "admissionReviewVersions"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "has no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#.to_vec(), "request.uid: invalid type"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{},"operation":"CREATE"}}"#.to_vec(), "request.uid is empty"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"DaemonSet"},"operation":"CREATE"}}"#.to_vec(), "request.object is missing"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"} trailing"#.to_vec(), "not valid JSON"),
        ];
        for (body, expected) in cases {
            let error = error_of(&body);
            assert_eq!(
                error.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                error.message.contains(expected),
                "{:?} does not say {expected:?}",
                error.message
            );
        }
    }

    #[test]
    fn surrogate_escapes_must_pair_even_where_nothing_is_decoded() {
        use decode::check_surrogates;
        assert!(check_surrogates(r#"{"a":"\uD83D\uDE00 \u00e9 \\uDBBB"}"#).is_ok());
        assert!(check_surrogates(r#"{"a":"no escapes at all"}"#).is_ok());
        for bad in [
            r#"{"a":"\uDBBB"}"#,
            r#"{"a":"\uDBBBx"}"#,
            r#"{"a":"\uDBBB\n"}"#,
            r#"{"a":"\uDBBB\uDBBB"}"#,
            r#"{"a":"\uDC00"}"#,
        ] {
            assert!(check_surrogates(bad).is_err(), "{bad}");
        }
        // Found by the fuzzer: an unknown field the typed view skips.
        let mut review = review_of(daemonset(), "CREATE");
        review["request"]["object"]["spec"]["futureField"] = json!("placeholder");
        let body = serde_json::to_string(&review)
            .unwrap()
            .replace("placeholder", "\\uDBBBx");
        let error = error_of(body.as_bytes());
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("unpaired surrogate"),
            "{}",
            error.message
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"DaemonSet"},"operation":"CREATE","object":"#.to_vec();
        let prefix = body.clone();
        body.extend(std::iter::repeat_n(b'[', 1_000_000));
        let error = error_of(&body);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );

        // Well-formed but absurdly deep, and no object at all.
        let mut body = prefix.clone();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.extend(b"}}");
        let error = error_of(&body);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("must be a JSON object"),
            "{}",
            error.message
        );

        // Deep inside a field our types do not know: skipped without recursing, and kept.
        let mut object = serde_json::to_string(&daemonset()).unwrap();
        object.pop();
        let deep = format!(
            r#"{object},"futureField":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let mut body = prefix;
        body.extend(deep.as_bytes());
        body.extend(b"}}");
        let outcome = review(&body, Endpoint::Mutate, &Policy::default()).unwrap();
        assert!(outcome.record.allowed);
        assert!(outcome.record.patch_operations > 0);
    }

    #[test]
    fn errors_render_as_a_metav1_status() {
        let status: Value = serde_json::from_slice(&error_of(b"{").to_status_json()).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["apiVersion"], "v1");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["code"], 400);
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn the_record_describes_the_review() {
        let body = serde_json::to_vec(&review_of(daemonset(), "CREATE")).unwrap();
        let outcome = review(&body, Endpoint::Mutate, &Policy::default()).unwrap();
        let record = outcome.record;
        assert_eq!(record.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(record.operation, Operation::Create);
        assert_eq!(record.kind, "apps/v1/DaemonSet");
        assert_eq!(
            (record.namespace.as_str(), record.name.as_str()),
            ("default", "agent")
        );
        assert!(record.allowed);
        assert_eq!(record.outcome, Outcome::Patched);
        assert_eq!(record.patch_operations, 2);
        assert_eq!(
            record.patched,
            Patched {
                tolerations: 6,
                limits: 2,
                requests: 2
            }
        );
        assert_eq!(
            record.actions,
            [("resources", Action::Patch), ("tolerations", Action::Patch)]
        );
        assert_eq!(record.warnings, 8);

        // The same review asked of /validate: judged, never patched.
        let outcome = review(&body, Endpoint::Validate, &Policy::default()).unwrap();
        assert_eq!(outcome.record.outcome, Outcome::Allowed);
        assert!(outcome.record.actions.is_empty());

        let mut object = daemonset();
        object["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        object["spec"]["selector"] = json!({});
        let body = serde_json::to_vec(&review_of(object, "CREATE")).unwrap();
        let record = review(&body, Endpoint::Mutate, &Policy::default())
            .unwrap()
            .record;
        assert_eq!((record.outcome, record.code), (Outcome::Denied, 422));
        assert_eq!(record.violations, [("selector", 1), ("restartPolicy", 1)]);
        assert_eq!(
            record.actions,
            [("restartPolicy", Action::Deny), ("selector", Action::Deny)]
        );
        assert_eq!(
            record.violation_fields,
            ["spec.selector", "spec.template.spec.restartPolicy"]
        );
    }

    #[test]
    fn the_fast_and_the_careful_decode_agree() {
        // Reordered keys (object before kind), escapes, and unknown fields all take the careful
        // path or the fast one; either way the answer is the same as for the plain review.
        let plain = serde_json::to_vec(&review_of(daemonset(), "CREATE")).unwrap();
        let expected = review(&plain, Endpoint::Mutate, &Policy::default())
            .unwrap()
            .body;
        let text = String::from_utf8(plain).unwrap();
        let mut reordered = review_of(daemonset(), "CREATE");
        let request = reordered["request"].as_object_mut().unwrap();
        let object = request.shift_remove("object").unwrap();
        let mut object_first = serde_json::Map::new();
        object_first.insert("object".to_owned(), object);
        object_first.extend(std::mem::take(request));
        reordered["request"] = Value::Object(object_first);
        let object_first = reordered.to_string();
        assert!(object_first.contains(r#""request":{"object":"#));
        let escaped = text.replace(r#""agent:1""#, r#""agent\u003a1""#);
        assert_ne!(escaped, text);
        for body in [object_first, escaped] {
            let got = review(body.as_bytes(), Endpoint::Mutate, &Policy::default()).unwrap();
            assert_eq!(got.body, expected, "{body}");
        }
    }

    #[test]
    fn a_patch_of_megabytes_is_encoded_whole() {
        // More than the 48 KiB blocks the patch is base64-encoded in.
        let mut object = daemonset();
        object["spec"]["template"]["spec"]["containers"] = (0..3000)
            .map(|i| json!({ "name": format!("c{i}"), "image": "x" }))
            .collect();
        let answer = send(&review_of(object.clone(), "CREATE"), Endpoint::Mutate);
        let patch = decoded_patch(&answer);
        assert_eq!(patch.len(), 3001);
        let verdict = crate::policy::review(&object, None, &Policy::default())
            .patch()
            .to_value();
        assert_eq!(serde_json::to_value(&patch).unwrap(), verdict);
    }

    #[test]
    fn a_policy_put_in_force_is_seen_by_the_next_review() {
        let reviewer = Reviewer::new(Policy::default());
        let body = serde_json::to_vec(&review_of(daemonset(), "CREATE")).unwrap();
        let before = reviewer.review(&body, Endpoint::Mutate).unwrap();
        assert_eq!(before.record.patched.limits, 2);
        let mut policy = Policy::default();
        policy.rules.set(Rule::Resources, crate::policy::Mode::Off);
        reviewer.set_policy(policy);
        let after = reviewer.review(&body, Endpoint::Mutate).unwrap();
        assert_eq!(after.record.patched.limits, 0);
        assert_eq!(after.record.patched.tolerations, 6);
    }

    #[test]
    fn a_repeated_key_is_merged_and_warned_about() {
        let text = serde_json::to_string(&review_of(daemonset(), "CREATE")).unwrap();
        let repeated = text.replace(
            r#""metadata":{"labels":{"app":"agent"}}"#,
            r#""metadata":{"labels":{"app":"other"}},"metadata":{"labels":{"app":"agent"}}"#,
        );
        assert_ne!(repeated, text);
        let answer: Value = serde_json::from_slice(
            &review(repeated.as_bytes(), Endpoint::Mutate, &Policy::default())
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(
            answer["response"]["warnings"][0],
            r#"duplicate field "spec.template.metadata""#
        );
    }
}
