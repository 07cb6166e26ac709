//! The end-to-end harness: the real `daemonset-webhook` binary on a loopback port with a fresh
//! CA, a verifying HTTPS client in Rust (rustls + hyper's connection API, HTTP/1.1 or HTTP/2 as
//! ALPN decides), the real `curl`, and helpers for AdmissionReviews and their JSON Patches.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const BIN: &str = env!("CARGO_BIN_EXE_daemonset-webhook");

/// The environment variables the binary reads; cleared for every spawned process so the
/// developer's shell cannot change what a test runs.
pub const ENV_VARS: [&str; 4] = [
    "DAEMONSET_WEBHOOK_LISTEN",
    "DAEMONSET_WEBHOOK_TLS_CERT",
    "DAEMONSET_WEBHOOK_TLS_KEY",
    "DAEMONSET_WEBHOOK_CONFIG",
];

const LISTENING: &str = "listening on https://";
const START_TIMEOUT: Duration = Duration::from_secs(30);

// -------------------------------------------------------------------------------------------
// The server process.

/// Where the served certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum Certs {
    /// A fresh CA and server certificate in a temporary directory, passed as `--tls-cert` and
    /// `--tls-key`.
    #[default]
    Fresh,
    /// No certificate flags: the binary's defaults (`certs/` under the working directory).
    Defaults,
    /// These files, passed as `--tls-cert` and `--tls-key`; `ca` is what clients trust. For tests
    /// that rotate or break the files under a running server.
    Given {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Arguments after `--listen 127.0.0.1:0` and the certificate flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The working directory; the harness's temporary directory when `None`.
    pub cwd: Option<PathBuf>,
    pub certs: Certs,
    /// Close the read end of the server's stderr once it has said where it listens: every
    /// later log line meets a broken pipe.
    pub close_stderr_after_start: bool,
}

