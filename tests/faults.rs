//! Faults injected into the running binary: certificates rotated and broken under load, mutual
//! TLS and its CA rotated, SIGTERM under load, idle and slow connections, the connection limit,
//! HTTP/2 stream limits and HTTP/2 switched off.
//!
//! Every server here runs with short intervals (`--reload-interval`, `--header-read-timeout`,
//! ...) so each test takes seconds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::client::conn::http2;
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use common::{Alpn, Certs, ClientCa, CurlHttp, Reply, Server, StartOptions, TlsClient, wait_until};

// -------------------------------------------------------------------------------------------
// Certificates.

/// A CA and a server certificate for the development names (`localhost` among them), PEM.
struct Pair {
    ca: String,
    cert: String,
    key: String,
}

impl Pair {
    fn new(validity_days: i64) -> Pair {
        let generated = daemonset_webhook::certs::generate(
            &daemonset_webhook::certs::dev_subject_alt_names(),
            validity_days,
        )
        .expect("generating certificates");
        Pair {
            ca: generated.ca_pem,
            cert: generated.cert_pem,
            key: generated.key_pem,
        }
    }

    fn cert_der(&self) -> Vec<u8> {
        pem_der(&self.cert)
    }

    /// The server certificate's notAfter, read here independently of the product.
    fn not_after(&self) -> i64 {
        let der = self.cert_der();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("an X.509 certificate");
        parsed.validity().not_after.timestamp()
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// How certificate and policy files are laid out and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Plain files, rewritten in place (truncate and write, one after the other).
    InPlace,
    /// As kubelet mounts a Secret or ConfigMap: `name -> ..data/name`, `..data -> ..<version>`,
    /// updated by writing a new version directory and renaming a new `..data` link over the old
    /// one.
    Symlinks,
}

/// Writes `files` into `dir` the `layout` way (the first call installs, later ones update).
fn publish(layout: Layout, dir: &Path, version: &str, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(dir).unwrap();
    match layout {
        Layout::InPlace => {
            for (name, contents) in files {
                std::fs::write(dir.join(name), contents).unwrap();
            }
        }
        Layout::Symlinks => {
            let versioned = format!("..{version}");
            std::fs::create_dir(dir.join(&versioned)).unwrap();
            for (name, contents) in files {
                std::fs::write(dir.join(&versioned).join(name), contents).unwrap();
            }
            std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            for (name, _) in files {
                let link = dir.join(name);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
                }
            }
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name.starts_with("..") && name != "..data" && name != versioned {
                    std::fs::remove_dir_all(dir.join(name)).unwrap();
                }
            }
        }
    }
}

fn write(path: &Path, contents: &str) -> PathBuf {
    std::fs::write(path, contents).unwrap();
    path.to_owned()
}

/// The TLS error inside a failed connection attempt.
fn tls_error(error: &std::io::Error) -> Option<rustls::Error> {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
}

fn assert_untrusted(what: &str, result: Result<common::Connection, std::io::Error>) {
    let error = result
        .err()
        .unwrap_or_else(|| panic!("{what}: the connection was verified"));
    let error = tls_error(&error).unwrap_or_else(|| panic!("{what}: not a TLS error: {error:?}"));
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            )
        ),
        "{what}: {error:?}"
    );
}

// -------------------------------------------------------------------------------------------
// Reviews.

static PLAIN: LazyLock<Value> = LazyLock::new(|| common::fixture("create-plain.json").1);

/// The plain fixture's AdmissionReview with `uid`.
fn review(uid: &str) -> Vec<u8> {
    common::review_of(&PLAIN, uid, PLAIN["request"]["object"].clone())
}

/// Whether `status` and `body` are the complete, correct answer to [`review`]`(uid)` on
/// /mutate: an AdmissionReview echoing the uid, allowing and patching.
fn check_review(status: u16, body: &[u8], uid: &str) -> Result<(), String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status != 200 {
        return Err(format!("{uid}: HTTP {status}: {}", text()));
    }
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("{uid}: not JSON ({e}): {}", text()))?;
    let response = &review["response"];
    let ok = review["apiVersion"] == "admission.k8s.io/v1"
        && review["kind"] == "AdmissionReview"
        && response["uid"] == uid
        && response["allowed"] == true
        && response["patchType"] == "JSONPatch"
        && response["patch"].as_str().is_some_and(|p| p.len() > 100);
    if ok {
        Ok(())
    } else {
        Err(format!("{uid}: not the expected answer: {}", text()))
    }
}

async fn post_review(connection: &mut common::Connection, uid: &str) -> Result<(), String> {
    let reply = connection
        .request(
            Method::POST,
            "/mutate",
            Some("application/json"),
            review(uid),
        )
        .await
        .map_err(|e| format!("{uid}: {e:?}"))?;
    check_review(reply.status.as_u16(), &reply.body, uid)
}

/// Connects and sends one review; a failure at either step is an error.
async fn connect_and_review(client: &TlsClient, uid: &str) -> Result<(), String> {
    let mut connection = client
        .connect()
        .await
        .map_err(|e| format!("{uid}: connect: {e:?}"))?;
    post_review(&mut connection, uid).await
}

// -------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TLS, and a request body sent piece by piece.

/// A response read off the wire.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<RawReply> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head}")))?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length: {head}")))?;
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(RawReply { status, head, body })
}

/// The head of a POST /mutate of `length` body bytes.
fn post_head(client: &TlsClient, length: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n",
        client.authority()
    )
}

