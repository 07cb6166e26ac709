//! The HTTPS shell around the admission engine, in three parts: [`routes`] (the handlers),
//! [`connection`] (the accept loop, every phase of a connection timed, graceful shutdown), and
//! here the wiring: listeners, the serving certificate and the policy file reloaded as they
//! change, metrics. It knows nothing of DaemonSets.

pub(crate) mod budget;
pub(crate) mod connection;
pub(crate) mod metrics;
pub(crate) mod reload;
pub(crate) mod routes;
pub(crate) mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admission::Reviewer;
pub use connection::{serve, shutdown_signal};
use metrics::Metrics;
pub use routes::{AppState, MAX_BODY_BYTES, metrics_router, router};

/// How the server behaves under load and at its edges; `--help` documents each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, and (apart) connections in their TLS handshake at once;
    /// beyond either the listener waits (the kernel's backlog queues).
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_client: usize,
    /// Bytes of request bodies in memory at once, across all connections.
    pub max_body_memory: usize,
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
    /// An answer must be taken by the client within this; a write that makes no progress for
    /// this long closes the connection, as does a closing connection not done within it.
    pub write_timeout: Duration,
    /// After SIGTERM, in-flight requests get this long before their connections are closed.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_client: 256,
            max_body_memory: 32 * 1024 * 1024,
            http2_max_streams: 250,
            http2: true,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(15),
        }
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

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for metrics: {source}")]
    ListenMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the listener's own address: {0}")]
    LocalAddress(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Connections the kernel queues before the server accepts them (std's default is 128: 2000
/// idle clients then keep a normal one out for seconds). Linux caps it at
/// `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (port 0 picks a free port) with a deep listen backlog.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    listen(addr).map_err(|source| ServeError::Listen { addr, source })
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted server can take its port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves HTTPS on `listener` (and optionally plain-HTTP metrics) until `shutdown` completes,
/// reloading the certificate and the policy file as they change.
pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    reviewer: Reviewer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::LocalAddress)?;
    let metrics_listener = match options.metrics_listen {
        Some(addr) => {
            Some(listen(addr).map_err(|source| ServeError::ListenMetrics { addr, source })?)
        }
        None => None,
    };

    let mut state = AppState::new(reviewer);
    state.log_objects = options.log_objects;
    state.set_limits(&options.limits);
    let certificate_watch = reload::Watch::new(options.tls.paths());
    let loaded = tls::load_contents(
        &options.tls,
        certificate_watch.contents(),
        options.limits.http2,
    )?;
    if let Some(expiry) = loaded.not_after {
        state.metrics.certificate_expiry(expiry);
    }
    let tls_state = Arc::new(tls::TlsState::new(loaded.config));

    let mut background = tokio::task::JoinSet::new();
    // SIGHUP reloads now rather than ending the process (its default).
    let certificate_now = Arc::new(Notify::new());
    let policy_now = Arc::new(Notify::new());
    background.spawn(on_sighup([certificate_now.clone(), policy_now.clone()]));
    {
        let files = options.tls.clone();
        let http2 = options.limits.http2;
        let tls_state = tls_state.clone();
        let metrics = state.metrics.clone();
        let report = Reported {
            what: "the serving certificate, key and client CA",
            metrics: state.metrics.clone(),
            failed: |metrics: &Metrics| metrics.certificate_reload(false, None),
        };
        background.spawn(reload::run(
            certificate_watch,
            options.reload_interval,
            reload::READ_TIMEOUT,
            certificate_now,
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
            report,
        ));
    }
    if let Some((path, watch)) = options.config {
        let state = state.clone();
        let report = Reported {
            what: "the policy file",
            metrics: state.metrics.clone(),
            failed: |metrics: &Metrics| metrics.policy_reload(false),
        };
        background.spawn(reload::run(
            watch,
            options.reload_interval,
            reload::READ_TIMEOUT,
            policy_now,
            move |contents: &[reload::Contents]| match crate::config::load_contents(&path, &contents[0]) {
                Ok(policy) => {
                    tracing::info!(policy = %crate::config::describe(&policy), "reloaded the policy file");
                    state.reviewer.set_policy(policy);
                    state.metrics.policy_reload(true);
                }
                Err(error) => {
                    state.metrics.policy_reload(false);
                    tracing::error!(%error, "policy reload failed; the previous policy stays in force");
                }
            },
            report,
        ));
    }
    if let Some(listener) = metrics_listener {
        let address = listener.local_addr().map_err(ServeError::LocalAddress)?;
        tracing::info!(address = %address, "serving metrics on http://{address}/metrics");
        background.spawn(connection::serve_plain(
            listener,
            metrics_router(state.clone()),
        ));
    }

    tracing::info!(address = %local, "listening on https://{local}");
    serve(
        listener,
        tls_state,
        router(state.clone()),
        state.ready.clone(),
        &options.limits,
        state.metrics.clone(),
        shutdown,
    )
    .await;
    background.abort_all();
    Ok(())
}

/// On each SIGHUP, asks every watch for a reload now.
async fn on_sighup(watches: [Arc<Notify>; 2]) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot handle SIGHUP; it will end the process");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: reloading the certificate, client CA and policy file");
            for watch in &watches {
                // A permit is kept for a watch busy reading: it reloads when it is done.
                watch.notify_one();
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// Reports a watch's SIGHUP reloads and stuck reads: logged, and a stuck read counted as a
/// failed reload.
struct Reported<F> {
    what: &'static str,
    metrics: Arc<Metrics>,
    failed: F,
}

impl<F: Fn(&Metrics) + Send + 'static> reload::Report for Reported<F> {
    fn asked(&mut self, changed: bool) {
        if !changed {
            tracing::info!("SIGHUP: {} unchanged", self.what);
        }
    }

    fn stuck(&mut self) {
        (self.failed)(&self.metrics);
        tracing::warn!(
            timeout_s = reload::READ_TIMEOUT.as_secs(),
            "reading {} takes longer than the timeout; the last good state stays in force",
            self.what
        );
    }
}
