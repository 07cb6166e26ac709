//! The `admission.k8s.io/v1` envelope: decodes an AdmissionReview, routes its object to the
//! policy, and encodes the AdmissionReview the API server expects back. No sockets here.
//!
//! The envelope types are our own rather than kube-core's: kube-core encodes `response.patch`
//! as an array of numbers instead of base64 (kube-rs/kube#1781), its `invalid()` answers
//! v1beta1 (kube-rs/kube#1904), and its typed `ObjectMeta` would drop metadata fields a newer
//! Kubernetes adds. Here the object stays raw JSON end to end.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::policy::{self, Policy, Verdict, Violation};

pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The largest AdmissionReview accepted. An object may be up to ~3 MiB in etcd and a review of an
/// UPDATE carries it twice, plus the envelope.
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;
pub const KIND: &str = "AdmissionReview";

/// Which webhook is being asked: the mutating one may patch, the validating one never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
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
}

impl EnvelopeError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The error as a `metav1.Status` object, the shape Kubernetes clients expect of an error.
    pub fn to_status_json(&self) -> Vec<u8> {
        let status = Status {
            api_version: Some("v1"),
            kind: Some("Status"),
            metadata: Empty {},
            status: "Failure",
            message: self.message.clone(),
            reason: status_reason(self.status),
            details: None,
            code: self.status.as_u16(),
        };
        serde_json::to_vec(&status).unwrap_or_default()
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
        _ => "InternalError",
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (staging/src/k8s.io/api/admission/v1/types.go). Only the fields we read are
// declared; the rest of the request (userInfo, oldObject, options, ...) is skipped unparsed.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingReview<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    /// Decoded only once apiVersion and kind are known to be right, so a v1beta1 review is
    /// reported as such rather than as a request we cannot read.
    #[serde(borrow)]
    request: Option<&'a RawValue>,
}

/// The part of an `AdmissionRequest` the webhook reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    /// The object as the request carries it: JSON text, borrowed from the body.
    #[serde(default, borrow)]
    pub object: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

impl fmt::Display for GroupVersionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingReview {
    api_version: &'static str,
    kind: &'static str,
    response: AdmissionResponse,
}