/// Reads until the peer closes; the instant it did.
async fn closed_at<S: AsyncRead + Unpin>(mut stream: S) -> Instant {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// A request body fed through a channel: sent as the test decides. It ends once `length` bytes
/// have gone (HTTP/2 then sets END_STREAM on the last DATA frame).
struct ChannelBody {
    chunks: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    length: u64,
    sent: u64,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.length {
            return Poll::Ready(None);
        }
        self.chunks.poll_recv(cx).map(|chunk| {
            chunk.map(|data| {
                self.sent += data.len() as u64;
                Ok(hyper::body::Frame::data(data))
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.length
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.length)
    }
}

/// An HTTP/2 connection of our own, for bodies sent piece by piece; the handle resolves when
/// the connection ends.
async fn h2_connection(
    client: &TlsClient,
) -> (
    http2::SendRequest<ChannelBody>,
    tokio::task::JoinHandle<Instant>,
) {
    let tls = client.connect_tls().await.expect("connecting");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("an HTTP/2 handshake");
    let ended = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    (sender, ended)
}

/// The rest of a body to send, and the answer (status and body) to come.
type InParts = (
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    tokio::task::JoinHandle<Result<(u16, Vec<u8>), String>>,
);

/// Starts an HTTP/2 POST /mutate of `body`, of which only `first` bytes are sent now; returns
/// the sender of the rest and the response.
fn h2_post_in_parts(
    sender: &mut http2::SendRequest<ChannelBody>,
    authority: &str,
    body: &[u8],
    first: usize,
) -> InParts {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::copy_from_slice(&body[..first])).unwrap();
    let request = Request::post(format!("https://{authority}/mutate"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(ChannelBody {
            chunks: rx,
            length: body.len() as u64,
            sent: 0,
        })
        .unwrap();
    let response = sender.send_request(request);
    let reply = tokio::spawn(async move {
        use http_body_util::BodyExt as _;
        let response = response.await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    });
    (tx, reply)
}

fn seconds(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

// -------------------------------------------------------------------------------------------
// Certificate rotation under load.

const CERTIFICATE_RELOADS_OK: &str =
    r#"daemonset_webhook_certificate_reloads_total{result="success"}"#;
const CERTIFICATE_RELOADS_FAILED: &str =
    r#"daemonset_webhook_certificate_reloads_total{result="error"}"#;
const CERTIFICATE_EXPIRY: &str = "daemonset_webhook_certificate_expiry_timestamp_seconds";

/// What one load task saw.
#[derive(Debug, Default)]
struct Tally {
    what: String,
    /// Successful reviews: when each was sent.
    ok: Vec<Instant>,
    failures: Vec<String>,
    /// For new connections: when each was started and the certificate it was shown.
    certificates: Vec<(Instant, Vec<u8>)>,
}

/// Reviews on one established connection until `stop`: any failure is recorded.
async fn keep_alive_load(
    what: String,
    mut connection: common::Connection,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally {
        what,
        ..Tally::default()
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let uid = format!("{}-{i}", tally.what);
        let sent = Instant::now();
        match post_review(&mut connection, &uid).await {
            Ok(()) => tally.ok.push(sent),
            Err(error) => tally.failures.push(error),
        }
    }
    tally
}

/// A new connection for every review until `stop`, recording the certificate each was shown.
async fn new_connection_load(what: String, client: TlsClient, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally {
        what,
        ..Tally::default()
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let uid = format!("{}-{i}", tally.what);
        let started = Instant::now();
        match client.connect().await {
            Err(error) => tally.failures.push(format!("{uid}: connect: {error:?}")),
            Ok(mut connection) => {
                let certificate = connection.peer_certificate.clone().expect("a certificate");
                tally.certificates.push((started, certificate.to_vec()));
                match post_review(&mut connection, &uid).await {
                    Ok(()) => tally.ok.push(started),
                    Err(error) => tally.failures.push(error),
                }
            }
        }
    }
    tally
}

/// Rotates the serving certificate (`layout`) while clients send reviews on connections made
/// before and during the rotation, and checks that nothing failed and what each saw.
async fn rotate_under_load(layout: Layout) {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let old = Pair::new(1);
    let new = Pair::new(3);
    assert_ne!(old.not_after(), new.not_after());
    publish(
        layout,
        &tls_dir,
        "2026_01_01_00_00_00.1",
        &[
            ("tls.crt", old.cert.as_bytes()),
            ("tls.key", old.key.as_bytes()),
        ],
    );
    let old_ca = write(&dir.path().join("old-ca.crt"), &old.ca);
    let new_ca = write(&dir.path().join("new-ca.crt"), &new.ca);
    // A caBundle during a CA rotation: both.
    let bundle = write(&dir.path().join("bundle.crt"), &(old.ca.clone() + &new.ca));

    let server = Server::start_with(StartOptions {
        args: ["--reload-interval", "200ms"].map(String::from).to_vec(),
        certs: Certs::Given {
            cert: tls_dir.join("tls.crt"),
            key: tls_dir.join("tls.key"),
            ca: old_ca.clone(),
        },
        ..StartOptions::default()
    });
    let metrics = server.scrape().await;
    assert_eq!(metrics.value(CERTIFICATE_EXPIRY), old.not_after() as f64);
    assert_eq!(metrics.value(CERTIFICATE_RELOADS_OK), 0.0);
    assert_eq!(metrics.value(CERTIFICATE_RELOADS_FAILED), 0.0);

    let trusting_both = TlsClient::builder(&bundle, server.addr).build();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let connection = server.client(alpn).connect().await.unwrap();
        assert_eq!(
            connection.peer_certificate.as_deref(),
            Some(&old.cert_der()[..])
        );
        tasks.spawn(keep_alive_load(
            format!("keep-alive-{alpn:?}"),
            connection,
            stop.clone(),
        ));
        let client = TlsClient::builder(&bundle, server.addr).alpn(alpn).build();
        tasks.spawn(new_connection_load(
            format!("new-connections-{alpn:?}"),
            client,
            stop.clone(),
        ));
    }
    // One more established connection, idle through the rotation, used after it.
    let mut established = server.client(Alpn::Http1).connect().await.unwrap();
    post_review(&mut established, "established-before")
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(400)).await;
    let rotation_started = Instant::now();
    publish(
        layout,
        &tls_dir,
        "2026_01_02_00_00_00.2",
        &[
            ("tls.crt", new.cert.as_bytes()),
            ("tls.key", new.key.as_bytes()),
        ],
    );
    wait_until(
        "the certificate reload",
        Duration::from_secs(10),
        || async {
            let mut connection = trusting_both.connect().await.unwrap();
            let reply = connection.get("/metrics").await;
            common::Scrape::parse(&reply.text()).value(CERTIFICATE_RELOADS_OK) >= 1.0
        },
    )
    .await;
    // The new configuration is in place before the counter moves: every connection started
    // from here on must be shown the new certificate.
    let reloaded = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    while let Some(tally) = tasks.join_next().await {
        tallies.push(tally.unwrap());
    }

    for tally in &tallies {
        assert!(
            tally.failures.is_empty(),
            "{}: {} failed requests during the rotation ({} succeeded): {:#?}",
            tally.what,
            tally.failures.len(),
            tally.ok.len(),
            &tally.failures[..tally.failures.len().min(5)]
        );
        let before = tally.ok.iter().filter(|t| **t < rotation_started).count();
        let after = tally.ok.iter().filter(|t| **t > reloaded).count();
        assert!(
            before >= 3 && after >= 3,
            "{}: too little load to mean anything: {before} reviews before the rotation, \
             {after} after",
            tally.what
        );
        if tally.what.starts_with("new-connections") {
            // Old certificate, then the new one, and never back.
            let switched = tally
                .certificates
                .iter()
                .position(|(_, c)| *c == new.cert_der())
                .unwrap_or_else(|| panic!("{}: never shown the new certificate", tally.what));
            assert!(
                switched > 0,
                "{}: never shown the old certificate",
                tally.what
            );
            for (i, (started, certificate)) in tally.certificates.iter().enumerate() {
                let expected = if i < switched {
                    old.cert_der()
                } else {
                    new.cert_der()
                };
                assert!(
                    *certificate == expected,
                    "{}: connection {i} (of {}) was shown the wrong certificate",
                    tally.what,
                    tally.certificates.len()
                );
                assert!(
                    *started <= reloaded || *certificate == new.cert_der(),
                    "{}: a connection started after the reload got the old certificate",
                    tally.what
                );
            }
        }
    }

    // The connection made before the rotation still works, and still shows the old
    // certificate: established connections keep theirs.
    post_review(&mut established, "established-after")
        .await
        .unwrap();
    assert_eq!(
        established.peer_certificate.as_deref(),
        Some(&old.cert_der()[..])
    );
    // New connections: the new CA alone verifies them, the old CA no longer does.
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let mut connection = TlsClient::builder(&new_ca, server.addr)
            .alpn(alpn)
            .build()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("the new CA does not verify the new certificate: {e}"));
        assert_eq!(
            connection.peer_certificate.as_deref(),
            Some(&new.cert_der()[..])
        );
        post_review(&mut connection, &format!("new-ca-{alpn:?}"))
            .await
            .unwrap();
        assert_untrusted(
            "a client trusting only the old CA, after the rotation",
            TlsClient::builder(&old_ca, server.addr)
                .alpn(alpn)
                .build()
                .connect()
                .await,
        );
    }
    let out = common::Curl::new(server.port(), "/healthz")
        .cacert(&new_ca)
        .run();
    assert!(out.success(), "curl with the new CA: {}", out.stderr);
    let out = common::Curl::new(server.port(), "/healthz")
        .cacert(&old_ca)
        .run();
    assert_eq!(out.exit_code, Some(60), "curl with the old CA: {out:?}");

    let mut connection = TlsClient::builder(&new_ca, server.addr)
        .build()
        .connect()
        .await
        .unwrap();
    let metrics = common::Scrape::parse(&connection.get("/metrics").await.text());
    assert_eq!(metrics.value(CERTIFICATE_RELOADS_OK), 1.0, "one reload");
    if layout == Layout::Symlinks {
        // The swap is atomic: no poll ever saw half of it. (Rewritten in place, a poll that
        // catches the files mid-write twice in a row, on a busy machine, loads and rejects
        // that state: by design, so not asserted.)
        assert_eq!(metrics.value(CERTIFICATE_RELOADS_FAILED), 0.0);
    }
    assert_eq!(metrics.value(CERTIFICATE_EXPIRY), new.not_after() as f64);
    let reloads = server
        .json_logs()
        .into_iter()
        .filter(|line| line["message"] == "reloaded the serving certificate")
        .collect::<Vec<_>>();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0]["level"], "INFO");
    assert_eq!(reloads[0]["not_after"], new.not_after());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rewritten_in_place_under_load_fails_no_request() {
    rotate_under_load(Layout::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotated_by_symlink_swap_under_load_fails_no_request() {
    rotate_under_load(Layout::Symlinks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_keeps_the_previous_certificate_until_a_good_one_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let old = Pair::new(1);
    let new = Pair::new(3);
    let cert = write(&dir.path().join("tls.crt"), &old.cert);
    let key = write(&dir.path().join("tls.key"), &old.key);
    let old_ca = write(&dir.path().join("old-ca.crt"), &old.ca);
    let new_ca = write(&dir.path().join("new-ca.crt"), &new.ca);
    let server = Server::start_with(StartOptions {
        args: ["--reload-interval", "100ms"].map(String::from).to_vec(),
        certs: Certs::Given {
            cert: cert.clone(),
            key: key.clone(),
            ca: old_ca.clone(),
        },
        ..StartOptions::default()
    });

    let other = Pair::new(1);
    let half = &new.cert[..new.cert.len() / 2];
    // (what, tls.crt, tls.key (None: deleted), whether the key is written first, a piece of
    // the logged error). The two files are written one after the other, in an order that never
    // passes through a good pair on the way.
    let faults: [(&str, &str, Option<&str>, bool, &str); 6] = [
        (
            "the new certificate with the old key",
            &new.cert,
            Some(&old.key),
            false,
            "do not belong together",
        ),
        (
            "the old certificate with another key",
            &old.cert,
            Some(&other.key),
            true,
            "do not belong together",
        ),
        (
            "garbage",
            "garbage\n",
            Some("more garbage\n"),
            false,
            "tls.crt",
        ),
        ("empty files", "", Some(""), false, "tls.crt"),
        (
            "a half-written certificate",
            half,
            Some(&new.key),
            false,
            "tls.crt",
        ),
        ("a missing key", &new.cert, None, true, "tls.key"),
    ];
    let mut errors = 0.0;
    for (i, (what, cert_text, key_text, key_first, logged)) in faults.into_iter().enumerate() {
        let write_key = || match key_text {
            Some(text) => std::fs::write(&key, text).unwrap(),
            None => std::fs::remove_file(&key).unwrap(),
        };
        if key_first {
            write_key();
        }
        std::fs::write(&cert, cert_text).unwrap();
        if !key_first {
            write_key();
        }
        wait_until(
            &format!("{what}: a failed reload"),
            Duration::from_secs(5),
            || async { server.scrape().await.value(CERTIFICATE_RELOADS_FAILED) > errors },
        )
        .await;
        // Another interval or two. (A file caught half-written by one poll and still so at the
        // next is a failed reload of its own: the count may rise by more than one.)
        tokio::time::sleep(Duration::from_millis(250)).await;
        let metrics = server.scrape().await;
        errors = metrics.value(CERTIFICATE_RELOADS_FAILED);
        assert_eq!(metrics.value(CERTIFICATE_RELOADS_OK), 0.0, "{what}");
        assert_eq!(
            metrics.value(CERTIFICATE_EXPIRY),
            old.not_after() as f64,
            "{what}: the expiry gauge moved"
        );
        // The old certificate still serves new connections, verified by the old CA.
        for alpn in [Alpn::Http1, Alpn::Http2] {
            let mut connection = server.client(alpn).connect().await.unwrap();
            assert_eq!(
                connection.peer_certificate.as_deref(),
                Some(&old.cert_der()[..]),
                "{what}"
            );
            post_review(&mut connection, &format!("fault-{i}-{alpn:?}"))
                .await
                .unwrap();
        }
        // One error line per failed reload, the last naming this fault.
        let failed: Vec<Value> = server
            .json_logs()
            .into_iter()
            .filter(|line| line["level"] == "ERROR")
            .collect();
        assert_eq!(failed.len() as f64, errors, "{what}: {failed:#?}");
        let last = failed.last().unwrap();
        assert_eq!(
            last["message"], "certificate reload failed; still serving the previous certificate",
            "{what}"
        );
        let error = last["error"].as_str().unwrap_or_default();
        assert!(error.contains(logged), "{what}: error {error:?}");
    }

    // A good pair again: loaded.
    std::fs::write(&cert, &new.cert).unwrap();
    std::fs::write(&key, &new.key).unwrap();
    wait_until("the good pair's reload", Duration::from_secs(5), || async {
        let client = TlsClient::builder(&new_ca, server.addr).build();
        match client.connect().await {
            Ok(mut connection) => {
                common::Scrape::parse(&connection.get("/metrics").await.text())
                    .value(CERTIFICATE_RELOADS_OK)
                    >= 1.0
            }
            Err(_) => false,
        }
    })
    .await;
    let mut connection = TlsClient::builder(&new_ca, server.addr)
        .build()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        connection.peer_certificate.as_deref(),
        Some(&new.cert_der()[..])
    );
    post_review(&mut connection, "after-repair").await.unwrap();
    let metrics = common::Scrape::parse(&connection.get("/metrics").await.text());
    assert_eq!(metrics.value(CERTIFICATE_RELOADS_OK), 1.0);
    assert_eq!(metrics.value(CERTIFICATE_RELOADS_FAILED), errors);
    assert_eq!(metrics.value(CERTIFICATE_EXPIRY), new.not_after() as f64);
    assert_untrusted(
        "the old CA after the repair",
        server.client(Alpn::Http1).connect().await,
    );
}

// -------------------------------------------------------------------------------------------
// Mutual TLS.

/// What a client gets from a server that requires client certificates: `GET /healthz`'s
/// status over raw HTTP/1.1, or the error. With TLS 1.3 the server judges the client's
/// certificate after the client has finished its handshake, so a refusal may only arrive as an
/// alert on the first read.
async fn mtls_probe(client: &TlsClient) -> Result<u16, String> {
    let describe = |error: std::io::Error| match tls_error(&error) {
        Some(tls) => format!("{tls:?}"),
        None => format!("{error:?}"),
    };
    let mut tls = client.connect_tls().await.map_err(describe)?;
    tls.write_all(
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
            client.authority()
        )
        .as_bytes(),
    )
    .await
    .map_err(describe)?;
    read_response(&mut tls)
        .await
        .map(|reply| reply.status)
        .map_err(describe)
}

/// Served: the probe's 200 and a review on a connection of the harness's client.
async fn assert_served(what: &str, client: &TlsClient) {
    assert_eq!(mtls_probe(client).await, Ok(200), "{what}");
    connect_and_review(client, what)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// Refused with one of the `alerts`.
async fn assert_refused(what: &str, client: &TlsClient, alerts: &[&str]) {
    let error = mtls_probe(client)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: served without an acceptable client certificate"));
    assert!(
        alerts
            .iter()
            .any(|alert| error == format!("AlertReceived({alert})")),
        "{what}: expected the server's alert {alerts:?}, got {error}"
    );
    // Nor does a review get through.
    assert!(connect_and_review(client, what).await.is_err(), "{what}");
}

/// The alert rustls sends a client that presents no certificate (TLS 1.3 and 1.2 alike), and
/// one whose certificate no trusted CA signed.
const NO_CERTIFICATE: &[&str] = &["CertificateRequired"];
const UNKNOWN_CA: &[&str] = &["UnknownCA"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca_and_follows_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let first = ClientCa::new("first client CA");
    let second = ClientCa::new("second client CA");
    let stranger = ClientCa::new("some other CA");
    let client_ca = write(&dir.path().join("client-ca.crt"), &first.pem());
    let server = Server::start_with(StartOptions {
        args: vec![
            "--reload-interval".into(),
            "100ms".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--client-ca".into(),
            client_ca.to_str().unwrap().into(),
        ],
        ..StartOptions::default()
    });
    let metrics_addr = server
        .metrics_addr()
        .expect("the metrics address in the log");
    let reloads = |series: &'static str| async move {
        let (_, _, text) = common::plain_get(metrics_addr, "/metrics").await;
        common::Scrape::parse(&text).value(series)
    };
    let client_of = |ca: Option<&ClientCa>,
                     versions: &[&'static rustls::SupportedProtocolVersion]| {
        let builder = TlsClient::builder(&server.ca_path, server.addr)
            .alpn(Alpn::Http1)
            .versions(versions);
        match ca {
            None => builder.build(),
            Some(ca) => {
                let (cert, key) = ca.issue("kube-apiserver");
                builder
                    .client_identity(cert.as_bytes(), key.as_bytes())
                    .build()
            }
        }
    };
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

    for versions in [tls13, tls12] {
        let v = format!("{:?}", versions[0].version);
        assert_served(
            &format!("{v}: a client of the client CA"),
            &client_of(Some(&first), versions),
        )
        .await;
        assert_refused(
            &format!("{v}: no client certificate"),
            &client_of(None, versions),
            NO_CERTIFICATE,
        )
        .await;
        assert_refused(
            &format!("{v}: a client certificate of another CA"),
            &client_of(Some(&stranger), versions),
            UNKNOWN_CA,
        )
        .await;
    }
    // curl, with and without a client certificate.
    let (cert, key) = first.issue("curl");
    let cert_path = write(&dir.path().join("curl.crt"), &cert);
    let key_path = write(&dir.path().join("curl.key"), &key);
    let out = server
        .curl("/healthz")
        .arg("--cert")
        .arg(cert_path.to_str().unwrap())
        .arg("--key")
        .arg(key_path.to_str().unwrap())
        .run();
    assert!(
        out.success() && out.text() == "ok",
        "curl with a client certificate: {out:?}"
    );
    let out = server.curl("/healthz").run();
    assert!(!out.success(), "curl without a client certificate: {out:?}");
    assert_eq!(out.status, 0);
    // The kubelet has no client certificate: its probes go to the plain listener, which
    // answers them (and /metrics) but no review.
    for probe in ["/healthz", "/readyz"] {
        let (status, _, text) = common::plain_get(metrics_addr, probe).await;
        assert!(
            status == 200 && text == "ok",
            "plain {probe}: {status} {text}"
        );
    }
    let (status, _, _) = common::plain_get(metrics_addr, "/mutate").await;
    assert_eq!(status, 404, "plain GET /mutate");

    // A connection of the first CA's client, made before the rotation.
    let first_client = client_of(Some(&first), tls13);
    let second_client = client_of(Some(&second), tls13);
    let mut established = first_client.connect().await.unwrap();
    post_review(&mut established, "established").await.unwrap();
    assert_refused(
        "the second CA's client before the rotation",
        &second_client,
        UNKNOWN_CA,
    )
    .await;

    // Rotation, step 1: a bundle of both CAs; both clients are served.
    std::fs::write(&client_ca, first.pem() + &second.pem()).unwrap();
    wait_until("the bundle's reload", Duration::from_secs(5), || async {
        reloads(CERTIFICATE_RELOADS_OK).await >= 1.0
    })
    .await;
    assert_served("the first CA's client, bundle", &first_client).await;
    assert_served("the second CA's client, bundle", &second_client).await;

    // Step 2: the second CA only; the first CA's client is refused on new connections.
    std::fs::write(&client_ca, second.pem()).unwrap();
    wait_until("the second CA's reload", Duration::from_secs(5), || async {
        reloads(CERTIFICATE_RELOADS_OK).await >= 2.0
    })
    .await;
    assert_served("the second CA's client, after", &second_client).await;
    assert_refused(
        "the first CA's client after the rotation",
        &first_client,
        UNKNOWN_CA,
    )
    .await;
    // An established connection keeps its handshake.
    post_review(&mut established, "established-after")
        .await
        .unwrap();

    // A client CA file that does not load: logged, counted, and the last good one stays.
    std::fs::write(&client_ca, "not a certificate\n").unwrap();
    wait_until(
        "a failed client CA reload",
        Duration::from_secs(5),
        || async { reloads(CERTIFICATE_RELOADS_FAILED).await >= 1.0 },
    )
    .await;
    assert_eq!(reloads(CERTIFICATE_RELOADS_OK).await, 2.0);
    assert_served("the second CA's client, broken file", &second_client).await;
    assert_refused(
        "the first CA's client, broken file",
        &first_client,
        UNKNOWN_CA,
    )
    .await;
    assert_refused(
        "no client certificate, broken file",
        &client_of(None, tls13),
        NO_CERTIFICATE,
    )
    .await;
    let logs = server.json_logs();
    assert!(
        logs.iter().any(|l| l["level"] == "ERROR"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("client CA") && e.contains("client-ca.crt"))),
        "no error naming the client CA file:\n{}",
        server.logs()
    );
}