/// A running `daemonset-webhook`, killed when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on (always 127.0.0.1).
    pub addr: SocketAddr,
    /// The CA that signed its certificate.
    pub ca_path: PathBuf,
    /// `https://localhost:PORT`.
    pub base_url: String,
    logs: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Server {
    /// A server with a fresh CA of its own.
    pub fn start() -> Server {
        Self::start_with(StartOptions::default())
    }

    pub fn start_with(options: StartOptions) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cwd = options.cwd.clone().unwrap_or_else(|| dir.path().to_owned());
        let mut command = base_command(&cwd);
        command.args(["--listen", "127.0.0.1:0"]);
        let ca_path = match options.certs {
            Certs::Fresh => {
                let certs_dir = dir.path().join("pki");
                write_certificates(&certs_dir);
                command
                    .arg("--tls-cert")
                    .arg(certs_dir.join(daemonset_webhook::certs::CERT_FILE))
                    .arg("--tls-key")
                    .arg(certs_dir.join(daemonset_webhook::certs::KEY_FILE));
                certs_dir.join(daemonset_webhook::certs::CA_FILE)
            }
            Certs::Defaults => cwd.join("certs").join(daemonset_webhook::certs::CA_FILE),
            Certs::Given { cert, key, ca } => {
                command
                    .arg("--tls-cert")
                    .arg(cert)
                    .arg("--tls-key")
                    .arg(key);
                ca
            }
        };
        command.args(&options.args);
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawning daemonset-webhook");

        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        let close_after_start = options.close_stderr_after_start;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut tx = Some(tx);
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                sink.lock().unwrap().push_str(&text);
                if let Some(addr) = parse_listening(&text)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                    if close_after_start {
                        // Dropping the reader closes the pipe's read end.
                        break;
                    }
                }
            }
            // Dropping `tx` here tells the starter that the process closed stderr.
        });

        let started = Instant::now();
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < START_TIMEOUT => {}
                Err(error) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "daemonset-webhook did not log {LISTENING:?} ({error:?}, exit status \
                         {status:?}); its log:\n{}",
                        logs.lock().unwrap()
                    );
                }
            }
        };
        assert!(addr.ip().is_loopback(), "listening on {addr}");
        Server {
            child,
            base_url: format!("https://localhost:{}", addr.port()),
            addr,
            ca_path,
            logs,
            exited: None,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has logged so far. The server writes its log from a thread of
    /// its own, a few milliseconds behind the events: this waits for the log to stop growing
    /// (50 ms without a new byte, at most two seconds) so that what just happened is in it.
    pub fn logs(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = self.logs.lock().unwrap().len();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.logs.lock().unwrap().len();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        self.logs.lock().unwrap().clone()
    }

    /// A scratch directory that lives as long as the server.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A verifying client for this server, as `localhost`, offering `alpn`.
    pub fn client(&self, alpn: Alpn) -> TlsClient {
        TlsClient::builder(&self.ca_path, self.addr)
            .alpn(alpn)
            .build()
    }

    /// `curl` aimed at `path` on this server, trusting its CA.
    pub fn curl(&self, path: &str) -> Curl {
        Curl::new(self.port(), path).cacert(&self.ca_path)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                self.exited = Some(status);
                // Let the log reader drain the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited, without waiting (for async tests, which must
    /// not block their runtime's threads).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("waiting for the server");
        }
        self.exited
    }

    /// The plain-HTTP metrics address (`--metrics-listen`), as the server logged it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        const SERVING_METRICS: &str = "serving metrics on http://";
        self.logs().lines().find_map(|line| {
            let rest = &line[line.find(SERVING_METRICS)? + SERVING_METRICS.len()..];
            rest[..rest.find('/')?].parse().ok()
        })
    }

    /// The log so far as JSON objects, one per line (`--log-format json`, the default off a
    /// terminal); panics on a line that is not one.
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| panic!("a log line that is not a JSON object: {line}"))
            })
            .collect()
    }

    /// `GET /metrics` over HTTPS on a new connection, parsed.
    pub async fn scrape(&self) -> Scrape {
        let mut connection = self
            .client(Alpn::Http1)
            .connect()
            .await
            .expect("connecting for /metrics");
        let reply = connection.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
        Scrape::parse(&reply.text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn base_command(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(cwd);
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

/// Runs the binary with `args` in `cwd` (plus `env`) to completion, killing it after
/// `timeout`. For invocations that are expected to exit by themselves.
pub fn run_binary(args: &[&str], cwd: &Path, env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut command = base_command(cwd);
    command.args(args).envs(env.iter().copied());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawning daemonset-webhook");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collecting output");
            panic!(
                "daemonset-webhook {args:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output")
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Writes a fresh CA and a server certificate for the development names into `dir`.
pub fn write_certificates(dir: &Path) {
    daemonset_webhook::certs::generate(&daemonset_webhook::certs::dev_subject_alt_names(), 1)
        .expect("generating certificates")
        .write_to(dir)
        .expect("writing certificates");
}

// -------------------------------------------------------------------------------------------
// The Rust client.

/// Which application protocols the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
    /// `h2` and `http/1.1`: the server chooses.
    Both,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Builds a [`TlsClient`].
pub struct TlsClientBuilder {
    ca_path: PathBuf,
    addr: SocketAddr,
    server_name: String,
    alpn: Alpn,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// PEM certificate chain and key to present (mutual TLS).
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsClientBuilder {
    /// Presents this PEM certificate chain and private key when the server asks for a client
    /// certificate (mutual TLS).
    pub fn client_identity(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        self.identity = Some((cert_pem.to_vec(), key_pem.to_vec()));
        self
    }

    /// The name to verify the certificate for (and send as SNI); `localhost` by default.
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_owned();
        self
    }

    pub fn alpn(mut self, alpn: Alpn) -> Self {
        self.alpn = alpn;
        self
    }

    /// The TLS versions to offer; 1.3 and 1.2 by default.
    pub fn versions(mut self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    pub fn build(self) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.ca_path.display()))
        {
            roots.add(cert.expect("a PEM certificate")).expect("a CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .expect("a PEM client certificate chain");
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                    .expect("a PEM client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("a client certificate and its key")
            }
        };
        config.alpn_protocols = self.alpn.protocols();
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            addr: self.addr,
            server_name: ServerName::try_from(self.server_name).expect("a server name"),
            source: None,
        }
    }
}

/// An HTTPS client that verifies the server's certificate against one CA and one name.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    /// The address to connect from; the system's choice when `None`.
    source: Option<IpAddr>,
}

/// Connects to `addr` from `source` (any loopback address is ours on Linux: 127.0.0.2 is a
/// second client as far as the server can tell).
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

impl TlsClient {
    pub fn builder(ca_path: &Path, addr: SocketAddr) -> TlsClientBuilder {
        TlsClientBuilder {
            ca_path: ca_path.to_owned(),
            addr,
            server_name: "localhost".to_owned(),
            alpn: Alpn::Both,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            identity: None,
        }
    }

