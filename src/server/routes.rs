//! The routes and their handlers: the review endpoints (body limits and timeouts, big reviews
//! off the async workers, the log line and metrics of each review), the probes and metrics.
//! What a review decided comes from the admission layer as a [`Record`]; nothing here knows
//! DaemonSets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;

use super::Limits;
use super::metrics::{self, Metrics};
use crate::admission::{self, Endpoint, EnvelopeError, Record, Reviewer};

/// The largest AdmissionReview accepted.
pub const MAX_BODY_BYTES: usize = admission::MAX_REVIEW_BYTES;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The policy in force, replaced whole by a reload.
    pub reviewer: Reviewer,
    /// True once the certificate is loaded and the listener is accepting; false again as soon as
    /// shutdown begins.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Log whole AdmissionReviews (debug level): off unless asked, they may hold secrets.
    pub log_objects: bool,
    pub(super) body_read_timeout: Duration,
    /// Reviews judged at once on the blocking pool (those of big bodies).
    big_reviews: Arc<Semaphore>,
}

/// A body at least this big is judged on the blocking pool, not on an async worker: at the
/// engine's ~40 ms per MiB (the slowest shape, many containers) that is a millisecond of CPU,
/// which a worker serving other connections should not spend.
pub const BIG_REVIEW_BYTES: usize = 32 * 1024;

impl AppState {
    pub fn new(reviewer: Reviewer) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            reviewer,
            ready: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::new()),
            log_objects: false,
            body_read_timeout: Limits::default().body_read_timeout,
            big_reviews: Arc::new(Semaphore::new(cores)),
        }
    }
}

/// The routes: `POST /mutate`, `POST /validate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    guarded(routes, &state).with_state(state)
}

/// The plain-HTTP metrics listener's routes: `GET /metrics`, and the probes, `GET /healthz` and
/// `GET /readyz`, for a kubelet that cannot present the client certificate `--client-ca` asks
/// of every HTTPS client. Nothing here reads a request body or reveals an object.
pub fn metrics_router(state: AppState) -> Router {
    guarded(
        Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed),
        &state,
    )
    .with_state(state)
}

/// A panic in a handler is a bug: answer 500 with a Status body, count and log it, and keep
/// serving.
pub fn guarded<S: Clone + Send + Sync + 'static>(routes: Router<S>, state: &AppState) -> Router<S> {
    let metrics = state.metrics.clone();
    routes.layer(CatchPanicLayer::custom(
        move |panic: Box<dyn std::any::Any + Send + 'static>| {
            metrics.panic();
            let detail = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            tracing::error!(panic = detail, "a handler panicked; answering 500");
            EnvelopeError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: {detail}"),
            )
            .into_response()
        },
    ))
}

async fn mutate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Endpoint::Mutate, request).await
}

async fn validate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Endpoint::Validate, request).await
}

async fn review(state: AppState, endpoint: Endpoint, request: Request) -> Response {
    let started = Instant::now();
    let webhook = endpoint.path();
    let _in_flight = state.metrics.in_flight(endpoint);
    let result = match read_review_body(request, state.body_read_timeout).await {
        Ok(body) => {
            if state.log_objects {
                tracing::debug!(webhook, review = %String::from_utf8_lossy(&body), "request");
            }
            judge(&state, body, endpoint).await
        }
        Err(error) => Err(error),
    };
    let latency = started.elapsed();
    let response = match result {
        Ok(reviewed) => {
            log_review(webhook, &reviewed.record, latency);
            state.metrics.response(endpoint, &reviewed.record);
            json_response(StatusCode::OK, reviewed.body)
        }
        Err(error) => {
            tracing::warn!(webhook, %error, "rejected a malformed review");
            error.into_response()
        }
    };
    state
        .metrics
        .request(endpoint, response.status().as_u16(), latency);
    response
}

/// Reviews `body`: on this worker when it is small, on the blocking pool when it is big (at most
/// as many at once as there are cores; more wait for their turn without holding a thread), so
/// that a big review never stalls the reviews, probes and signals the workers serve.
async fn judge(
    state: &AppState,
    body: bytes::Bytes,
    endpoint: Endpoint,
) -> Result<admission::Reviewed, EnvelopeError> {
    if body.len() < BIG_REVIEW_BYTES {
        return state.reviewer.review(&body, endpoint);
    }
    let reviewer = state.reviewer.clone();
    let permit = state
        .big_reviews
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| EnvelopeError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let judged = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        reviewer.review(&body, endpoint)
    })
    .await;
    judged.unwrap_or_else(|error| {
        // A panic in the engine is a bug: answer 500 as the panic layer does for handlers.
        state.metrics.panic();
        tracing::error!(%error, "a review panicked; answering 500");
        Err(EnvelopeError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {error}"),
        ))
    })
}

