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

use super::metrics::Metrics;
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
        // What a client may send ahead of the server reading it, per stream and per
        // connection: this, not the body budget, bounds an HTTP/2 connection's unread data
        // (hyper's default is 1 MiB each: a thousand connections could park a GiB).
        .initial_stream_window_size(HTTP2_WINDOW)
        .initial_connection_window_size(HTTP2_WINDOW)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    // hyper's HTTP/2 defaults also bound reset streams (CVE-2023-44487, "rapid reset").
    if limits.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

/// HTTP/2 flow-control window, per stream and per connection: the RFC's default, 64 KiB, which
/// still carries a body at over 100 MB/s at a cluster network's half-millisecond round trip.
pub const HTTP2_WINDOW: u32 = 64 * 1024;

/// Under pressure (half the handshake or connection slots taken), a connection gets this long,
/// instead of the header timeout, for its handshake and its first request: a flood of idle or
/// slow connections then turns over fast enough for a normal client to get in.
const PRESSED_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the server dropped a connection on its client (`reason` of
/// `daemonset_webhook_connections_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The TLS handshake failed (a wrong certificate, not TLS at all).
    HandshakeFailed,
    /// The handshake, or the first request's first bytes, took longer than allowed.
    HandshakeTimeout,
    /// The client address already has `--max-connections-per-client` connections.
    ClientLimit,
    /// No request began within the header timeout (an HTTP/2 connection that only pings).
    NoRequest,
    /// A request's head did not arrive within the header timeout.
    SlowHead,
    /// The client did not take its answer within the write timeout.
    WriteStalled,
    /// Asked to finish, it was not done within the write timeout.
    CloseTimeout,
}

impl Dropped {
    pub const ALL: [Dropped; 7] = [
        Dropped::HandshakeFailed,
        Dropped::HandshakeTimeout,
        Dropped::ClientLimit,
        Dropped::NoRequest,
        Dropped::SlowHead,
        Dropped::WriteStalled,
        Dropped::CloseTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::HandshakeFailed => "handshake_failed",
            Dropped::HandshakeTimeout => "handshake_timeout",
            Dropped::ClientLimit => "client_limit",
            Dropped::NoRequest => "no_request",
            Dropped::SlowHead => "slow_head",
            Dropped::WriteStalled => "write_stalled",
            Dropped::CloseTimeout => "close_timeout",
        }
    }
}

