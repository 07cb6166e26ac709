//! What a hostile client, or a broken environment, could do to the running binary, each injected
//! for real: a log pipe that breaks, ... Each test fails on a server without the mechanism
//! that defends against it.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let mut server = Server::start();
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
