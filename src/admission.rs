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
use serde_json::Value;

use crate::policy::{self, FieldError, Policy, Verdict};

pub const API_VERSION: &str = "admission.k8s.io/v1";
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
struct IncomingReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest>,
}

/// The part of an `AdmissionRequest` the webhook reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
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
    fn allow(request: &AdmissionRequest) -> Self {
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
    fn deny_invalid(mut self, name: &str, violations: &[FieldError]) -> Self {
        self.allowed = false;
        self.status = Some(Status {
            api_version: None,
            kind: None,
            metadata: Empty {},
            status: "Failure",
            message: policy::invalid_message(name, violations),
            reason: "Invalid",
            details: Some(StatusDetails {
                name: name.to_owned(),
                group: "apps",
                kind: "DaemonSet",
                causes: violations
                    .iter()
                    .map(|v| StatusCause {
                        reason: v.cause_type(),
                        message: v.body(),
                        field: v.field.clone(),
                    })
                    .collect(),
            }),
            code: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
        });
        self.audit_annotations.insert(
            "violations".to_owned(),
            violations
                .iter()
                .map(|v| v.field.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        self
    }

    fn with_patch(mut self, verdict: &Verdict) -> Self {
        let operations = verdict.patch();
        if operations.is_empty() {
            return self;
        }
        let bytes = serde_json::to_vec(&operations).unwrap_or_default();
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        self.patch_type = Some("JSONPatch");
        self.warnings = verdict.warnings();
        self.audit_annotations = verdict.audit_annotations();
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
}

/// Reviews one encoded AdmissionReview.
pub fn review(
    body: &[u8],
    endpoint: Endpoint,
    policy: &Policy,
) -> Result<ReviewOutcome, EnvelopeError> {
    let request = decode(body)?;
    let (response, patch_operations) = respond(&request, endpoint, policy)?;
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
    })
}

fn decode(body: &[u8]) -> Result<AdmissionRequest, EnvelopeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EnvelopeError::bad_request(
            "request body is empty; expected an admission.k8s.io/v1 AdmissionReview",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let review: IncomingReview =
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
    let request = review
        .request
        .ok_or_else(|| EnvelopeError::bad_request("AdmissionReview has no request"))?;
    if request.uid.is_empty() {
        return Err(EnvelopeError::bad_request("request.uid is empty"));
    }
    Ok(request)
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
    request: &AdmissionRequest,
    endpoint: Endpoint,
    policy: &Policy,
) -> Result<(AdmissionResponse, usize), EnvelopeError> {
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
        return Ok((allow, 0));
    }
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok((allow, 0));
    }
    let object = match &request.object {
        Some(object) if !object.is_null() => object,
        _ => {
            return Err(EnvelopeError::bad_request(format!(
                "request.object is missing; a {} review must carry the DaemonSet",
                request.operation
            )));
        }
    };
    let verdict = policy::review(object, policy);
    if !verdict.violations.is_empty() {
        return Ok((
            allow.deny_invalid(&object_name(request), &verdict.violations),
            0,
        ));
    }
    Ok(match endpoint {
        Endpoint::Mutate => (allow.with_patch(&verdict), verdict.operations.len()),
        Endpoint::Validate => (allow, 0),
    })
}

fn is_daemonset(kind: &GroupVersionKind) -> bool {
    kind.group == "apps" && kind.version == "v1" && kind.kind == "DaemonSet"
}

/// The object's name as the API server's messages use it.
fn object_name(request: &AdmissionRequest) -> String {
    request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            request
                .object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