/// `AdmissionResponse`, as the API server reads it: `patch` is base64 of the JSON Patch bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `metav1.Status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub metadata: Empty,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusDetails {
    pub name: String,
    pub group: &'static str,
    pub kind: &'static str,
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusCause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl AdmissionResponse {
    /// An allowing response to `request`: the uid is echoed by construction.
    fn allow(request: &AdmissionRequest<'_>) -> Self {
        Self {
            uid: request.uid.clone(),
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            audit_annotations: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Denies with the API server's own `Invalid` status: 422, every violation as a cause.
    fn deny_invalid(mut self, name: &str, violations: &[Violation]) -> Self {
        self.allowed = false;
        self.status = Some(Status {
            api_version: None,
            kind: None,
            metadata: Empty {},
            status: "Failure",
            message: policy::invalid_message(name, violations.iter().map(|v| &v.error)),
            reason: "Invalid",
            details: Some(StatusDetails {
                name: name.to_owned(),
                group: "apps",
                kind: "DaemonSet",
                causes: violations
                    .iter()
                    .map(|v| StatusCause {
                        reason: v.error.cause_type(),
                        message: v.error.body(),
                        field: v.error.field.clone(),
                    })
                    .collect(),
            }),
            code: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
        });
        self
    }

    fn with_patch(mut self, verdict: &Verdict) -> Self {
        let operations = verdict.patch();
        if !operations.is_empty() {
            let bytes = serde_json::to_vec(&operations).unwrap_or_default();
            self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            self.patch_type = Some("JSONPatch");
        }
        self
    }

    /// Warnings and audit annotations explaining the verdict; the changes only where the
    /// response can make them (`mutations`).
    fn explained(mut self, verdict: &Verdict, mutations: bool) -> Self {
        self.warnings = verdict.warnings(mutations);
        self.audit_annotations = verdict.audit_annotations(mutations);
        self
    }

    fn into_review(self) -> OutgoingReview {
        OutgoingReview {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        }
    }
}

/// What a review decided, for the server's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSummary {
    pub uid: String,
    pub operation: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub allowed: bool,
    pub patch_operations: usize,
}

/// A decided review: the AdmissionReview to send back, encoded, and its summary.
#[derive(Debug, Clone)]
pub struct ReviewOutcome {
    pub body: Vec<u8>,
    pub response: AdmissionResponse,
    pub summary: ReviewSummary,
    /// The policy's verdict, when a DaemonSet was judged (not for other kinds or operations).
    pub verdict: Option<Verdict>,
}

/// Reviews one encoded AdmissionReview.
pub fn review(
    body: &[u8],
    endpoint: Endpoint,
    policy: &Policy,
) -> Result<ReviewOutcome, EnvelopeError> {
    let request = decode(body)?;
    let (response, verdict) = respond(&request, endpoint, policy)?;
    let patch_operations = verdict
        .as_ref()
        .filter(|_| response.patch.is_some())
        .map_or(0, |v| v.operations.len());
    let summary = ReviewSummary {
        uid: request.uid.clone(),
        operation: request.operation.clone(),
        kind: request.kind.to_string(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: object_name(&request),
        allowed: response.allowed,
        patch_operations,
    };
    let review = response.clone().into_review();
    let body = serde_json::to_vec(&review).map_err(|e| {
        EnvelopeError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response: {e}"),
        )
    })?;
    Ok(ReviewOutcome {
        body,
        response,
        summary,
        verdict,
    })
}

fn decode(body: &[u8]) -> Result<AdmissionRequest<'_>, EnvelopeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EnvelopeError::bad_request(
            "request body is empty; expected an admission.k8s.io/v1 AdmissionReview",
        ));
    }
    // serde's derived decoding would also take a JSON array in field order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(EnvelopeError::bad_request(
            "request body is not an AdmissionReview: expected a JSON object",
        ));
    }
    let body = std::str::from_utf8(body)
        .map_err(|e| EnvelopeError::bad_request(format!("request body is not valid UTF-8: {e}")))?;
    check_surrogates(body).map_err(|message| {
        EnvelopeError::bad_request(format!("request body is not valid JSON: {message}"))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let review: IncomingReview<'_> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            decode_error(&path, error.into_inner())
        })?;
    deserializer
        .end()
        .map_err(|error| decode_error(".", error))?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(EnvelopeError::bad_request(format!(
            "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got {:?} and {:?} \
             (the webhook configuration must list admissionReviewVersions: [\"v1\"])",
            review.api_version, review.kind
        )));
    }
    let raw_request = review
        .request
        .filter(|raw| raw.get() != "null")
        .ok_or_else(|| EnvelopeError::bad_request("AdmissionReview has no request"))?;
    if !raw_request.get().starts_with('{') {
        return Err(EnvelopeError::bad_request(
            "request body is not an AdmissionReview: request must be a JSON object",
        ));
    }
    let request: AdmissionRequest<'_> = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_str(raw_request.get()),
    )
    .map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." {
            "request".to_owned()
        } else {
            format!("request.{path}")
        };
        decode_error(&path, error.into_inner())
    })?;
    if request.uid.is_empty() {
        return Err(EnvelopeError::bad_request("request.uid is empty"));
    }
    Ok(request)
}

/// Checks that every `\\u` escape of a UTF-16 surrogate in the body's strings comes in a proper
/// pair. serde_json checks this only in the strings it decodes; the parts of a review it skips
/// (fields it does not need) would otherwise let text through that is not JSON. One pass, no
/// recursion, nothing allocated.
fn check_surrogates(body: &str) -> Result<(), String> {
    let bytes = body.as_bytes();
    let hex = |at: usize| -> Option<u32> {
        let digits = bytes.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut in_string = false;
    // The position of a high surrogate still waiting for its low half.
    let mut pending_high: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (false, b'"') => in_string = true,
            (false, _) => {}
            (true, b'"') => {
                in_string = false;
                if let Some(at) = pending_high.take() {
                    return Err(format!("unpaired surrogate escape at byte {at}"));
                }
            }
            (true, b'\\') => {
                let escape_at = i;
                if bytes.get(i + 1) == Some(&b'u') {
                    let unit = hex(i + 2).unwrap_or(0);
                    match (unit, pending_high.take()) {
                        (0xD800..=0xDBFF, None) => pending_high = Some(escape_at),
                        (0xDC00..=0xDFFF, Some(_)) => {}
                        (0xD800..=0xDFFF, _) | (_, Some(_)) => {
                            return Err(format!(
                                "unpaired surrogate escape at byte {}",
                                pending_high.unwrap_or(escape_at)
                            ));
                        }
                        _ => {}
                    }
                    i += 6;
                    continue;
                }
                if let Some(at) = pending_high.take() {
                    return Err(format!("unpaired surrogate escape at byte {at}"));
                }
                i += 2;
                continue;
            }
            (true, _) => {
                if let Some(at) = pending_high.take() {
                    return Err(format!("unpaired surrogate escape at byte {at}"));
                }
            }
        }
        i += 1;
    }
    Ok(())
}