    /// The same client, connecting from `source`.
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Opens one TCP connection (from the client's source address), nothing sent.
    pub async fn connect_tcp(&self) -> std::io::Result<TcpStream> {
        tcp_connect(self.addr, self.source).await
    }

    /// Opens one TLS connection and returns the stream, for tests that speak (or withhold)
    /// HTTP themselves.
    pub async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
        let tcp = tcp_connect(self.addr, self.source).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// The `host:port` the client sends in `Host` and `:authority`.
    pub fn authority(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), self.addr.port()),
            _ => self.addr.to_string(),
        }
    }

    /// Opens one TLS connection and starts HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    pub async fn connect(&self) -> Result<Connection, std::io::Error> {
        let tcp = tcp_connect(self.addr, self.source).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer_certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.clone().into_owned());
        let tls_version = session
            .protocol_version()
            .expect("a finished handshake has a version");
        let authority = match &self.server_name {
            ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), self.addr.port()),
            _ => self.addr.to_string(),
        };
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Ok(Connection {
            sender,
            alpn,
            tls_version,
            peer_certificate,
            authority,
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection; requests on it reuse it (keep-alive or HTTP/2 streams).
pub struct Connection {
    sender: Sender,
    /// What ALPN chose.
    pub alpn: Option<Vec<u8>>,
    pub tls_version: rustls::ProtocolVersion,
    /// The certificate the server presented (the leaf, DER).
    pub peer_certificate: Option<CertificateDer<'static>>,
    authority: String,
}

/// An HTTP response, body read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Connection {
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A clone that sends on the same connection (HTTP/2 only: streams are multiplexed).
    pub fn h2_handle(&self) -> Connection {
        match &self.sender {
            Sender::H2(sender) => Connection {
                sender: Sender::H2(sender.clone()),
                alpn: self.alpn.clone(),
                tls_version: self.tls_version,
                peer_certificate: self.peer_certificate.clone(),
                authority: self.authority.clone(),
            },
            Sender::H1(_) => panic!("an HTTP/1.1 connection cannot be shared"),
        }
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let mut builder = Request::builder().method(method);
        builder = match &self.sender {
            // Origin form and a Host header for HTTP/1.1; HTTP/2 takes :scheme and :authority
            // from an absolute URI.
            Sender::H1(_) => builder
                .uri(path)
                .header(hyper::header::HOST, &self.authority),
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.authority)),
        };
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body.into()))
            .expect("a well-formed request");
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, None, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs `body` as `application/json`.
    pub async fn post_json(&mut self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request(Method::POST, path, Some("application/json"), body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }
}

// -------------------------------------------------------------------------------------------
// curl.

/// Which HTTP version curl is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurlHttp {
    /// `--http1.1`
    Http1,
    /// `--http2` (negotiated through ALPN)
    Http2,
}

/// One `curl` invocation against `https://HOST:PORT/PATH`, `HOST` resolving to 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Curl {
    host: String,
    port: u16,
    path: String,
    args: Vec<String>,
}

