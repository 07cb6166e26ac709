//! Reading an AdmissionReview: one pass over the body for a well-formed review of a DaemonSet
//! (the object decoded straight into the policy's view of it), and a slower, careful pass that
//! says exactly what is wrong with any other body.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{API_VERSION, EnvelopeError, KIND};
use crate::policy::object::{self, DaemonSet};

/// `admission.k8s.io/v1` `AdmissionRequest.operation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    /// One the API server does not send; allowed untouched like DELETE.
    Other(String),
}

impl Operation {
    fn parse(text: &str) -> Self {
        match text {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            other => Operation::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other(other) => other,
        }
    }

    /// Whether the webhook judges the object: CREATE and UPDATE write one.
    pub fn writes(&self) -> bool {
        matches!(self, Operation::Create | Operation::Update)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind<'a> {
    #[serde(default, borrow)]
    pub group: Cow<'a, str>,
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
}

impl GroupVersionKind<'_> {
    pub fn is_daemon_set(&self) -> bool {
        self.group == "apps" && self.version == "v1" && self.kind == "DaemonSet"
    }
}

impl fmt::Display for GroupVersionKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

/// The object of a review.
#[derive(Debug)]
pub enum Object<'a> {
    /// `null` or absent.
    Missing,
    /// Not a JSON object.
    Malformed,
    /// Decoded as a DaemonSet in the same pass as the envelope.
    DaemonSet(Box<DaemonSet<'a>>),
    /// As text, to decode once it is known to be a DaemonSet.
    Text(&'a str),
}

/// The part of an `AdmissionRequest` the webhook reads.
#[derive(Debug)]
pub struct Request<'a> {
    pub uid: Cow<'a, str>,
    pub kind: GroupVersionKind<'a>,
    pub sub_resource: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub namespace: Option<Cow<'a, str>>,
    pub operation: Operation,
    pub object: Object<'a>,
}

/// Decodes a body that has passed the byte-level checks (JSON object, UTF-8, surrogates).
pub fn request(body: &str) -> Result<Request<'_>, EnvelopeError> {
    match fast(body) {
        Some(request) => Ok(request),
        None => careful(body),
    }
}

// ---------------------------------------------------------------------------------------------
// The fast pass: well-formed reviews of DaemonSets without repeated keys.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FastReview<'a> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: MapOnly<FastRequest<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FastRequest<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(default, borrow)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow)]
    object: FastObject<'a>,
}

/// A value that must be a JSON object: serde's derived structs would also take an array.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(MapVisitor(std::marker::PhantomData))
            .map(MapOnly)
    }
}

/// The object decoded as a DaemonSet, and whether a key repeated in it.
struct FastObject<'a> {
    daemon_set: DaemonSet<'a>,
    repeated_keys: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for FastObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let decoding = object::Decoding::default();
        // `null` is for the careful path to report.
        let daemon_set = DaemonSet::seed(&decoding)
            .deserialize(deserializer)?
            .ok_or_else(|| de::Error::custom("request.object is null"))?;
        Ok(FastObject {
            daemon_set,
            repeated_keys: decoding.repeated_keys(),
        })
    }
}

/// One pass for the common case: a well-formed v1 review of an apps/v1 DaemonSet (the object is
/// decoded as one whatever the kind; a review of anything else takes the careful path). `None`
/// for anything else, for the careful path to judge.
fn fast(body: &str) -> Option<Request<'_>> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let review = FastReview::deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    let request = review.request.0;
    let usable = review.api_version == API_VERSION
        && review.kind == KIND
        && !request.uid.is_empty()
        && request.kind.is_daemon_set()
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
        && !request.object.repeated_keys;
    usable.then(|| Request {
        uid: request.uid,
        kind: request.kind,
        sub_resource: request.sub_resource,
        name: request.name,
        namespace: request.namespace,
        operation: Operation::parse(&request.operation),
        object: Object::DaemonSet(Box::new(request.object.daemon_set)),
    })
}

// ---------------------------------------------------------------------------------------------
// The careful pass.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    /// Decoded only once apiVersion and kind are known to be right, so a v1beta1 review is
    /// reported as such rather than as a request we cannot read.
    #[serde(borrow)]
    request: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CarefulRequest<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(default, borrow)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    /// The object as the request carries it: JSON text, borrowed from the body.
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

/// Every check in the order a person fixing their request needs them, each error naming the
/// field.
fn careful(body: &str) -> Result<Request<'_>, EnvelopeError> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let review: Review<'_> =
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
    let request: CarefulRequest<'_> = serde_path_to_error::deserialize(
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
    let object = match request.object.map(RawValue::get) {
        None | Some("null") => Object::Missing,
        Some(text) if text.starts_with('{') => Object::Text(text),
        Some(_) => Object::Malformed,
    };
    Ok(Request {
        uid: request.uid,
        kind: request.kind,
        sub_resource: request.sub_resource,
        name: request.name,
        namespace: request.namespace,
        operation: Operation::parse(&request.operation),
        object,
    })
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

/// The byte-level checks: not empty, a JSON object, UTF-8, and no unpaired surrogate escape.
pub fn text(body: &[u8]) -> Result<&str, EnvelopeError> {
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
    Ok(body)
}

/// Checks that every `\u` escape of a UTF-16 surrogate in the body's strings comes in a proper
/// pair. serde_json checks this only in the strings it decodes; the parts of a review it skips
/// (fields it does not need) would otherwise let text through that is not JSON. Most bodies have
/// no `\u` escape at all: one `memmem` search tells, and only then are strings walked (one pass,
/// no recursion, nothing allocated).
pub(super) fn check_surrogates(body: &str) -> Result<(), String> {
    let bytes = body.as_bytes();
    if memchr::memmem::find(bytes, b"\\u").is_none() {
        return Ok(());
    }
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
                if let Some(at) = pending_high.take() {
                    return Err(format!("unpaired surrogate escape at byte {at}"));
                }
                in_string = false;
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