fn decode_error(path: &str, error: serde_json::Error) -> EnvelopeError {
    if error.is_syntax() || error.is_eof() {
        EnvelopeError::bad_request(format!("request body is not valid JSON: {error}"))
    } else if path == "." {
        EnvelopeError::bad_request(format!("request body is not an AdmissionReview: {error}"))
    } else {
        EnvelopeError::bad_request(format!(
            "request body is not an AdmissionReview: {path}: {error}"
        ))
    }
}

fn respond(
    request: &AdmissionRequest<'_>,
    endpoint: Endpoint,
    policy: &Policy,
) -> Result<(AdmissionResponse, Option<Verdict>), EnvelopeError> {
    let allow = AdmissionResponse::allow(request);
    if !is_daemonset(&request.kind)
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
        return Ok((allow, None));
    }
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok((allow, None));
    }
    let object = match request.object {
        Some(object) if object.get().starts_with('{') => object.get(),
        Some(object) if object.get() != "null" => {
            return Err(EnvelopeError::bad_request(
                "request.object must be a JSON object",
            ));
        }
        _ => {
            return Err(EnvelopeError::bad_request(format!(
                "request.object is missing; a {} review must carry the DaemonSet",
                request.operation
            )));
        }
    };
    let verdict =
        policy::review_json(object, request.namespace.as_deref(), policy).map_err(|error| {
            EnvelopeError::bad_request(format!(
                "request body is not valid JSON: request.object.{error}"
            ))
        })?;
    let mutates = endpoint == Endpoint::Mutate && verdict.allowed();
    let response = if !verdict.allowed() {
        allow.deny_invalid(&object_name(request), &verdict.violations)
    } else if mutates {
        allow.with_patch(&verdict)
    } else {
        allow
    };
    Ok((response.explained(&verdict, mutates), Some(verdict)))
}

fn is_daemonset(kind: &GroupVersionKind) -> bool {
    kind.group == "apps" && kind.version == "v1" && kind.kind == "DaemonSet"
}

/// The object's name as the API server's messages use it.
fn object_name(request: &AdmissionRequest<'_>) -> String {
    #[derive(Deserialize)]
    struct Named {
        metadata: Option<Metadata>,
    }
    #[derive(Deserialize)]
    struct Metadata {
        name: Option<String>,
    }
    request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            let named: Named = serde_json::from_str(request.object?.get()).ok()?;
            named.metadata?.name
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(check_surrogates(r#"{"a":"\uD83D\uDE00 \u00e9 \\uDBBB"}"#).is_ok());
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
        assert!(outcome.response.allowed);
        assert!(outcome.response.patch.is_some());
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
    fn the_summary_describes_the_review() {
        let body = serde_json::to_vec(&review_of(daemonset(), "CREATE")).unwrap();
        let outcome = review(&body, Endpoint::Mutate, &Policy::default()).unwrap();
        assert_eq!(
            outcome.summary,
            ReviewSummary {
                uid: "705ab4f5-6393-11e8-b7cc-42010a800002".to_owned(),
                operation: "CREATE".to_owned(),
                kind: "apps/v1/DaemonSet".to_owned(),
                namespace: "default".to_owned(),
                name: "agent".to_owned(),
                allowed: true,
                patch_operations: 2,
            }
        );
    }
}
