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
use super::budget::{MemoryBudget, Reservation};
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
    /// Bytes of request bodies (and of their answers) in memory, across connections.
    budget: MemoryBudget,
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
        let metrics = Arc::new(Metrics::new());
        let limits = Limits::default();
        Self {
            reviewer,
            ready: Arc::new(AtomicBool::new(false)),
            budget: MemoryBudget::new(
                limits.max_body_memory,
                metrics.body_memory(limits.max_body_memory),
            ),
            metrics,
            log_objects: false,
            body_read_timeout: limits.body_read_timeout,
            big_reviews: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Applies the limits the handlers enforce: the body timeout and the memory budget.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.body_read_timeout = limits.body_read_timeout;
        self.budget = MemoryBudget::new(
            limits.max_body_memory,
            self.metrics.body_memory(limits.max_body_memory),
        );
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
    let mut reservation = state.budget.empty();
    let (parts, mut body) = request.into_parts();
    let result = match read_review_body(&parts.headers, &mut body, &state, &mut reservation).await {
        Ok(body) => {
            if state.log_objects {
                tracing::debug!(webhook, review = %String::from_utf8_lossy(&body), "request");
            }
            judge(&state, body, endpoint, &mut reservation).await
        }
        Err(error) => Err(error),
    };
    let latency = started.elapsed();
    let response = match result {
        Ok(reviewed) => {
            log_review(webhook, &reviewed.record, latency);
            state.metrics.response(endpoint, &reviewed.record);
            let extra = reviewed.body.len().saturating_sub(reservation.bytes());
            if extra > 0 {
                // Past the budget only by what the answer adds over its review; not waited for.
                state.budget.take(&mut reservation, extra);
            }
            json_response(StatusCode::OK, reviewed.body)
        }
        Err(error) if error.status == StatusCode::SERVICE_UNAVAILABLE => {
            state.metrics.shed();
            tracing::warn!(webhook, %error, "turned a review away");
            error.into_response()
        }
        Err(error) => {
            tracing::warn!(webhook, %error, "rejected a malformed review");
            error.into_response()
        }
    };
    state
        .metrics
        .request(endpoint, response.status().as_u16(), latency);
    // The answer holds the review's budget until it is written: a client that does not read it
    // holds no more than it was granted, until the write timeout drops it. It also holds what
    // is left of the request body: an HTTP/2 stream whose body is dropped before the answer is
    // sent is reset with CANCEL and the client sees no answer (curl: no status); dropped after,
    // it is reset with NO_ERROR, which asks the client to stop sending and read the answer.
    response.map(|answer| {
        Body::new(Holding {
            answer,
            _held: (reservation, body),
        })
    })
}

/// An answer's body, holding `_held` until hyper is done writing it.
struct Holding<T> {
    answer: Body,
    _held: T,
}

impl<T: Unpin> axum::body::HttpBody for Holding<T> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.answer.size_hint()
    }
}

/// Judging a big review takes memory beyond its body (the decoded view, the answer being
/// written): this many times the body's size more is reserved before it is judged. Measured
/// by benches/scaling.py (6 MiB reviews): a review's peak is 6 to 9 times its body, and 17
/// times for one of 160,000 containers, whose patch is 5.4 times the body. A reservation
/// beyond the budget takes all of it, so such a review is judged alone.
const JUDGING_FACTOR: usize = 8;

/// The budget a review of a `body`-byte body needs: its body, and for a big one its judging.
/// Reserved at once when the length is declared, so that no request holds part of what it
/// needs while it waits for the rest (two big reviews doing so would both be turned away).
fn needs(body: usize) -> usize {
    if body < BIG_REVIEW_BYTES {
        body
    } else {
        body.saturating_mul(1 + JUDGING_FACTOR)
    }
}

