//! The connection layer: the TLS accept loop with its connection limit, each connection served
//! HTTP/1.1 or HTTP/2 with every phase timed (handshake, first request, headers, idleness),
//! graceful shutdown, and the plain-HTTP listener for metrics and probes. It serves whatever
//! router it is given.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{Limits, tls};

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
            let io = TokioIo::new(ConnectionIo::new(first, tls, activity.clone()));
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

/// The first bytes a client sends, if it sends any within `timeout`.
async fn first_bytes<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> Option<Vec<u8>> {
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

/// A connection's stream as hyper reads it: first the bytes already read from it (to tell a
/// silent client from one that sends a request), then the stream itself, telling the
/// connection's [`Activity`] when bytes arrive.
struct ConnectionIo<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
    activity: Arc<Activity>,
}

impl<S> ConnectionIo<S> {
    fn new(prefix: Vec<u8>, inner: S, activity: Arc<Activity>) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnectionIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnectionIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections the plain metrics listener serves at once: scrapers and probes, a handful.
const MAX_PLAIN_CONNECTIONS: usize = 64;

/// Serves `router` over plain HTTP/1.1 (the optional metrics port): at most
/// [`MAX_PLAIN_CONNECTIONS`] at once (more wait in the backlog), each closed by hyper's header
/// timer 10 s after its last request. Ends, with its connections, when the server's background
/// tasks are aborted at shutdown.
pub(super) async fn serve_plain(listener: TcpListener, router: Router) {
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

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        use tokio::io::AsyncReadExt as _;
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let activity = Arc::new(Activity::new(true));
        let mut stream = ConnectionIo::new(b"hello".to_vec(), server, activity.clone());
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
}
