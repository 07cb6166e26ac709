//! What a hostile client, or a broken environment, could do to the running binary, each injected
//! for real: a log pipe that breaks, big reviews, watched files that are not files, SIGHUP,
//! floods of uploads and of idle connections, clients that do not read their answers. Each test
//! fails on a server without the mechanism that defends against it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;

use common::{Alpn, Server, StartOptions, TlsClient, wait_until};

fn review(uid: &str) -> Vec<u8> {
    let (_, mut review) = common::fixture("create-plain.json");
    review["request"]["uid"] = Value::from(uid);
    serde_json::to_vec(&review).unwrap()
}

/// Sends `count` reviews on one connection; each must be answered, allowed, with its uid.
async fn reviews_answered(client: &TlsClient, count: usize) {
    let mut connection = client.connect().await.expect("connecting");
    for i in 0..count {
        let uid = format!("review-{i}");
        let reply = connection.post_json("/mutate", review(&uid)).await;
        assert_eq!(reply.status, StatusCode::OK, "{uid}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["response"]["uid"], uid.as_str());
        assert_eq!(answer["response"]["allowed"], true);
    }
}

// -------------------------------------------------------------------------------------------
// The log pipe.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_log_pipe_drops_lines_counts_them_and_touches_no_review() {
    let mut server = Server::start_with(StartOptions {
        close_stderr_after_start: true,
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    // Every review logs a line; every line meets the broken pipe.
    reviews_answered(&client, 50).await;
    let mut connection = client.connect().await.unwrap();
    assert_eq!(connection.get("/healthz").await.status, StatusCode::OK);
    wait_until(
        "the dropped log lines to be counted",
        Duration::from_secs(5),
        || async {
            server
                .scrape()
                .await
                .value("daemonset_webhook_log_lines_dropped_total")
                >= 50.0
        },
    )
    .await;
    reviews_answered(&client, 5).await;
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_log_pipe_closed_before_start_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.path().join(daemonset_webhook::certs::CERT_FILE))
        .arg("--tls-key")
        .arg(dir.path().join(daemonset_webhook::certs::KEY_FILE))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The read end closes before the process has written anything.
    drop(child.stderr.take());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = TlsClient::builder(&dir.path().join(daemonset_webhook::certs::CA_FILE), addr)
        .alpn(Alpn::Http1)
        .build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        wait_until("the server to listen", Duration::from_secs(30), || async {
            client.connect().await.is_ok()
        })
        .await;
        reviews_answered(&client, 10).await;
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited with its log pipe closed"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

// -------------------------------------------------------------------------------------------
// Big reviews.

/// A valid review of `containers` containers: ~38 bytes each, every one patched.
fn big_review(containers: usize) -> Vec<u8> {
    let (_, mut review) = common::fixture("create-plain.json");
    review["request"]["uid"] = Value::from("big");
    review["request"]["object"]["spec"]["template"]["spec"]["containers"] = (0..containers)
        .map(|i| serde_json::json!({ "name": format!("c{i:06}"), "image": "pause:3.10" }))
        .collect();
    serde_json::to_vec(&review).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_reviews_are_judged_off_the_workers_and_stall_nothing() {
    // Room in the memory budget for both big reviews at once (each reserves five times its
    // size): this is about the workers, not the budget.
    let mut server = Server::start_with(StartOptions {
        args: vec!["--max-body-memory".into(), "64Mi".into()],
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    // Two at once, ~3 MB each, about a second each to judge in a debug build: judged on the
    // two async workers they would stall every other connection for that second.
    let big = big_review(80_000);
    assert!(big.len() > 3_000_000, "{}", big.len());
    let started = Instant::now();
    let bigs: Vec<_> = (0..2)
        .map(|_| {
            let (client, big) = (client.clone(), big.clone());
            tokio::spawn(async move {
                let mut connection = client.connect().await.unwrap();
                let reply = connection.post_json("/mutate", big).await;
                (reply.status, started.elapsed())
            })
        })
        .collect();
    // Meanwhile, on a connection of its own, normal reviews and the probes.
    let mut connection = client.connect().await.unwrap();
    let mut worst = Duration::ZERO;
    let mut answered_meanwhile = 0;
    while bigs.iter().any(|b| !b.is_finished()) {
        let asked = Instant::now();
        let reply = connection.post_json("/mutate", review("meanwhile")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(connection.get("/healthz").await.status, StatusCode::OK);
        worst = worst.max(asked.elapsed());
        answered_meanwhile += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut slowest_big = Duration::ZERO;
    for big in bigs {
        let (status, took) = big.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        slowest_big = slowest_big.max(took);
    }
    assert!(
        answered_meanwhile >= 3 && slowest_big > Duration::from_millis(300),
        "{answered_meanwhile} answered while the big reviews took {slowest_big:?}"
    );
    assert!(
        worst < Duration::from_millis(300),
        "a normal review and /healthz took {worst:?} while big reviews were judged \
         ({slowest_big:?})"
    );

    // SIGTERM while big reviews are judged: acted on at once (the listener closes), and the
    // reviews in flight are still answered.
    let bigs: Vec<_> = (0..2)
        .map(|_| {
            let (client, big) = (client.clone(), big.clone());
            tokio::spawn(async move {
                let mut connection = client.connect().await.unwrap();
                connection.post_json("/mutate", big).await.status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signalled = Instant::now();
    server.terminate();
    wait_until(
        "the listener to close after SIGTERM",
        Duration::from_millis(500),
        || async { tokio::net::TcpStream::connect(server.addr).await.is_err() },
    )
    .await;
    let acted = signalled.elapsed();
    for big in bigs {
        assert_eq!(
            big.await.unwrap(),
            StatusCode::OK,
            "a review in flight at SIGTERM"
        );
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("exit after SIGTERM");
    assert!(
        status.success(),
        "{status}; SIGTERM acted on after {acted:?}"
    );
}

// -------------------------------------------------------------------------------------------
// Watched files and signals.

fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn mkfifo(path: &std::path::Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(made.success());
}

/// Replaces `path` at once (rename) with what `make` puts at a temporary name beside it.
fn replace_with(path: &std::path::Path, make: impl FnOnce(&std::path::Path)) {
    let temporary = path.with_extension("new");
    make(&temporary);
    std::fs::rename(&temporary, path).unwrap();
}

#[test]
fn a_fifo_as_the_policy_file_is_refused_at_start_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("policy.yaml");
    mkfifo(&fifo);
    let output = common::run_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            fifo.to_str().unwrap(),
        ],
        dir.path(),
        &[],
        Duration::from_secs(10),
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a regular file (a FIFO)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_turned_fifo_or_dev_zero_is_refused_and_the_last_policy_stays() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "rules:\n  resources: off\n").unwrap();
    let mut server = Server::start_with(StartOptions {
        args: vec![
            "--config".into(),
            policy.to_str().unwrap().into(),
            "--reload-interval".into(),
            "100ms".into(),
        ],
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    let limits_patched = |answer: &Value| {
        let patch = common::decode_patch(&answer["response"]).unwrap();
        serde_json::to_string(&patch)
            .unwrap()
            .contains("/resources")
    };
    let mut connection = client.connect().await.unwrap();
    let answer = connection
        .post_json("/mutate", review("before"))
        .await
        .json();
    assert!(
        !limits_patched(&answer),
        "the policy file's resources: off is in force"
    );

    let before = vm_hwm_bytes(server.pid());
    for (what, make) in [
        ("FIFO", &mkfifo as &dyn Fn(&std::path::Path)),
        ("character device", &|p: &std::path::Path| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
    ] {
        replace_with(&policy, make);
        wait_until(
            &format!("the {what} to be refused"),
            Duration::from_secs(5),
            || async {
                server
                    .logs()
                    .contains(&format!("not a regular file (a {what})"))
            },
        )
        .await;
        // Reviews, the probes and the policy in force are as they were.
        let answer = connection.post_json("/mutate", review(what)).await.json();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            !limits_patched(&answer),
            "{what}: the previous policy stays in force"
        );
        assert_eq!(connection.get("/healthz").await.status, StatusCode::OK);
    }
    let grown = vm_hwm_bytes(server.pid()).saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "grew by {grown} bytes reading /dev/zero"
    );
    assert!(
        server
            .scrape()
            .await
            .value(r#"daemonset_webhook_policy_reloads_total{result="error"}"#)
            >= 2.0
    );
    server.terminate();
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_now_and_does_not_end_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "rules:\n  resources: off\n").unwrap();
    let mut server = Server::start_with(StartOptions {
        // Polled once an hour: only SIGHUP can bring the change in time.
        args: vec![
            "--config".into(),
            policy.to_str().unwrap().into(),
            "--reload-interval".into(),
            "60m".into(),
        ],
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    let mut connection = client.connect().await.unwrap();
    let patch_of = |answer: &Value| {
        serde_json::to_string(&common::decode_patch(&answer["response"]).unwrap()).unwrap()
    };
    let answer = connection
        .post_json("/mutate", review("before"))
        .await
        .json();
    assert!(!patch_of(&answer).contains("/resources"));
    std::fs::write(&policy, "rules:\n  resources: enforce\n").unwrap();
    let signalled = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    wait_until(
        "the policy reloaded on SIGHUP",
        Duration::from_secs(5),
        || async { server.logs().contains("reloaded the policy file") },
    )
    .await;
    assert!(
        server.logs().contains("received SIGHUP"),
        "{}",
        server.logs()
    );
    assert!(server.try_exit().is_none(), "SIGHUP ended the process");
    let answer = connection
        .post_json("/mutate", review("after"))
        .await
        .json();
    assert!(
        patch_of(&answer).contains("/resources"),
        "the new policy is in force"
    );
}

// -------------------------------------------------------------------------------------------
// Floods: request bodies, idle connections, clients that do not read.

/// The tests that load the machine take turns: each measures how long a normal client waits.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An attacker's address: the server tells clients apart by address.
fn attacker(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + n])
}

/// Raises this process's open-file limit to its hard limit (servers started after inherit
/// it): the floods below hold a few thousand sockets.
fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= wanted,
        "the open-file limit is {}; this test needs {wanted}",
        limit.rlim_cur
    );
}

/// A valid review padded with an annotation to `size` bytes.
fn padded_review(size: usize) -> Bytes {
    let (_, mut review) = common::fixture("create-plain.json");
    review["request"]["uid"] = Value::from("padded");
    let base = serde_json::to_vec(&review).unwrap().len();
    let padding = size - base - r#","annotations":{"pad":""}"#.len();
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({ "pad": "p".repeat(padding) });
    let body = serde_json::to_vec(&review).unwrap();
    assert!(body.len().abs_diff(size) < 64, "{} vs {size}", body.len());
    Bytes::from(body)
}

/// Sends normal reviews, each on a new connection, until `done`; the longest any took.
async fn normal_client_while(client: TlsClient, done: impl Fn() -> bool) -> (Duration, usize) {
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    while !done() || answered == 0 {
        let asked = Instant::now();
        let mut connection = tokio::time::timeout(Duration::from_secs(10), client.connect())
            .await
            .expect("a normal client connects within 10 s")
            .expect("a normal client connects");
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            connection.post_json("/mutate", review(&format!("normal-{answered}"))),
        )
        .await
        .expect("a normal review is answered within 10 s");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        worst = worst.max(asked.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (worst, answered)
}

/// POSTs `body` to `/mutate`: the reply, or why there was none.
async fn upload(connection: &mut common::Connection, body: Bytes) -> Result<common::Reply, String> {
    connection
        .request(
            hyper::Method::POST,
            "/mutate",
            Some("application/json"),
            body,
        )
        .await
        .map_err(|e| e.to_string())
}

/// What a flood of uploads was answered.
#[derive(Debug, Default)]
struct Uploads {
    ok: usize,
    /// 503 with Retry-After and a Status body.
    shed: usize,
    /// Refused before the answer could be read (HTTP/1.1: the connection closed on a body
    /// still being sent).
    cut: usize,
    /// Why they were cut, each reason once.
    why_cut: std::collections::BTreeSet<String>,
}

impl Uploads {
    fn count(&mut self, reply: Result<common::Reply, String>) {
        match reply {
            Ok(reply) if reply.status == StatusCode::OK => self.ok += 1,
            Ok(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.headers["retry-after"], "1");
                let status = reply.json();
                assert_eq!(status["kind"], "Status");
                assert_eq!(status["code"], 503);
                assert_eq!(status["details"]["retryAfterSeconds"], 1);
                self.shed += 1;
            }
            Ok(reply) => panic!("an upload was answered {}: {}", reply.status, reply.text()),
            Err(error) => {
                self.cut += 1;
                self.why_cut.insert(error);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_big_uploads_stay_within_the_memory_budget() {
    let _heavy = HEAVY.lock().await;
    raise_open_file_limit(1024);
    let server = Server::start();
    let pid = server.pid();
    let body = padded_review(daemonset_webhook::server::MAX_BODY_BYTES - 1024);
    let normal = server.client(Alpn::Http1);

    // 200 HTTP/1.1 uploads of ~7 MiB at once, each on a connection of its own.
    let uploader = server.client(Alpn::Http1).with_source(attacker(0));
    let uploads: Vec<_> = (0..200)
        .map(|_| {
            let (client, body) = (uploader.clone(), body.clone());
            tokio::spawn(async move {
                let mut connection = client.connect().await.map_err(|e| e.to_string())?;
                upload(&mut connection, body).await
            })
        })
        .collect();
    let (worst_h1, answered_h1) =
        normal_client_while(normal.clone(), || uploads.iter().all(|u| u.is_finished())).await;
    let mut h1 = Uploads::default();
    for upload in uploads {
        h1.count(upload.await.unwrap());
    }
    let peak_h1 = vm_hwm_bytes(pid);

    // One HTTP/2 connection, 250 streams of ~7 MiB at once.
    let connection = server
        .client(Alpn::Http2)
        .with_source(attacker(1))
        .connect()
        .await
        .unwrap();
    let streams: Vec<_> = (0..250)
        .map(|_| {
            let (mut connection, body) = (connection.h2_handle(), body.clone());
            tokio::spawn(async move { upload(&mut connection, body).await })
        })
        .collect();
    let (worst_h2, answered_h2) =
        normal_client_while(normal, || streams.iter().all(|s| s.is_finished())).await;
    let mut h2 = Uploads::default();
    for stream in streams {
        h2.count(stream.await.unwrap());
    }
    let peak = vm_hwm_bytes(pid);
    eprintln!(
        "200 HTTP/1.1 uploads: {h1:?}, peak {} MiB, {answered_h1} normal reviews, the slowest \
         {worst_h1:?}; 250 HTTP/2 streams: {h2:?}, peak {} MiB, {answered_h2} normal reviews, \
         the slowest {worst_h2:?}",
        peak_h1 >> 20,
        peak >> 20
    );
    assert!(peak < 300 << 20, "peak resident memory {} MiB", peak >> 20);
    assert!(
        worst_h1.max(worst_h2) < Duration::from_secs(2),
        "a normal review took {:?}",
        worst_h1.max(worst_h2)
    );
    // Some of the HTTP/1.1 flood is served, the rest told to come back.
    assert!(h1.ok > 0 && h1.shed > 0, "{h1:?}");
    // On HTTP/2 each stream is served or told to come back, unless the connection goes first:
    // 250 streams each granted a sliver of a 64 KiB window send many small DATA frames, and
    // those held in streams not yet read trip h2's own flood guard, which closes the
    // connection (GOAWAY ENHANCE_YOUR_CALM). Either way the memory stays bounded.
    assert_eq!(h2.ok + h2.shed + h2.cut, 250, "{h2:?}");
    assert!(
        h2.why_cut
            .iter()
            .all(|why| why == "connection error" || why == "http2 error"),
        "{h2:?}; the server's log:\n{}",
        server.logs()
    );
    // Every 503 is counted; those of streams cut with their connection too, unseen.
    let metrics = server.scrape().await;
    let shed = metrics.value("daemonset_webhook_requests_shed_total");
    assert!(
        (h1.shed + h2.shed) as f64 <= shed && shed <= (h1.shed + h2.shed + h2.cut) as f64,
        "{shed} counted shed; {h1:?}; {h2:?}"
    );
    wait_until(
        "the budget to be given back",
        Duration::from_secs(5),
        || async {
            server
                .scrape()
                .await
                .value("daemonset_webhook_request_body_memory_bytes")
                == 0.0
        },
    )
    .await;
}

/// Writes the HTTP/2 connection preface and an empty SETTINGS frame.
async fn h2_preface<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt as _;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
}

/// Reads from `stream` until it closes, writing an HTTP/2 PING every 200 ms (and acknowledging
/// nothing): when it closed, after `opened`.
async fn pinging_until_closed<S>(mut stream: S, opened: Instant) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = [0u8; 4096];
    let mut ping = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            },
            _ = ping.tick() => {
                let frame = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";
                if stream.write_all(frame).await.is_err() {
                    return opened.elapsed();
                }
            }
        }
        assert!(
            opened.elapsed() < Duration::from_secs(30),
            "still open after 30 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_that_send_no_request_are_closed_within_the_header_timeout() {
    let server = Server::start_with(StartOptions {
        args: vec!["--header-read-timeout".into(), "2s".into()],
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http2);
    // Pings only: an answer to each, but no request.
    let lived: Vec<Duration> = futures_join(4, || {
        let client = client.clone();
        async move {
            let mut tls = client.connect_tls().await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let opened = Instant::now();
            h2_preface(&mut tls).await;
            pinging_until_closed(tls, opened).await
        }
    })
    .await;
    for lived in &lived {
        assert!(
            *lived >= Duration::from_millis(1800) && *lived < Duration::from_secs(4),
            "an HTTP/2 connection with no request closed after {lived:?}"
        );
    }
    // One that sent a request is served and kept (until the idle timeout).
    let mut connection = client.connect().await.unwrap();
    assert!(connection.is_http2());
    assert_eq!(
        connection.post_json("/mutate", review("h2")).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        connection
            .post_json("/mutate", review("h2-again"))
            .await
            .status,
        StatusCode::OK
    );
    let metrics = server.scrape().await;
    assert_eq!(
        metrics.value(r#"daemonset_webhook_connections_dropped_total{reason="no_request"}"#),
        4.0
    );
}

/// Runs `count` copies of `task` at once; their results.
async fn futures_join<F, Fut, T>(count: usize, task: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..count).map(|_| tokio::spawn(task())).collect();
    let mut results = Vec::with_capacity(count);
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

/// Holds `count` TCP connections from `source` that send nothing, each reopened as soon as
/// the server closes it, until `stop`; and a ClientHello's first bytes, trickled, when
/// `trickle`.
fn flood(
    client: &TlsClient,
    count: usize,
    trickle: bool,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..count)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = client.connect_tcp().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    opened += 1;
                    let mut buffer = [0u8; 64];
                    // A TLS record header of a ClientHello, a byte at a time.
                    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
                    let mut sent = 0;
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return opened;
                        }
                        tokio::select! {
                            read = tcp.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            },
                            () = tokio::time::sleep(Duration::from_millis(300)) => {
                                if trickle && sent < hello.len() {
                                    if tcp.write_all(&hello[sent..=sent]).await.is_err() {
                                        break;
                                    }
                                    sent += 1;
                                }
                            }
                        }
                    }
                }
                opened
            })
        })
        .collect()
}

/// Floods the server with `count` idle (or trickling) reconnecting connections from
/// `addresses` addresses and, once they are open, measures a normal client for `measure`: the
/// longest wait.
async fn normal_client_during_flood(
    server: &Server,
    normal: TlsClient,
    (count, addresses): (usize, u8),
    trickle: bool,
    measure: Duration,
) -> (Duration, usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for address in 0..addresses {
        let flooder = server.client(Alpn::Http1).with_source(attacker(address));
        let share = count / usize::from(addresses);
        tasks.extend(flood(&flooder, share, trickle, stop.clone()));
    }
    // Let them connect: the kernel's backlog holds what the server has not accepted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let (worst, answered) = normal_client_while(normal, || began.elapsed() >= measure).await;
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for task in tasks {
        opened += task.await.unwrap();
    }
    (worst, answered, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_idle_connections_keep_no_normal_client_waiting() {
    let _heavy = HEAVY.lock().await;
    raise_open_file_limit(6000);
    let server = Server::start();
    // From one address, the per-client share refuses most at once; from eight (250 each,
    // within the share), the connection slots and the first-bytes deadline under pressure
    // have to hold.
    for (what, flood, trickle) in [
        (
            "2000 idle TCP connections from one address",
            (2000, 1),
            false,
        ),
        (
            "2000 idle TCP connections from 8 addresses",
            (2000, 8),
            false,
        ),
        (
            "1500 reconnecting slowloris handshakes from 6 addresses",
            (1500, 6),
            true,
        ),
    ] {
        let (worst, answered, opened) = normal_client_during_flood(
            &server,
            server.client(Alpn::Http1),
            flood,
            trickle,
            Duration::from_secs(4),
        )
        .await;
        eprintln!("{what} ({opened} opened): {answered} normal reviews, the slowest {worst:?}");
        assert!(
            worst < Duration::from_secs(2),
            "{what}: a normal client waited {worst:?}"
        );
    }
    let metrics = server.scrape().await;
    let dropped = |reason: &str| {
        metrics.value(&format!(
            "daemonset_webhook_connections_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    assert!(
        dropped("client_limit") >= 1744.0,
        "{}",
        dropped("client_limit")
    );
    assert!(
        dropped("handshake_timeout") >= 2000.0,
        "{}",
        dropped("handshake_timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_ca_unauthenticated_floods_keep_no_authenticated_client_waiting() {
    let _heavy = HEAVY.lock().await;
    raise_open_file_limit(6000);
    let dir = tempfile::tempdir().unwrap();
    let ca = common::ClientCa::new("apiserver client CA");
    let ca_path = dir.path().join("client-ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server = Server::start_with(StartOptions {
        args: vec!["--client-ca".into(), ca_path.to_str().unwrap().into()],
        ..StartOptions::default()
    });
    let (cert, key) = ca.issue("kube-apiserver");
    let apiserver = TlsClient::builder(&server.ca_path, server.addr)
        .alpn(Alpn::Http1)
        .client_identity(cert.as_bytes(), key.as_bytes())
        .build();
    let (worst, answered, opened) =
        normal_client_during_flood(&server, apiserver, (2000, 8), false, Duration::from_secs(4))
            .await;
    eprintln!(
        "2000 idle unauthenticated TCP connections from 8 addresses ({opened} opened): \
         {answered} authenticated reviews, the slowest {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "an authenticated client waited {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_share_of_connections_not_all_of_them() {
    let server = Server::start_with(StartOptions {
        args: vec!["--max-connections-per-client".into(), "20".into()],
        ..StartOptions::default()
    });
    let greedy = server.client(Alpn::Http1).with_source(attacker(0));
    let mut kept = Vec::new();
    for _ in 0..20 {
        let mut connection = greedy.connect().await.unwrap();
        assert_eq!(connection.get("/healthz").await.status, StatusCode::OK);
        kept.push(connection);
    }
    // The 21st from the same address is closed at once; another address is served.
    let refused = match greedy.connect().await {
        Err(_) => true,
        Ok(mut one_more) => one_more
            .request(hyper::Method::GET, "/healthz", None, Bytes::new())
            .await
            .is_err(),
    };
    assert!(refused, "the 21st connection was served");
    let mut other = server.client(Alpn::Http1).connect().await.unwrap();
    assert_eq!(other.get("/healthz").await.status, StatusCode::OK);
    // A share given back is taken again.
    drop(kept.pop());
    wait_until(
        "a share to be given back",
        Duration::from_secs(5),
        || async {
            let Ok(mut connection) = greedy.connect().await else {
                return false;
            };
            connection
                .request(hyper::Method::GET, "/healthz", None, Bytes::new())
                .await
                .is_ok()
        },
    )
    .await;
    let metrics = server.scrape().await;
    assert!(
        metrics.value(r#"daemonset_webhook_connections_dropped_total{reason="client_limit"}"#)
            >= 1.0
    );
}

/// A review whose answer is megabytes: every one of its containers is patched.
fn review_with_a_big_answer() -> Vec<u8> {
    big_review(30_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answer_is_dropped_after_the_write_timeout() {
    let server = Server::start_with(StartOptions {
        args: vec!["--write-timeout".into(), "2s".into()],
        ..StartOptions::default()
    });
    let client = server.client(Alpn::Http1);
    let body = review_with_a_big_answer();
    let answered = {
        let mut connection = client.connect().await.unwrap();
        connection.post_json("/mutate", body.clone()).await
    };
    assert_eq!(answered.status, StatusCode::OK);
    let answer_bytes = answered.body.len();
    assert!(answer_bytes > 4 << 20, "the answer is {answer_bytes} bytes");

    // HTTP/1.1: the request is sent whole, and nothing of the answer is read.
    let mut tls = client.connect_tls().await.unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            client.authority(),
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body).await.unwrap();
        tls.flush().await.unwrap();
    }
    let sent = Instant::now();
    wait_until(
        "the answer's budget to be held",
        Duration::from_secs(30),
        || async {
            server
                .scrape()
                .await
                .value("daemonset_webhook_request_body_memory_bytes")
                > 0.0
        },
    )
    .await;
    // Not read: closed by the server the write timeout after its writes stopped.
    wait_until(
        "the connection to be dropped",
        Duration::from_secs(30),
        || async {
            server
                .scrape()
                .await
                .value(r#"daemonset_webhook_connections_dropped_total{reason="write_stalled"}"#)
                >= 1.0
        },
    )
    .await;
    let dropped_after = sent.elapsed();
    assert!(
        server
            .scrape()
            .await
            .value("daemonset_webhook_request_body_memory_bytes")
            == 0.0,
        "the answer's memory is given back"
    );
    drop(tls);

    // HTTP/2 with a zero window: the answer can never be sent, though no write blocks.
    let tls = server.client(Alpn::Http2).connect_tls().await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake::<_, http_body_util::Full<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    let request = hyper::Request::post(format!("https://{}/mutate", client.authority()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(review(
            "zero-window",
        ))))
        .unwrap();
    let asked = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The body is never read: the window stays shut.
    let ended_at = tokio::time::timeout(Duration::from_secs(15), ended)
        .await
        .expect("the server drops an HTTP/2 connection whose answer cannot be sent")
        .unwrap();
    let h2_dropped_after = ended_at - asked;
    drop(response);
    eprintln!(
        "an unread {answer_bytes}-byte HTTP/1.1 answer: dropped {dropped_after:?} after the \
         request; an HTTP/2 answer behind a zero window: {h2_dropped_after:?}"
    );
    assert!(
        dropped_after < Duration::from_secs(10),
        "HTTP/1.1 dropped after {dropped_after:?}"
    );
    assert!(
        h2_dropped_after >= Duration::from_millis(1800)
            && h2_dropped_after < Duration::from_secs(5),
        "HTTP/2 dropped after {h2_dropped_after:?}"
    );
}

#[test]
fn curl_sees_the_413_of_a_body_over_the_cap_over_both_protocols() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("too-big.json");
    std::fs::write(
        &path,
        padded_review(daemonset_webhook::server::MAX_BODY_BYTES + 1024 * 1024),
    )
    .unwrap();
    for http in [common::CurlHttp::Http1, common::CurlHttp::Http2] {
        let out = server.curl("/mutate").http(http).json_file(&path).run();
        assert_eq!(out.status, 413, "{http:?}: {out:?}");
        let status = out.json();
        assert_eq!(status["reason"], "RequestEntityTooLarge", "{http:?}");
    }
}
