//! The HTTPS shell around the admission engine: routing, body limits, health, TLS accept loop,
//! graceful shutdown. It knows nothing of DaemonSets.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::admission::{self, Endpoint, EnvelopeError};
use crate::policy::Policy;

/// The largest AdmissionReview accepted.
pub const MAX_BODY_BYTES: usize = admission::MAX_REVIEW_BYTES;
/// How long a client may take to send a request body (a slow client must not hold a task).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send request headers, and to stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests before closing their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 250;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub policy: Arc<Policy>,
    /// True once the certificate is loaded and the listener is accepting; false again as soon as
    /// shutdown begins.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Arc::new(policy),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The routes: `POST /mutate`, `POST /validate`, `GET /healthz`, `GET /readyz`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// A panic in a handler is a bug: answer 500 with a Status body and log it, and keep serving.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
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
}

async fn mutate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Endpoint::Mutate, request).await
}

async fn validate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Endpoint::Validate, request).await
}

async fn review(state: AppState, endpoint: Endpoint, request: Request) -> Response {
    let started = Instant::now();
    let body = match read_review_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    match admission::review(&body, endpoint, &state.policy) {
        Ok(outcome) => {
            let summary = &outcome.summary;
            tracing::info!(
                endpoint = endpoint.path(),
                uid = %summary.uid,
                operation = %summary.operation,
                kind = %summary.kind,
                namespace = %summary.namespace,
                name = %summary.name,
                allowed = summary.allowed,
                patch_operations = summary.patch_operations,
                latency_us = started.elapsed().as_micros() as u64,
                "reviewed"
            );
            json_response(StatusCode::OK, outcome.body)
        }
        Err(error) => {
            tracing::warn!(endpoint = endpoint.path(), %error, "rejected a malformed review");
            error.into_response()
        }
    }
}

/// Reads the body of a review request: JSON only, at most [`MAX_BODY_BYTES`], within
/// [`BODY_READ_TIMEOUT`].
///
/// The body is read before the content type is judged: answering before the client has sent
/// its body makes HTTP/2 clients see a reset stream instead of our error.
async fn read_review_body(request: Request) -> Result<bytes::Bytes, EnvelopeError> {
    let (parts, body) = request.into_parts();
    let body = read_limited(body).await?;
    check_content_type(&parts.headers)?;
    Ok(body)
}

async fn read_limited(body: Body) -> Result<bytes::Bytes, EnvelopeError> {
    let limited = Limited::new(body, MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(EnvelopeError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {}s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(EnvelopeError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(error)) => Err(EnvelopeError::new(
            StatusCode::BAD_REQUEST,
            format!("reading request body: {error}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
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

async fn not_found(request: Request) -> Response {
    EnvelopeError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; the webhook serves POST /mutate, POST /validate, GET /healthz, GET /readyz",
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

/// Accepts TLS connections on `listener` and serves `router` on each, HTTP/1.1 or HTTP/2, until
/// `shutdown` completes; then stops accepting, lets in-flight requests finish (closing idle
/// keep-alive connections at once) and returns, waiting at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

    ready.store(true, Ordering::Release);
    tokio::pin!(shutdown);
    loop {
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
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            let service = TowerToHyperService::new(
                router.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
            );
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    ready.store(false, Ordering::Release);
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight reviews");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("shutdown grace period of {}s elapsed; closing remaining connections", SHUTDOWN_GRACE.as_secs());
        }
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

/// Binds `addr`, reporting the address actually bound (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
