//! The end-to-end harness: the real `daemonset-webhook` binary on a loopback port with a fresh
//! CA, a verifying HTTPS client in Rust (rustls + hyper's connection API, HTTP/1.1 or HTTP/2 as
//! ALPN decides), the real `curl`, and helpers for AdmissionReviews and their JSON Patches.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code, unused_imports)]

mod cli;
mod client;
mod curl;
mod fixtures;
mod metrics;

pub use cli::*;
pub use client::*;
pub use curl::*;
pub use fixtures::*;
pub use metrics::*;

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
