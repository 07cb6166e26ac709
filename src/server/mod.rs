//! The HTTPS shell around the admission engine: routing, body limits, health, metrics, TLS
//! accept loop with connection limits and timeouts, reloads, graceful shutdown. It knows nothing
//! of DaemonSets.

pub mod metrics;
pub mod reload;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::admission::{self, Endpoint, EnvelopeError, Record};
use crate::policy::Policy;
use metrics::Metrics;

/// The largest AdmissionReview accepted.
pub const MAX_BODY_BYTES: usize = admission::MAX_REVIEW_BYTES;

/// How the server behaves under load and at its edges; `--help` documents each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; beyond it the listener waits (the kernel's backlog queues).
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// Whether HTTP/2 is offered at all (ALPN `h2`).
    pub http2: bool,
    /// The TLS handshake, the first request's first byte, and each request's headers must
    /// arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request for this long is closed (HTTP/1.1 keep-alive and HTTP/2
    /// alike). Longer than the 90 s kube-apiserver's client keeps idle connections, so that the
    /// client closes first and never sends a review down a connection the server is closing.
    pub idle_timeout: Duration,
    /// A request body must arrive within this.
    pub body_read_timeout: Duration,
    /// After SIGTERM, in-flight requests get this long before their connections are closed.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            http2_max_streams: 250,
            http2: true,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(15),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    policy: Arc<RwLock<Arc<Policy>>>,
    /// True once the certificate is loaded and the listener is accepting; false again as soon as
    /// shutdown begins.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Log whole AdmissionReviews (debug level): off unless asked, they may hold secrets.
    pub log_objects: bool,
    body_read_timeout: Duration,
    /// Reviews judged at once on the blocking pool (those of big bodies).
    big_reviews: Arc<Semaphore>,
}

/// A body at least this big is judged on the blocking pool, not on an async worker: at the
/// engine's ~40 ms per MiB (the slowest shape, many containers) that is a millisecond of CPU,
/// which a worker serving other connections should not spend.
pub const BIG_REVIEW_BYTES: usize = 32 * 1024;

impl AppState {
    pub fn new(policy: Policy) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            policy: Arc::new(RwLock::new(Arc::new(policy))),
            ready: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::new()),
            log_objects: false,
            body_read_timeout: Limits::default().body_read_timeout,
            big_reviews: Arc::new(Semaphore::new(cores)),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
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
    let policy = state.policy();
    if body.len() < BIG_REVIEW_BYTES {
        return admission::review(&body, endpoint, &policy);
    }
    let permit = state
        .big_reviews
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| EnvelopeError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let judged = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        admission::review(&body, endpoint, &policy)
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

/// Everything `serve` needs besides its bound listener.
#[derive(Debug)]
pub struct ServeOptions {
    pub metrics_listen: Option<SocketAddr>,
    pub tls: tls::TlsFiles,
    /// The policy file to reload from, if any, watched from before it was first loaded.
    pub config: Option<(PathBuf, reload::Watch)>,
    pub reload_interval: Duration,
    pub limits: Limits,
    pub log_objects: bool,
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Serves HTTPS on `listener` (and optionally plain-HTTP metrics) until `shutdown` completes,
/// reloading the certificate and the policy file as they change.
pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    policy: Policy,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_listener = match options.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?,
        ),
        None => None,
    };

    let mut state = AppState::new(policy);
    state.log_objects = options.log_objects;
    state.body_read_timeout = options.limits.body_read_timeout;
    let certificate_watch = reload::Watch::new(options.tls.paths());
    let loaded = tls::load_contents(
        &options.tls,
        certificate_watch.contents(),
        options.limits.http2,
    )
    .map_err(|e| e.to_string())?;
    if let Some(expiry) = loaded.not_after {
        state.metrics.certificate_expiry(expiry);
    }
    let tls_state = Arc::new(tls::TlsState::new(loaded.config));

    let mut background = tokio::task::JoinSet::new();
    {
        let files = options.tls.clone();
        let http2 = options.limits.http2;
        let tls_state = tls_state.clone();
        let metrics = state.metrics.clone();
        background.spawn(reload::run(
            certificate_watch,
            options.reload_interval,
            move |contents: &[reload::Contents]| match tls::load_contents(&files, contents, http2) {
                Ok(loaded) => {
                    tls_state.replace(loaded.config);
                    metrics.certificate_reload(true, loaded.not_after);
                    tracing::info!(
                        not_after = loaded.not_after,
                        "reloaded the serving certificate"
                    );
                }
                Err(error) => {
                    metrics.certificate_reload(false, None);
                    tracing::error!(%error, "certificate reload failed; still serving the previous certificate");
                }
            },
        ));
    }
    if let Some((path, watch)) = options.config {
        let state = state.clone();
        background.spawn(reload::run(
            watch,
            options.reload_interval,
            move |contents: &[reload::Contents]| match crate::config::load_contents(&path, &contents[0]) {
                Ok(policy) => {
                    tracing::info!(policy = %crate::config::describe(&policy), "reloaded the policy file");
                    state.set_policy(policy);
                    state.metrics.policy_reload(true);
                }
                Err(error) => {
                    state.metrics.policy_reload(false);
                    tracing::error!(%error, "policy reload failed; the previous policy stays in force");
                }
            },
        ));
    }
    if let Some(listener) = metrics_listener {
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(address = %address, "serving metrics on http://{address}/metrics");
        background.spawn(serve_plain(listener, metrics_router(state.clone())));
    }

    tracing::info!(address = %local, "listening on https://{local}");
    serve(
        listener,
        tls_state,
        router(state.clone()),
        state.ready.clone(),
        &options.limits,
        shutdown,
    )
    .await;
    background.abort_all();
    Ok(())
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header timer would also close idle keep-alive connections after the header
    // timeout; [`serve_connection`] times headers and idleness apart instead.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    // hyper's HTTP/2 defaults also bound reset streams (CVE-2023-44487, "rapid reset").
    if limits.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

