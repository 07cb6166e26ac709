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