/// Reviews `body`: on this worker when it is small, on the blocking pool when it is big (at most
/// as many at once as there are cores; more wait for their turn without holding a thread), so
/// that a big review never stalls the reviews, probes and signals the workers serve. A big one
/// is judged only once the memory budget has room for its judging too.
async fn judge(
    state: &AppState,
    body: bytes::Bytes,
    endpoint: Endpoint,
    reservation: &mut Reservation,
) -> Result<admission::Reviewed, EnvelopeError> {
    if body.len() < BIG_REVIEW_BYTES {
        return state.reviewer.review(&body, endpoint);
    }
    let more = needs(body.len()).saturating_sub(reservation.bytes());
    if more > 0 && !state.budget.grow(reservation, more).await {
        return Err(EnvelopeError::busy(format!(
            "the webhook is at its memory budget ({} bytes) for judging big reviews; retry",
            state.budget.limit()
        )));
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
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    // The same line, JSON written by hand when logs are JSON: a quarter of the cost.
    let written =
        crate::logging::json_line(tracing::Level::INFO, module_path!(), "review", |line| {
            line.str("webhook", webhook)
                .str("uid", &record.uid)
                .display("operation", &record.operation)
                .str("kind", &record.kind)
                .str("namespace", &record.namespace)
                .str("name", &record.name)
                .str("decision", record.outcome.as_str())
                .display("patched", &PatchedCounts(record))
                .display("violations", &Fields(&record.violation_fields))
                .u64("warnings", record.warnings as u64)
                .u64("latency_us", latency.as_micros() as u64);
        });
    if written {
        return;
    }
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

/// Reads the body of a review request: JSON only, at most [`MAX_BODY_BYTES`], within the body
/// timeout, only as far as the memory budget grants room for it (`reservation` holds it).
///
/// The body is read before the content type is judged: answering before the client has sent
/// its body makes HTTP/2 clients see a reset stream instead of our error.
async fn read_review_body(
    headers: &HeaderMap,
    body: &mut Body,
    state: &AppState,
    reservation: &mut Reservation,
) -> Result<bytes::Bytes, EnvelopeError> {
    let timeout = state.body_read_timeout;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let deadline = tokio::time::Instant::now() + timeout;
    let collected = collect_body(body, declared, &state.budget, reservation);
    let collected = match tokio::time::timeout_at(deadline, collected).await {
        Err(_) => {
            return Err(EnvelopeError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {}s", timeout.as_secs()),
            ));
        }
        Ok(result) => result,
    };
    let error = match collected {
        Ok(collected) => {
            check_content_type(headers)?;
            return Ok(collected);
        }
        Err(error) => error,
    };
    // The client is still sending. Read the rest (keeping none of it), so that it finishes and
    // reads the answer: a 413's body whatever its size, within the body timeout; a 503's only
    // when small, for what a big one would cost is what the budget is there to refuse. Left
    // unread, HTTP/1.1 closes the connection (a client still writing may miss the answer) and
    // an HTTP/2 stream is reset with NO_ERROR once answered (curl 7 then shows no status).
    let most = match error.status {
        StatusCode::PAYLOAD_TOO_LARGE => MAX_BODY_BYTES,
        StatusCode::SERVICE_UNAVAILABLE => SMALL_REST_BYTES,
        _ => 0,
    };
    if most > 0 {
        let _ = tokio::time::timeout_at(deadline, discard(body, most)).await;
    }
    Err(error)
}

/// What is left of a turned-away body that is still read (and dropped) so the client sees the
/// 503: a review of ordinary size.
const SMALL_REST_BYTES: usize = 64 * 1024;

/// Reads what is left of `body`, keeping none, unless it is (or turns out) more than `most`
/// bytes; whether it ended.
async fn discard(body: &mut Body, most: usize) -> bool {
    let mut read = 0;
    if axum::body::HttpBody::size_hint(&*body).lower() > most as u64 {
        return false;
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Some(data) = frame.data_ref() {
            read += data.len();
            if read > most {
                return false;
            }
        }
    }
    true
}

/// Collects a body of at most [`MAX_BODY_BYTES`]: one chunk is kept as it came, several are
/// copied once into a buffer sized by `Content-Length` (never a list of chunks and then a
/// copy of them all, which held a big body twice).
///
/// Budget is reserved before bytes are read: a declared length whole, before the first byte
/// (so that many uploads do not each hold part of the budget waiting for the rest); otherwise
/// as chunks arrive. Until it is granted the body is not read, and flow control (TCP; HTTP/2's
/// stream and connection windows, replenished only as the body is read) holds the client
/// back. Not granted within [`super::budget::WAIT`]: 503.
async fn collect_body(
    body: &mut Body,
    declared: Option<usize>,
    budget: &MemoryBudget,
    reservation: &mut Reservation,
) -> Result<bytes::Bytes, EnvelopeError> {
    // A declared length over the cap is not answered at once: a client still sending its body
    // would see a broken connection, not the 413.
    let declared = declared.map(|length| length.min(MAX_BODY_BYTES));
    let no_room = || {
        EnvelopeError::busy(format!(
            "the webhook is at its memory budget for request bodies ({} bytes); retry",
            budget.limit()
        ))
    };
    if let Some(length) = declared
        && !budget.grow(reservation, needs(length)).await
    {
        return Err(no_room());
    }
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
        if received > reservation.bytes()
            && !budget
                .grow(reservation, received - reservation.bytes())
                .await
        {
            return Err(no_room());
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
        let mut response = json_response(self.status, self.to_status_json());
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
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