/// Connections served per client address.
#[derive(Debug, Default)]
struct Clients {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A client address's share of the connections, given back when dropped.
struct ClientSlot {
    clients: Arc<Clients>,
    address: std::net::IpAddr,
}

impl Clients {
    fn enter(self: &Arc<Self>, address: std::net::IpAddr, most: usize) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            address,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .clients
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Accepts TLS connections on `listener` and serves `router` on each, HTTP/1.1 or HTTP/2, until
/// `shutdown` completes; then turns unready, stops accepting, lets in-flight requests finish
/// (closing idle keep-alive connections at once) and returns, waiting at most
/// `limits.shutdown_timeout`.
///
/// Every accepted socket counts against its client address's share
/// (`max_connections_per_client`, beyond which it is closed at once) and against
/// [`open_sockets`]; beyond that the listener waits and the kernel's backlog queues. A socket
/// that has sent nothing holds nothing else. Once it sends, it takes a handshake slot for its
/// TLS handshake and the first bytes of its first request, then trades it for a connection
/// slot. From accept to those first bytes it has the header timeout, or one second once half
/// of the sockets or slots are taken, a deadline that shortens for those already waiting when
/// the pressure begins: clients that connect and stay silent, or trickle a handshake, hold
/// nothing a working client needs for long.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<tls::TlsState>,
    router: Router,
    ready: Arc<AtomicBool>,
    limits: &Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(limits));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let socket_limit = open_sockets(limits.max_connections);
    let sockets = Arc::new(Semaphore::new(socket_limit));
    let handshakes = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(Clients::default());
    let (pressure, _) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits.clone());

    ready.store(true, Ordering::Release);
    tokio::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            permit = sockets.clone().acquire_owned() => match permit {
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
        let Some(client) = clients.enter(peer.ip(), limits.max_connections_per_client) else {
            tracing::debug!(%peer, "too many connections from this address; closing");
            metrics.dropped(Dropped::ClientLimit);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // On when half of the sockets or slots are taken, off again below a quarter: pressure
        // that comes and goes with every connection would only make the deadlines jitter.
        let was_pressed = *pressure.borrow();
        let taken = |slots: &Semaphore, of: usize| {
            let taken = of - slots.available_permits().min(of);
            if was_pressed {
                taken > of / 4
            } else {
                taken > of / 2
            }
        };
        let pressed = taken(&sockets, socket_limit)
            || taken(&handshakes, limits.max_connections)
            || taken(&connections, limits.max_connections);
        if pressed != was_pressed {
            pressure.send_replace(pressed);
            let (sockets, handshakes, connections) = (
                socket_limit - sockets.available_permits(),
                limits.max_connections - handshakes.available_permits(),
                limits.max_connections - connections.available_permits(),
            );
            if pressed {
                tracing::warn!(
                    sockets,
                    handshakes,
                    connections,
                    "under pressure: new connections get {}s to send their first request",
                    PRESSED_TIMEOUT.as_secs()
                );
            } else {
                tracing::info!(sockets, handshakes, connections, "no longer under pressure");
            }
        }
        let acceptor = tls.acceptor();
        let router = router.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        let handshakes = handshakes.clone();
        let connections = connections.clone();
        let limits = limits.clone();
        let metrics = metrics.clone();
        let pressure = pressure.subscribe();
        tasks.spawn(async move {
            let (_socket, _client) = (socket, client);
            let accepted = tokio::time::Instant::now();
            let admitted = tokio::select! {
                admitted = admit(tcp, acceptor, &handshakes) => admitted,
                () = first_deadline(accepted, limits.header_read_timeout, pressure.clone()) => {
                    Err(Dropped::HandshakeTimeout)
                }
            };
            let (tls, first) = match admitted {
                Ok(admitted) => admitted,
                Err(dropped) => {
                    tracing::debug!(%peer, reason = dropped.as_str(), "dropped the connection");
                    metrics.dropped(dropped);
                    return;
                }
            };
            let Ok(_connection) = connections.acquire_owned().await else {
                return;
            };
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Arc::new(Activity::new(!http2));
            let io = TokioIo::new(ConnectionIo::new(first, tls, activity.clone()));
            let pressed = *pressure.borrow();
            let timeouts = Timeouts {
                first_request: if pressed {
                    PRESSED_TIMEOUT.min(limits.header_read_timeout)
                } else {
                    limits.header_read_timeout
                },
                header: limits.header_read_timeout,
                idle: limits.idle_timeout,
                write: limits.write_timeout,
            };
            match serve_connection(io, &builder, router, stop, activity, timeouts).await {
                Ok(None) => {}
                Ok(Some(dropped)) => {
                    tracing::debug!(%peer, reason = dropped.as_str(), "dropped the connection");
                    metrics.dropped(dropped);
                }
                Err(error) => tracing::debug!(%peer, %error, "connection ended with an error"),
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

/// A connection's timers.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// For the first request to begin (HTTP/2 too: a connection that only answers pings is not
    /// a client).
    first_request: Duration,
    /// For each later request's headers (HTTP/1.1).
    header: Duration,
    /// Between requests.
    idle: Duration,
    /// For a write to make progress, and for a closing connection to be done.
    write: Duration,
}

/// Serves one connection until it ends, asking it to finish (HTTP/1.1: close once the current
/// response is out; HTTP/2: GOAWAY, then close once its streams are done) when the server
/// stops, when a request's headers take longer than the header timeout to arrive (HTTP/1.1:
/// bytes came in but no request was dispatched), or when no request has been in flight for the
/// idle timeout. It is dropped outright when no request begins within the first-request
/// timeout, when a write makes no progress for the write timeout (a client that does not read
/// its answer), or when it is still not done the write timeout after it was asked to finish.
/// hyper's own header timer cannot tell a slow request from an idle keep-alive connection, and
/// an HTTP/2 connection answers pings, so all of this is timed here.
async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    stop: CancellationToken,
    activity: Arc<Activity>,
    timeouts: Timeouts,
) -> Result<Option<Dropped>, Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let activity = activity.clone();
        let stop = stop.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            let activity = activity.clone();
            let router = router.clone();
            let stop = stop.clone();
            let http1 = request.version() < axum::http::Version::HTTP_2;
            async move {
                let mut response = router
                    .oneshot(request.map(Body::new))
                    .await
                    .map(|response| {
                        let answering = activity.answering();
                        response.map(|body| {
                            Body::new(Answer {
                                body,
                                _answering: answering,
                            })
                        })
                    });
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
    let shortest = timeouts
        .first_request
        .min(timeouts.header)
        .min(timeouts.idle)
        .min(timeouts.write);
    let tick = (shortest / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Asked to finish (graceful shutdown), since when.
    let mut finishing: Option<Instant> = None;
    // The server stopped before this connection's first request began. Bytes of it were read,
    // but asking hyper-util's auto connection to finish while it is still telling HTTP/1.1 from
    // HTTP/2 would drop the connection unanswered: wait for the request to begin.
    let mut stopping: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result.map(|()| None),
            () = stop.cancelled(), if finishing.is_none() && stopping.is_none() => {
                if activity.has_begun() {
                    connection.as_mut().graceful_shutdown();
                    finishing = Some(Instant::now());
                } else {
                    stopping = Some(Instant::now());
                }
            }
            _ = ticker.tick() => {
                // A client that does not take its answer holds the connection and the answer:
                // whatever else is going on, a write stuck that long ends it.
                if activity.write_stalled(timeouts.write) {
                    return Ok(Some(Dropped::WriteStalled));
                }
                if let Some(since) = finishing {
                    // Only a request in flight at a stop may take longer (the server's own
                    // shutdown timeout bounds it).
                    if since.elapsed() >= timeouts.write && !(stop.is_cancelled() && activity.busy()) {
                        return Ok(Some(Dropped::CloseTimeout));
                    }
                    continue;
                }
                match activity.expired(timeouts) {
                    _ if stopping.is_some() && activity.has_begun() => {
                        connection.as_mut().graceful_shutdown();
                        finishing = Some(Instant::now());
                    }
                    // No request within the header timeout of the stop: nothing to answer.
                    _ if stopping.is_some_and(|since| since.elapsed() >= timeouts.header) => {
                        return Ok(Some(Dropped::NoRequest));
                    }
                    // Nothing was asked, or a request never finished arriving: nothing to
                    // answer, drop it.
                    Some(Expiry::NoRequest) => return Ok(Some(Dropped::NoRequest)),
                    Some(Expiry::SlowHead) => return Ok(Some(Dropped::SlowHead)),
                    Some(Expiry::Idle) => {
                        connection.as_mut().graceful_shutdown();
                        finishing = Some(Instant::now());
                    }
                    None => {}
                }
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
    /// Milliseconds from `start` to when a write first found the socket full, plus one; zero
    /// while writes make progress.
    write_blocked_from: AtomicU64,
    /// Answers not yet taken whole by the client: when each began (milliseconds from `start`),
    /// by a sequence number, so the first is the oldest. HTTP/2 flow control can hold an answer
    /// back with no write ever blocking (a client that grants a zero window).
    answers: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    answer_sequence: AtomicU64,
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
            write_blocked_from: AtomicU64::new(0),
            answers: std::sync::Mutex::default(),
            answer_sequence: AtomicU64::new(0),
        }
    }

    /// An answer begins to be written; it is taken when the guard drops.
    fn answering(self: &Arc<Self>) -> Answering {
        let id = self.answer_sequence.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, now);
        Answering {
            activity: self.clone(),
            id,
        }
    }

    /// Whether a write has been blocked, or an answer left untaken, for at least `timeout`.
    fn write_stalled(&self, timeout: Duration) -> bool {
        let from = self.write_blocked_from.load(Ordering::Acquire);
        if from > 0 && Duration::from_millis(self.now().saturating_sub(from - 1)) >= timeout {
            return true;
        }
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.first_key_value().is_some_and(|(_, &began)| {
            Duration::from_millis(self.now().saturating_sub(began)) >= timeout
        })
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// A write found the socket full (`blocked`), or made progress.
    fn wrote(&self, blocked: bool) {
        if !blocked {
            self.write_blocked_from.store(0, Ordering::Release);
        } else if self.write_blocked_from.load(Ordering::Acquire) == 0 {
            let _ = self.write_blocked_from.compare_exchange(
                0,
                self.now() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
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

    fn expired(&self, timeouts: Timeouts) -> Option<Expiry> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = Duration::from_millis(self.now());
        if !self.has_begun() && now >= timeouts.first_request {
            return Some(Expiry::NoRequest);
        }
        let (header_timeout, idle_timeout) = (timeouts.header, timeouts.idle);
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
    /// No request began within the first-request timeout.
    NoRequest,
    /// A request's head did not arrive within the header timeout.
    SlowHead,
    /// No request for the idle timeout.
    Idle,
}

/// An answer's body as hyper writes it: the answer counts as untaken until hyper is done with
/// it (written whole, or the stream reset).
struct Answering {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.activity
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A response body with its [`Answering`] guard.
struct Answer {
    body: Body,
    _answering: Answering,
}

impl axum::body::HttpBody for Answer {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
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

/// Sockets open at once: four per connection slot (the rest wait for their first bytes, or
/// are in their handshake), within the process's open-file limit less some for everything
/// else (files, the metrics listener).
fn open_sockets(max_connections: usize) -> usize {
    let wanted = max_connections.saturating_mul(4);
    match open_file_limit() {
        Some(files) => wanted.min(files.saturating_sub(64).max(max_connections)),
        None => wanted,
    }
}

/// The soft open-file limit, raised to the hard one first (as Go's runtime does): 1024, a
/// common default, is too few for a server.
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Resolves at the deadline of a connection accepted at `accepted` to send its first bytes:
/// `timeout` after, or [`PRESSED_TIMEOUT`] after once the server is under pressure.
async fn first_deadline(
    accepted: tokio::time::Instant,
    timeout: Duration,
    mut pressure: tokio::sync::watch::Receiver<bool>,
) {
    // Also when the server stops (the sender is gone): there is no time to wait then.
    let pressed = async {
        let _ = pressure.wait_for(|pressed| *pressed).await.map(drop);
    };
    tokio::select! {
        () = tokio::time::sleep_until(accepted + timeout) => {}
        () = pressed => {
            tokio::time::sleep_until(accepted + PRESSED_TIMEOUT.min(timeout)).await;
        }
    }
}

/// A socket until it is a TLS connection with the first bytes of a request read: it takes a
/// handshake slot only once the client has sent something.
async fn admit(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: &Semaphore,
) -> Result<
    (
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    Dropped,
> {
    // Not `readable()`: tokio takes a new socket to be ready until a read says otherwise.
    match tcp.peek(&mut [0u8; 1]).await {
        Ok(1..) => {}
        Ok(0) | Err(_) => return Err(Dropped::HandshakeFailed),
    }
    let _handshake = handshakes
        .acquire()
        .await
        .map_err(|_| Dropped::HandshakeTimeout)?;
    let mut tls = acceptor.accept(tcp).await.map_err(|error| {
        tracing::debug!(%error, "TLS handshake failed");
        Dropped::HandshakeFailed
    })?;
    // hyper times out a request's headers, and idleness between HTTP/1.1 requests, but not a
    // connection that never sends a first byte: wait for that here.
    first_bytes(&mut tls)
        .await
        .ok_or(Dropped::NoRequest)
        .map(|first| (tls, first))
}

/// The first bytes a client sends, if it sends any.
async fn first_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = vec![0; 16 * 1024];
    match stream.read(&mut buffer).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.truncate(n);
            buffer.shrink_to_fit();
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_pending());
        polled
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
    async fn a_closed_client_gets_no_first_bytes() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(first_bytes(&mut server).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_deadline_shortens_under_pressure() {
        let (pressure, receiver) = tokio::sync::watch::channel(false);
        let accepted = tokio::time::Instant::now();
        let deadline = first_deadline(accepted, Duration::from_secs(10), receiver);
        tokio::pin!(deadline);
        tokio::select! {
            () = &mut deadline => panic!("expired without pressure"),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        pressure.send_replace(true);
        deadline.await;
        assert_eq!(accepted.elapsed(), PRESSED_TIMEOUT);
    }
}