/// Accepts TLS connections on `listener` and serves `router` on each, HTTP/1.1 or HTTP/2, until
/// `shutdown` completes; then turns unready, stops accepting, lets in-flight requests finish
/// (closing idle keep-alive connections at once) and returns, waiting at most
/// `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<tls::TlsState>,
    router: Router,
    ready: Arc<AtomicBool>,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(limits));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let timeout = limits.header_read_timeout;
    let idle_timeout = limits.idle_timeout;

    ready.store(true, Ordering::Release);
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting until one ends: the kernel queues the rest.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning, and keep serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.acceptor();
        let router = router.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // hyper times out a request's headers, and idleness between HTTP/1.1 requests, but
            // not a connection that never sends a first byte: wait for that here.
            let Some(first) = first_bytes(&mut tls, timeout).await else {
                tracing::debug!(%peer, "no request within the header timeout");
                return;
            };
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Arc::new(Activity::new(!http2));
            let io = TokioIo::new(Tracked {
                inner: Prefixed::new(first, tls),
                activity: activity.clone(),
            });
            let timeouts = (timeout, idle_timeout);
            if let Err(error) =
                serve_connection(io, &builder, router, stop, activity, timeouts).await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    ready.store(false, Ordering::Release);
    drop(listener);
    tracing::info!(
        connections = tasks.len(),
        "shutting down: no new connections; waiting for in-flight reviews"
    );
    stop.cancel();
    tasks.close();
    tokio::select! {
        () = tasks.wait() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                "shutdown timeout of {}s elapsed; closing remaining connections",
                limits.shutdown_timeout.as_secs()
            );
        }
    }
}

/// Serves one connection until it ends, asking it to finish (HTTP/1.1: close once the current
/// response is out; HTTP/2: GOAWAY, then close once its streams are done) when the server
/// stops, when a request's headers take longer than the header timeout to arrive (HTTP/1.1:
/// bytes came in but no request was dispatched), or when no request has been in flight for the
/// idle timeout. hyper's own header timer cannot tell a slow request from an idle keep-alive
/// connection, and an HTTP/2 connection answers pings, so both are timed here.
async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    stop: CancellationToken,
    activity: Arc<Activity>,
    (header_timeout, idle_timeout): (Duration, Duration),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let activity = activity.clone();
        let stop = stop.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            let stop = stop.clone();
            let http1 = request.version() < axum::http::Version::HTTP_2;
            async move {
                let mut response = router.oneshot(request.map(Body::new)).await;
                // Shutting down: this answer is the connection's last (HTTP/2 has GOAWAY).
                if http1
                    && stop.is_cancelled()
                    && let Ok(response) = &mut response
                {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(busy);
                response
            }
        })
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let tick = (header_timeout.min(idle_timeout) / 4)
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finishing = false;
    // The server stopped before this connection's first request began. Bytes of it were read,
    // but asking hyper-util's auto connection to finish while it is still telling HTTP/1.1 from
    // HTTP/2 would drop the connection unanswered: wait for the request to begin.
    let mut stopping: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = stop.cancelled(), if !finishing && stopping.is_none() => {
                if activity.has_begun() {
                    connection.as_mut().graceful_shutdown();
                    finishing = true;
                } else {
                    stopping = Some(Instant::now());
                }
            }
            _ = ticker.tick(), if !finishing => match activity.expired(header_timeout, idle_timeout) {
                _ if stopping.is_some() && activity.has_begun() => {
                    connection.as_mut().graceful_shutdown();
                    finishing = true;
                }
                // No request within the header timeout of the stop: nothing to answer.
                _ if stopping.is_some_and(|since| since.elapsed() >= header_timeout) => return Ok(()),
                // A request that never finished arriving has nothing to answer: drop it.
                Some(Expiry::SlowHead) => return Ok(()),
                Some(Expiry::Idle) => {
                    connection.as_mut().graceful_shutdown();
                    finishing = true;
                }
                None => {}
            }
        }
    }
}