/// `tolerations=6 limits=2 requests=2`, or nothing when nothing was patched.
struct PatchedCounts<'a>(&'a Record);

impl std::fmt::Display for PatchedCounts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let record = self.0;
        if record.patch_operations == 0 {
            return Ok(());
        }
        let patched = record.patched;
        write!(
            f,
            "tolerations={} limits={} requests={}",
            patched.tolerations, patched.limits, patched.requests
        )
    }
}

/// The violations' fields, comma-separated.
struct Fields<'a>(&'a [String]);

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(field)?;
        }
        Ok(())
    }
}

/// One line per review: who, what was decided, what was patched, how long it took. Never the
/// object itself. Its fields are formatted only when the line is written.
fn log_review(webhook: &'static str, record: &Record, latency: Duration) {
    tracing::info!(
        webhook,
        uid = %record.uid,
        operation = %record.operation,
        kind = %record.kind,
        namespace = %record.namespace,
        name = %record.name,
        decision = record.outcome.as_str(),
        patched = %PatchedCounts(record),
        violations = %Fields(&record.violation_fields),
        warnings = record.warnings,
        latency_us = latency.as_micros() as u64,
        "review"
    );
}

/// Reads the body of a review request: JSON only, at most [`MAX_BODY_BYTES`], within
/// `timeout`.
///
/// The body is read before the content type is judged: answering before the client has sent
/// its body makes HTTP/2 clients see a reset stream instead of our error.
async fn read_review_body(
    request: Request,
    timeout: Duration,
) -> Result<bytes::Bytes, EnvelopeError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let body = match tokio::time::timeout(timeout, collect_body(body, declared)).await {
        Err(_) => {
            return Err(EnvelopeError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {}s", timeout.as_secs()),
            ));
        }
        Ok(result) => result?,
    };
    check_content_type(&parts.headers)?;
    Ok(body)
}

/// Collects a body of at most [`MAX_BODY_BYTES`]: one chunk is kept as it came, several are
/// copied once into a buffer sized by `Content-Length` (never a list of chunks and then a
/// copy of them all, which held a big body twice).
async fn collect_body(
    mut body: Body,
    declared: Option<usize>,
) -> Result<bytes::Bytes, EnvelopeError> {
    // A declared length over the cap is not answered at once: a client still sending its body
    // would see a broken connection, not the 413.
    let declared = declared.map(|length| length.min(MAX_BODY_BYTES));
    let mut first: Option<bytes::Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            EnvelopeError::new(
                StatusCode::BAD_REQUEST,
                format!("reading request body: {error}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received = first.as_ref().map_or(0, bytes::Bytes::len) + joined.len() + data.len();
        if received > MAX_BODY_BYTES {
            return Err(EnvelopeError::too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(earlier) => {
                joined.reserve_exact(declared.unwrap_or(received).max(received));
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => bytes::Bytes::from(joined),
    })
}

fn check_content_type(headers: &HeaderMap) -> Result<(), EnvelopeError> {
    let unsupported = |found: &str| {
        EnvelopeError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be application/json, got {found} \
                 (with curl: -H 'Content-Type: application/json')"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("none"));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("a non-ASCII value"))?;
    let media_type = value.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(unsupported(&format!("{value:?}")))
    }
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok")
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        plain(StatusCode::OK, "ok")
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    EnvelopeError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; the webhook serves POST /mutate, POST /validate, GET /healthz, GET /readyz, GET /metrics",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    EnvelopeError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl IntoResponse for EnvelopeError {
    fn into_response(self) -> Response {
        json_response(self.status, self.to_status_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn call(router: Router, request: axum::http::Request<Body>) -> (StatusCode, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_keeps_serving() {
        let state = AppState::new(Reviewer::new(Default::default()));
        let routes: Router<AppState> = Router::new()
            .route("/panic", get(boom))
            .route("/healthz", get(healthz));
        let router = guarded(routes, &state).with_state(state.clone());
        let get = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();
        let (status, body) = call(router.clone(), get("/panic")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let status_json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status_json["kind"], "Status");
        assert_eq!(status_json["message"], "internal error: boom");
        assert!(
            state
                .metrics
                .encode()
                .contains("controller_runtime_webhook_panics_total 1")
        );
        let (status, _) = call(router, get("/healthz")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_and_move_with_reviews() {
        let state = AppState::new(Reviewer::new(Default::default()));
        let router = router(state.clone());
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/create-plain.json"
        ))
        .unwrap();
        let review = axum::http::Request::post("/mutate")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, _) = call(router.clone(), review).await;
        assert_eq!(status, StatusCode::OK);
        let (status, text) = call(
            router,
            axum::http::Request::get("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"daemonset_webhook_mutations_total{kind="toleration"} 6"#),
            "{text}"
        );
    }
}