// -------------------------------------------------------------------------------------------
// SIGTERM under load.

/// What the SIGTERM load saw of one request.
#[derive(Debug)]
enum Outcome {
    /// A complete, correct answer.
    Answered,
    /// An answer, but not a correct one.
    Wrong(String),
    /// No answer: the request (or its connection) failed.
    Failed(String),
}

#[derive(Debug, Default)]
struct Record {
    /// (uid, when it was sent, when it was answered or failed, what happened)
    outcomes: Vec<(String, SystemTime, SystemTime, Outcome)>,
    connect_failures: Vec<(SystemTime, String)>,
}

/// Sends reviews on `alpn` connections (`streams` at a time; 0: a new connection per review)
/// until connecting fails or `stop`.
async fn sigterm_load(
    name: String,
    client: TlsClient,
    streams: usize,
    stop: Arc<AtomicBool>,
) -> Record {
    let mut record = Record::default();
    let mut i = 0usize;
    let mut connection: Option<common::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            match client.connect().await {
                Ok(c) => connection = Some(c),
                Err(error) => {
                    record
                        .connect_failures
                        .push((SystemTime::now(), format!("{error:?}")));
                    break;
                }
            }
        }
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..streams.max(1) {
            i += 1;
            let uid = format!("load-{name}-{i}");
            let mut handle = match connection.as_ref().unwrap().is_http2() {
                true => connection.as_ref().unwrap().h2_handle(),
                false => connection.take().unwrap(),
            };
            batch.spawn(async move {
                let sent = SystemTime::now();
                let outcome = match handle
                    .request(
                        Method::POST,
                        "/mutate",
                        Some("application/json"),
                        review(&uid),
                    )
                    .await
                {
                    Err(error) => Outcome::Failed(format!("{error:?}")),
                    Ok(reply) => match check_review(reply.status.as_u16(), &reply.body, &uid) {
                        Ok(()) => Outcome::Answered,
                        Err(wrong) => Outcome::Wrong(wrong),
                    },
                };
                (uid, sent, SystemTime::now(), outcome, handle)
            });
        }
        let mut failed = false;
        while let Some(done) = batch.join_next().await {
            let (uid, sent, ended, outcome, handle) = done.unwrap();
            failed |= !matches!(outcome, Outcome::Answered);
            record.outcomes.push((uid, sent, ended, outcome));
            if connection.is_none() && !handle.is_http2() {
                connection = Some(handle);
            }
        }
        if failed || streams == 0 {
            connection = None;
        }
    }
    record
}