/// What curl did.
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// curl's exit code (0 on success; 35 for a failed handshake, 60 for an untrusted
    /// certificate).
    pub exit_code: Option<i32>,
    /// `%{http_code}`; 0 when there was no response.
    pub status: u16,
    /// `%{http_version}`: `1.1`, `2`.
    pub version: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "curl's response body is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&self.body),
                self.stderr
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Curl {
    pub fn new(port: u16, path: &str) -> Self {
        Curl {
            host: "localhost".to_owned(),
            port,
            path: path.to_owned(),
            args: Vec::new(),
        }
    }

    /// The host name in the URL (and so the name verified); resolved to 127.0.0.1.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn cacert(self, path: &Path) -> Self {
        self.arg("--cacert")
            .arg(path.to_str().expect("a UTF-8 path"))
    }

    pub fn http(self, version: CurlHttp) -> Self {
        match version {
            CurlHttp::Http1 => self.arg("--http1.1"),
            CurlHttp::Http2 => self.arg("--http2"),
        }
    }

    /// `--data-binary @path` with `Content-Type: application/json`.
    pub fn json_file(self, path: &Path) -> Self {
        self.header("Content-Type: application/json")
            .arg("--data-binary")
            .arg(&format!("@{}", path.to_str().expect("a UTF-8 path")))
    }

    pub fn header(self, header: &str) -> Self {
        self.arg("-H").arg(header)
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn run(&self) -> CurlOutput {
        let out_dir = tempfile::tempdir().expect("temporary directory");
        let body_path = out_dir.path().join("body");
        let url = format!("https://{}:{}{}", self.host, self.port, self.path);
        let mut command = Command::new("curl");
        command
            // -q first: ignore any ~/.curlrc.
            .arg("-q")
            .args(["-sS", "--max-time", "30", "--noproxy", "*"])
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.port))
            .arg("-o")
            .arg(&body_path)
            .args(["-w", "%{http_version} %{http_code}"])
            .args(&self.args)
            .arg(&url);
        for var in [
            "CURL_CA_BUNDLE",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "CURL_HOME",
        ] {
            command.env_remove(var);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("running curl (is it installed?)");
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut fields = written.split_whitespace();
        let version = fields.next().unwrap_or("").to_owned();
        let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        CurlOutput {
            exit_code: output.status.code(),
            status,
            version,
            body: std::fs::read(&body_path).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

// -------------------------------------------------------------------------------------------
// Fixtures, reviews and patches.

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A fixture's bytes and its parsed JSON.
pub fn fixture(name: &str) -> (Vec<u8>, Value) {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    (bytes, json)
}

/// `review` with `request.uid` and `request.object` replaced.
pub fn review_of(review: &Value, uid: &str, object: Value) -> Vec<u8> {
    let mut review = review.clone();
    review["request"]["uid"] = Value::String(uid.to_owned());
    review["request"]["object"] = object;
    serde_json::to_vec(&review).expect("encoding a review")
}

/// The response's JSON Patch, decoded from base64, or `None` when there is no patch field.
pub fn decode_patch(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response.get("patch")?;
    let encoded = encoded.as_str().expect("response.patch is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("response.patch is not base64 ({e}): {encoded}"));
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "response.patch is not a JSON Patch ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    }))
}

/// `object` with `patch` applied.
pub fn apply_patch(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch.0)
        .unwrap_or_else(|e| panic!("the patch does not apply ({e}): {patch:?}"));
    patched
}

// -------------------------------------------------------------------------------------------
// The command-line subcommands (`check`, `review`), run to completion under assert_cmd.

/// The crate's root: the working directory of [`cli`], so reports name `tests/check/...`.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `daemonset-webhook ARGS` in the crate's root, with empty standard input, none of the
/// developer's environment that changes what it does (the binary's variables, `NO_COLOR`), and
/// killed after 120 s.
pub fn cli(args: &[&str]) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(BIN);
    command.current_dir(manifest_dir());
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "warn")
        .args(args)
        .write_stdin(Vec::new())
        .timeout(Duration::from_secs(120));
    command
}

/// What a command-line run printed, and its exit code.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// `None` when killed by a signal (or the timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as it was written.
    pub stdout_bytes: Vec<u8>,
}

impl CliOutput {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `command` to completion.
pub fn run_cli(command: &mut assert_cmd::Command) -> CliOutput {
    let output = command.output().expect("running daemonset-webhook");
    CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_bytes: output.stdout,
    }
}

// -------------------------------------------------------------------------------------------
// Metrics, plain HTTP, and waiting for a running server to change.

/// One scrape of `/metrics`: every sample line by its series (name and labels as written).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a metrics line without a value: {line}"));
                let value = value
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{line}: value {value:?}: {e}"));
                (series.to_owned(), value)
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of one series, e.g. `daemonset_webhook_policy_reloads_total{result="error"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of one series; panics, showing the scrape, when it is missing.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// Every series, in order.
    pub fn series(&self) -> impl Iterator<Item = (&str, f64)> {
        self.samples.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// `GET path` over plain HTTP/1.1 (the `--metrics-listen` port): status, content type, body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let status = response.status();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a response body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Polls `condition` every 25 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The object without what the webhook owns (pod tolerations, container resources), so that
/// what is left can be compared before and after a patch.
pub fn without_owned_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(pod) = object
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
    {
        pod.remove("tolerations");
        for list in ["containers", "initContainers"] {
            for container in pod
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(container) = container.as_object_mut() {
                    container.remove("resources");
                }
            }
        }
    }
    object
}

/// A CA that signs client certificates (as a cluster's front-proxy or apiserver client CA does).
pub struct ClientCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    pub fn new(name: &str) -> ClientCa {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("a key");
        ClientCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("a client CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate (`clientAuth`) for `common_name` and its key, PEM.
    pub fn issue(&self, common_name: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a client cert");
        (cert.pem(), key.serialize_pem())
    }
}