/// What a connection is doing: requests in flight, when the last one ended, and (HTTP/1.1)
/// whether the next one has started to arrive.
struct Activity {
    start: Instant,
    /// HTTP/1.1: incoming bytes between requests are a request's head.
    heads_timed: bool,
    in_flight: AtomicUsize,
    /// Whether a request has been dispatched on this connection.
    begun: AtomicBool,
    /// Milliseconds from `start` to the end of the last request (or the connection's start).
    last_end: AtomicU64,
    /// Milliseconds from `start` to the first byte read since the last request ended, plus
    /// one; zero when none has been read.
    head_from: AtomicU64,
}

impl Activity {
    fn new(heads_timed: bool) -> Self {
        Self {
            start: Instant::now(),
            heads_timed,
            in_flight: AtomicUsize::new(0),
            begun: AtomicBool::new(false),
            last_end: AtomicU64::new(0),
            // The first request has begun: its first bytes were read before serving began.
            head_from: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        Busy(self.clone())
    }

    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    fn read(&self) {
        if self.heads_timed && self.head_from.load(Ordering::Acquire) == 0 {
            let _ = self.head_from.compare_exchange(
                0,
                self.now() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Option<Expiry> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = Duration::from_millis(self.now());
        let head_from = self.head_from.load(Ordering::Acquire);
        if self.heads_timed && head_from > 0 {
            let waiting = now.saturating_sub(Duration::from_millis(head_from - 1));
            return (waiting >= header_timeout).then_some(Expiry::SlowHead);
        }
        let last_end = Duration::from_millis(self.last_end.load(Ordering::Acquire));
        (now.saturating_sub(last_end) >= idle_timeout).then_some(Expiry::Idle)
    }
}

/// Why a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request's head did not arrive within the header timeout.
    SlowHead,
    /// No request for the idle timeout.
    Idle,
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_end.store(self.0.now(), Ordering::Release);
        self.0.head_from.store(0, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that tells its connection's [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The first bytes a client sends, if it sends any within `timeout`.
async fn first_bytes<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = vec![0; 16 * 1024];
    match tokio::time::timeout(timeout, stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => None,
        Ok(Ok(n)) => {
            buffer.truncate(n);
            Some(buffer)
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    stream: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, stream: S) -> Self {
        Self {
            prefix,
            offset: 0,
            stream,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Connections the plain metrics listener serves at once: scrapers and probes, a handful.
const MAX_PLAIN_CONNECTIONS: usize = 64;

/// Serves `router` over plain HTTP/1.1 (the optional metrics port): at most
/// [`MAX_PLAIN_CONNECTIONS`] at once (more wait in the backlog), each closed by hyper's header
/// timer 10 s after its last request. Ends, with its connections, when the server's background
/// tasks are aborted at shutdown.
async fn serve_plain(listener: TcpListener, router: Router) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(MAX_PLAIN_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Reap finished connections so the set stays small.
        while tasks.try_join_next().is_some() {}
        let router = router.clone();
        let builder = builder.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let service = TowerToHyperService::new(
                router.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
            );
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// Resolves when the process receives SIGTERM (Kubernetes' stop signal) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let state = AppState::new(Policy::default());
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
        let state = AppState::new(Policy::default());
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

    #[tokio::test]
    async fn prefixed_streams_yield_the_prefix_then_the_rest() {
        use tokio::io::AsyncReadExt as _;
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut stream = Prefixed::new(b"hello".to_vec(), server);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_silent_client_gets_no_first_bytes() {
        let (_client, mut server) = tokio::io::duplex(64);
        assert!(
            first_bytes(&mut server, Duration::from_millis(50))
                .await
                .is_none()
        );
    }

    #[test]
    fn policy_swaps_are_seen_by_the_next_review() {
        let state = AppState::new(Policy::default());
        let policy = Policy {
            init_containers: false,
            ..Policy::default()
        };
        state.set_policy(policy.clone());
        assert_eq!(*state.policy(), policy);
    }
}