/// Sends `GET /readyz` over pipelined HTTP/1.1 as fast as it can until the server goes away;
/// returns (when each batch was sent, the statuses answered).
async fn readyz_firehose(client: TlsClient, stop: Arc<AtomicBool>) -> Vec<(SystemTime, u16)> {
    let mut seen = Vec::new();
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {}\r\n\r\n",
        client.authority()
    );
    'connections: while !stop.load(Ordering::Relaxed) {
        let Ok(mut tls) = client.connect_tls().await else {
            break;
        };
        loop {
            let sent = SystemTime::now();
            if tls.write_all(request.repeat(8).as_bytes()).await.is_err() {
                continue 'connections;
            }
            for _ in 0..8 {
                match read_response(&mut tls).await {
                    Ok(reply) => seen.push((sent, reply.status)),
                    Err(_) => continue 'connections,
                }
            }
        }
    }
    seen
}

/// A log line's `timestamp` (tracing's RFC 3339 in UTC: `2026-01-02T03:04:05.678901Z`).
fn log_time(line: &Value) -> SystemTime {
    let text = line["timestamp"].as_str().expect("a timestamp");
    let parse = || -> Option<SystemTime> {
        let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
        let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, d) = (date.next()??, date.next()??, date.next()??);
        let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
        let mut hms = hms.split(':').map(|p| p.parse::<u64>().ok());
        let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
        let nanos: u64 = format!("{fraction:0<9}")[..9].parse().ok()?;
        // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
        let seconds = days * 86_400 + hh * 3600 + mm * 60 + ss;
        Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos as u32))
    };
    parse().unwrap_or_else(|| panic!("timestamp {text:?} is not RFC 3339 UTC"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_what_it_accepted_and_exits_zero() {
    let shutdown_timeout = Duration::from_secs(5);
    let mut server = Server::start_with(StartOptions {
        args: [
            "--shutdown-timeout",
            "5s",
            // Long, so that idle connections closing at shutdown is the shutdown's doing.
            "--header-read-timeout",
            "30s",
            "--body-read-timeout",
            "30s",
        ]
        .map(String::from)
        .to_vec(),
        ..StartOptions::default()
    });
    let stop = Arc::new(AtomicBool::new(false));

    // Steady load: keep-alive HTTP/1.1, HTTP/2 with 4 streams at a time, a new connection per
    // review.
    let mut load = tokio::task::JoinSet::new();
    for (name, alpn, streams) in [
        ("h1-a", Alpn::Http1, 1),
        ("h1-b", Alpn::Http1, 1),
        ("h2-a", Alpn::Http2, 4),
        ("h2-b", Alpn::Http2, 4),
        ("new-h1", Alpn::Http1, 0),
        ("new-h2", Alpn::Http2, 0),
    ] {
        load.spawn(sigterm_load(
            name.to_owned(),
            server.client(alpn),
            streams,
            stop.clone(),
        ));
    }
    let readyz = tokio::spawn(readyz_firehose(server.client(Alpn::Http1), stop.clone()));

    // Idle keep-alive connections: HTTP/1.1 (raw) and HTTP/2.
    let client = server.client(Alpn::Http1);
    let mut idle_h1 = client.connect_tls().await.unwrap();
    idle_h1
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
                client.authority()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle_h1).await.unwrap().status, 200);
    let idle_h1_closed = tokio::spawn(closed_at(idle_h1));
    let h2_client = server.client(Alpn::Http2);
    let (mut idle_h2, idle_h2_closed) = h2_connection(&h2_client).await;
    let (tx, reply) = h2_post_in_parts(&mut idle_h2, &h2_client.authority(), &review("idle-h2"), 0);
    tx.send(Bytes::from(review("idle-h2"))).unwrap();
    drop(tx);
    let (status, body) = reply.await.unwrap().unwrap();
    check_review(status, &body, "idle-h2").unwrap();

    // In flight at SIGTERM: reviews whose bodies are half sent.
    let slow_body = review("in-flight-h1");
    let mut in_flight_h1 = client.connect_tls().await.unwrap();
    in_flight_h1
        .write_all(post_head(&client, slow_body.len()).as_bytes())
        .await
        .unwrap();
    in_flight_h1
        .write_all(&slow_body[..slow_body.len() / 2])
        .await
        .unwrap();
    let (mut in_flight_h2, _) = h2_connection(&h2_client).await;
    let slow_body_h2 = review("in-flight-h2");
    let (rest_h2, in_flight_h2_reply) = h2_post_in_parts(
        &mut in_flight_h2,
        &h2_client.authority(),
        &slow_body_h2,
        slow_body_h2.len() / 2,
    );

    // Accepted before SIGTERM, its request sent only after: still answered.
    let mut quiet_h1 = client.connect_tls().await.unwrap();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let sigterm = Instant::now();
    let sigterm_wall = SystemTime::now();
    server.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quiet_body = review("quiet-h1");
    quiet_h1
        .write_all(post_head(&client, quiet_body.len()).as_bytes())
        .await
        .unwrap();
    quiet_h1.write_all(&quiet_body).await.unwrap();

    // Idle connections are closed at once, while the in-flight reviews hold the process up.
    let idle_h1_closed = tokio::time::timeout(Duration::from_secs(3), idle_h1_closed)
        .await
        .expect("the idle HTTP/1.1 connection is still open 3 s after SIGTERM")
        .unwrap();
    let idle_h2_closed = tokio::time::timeout(Duration::from_secs(3), idle_h2_closed)
        .await
        .expect("the idle HTTP/2 connection is still open 3 s after SIGTERM")
        .unwrap();
    for (what, closed) in [("HTTP/1.1", idle_h1_closed), ("HTTP/2", idle_h2_closed)] {
        assert!(
            closed - sigterm < Duration::from_secs(1),
            "the idle {what} connection was closed {} after SIGTERM",
            seconds(closed - sigterm)
        );
    }
    drop(idle_h2);
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(sigterm.elapsed())).await;
    assert!(
        server.try_exit().is_none(),
        "exited with reviews in flight: {}",
        server.logs()
    );
    // Finish the in-flight reviews: they are answered in full.
    in_flight_h1
        .write_all(&slow_body[slow_body.len() / 2..])
        .await
        .unwrap();
    // Each is answered in full, and the answer closes its connection.
    for (mut connection, uid) in [(in_flight_h1, "in-flight-h1"), (quiet_h1, "quiet-h1")] {
        let reply = read_response(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{uid}: no answer during shutdown: {e}"));
        check_review(reply.status, &reply.body, uid).unwrap();
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{uid}: an answer during shutdown should close the connection: {}",
            reply.head
        );
    }
    rest_h2
        .send(Bytes::copy_from_slice(
            &slow_body_h2[slow_body_h2.len() / 2..],
        ))
        .unwrap();
    let (status, body) = in_flight_h2_reply
        .await
        .unwrap()
        .expect("the in-flight HTTP/2 review's answer");
    check_review(status, &body, "in-flight-h2").unwrap();

    // Then the process exits, 0, within the shutdown timeout.
    let deadline = sigterm + shutdown_timeout + Duration::from_millis(500);
    let status = loop {
        if let Some(status) = server.try_exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {} after SIGTERM:\n{}",
            seconds(sigterm.elapsed()),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = sigterm.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.code(), Some(0), "{status}:\n{}", server.logs());
    assert!(
        exited < shutdown_timeout,
        "exited {} after SIGTERM",
        seconds(exited)
    );

    let mut records = Vec::new();
    while let Some(record) = load.join_next().await {
        records.push(record.unwrap());
    }
    let readyz = readyz.await.unwrap();
    let logs = server.json_logs();

    // What the server answered, by its log: one review line per answered review.
    let logged: BTreeSet<String> = logs
        .iter()
        .filter(|l| l["message"] == "review")
        .filter_map(|l| l["uid"].as_str().map(str::to_owned))
        .filter(|uid| uid.starts_with("load-"))
        .collect();
    let mut answered = BTreeSet::new();
    let mut answered_after_sigterm = 0;
    let mut failures = BTreeMap::new();
    for record in &records {
        for (uid, sent, ended, outcome) in &record.outcomes {
            match outcome {
                Outcome::Answered => {
                    answered.insert(uid.clone());
                    answered_after_sigterm += usize::from(*sent >= sigterm_wall);
                }
                Outcome::Wrong(wrong) => panic!("{uid}: a wrong answer: {wrong}"),
                Outcome::Failed(error) => {
                    // Sent just before SIGTERM on a connection the shutdown then closed is
                    // fine (checked below: the server never took it up); failing before is not.
                    assert!(
                        *ended >= sigterm_wall,
                        "{uid} failed before SIGTERM: {error}"
                    );
                    failures.insert(uid.clone(), error.clone());
                }
            }
        }
        for (when, error) in &record.connect_failures {
            assert!(
                *when >= sigterm_wall,
                "a connection failed before SIGTERM: {error}"
            );
        }
    }
    assert!(
        answered.len() > 50,
        "too little load to mean anything: {} reviews answered",
        answered.len()
    );
    // Every review the server decided reached its client, and every failed request is one the
    // server never took up.
    let lost: Vec<&String> = logged.difference(&answered).collect();
    assert!(
        lost.is_empty(),
        "reviews the server logged but whose answer never arrived: {lost:?} ({:?})",
        lost.iter()
            .filter_map(|uid| failures.get(*uid))
            .collect::<Vec<_>>()
    );
    let unlogged: Vec<&String> = answered.difference(&logged).collect();
    assert!(
        unlogged.is_empty(),
        "answers without a review log line: {unlogged:?}"
    );
    for (uid, error) in &failures {
        let never_accepted = [
            "ConnectionRefused",
            "ConnectionReset",
            "BrokenPipe",
            "IncompleteMessage",
            "connection closed",
            "ChannelClosed",
            "REFUSED_STREAM",
            "GoAway",
            "Canceled",
            "UnexpectedEof",
        ];
        assert!(
            never_accepted.iter().any(|kind| error.contains(kind)),
            "{uid}: an error that is not a refused or closed connection: {error}"
        );
    }

    // Readiness: no 200 for a probe sent after shutdown began, and the log shows the order:
    // SIGTERM, readiness off and the listener closed, connections drained, stopped.
    let position = |message: &str| {
        logs.iter()
            .position(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .unwrap_or_else(|| panic!("no {message:?} in the log:\n{}", server.logs()))
    };
    let order = [
        position("received SIGTERM"),
        position("shutting down: no new connections"),
        position("all connections closed"),
        position("stopped"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "log order {order:?}");
    let shutting_down = log_time(&logs[order[1]]);
    let skew = shutting_down
        .duration_since(sigterm_wall)
        .unwrap_or_else(|e| panic!("shutdown logged {:?} before SIGTERM was sent", e.duration()));
    assert!(
        skew < Duration::from_secs(1),
        "shutdown logged {skew:?} after SIGTERM"
    );
    let late_ready: Vec<_> = readyz
        .iter()
        .filter(|(sent, status)| *sent > shutting_down && *status == 200)
        .collect();
    assert!(
        late_ready.is_empty(),
        "/readyz said 200 after shutdown began: {late_ready:?}"
    );
    assert!(
        readyz
            .iter()
            .any(|(sent, status)| *sent < sigterm_wall && *status == 200),
        "/readyz was never 200 before SIGTERM"
    );
    eprintln!(
        "SIGTERM under load: {} reviews answered ({answered_after_sigterm} sent after SIGTERM), \
         {} refused or closed, /readyz 503 seen {} times; exit after {}",
        answered.len(),
        failures.len(),
        readyz.iter().filter(|(_, s)| *s == 503).count(),
        seconds(exited)
    );
}

// -------------------------------------------------------------------------------------------
// Idle and slow connections.

/// Opens `count` connections with `open`, `parallel` at a time.
async fn open_many<T, F, Fut>(count: usize, parallel: usize, open: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut opened = Vec::with_capacity(count);
    for start in (0..count).step_by(parallel) {
        let mut batch = tokio::task::JoinSet::new();
        for i in start..(start + parallel).min(count) {
            let future = open(i);
            batch.spawn(async move { (i, future.await) });
        }
        let mut results: Vec<(usize, T)> = Vec::new();
        while let Some(done) = batch.join_next().await {
            results.push(done.unwrap());
        }
        results.sort_by_key(|(i, _)| *i);
        opened.extend(results.into_iter().map(|(_, t)| t));
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_or_slow_connections_do_not_starve_a_normal_client() {
    let timeout = Duration::from_secs(5);
    let server = Server::start_with(StartOptions {
        args: ["--header-read-timeout", "5s", "--body-read-timeout", "5s"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    let per_kind = 250;
    let body = review("slow-body");
    // Each kind from an address of its own (127.0.0.2 to .5), within the per-client share of
    // connections (256): this is about the connection slots and the timeouts.
    let source = |kind: u8| IpAddr::from([127, 0, 0, 2 + kind]);

    // Each held connection: (kind, when it was opened, a task resolving to when it was
    // closed and what it was answered).
    type Held = (
        &'static str,
        Instant,
        tokio::task::JoinHandle<(Instant, Option<u16>)>,
    );
    let mut held: Vec<Held> = Vec::new();
    let started = Instant::now();
    let tcp_client = client.clone().with_source(source(0));
    held.extend(
        open_many(per_kind, 50, |_| {
            let client = tcp_client.clone();
            async move {
                let tcp = client.connect_tcp().await.expect("a TCP connection");
                let opened = Instant::now();
                let closed = tokio::spawn(async move { (closed_at(tcp).await, None) });
                ("raw TCP, no TLS", opened, closed)
            }
        })
        .await,
    );
    for (kind, (name, payload)) in [
        ("TLS, nothing sent", String::new()),
        (
            "TLS, half the headers",
            format!(
                "POST /mutate HTTP/1.1\r\nHost: {}\r\nContent-",
                client.authority()
            ),
        ),
        (
            "TLS, a slow body",
            post_head(&client, body.len()) + "{\"apiVersion\"",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let client = client.clone().with_source(source(1 + kind as u8));
        held.extend(
            open_many(per_kind, 25, |_| {
                let client = client.clone();
                let payload = payload.clone();
                async move {
                    let mut tls = client.connect_tls().await.expect("a TLS connection");
                    let opened = Instant::now();
                    if !payload.is_empty() {
                        tls.write_all(payload.as_bytes()).await.unwrap();
                    }
                    let closed = tokio::spawn(async move {
                        let status = read_response(&mut tls).await.ok().map(|r| r.status);
                        (closed_at(tls).await, status)
                    });
                    (name, opened, closed)
                }
            })
            .await,
        );
    }
    let setup = started.elapsed();
    assert_eq!(held.len(), 4 * per_kind);

    // A normal client is served at once, over both protocols, while they are held.
    let served = Instant::now();
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let mut connection = server.client(alpn).connect().await.unwrap();
        post_review(&mut connection, &format!("normal-{alpn:?}"))
            .await
            .unwrap();
    }
    let out = server.curl("/healthz").run();
    assert!(out.success() && out.text() == "ok", "{out:?}");
    let served_in = served.elapsed();
    assert!(
        served_in < Duration::from_secs(2),
        "a normal client took {} with a thousand idle connections open",
        seconds(served_in)
    );
    // Those whose request is being read are still there: the body timeout closes them.
    let begun_still_open = held
        .iter()
        .filter(|(kind, _, task)| kind.contains("slow") && !task.is_finished())
        .count();
    assert_eq!(
        begun_still_open,
        per_kind,
        "slow bodies closed before the normal client was served (setup took {})",
        seconds(setup)
    );

    // Each is closed once its timeout has passed, not before: a slow body the body timeout
    // after it began, with a 408; a connection whose first request has not been read whole
    // the header timeout after it was accepted or, accepted with half the slots taken, one
    // second after.
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (kind, opened, task) in held {
        let (closed, status) = tokio::time::timeout(timeout + Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("{kind}: still open 15 s after it was opened"))
            .unwrap();
        let lived = closed - opened;
        let shortest = if kind.contains("slow") {
            timeout - Duration::from_millis(300)
        } else {
            Duration::from_millis(700)
        };
        assert!(
            lived >= shortest && lived < timeout + Duration::from_secs(5),
            "{kind}: closed after {} (timeout {})",
            seconds(lived),
            seconds(timeout)
        );
        let expected = (kind == "TLS, a slow body").then_some(408);
        assert_eq!(status, expected, "{kind}: answered {status:?}");
        by_kind.entry(kind).or_default().push(lived);
    }
    for (kind, lived) in &by_kind {
        let longest = lived.iter().max().unwrap();
        let shortest = lived.iter().min().unwrap();
        eprintln!(
            "{kind}: {} closed, after {} to {}",
            lived.len(),
            seconds(*shortest),
            seconds(*longest)
        );
    }
    let metrics = server.scrape().await;
    assert_eq!(
        metrics.value(r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="408"}"#),
        per_kind as f64
    );
    eprintln!(
        "a thousand connections opened in {}; a normal client served in {}",
        seconds(setup),
        seconds(served_in)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_body_timeout_gets_408_over_both_protocols() {
    let server = Server::start_with(StartOptions {
        args: ["--body-read-timeout", "1s", "--header-read-timeout", "10s"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let body = review("slow");

    // HTTP/1.1: a byte every 200 ms never finishes within 1 s.
    let client = server.client(Alpn::Http1);
    let mut tls = client.connect_tls().await.unwrap();
    tls.write_all(post_head(&client, body.len()).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        for byte in body.iter().take(20) {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let reply = read_response(&mut reader).await.expect("an answer");
    let took = started.elapsed();
    trickle.abort();
    assert_eq!(reply.status, 408, "{reply:?}");
    let status: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 408);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "408 after {}",
        seconds(took)
    );

    // HTTP/2: half a body, then nothing.
    let h2_client = server.client(Alpn::Http2);
    let (mut sender, _) = h2_connection(&h2_client).await;
    let body = review("slow-h2");
    let started = Instant::now();
    let (_rest, reply) = h2_post_in_parts(&mut sender, &h2_client.authority(), &body, 100);
    let (status, answer) = reply.await.unwrap().unwrap();
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(3));

    // The server is fine.
    let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
    post_review(&mut connection, "after-slow-bodies")
        .await
        .unwrap();
}

/// `--idle-timeout` closes idle connections, HTTP/2 ones too (they answer pings), or a client
/// that opens connections and says nothing more holds the connection slots for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start_with(StartOptions {
        args: ["--idle-timeout", "1s", "--max-connections", "4"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http2);

    let mut connections = Vec::new();
    // Two connections served once, then idle.
    for i in 0..2 {
        let (mut sender, ended) = h2_connection(&client).await;
        let uid = format!("once-{i}");
        let (tx, reply) = h2_post_in_parts(&mut sender, &client.authority(), &review(&uid), 0);
        tx.send(Bytes::from(review(&uid))).unwrap();
        let (status, body) = reply.await.unwrap().unwrap();
        check_review(status, &body, &uid).unwrap();
        connections.push(("served once, then idle", sender, ended));
    }
    // Two that send the HTTP/2 preface and SETTINGS, and no request.
    for _ in 0..2 {
        let (sender, ended) = h2_connection(&client).await;
        connections.push(("preface only", sender, ended));
    }
    let idle_from = Instant::now();

    // The four fill --max-connections 4; a fifth client must get in once they time out.
    let normal = server.client(Alpn::Http1);
    let normal = tokio::spawn(async move {
        let result = connect_and_review(&normal, "fifth").await;
        (result, Instant::now())
    });
    // Four times the timeout later (the client keeps every connection open and answers the
    // server's pings: only the server can close them).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut problems = Vec::new();
    for (what, _sender, ended) in &connections {
        if !ended.is_finished() {
            problems.push(format!(
                "{what}: still open {} after it went idle",
                seconds(idle_from.elapsed())
            ));
        }
    }
    if normal.is_finished() {
        let (result, at) = normal.await.unwrap();
        if let Err(error) = result {
            problems.push(format!("the fifth client failed: {error}"));
        } else {
            eprintln!(
                "the fifth client was served after {}",
                seconds(at - idle_from)
            );
        }
    } else {
        problems.push(format!(
            "a fifth client (HTTP/1.1) was still not served {} later: the idle HTTP/2 \
             connections hold every slot of --max-connections 4",
            seconds(idle_from.elapsed())
        ));
    }
    drop(connections);
    assert!(
        problems.is_empty(),
        "with --idle-timeout 1s, idle HTTP/2 connections:\n  {}",
        problems.join("\n  ")
    );
}

// -------------------------------------------------------------------------------------------
// The connection limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_client_waits_and_is_served_when_one_closes() {
    let server = Server::start_with(StartOptions {
        args: ["--max-connections", "50", "--header-read-timeout", "30s"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let mut held = Vec::new();
    for i in 0..50 {
        let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
        post_review(&mut connection, &format!("held-{i}"))
            .await
            .unwrap();
        held.push(connection);
    }

    let client = server.client(Alpn::Http1);
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let result = connect_and_review(&client, "the-51st").await;
        (result, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the 51st connection did not wait: {:?}",
        waiting.await.unwrap().0
    );

    let released = Instant::now();
    drop(held.pop());
    let (result, done) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the 51st connection was not served within 5 s of a slot freeing")
        .unwrap();
    result.unwrap_or_else(|e| panic!("the 51st connection was refused: {e}"));
    assert!(
        done > released,
        "served {} after it started",
        seconds(done - started)
    );
    assert!(
        done - released < Duration::from_secs(2),
        "{}",
        seconds(done - released)
    );

    // The others were never disturbed.
    for (i, connection) in held.iter_mut().enumerate() {
        post_review(connection, &format!("held-again-{i}"))
            .await
            .unwrap();
    }
}

// -------------------------------------------------------------------------------------------
// HTTP/2.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_http2_streams_than_the_limit_are_all_answered() {
    let server = Server::start_with(StartOptions {
        args: ["--http2-max-streams", "4"].map(String::from).to_vec(),
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http2);

    // The limit is real: four streams whose bodies are pending take every slot, and a fifth
    // waits until one of them completes.
    let (mut sender, _) = h2_connection(&client).await;
    // A first exchange, so the server's SETTINGS (with its limit) have arrived.
    let (tx, reply) = h2_post_in_parts(&mut sender, &client.authority(), &review("first"), 0);
    tx.send(Bytes::from(review("first"))).unwrap();
    drop(tx);
    let (status, body) = reply.await.unwrap().unwrap();
    check_review(status, &body, "first").unwrap();
    let mut pending = Vec::new();
    for i in 0..4 {
        let body = review(&format!("slot-{i}"));
        let (rest, reply) = h2_post_in_parts(&mut sender, &client.authority(), &body, 10);
        pending.push((i, body, rest, reply));
    }
    let fifth = {
        let body = review("fifth");
        let (tx, reply) = h2_post_in_parts(&mut sender, &client.authority(), &body, 0);
        tx.send(Bytes::from(body)).unwrap();
        drop(tx);
        reply
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth stream ran beside four with a limit of 4"
    );
    let (i, body, rest, reply) = pending.remove(0);
    rest.send(Bytes::copy_from_slice(&body[10..])).unwrap();
    let (status, answer) = reply.await.unwrap().unwrap();
    check_review(status, &answer, &format!("slot-{i}")).unwrap();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(3), fifth)
        .await
        .expect("the fifth stream was not answered once a slot freed")
        .unwrap()
        .unwrap();
    check_review(status, &answer, "fifth").unwrap();
    for (i, body, rest, reply) in pending {
        rest.send(Bytes::copy_from_slice(&body[10..])).unwrap();
        let (status, answer) = reply.await.unwrap().unwrap();
        check_review(status, &answer, &format!("slot-{i}")).unwrap();
    }

    // Two hundred concurrent streams on one connection, fifty times the limit: all answered.
    let connection = client.connect().await.unwrap();
    assert!(connection.is_http2());
    let mut streams = tokio::task::JoinSet::new();
    let mut first = connection.h2_handle();
    first.get("/healthz").await;
    for i in 0..200 {
        let mut handle = connection.h2_handle();
        streams.spawn(async move {
            let uid = format!("stream-{i}");
            let reply: Result<Reply, _> = handle
                .request(
                    Method::POST,
                    "/mutate",
                    Some("application/json"),
                    review(&uid),
                )
                .await;
            (uid, reply)
        });
    }
    let mut answered = 0;
    while let Some(done) = streams.join_next().await {
        let (uid, reply) = done.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(reply.version, Version::HTTP_2);
        check_review(reply.status.as_u16(), &reply.body, &uid).unwrap();
        answered += 1;
    }
    assert_eq!(answered, 200);
    let out = server.curl("/healthz").http(CurlHttp::Http2).run();
    assert_eq!((out.status, out.version.as_str()), (200, "2"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_http2_offers_only_http1() {
    let server = Server::start_with(StartOptions {
        args: vec!["--disable-http2".into()],
        ..StartOptions::default()
    });
    // Offered both, the client gets HTTP/1.1.
    let mut connection = server.client(Alpn::Both).connect().await.unwrap();
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(!connection.is_http2());
    let reply = connection.get("/healthz").await;
    assert_eq!(
        (reply.status, reply.version),
        (StatusCode::OK, Version::HTTP_11)
    );
    post_review(&mut connection, "h1-only").await.unwrap();
    // Offering h2 alone, the handshake fails: no protocol in common.
    let error = server
        .client(Alpn::Http2)
        .connect()
        .await
        .err()
        .expect("a client offering only h2 connected");
    assert!(
        matches!(
            tls_error(&error),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::NoApplicationProtocol
            ))
        ),
        "{error:?}"
    );
    // curl --http2 falls back to HTTP/1.1.
    let out = server
        .curl("/mutate")
        .http(CurlHttp::Http2)
        .json_file(&common::fixture_path("create-plain.json"))
        .run();
    assert!(out.success(), "{}", out.stderr);
    assert_eq!((out.status, out.version.as_str()), (200, "1.1"));
    assert_eq!(out.json()["response"]["allowed"], true);
    // HTTP/2 with prior knowledge (no ALPN) is not spoken either.
    let out = server.curl("/healthz").arg("--http2-prior-knowledge").run();
    assert_ne!(out.version, "2", "{out:?}");
}

/// An idle HTTP/1.1 keep-alive connection outlives the header timeout (kube-apiserver keeps idle
/// connections for 90 s and must not find them closed under it) and ends at the idle timeout;
/// a request whose head stalls still ends at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idles_until_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start_with(StartOptions {
        args: ["--header-read-timeout", "1s", "--idle-timeout", "4s"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    let mut connection = client.connect().await.unwrap();
    post_review(&mut connection, "first").await.unwrap();
    // Idle for twice the header timeout: still good for another review.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    post_review(&mut connection, "after-2.5s-idle")
        .await
        .expect("an idle keep-alive connection was closed at the header timeout");

    // Past the idle timeout, the server has closed it.
    let mut idle = client.connect_tls().await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_at(idle))
        .await
        .expect("an idle keep-alive connection still open 10 s later");
    let after = closed - idle_from;
    assert!(
        (Duration::from_millis(3500)..Duration::from_secs(7)).contains(&after),
        "closed {after:?} after going idle; the idle timeout is 4 s"
    );

    // A head that stalls half-way is cut at the header timeout.
    let mut stalled = client.connect_tls().await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let stalled_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_at(stalled))
        .await
        .expect("a stalled request head still open 10 s later");
    assert!(
        closed - stalled_from < Duration::from_secs(3),
        "a stalled head was closed {:?} later; the header timeout is 1 s",
        closed - stalled_from
    );
}
