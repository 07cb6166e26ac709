//! Operating the running binary: its metrics on both ports, its JSON log lines, and its policy
//! file (reloaded in place and by a ConfigMap-style symlink swap, refused at start when
//! invalid, checked by `config check`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use common::{Alpn, Scrape, Server, StartOptions, cli, decode_patch, run_cli, wait_until};

// -------------------------------------------------------------------------------------------
// Reviews.

fn fixture(name: &str) -> Value {
    common::fixture(name).1
}

/// `review` (a fixture's AdmissionReview) with `uid`.
fn with_uid(review: &Value, uid: &str) -> Vec<u8> {
    common::review_of(review, uid, review["request"]["object"].clone())
}

/// The plain fixture with the exclude annotation.
fn annotated_exempt() -> Value {
    let mut review = fixture("create-plain.json");
    review["request"]["object"]["metadata"]["annotations"]["daemonset-webhook.io/exclude"] =
        json!("true");
    review
}

/// `review` moved to namespace `namespace`.
fn in_namespace(mut review: Value, namespace: &str) -> Value {
    review["request"]["namespace"] = json!(namespace);
    review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    review
}

/// POSTs `body` to `endpoint` and returns the AdmissionReview's `response`, checking the
/// envelope and the uid.
async fn respond(server: &Server, endpoint: &str, body: Vec<u8>) -> Value {
    let request: Value = serde_json::from_slice(&body).unwrap();
    let uid = request["request"]["uid"].as_str().unwrap().to_owned();
    let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
    let reply = connection.post_json(endpoint, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{uid}: {}", reply.text());
    let review = reply.json();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["response"]["uid"], uid.as_str());
    review["response"].clone()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The object with the response's patch applied.
fn patched(request: &Value, response: &Value) -> Value {
    let patch = decode_patch(response).unwrap_or_else(|| panic!("no patch: {response}"));
    common::apply_patch(&request["request"]["object"], &patch)
}

// -------------------------------------------------------------------------------------------
// Metrics.

/// Every series the README lists, as it should read before the first request.
const AT_START: &[(&str, f64)] = &[
    (
        r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="200"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_requests_total{webhook="/validate",code="200"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_latency_seconds_count{webhook="/mutate"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_latency_seconds_sum{webhook="/mutate"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_latency_seconds_bucket{le="+Inf",webhook="/mutate"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_latency_seconds_count{webhook="/validate"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_requests_in_flight{webhook="/mutate"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_requests_in_flight{webhook="/validate"}"#,
        0.0,
    ),
    ("controller_runtime_webhook_panics_total", 0.0),
    (
        r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="true",admission_code="200"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="false",admission_code="422"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_admission_responses_total{webhook="/validate",allowed="true",admission_code="200"}"#,
        0.0,
    ),
    (
        r#"controller_runtime_webhook_admission_responses_total{webhook="/validate",allowed="false",admission_code="422"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_violations_total{rule="selector"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_violations_total{rule="restartPolicy"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_violations_total{rule="resources"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_violations_total{rule="unreadable"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_rule_decisions_total{rule="restartPolicy",action="deny"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_rule_decisions_total{rule="restartPolicy",action="warn"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_rule_decisions_total{rule="tolerations",action="patch"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_rule_decisions_total{rule="resources",action="patch"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_rule_decisions_total{rule="selector",action="deny"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_mutations_total{kind="toleration"}"#,
        0.0,
    ),
    (r#"daemonset_webhook_mutations_total{kind="limits"}"#, 0.0),
    (r#"daemonset_webhook_mutations_total{kind="requests"}"#, 0.0),
    (
        r#"daemonset_webhook_exemptions_total{reason="namespace"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_exemptions_total{reason="annotation"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_certificate_reloads_total{result="success"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_certificate_reloads_total{result="error"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_policy_reloads_total{result="success"}"#,
        0.0,
    ),
    (
        r#"daemonset_webhook_policy_reloads_total{result="error"}"#,
        0.0,
    ),
    (r#"daemonset_webhook_build_info{version="0.1.0"}"#, 1.0),
];

const MUTATE_200: &str =
    r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="200"}"#;
const MUTATE_400: &str =
    r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="400"}"#;
const VALIDATE_200: &str =
    r#"controller_runtime_webhook_requests_total{webhook="/validate",code="200"}"#;
const MUTATE_COUNT: &str = r#"controller_runtime_webhook_latency_seconds_count{webhook="/mutate"}"#;
const MUTATE_SUM: &str = r#"controller_runtime_webhook_latency_seconds_sum{webhook="/mutate"}"#;
const MUTATE_INF: &str =
    r#"controller_runtime_webhook_latency_seconds_bucket{le="+Inf",webhook="/mutate"}"#;
const VALIDATE_COUNT: &str =
    r#"controller_runtime_webhook_latency_seconds_count{webhook="/validate"}"#;
const VALIDATE_SUM: &str = r#"controller_runtime_webhook_latency_seconds_sum{webhook="/validate"}"#;
const MUTATE_ALLOWED: &str = r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="true",admission_code="200"}"#;
const MUTATE_DENIED: &str = r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="false",admission_code="422"}"#;
const VALIDATE_ALLOWED: &str = r#"controller_runtime_webhook_admission_responses_total{webhook="/validate",allowed="true",admission_code="200"}"#;
const TOLERATIONS: &str = r#"daemonset_webhook_mutations_total{kind="toleration"}"#;
const LIMITS: &str = r#"daemonset_webhook_mutations_total{kind="limits"}"#;
const REQUESTS: &str = r#"daemonset_webhook_mutations_total{kind="requests"}"#;
const TOLERATIONS_PATCHED: &str =
    r#"daemonset_webhook_rule_decisions_total{rule="tolerations",action="patch"}"#;
const RESOURCES_PATCHED: &str =
    r#"daemonset_webhook_rule_decisions_total{rule="resources",action="patch"}"#;
const RESTART_POLICY_VIOLATIONS: &str =
    r#"daemonset_webhook_violations_total{rule="restartPolicy"}"#;
const RESTART_POLICY_DENIED: &str =
    r#"daemonset_webhook_rule_decisions_total{rule="restartPolicy",action="deny"}"#;
const RESTART_POLICY_WARNED: &str =
    r#"daemonset_webhook_rule_decisions_total{rule="restartPolicy",action="warn"}"#;
const EXEMPT_BY_ANNOTATION: &str = r#"daemonset_webhook_exemptions_total{reason="annotation"}"#;
const EXEMPT_BY_NAMESPACE: &str = r#"daemonset_webhook_exemptions_total{reason="namespace"}"#;
const POLICY_RELOADS_OK: &str = r#"daemonset_webhook_policy_reloads_total{result="success"}"#;
const POLICY_RELOADS_FAILED: &str = r#"daemonset_webhook_policy_reloads_total{result="error"}"#;

/// The series whose values differ between two scrapes, with their increase; the latency
/// histograms (sums and buckets) are left out.
fn changes(before: &Scrape, after: &Scrape) -> BTreeMap<String, f64> {
    let before: BTreeMap<&str, f64> = before.series().collect();
    after
        .series()
        .filter(|(series, _)| {
            !series.starts_with("controller_runtime_webhook_latency_seconds_sum")
                && !series.starts_with("controller_runtime_webhook_latency_seconds_bucket")
        })
        .filter_map(|(series, value)| {
            let delta = value - before.get(series).copied().unwrap_or(0.0);
            (delta != 0.0).then(|| (series.to_owned(), delta))
        })
        .collect()
}

fn expect(changes: &[(&str, f64)]) -> BTreeMap<String, f64> {
    changes.iter().map(|(s, v)| ((*s).to_owned(), *v)).collect()
}

/// Both scrapes of one moment: over HTTPS, and over the plain `--metrics-listen` port.
async fn scrape_both(server: &Server) -> (Scrape, Scrape) {
    let mut connection = server.client(Alpn::Http2).connect().await.unwrap();
    let reply = connection.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let tls = Scrape::parse(&reply.text());
    let addr = server
        .metrics_addr()
        .expect("the metrics address in the log");
    let (status, content_type, text) = common::plain_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, reply.content_type());
    let plain = Scrape::parse(&text);
    for scrape in [&tls, &plain] {
        assert!(
            scrape.text.ends_with("# EOF\n"),
            "not OpenMetrics: {}",
            scrape.text
        );
    }
    let tls_series: Vec<_> = tls.series().collect();
    let plain_series: Vec<_> = plain.series().collect();
    assert_eq!(tls_series, plain_series, "the two ports disagree");
    (tls, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_reviews_denials_exemptions_and_errors_on_both_ports() {
    let server = Server::start_with(StartOptions {
        args: ["--metrics-listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec(),
        ..StartOptions::default()
    });
    let (start, _) = scrape_both(&server).await;
    for (series, value) in AT_START {
        assert_eq!(start.value(series), *value, "{series} at start");
    }
    let expiry = start.value("daemonset_webhook_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The harness's certificate is valid from an hour ago for a day.
    assert!(
        (now + 20.0 * 3600.0..now + 24.0 * 3600.0).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    // On the plain port: /metrics and the probes, never a review.
    let addr = server.metrics_addr().unwrap();
    for path in ["/mutate", "/validate", "/"] {
        let (status, _, _) = common::plain_get(addr, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _, text) = common::plain_get(addr, "/healthz").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));

    // N reviews of the plain fixture: one container, neither limits nor requests, no
    // tolerations.
    let n = 7;
    let plain = fixture("create-plain.json");
    for i in 0..n {
        let alpn = if i % 2 == 0 { Alpn::Http1 } else { Alpn::Http2 };
        let mut connection = server.client(alpn).connect().await.unwrap();
        let reply = connection
            .post_json("/mutate", with_uid(&plain, &format!("plain-{i}")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["response"]["allowed"], true);
    }
    let (after_plain, _) = scrape_both(&server).await;
    let n_f = n as f64;
    assert_eq!(
        changes(&start, &after_plain),
        expect(&[
            (MUTATE_200, n_f),
            (MUTATE_COUNT, n_f),
            (MUTATE_ALLOWED, n_f),
            (TOLERATIONS, 6.0 * n_f),
            (LIMITS, 2.0 * n_f),
            (REQUESTS, 2.0 * n_f),
            (TOLERATIONS_PATCHED, n_f),
            (RESOURCES_PATCHED, n_f),
        ]),
        "after {n} plain reviews"
    );
    assert_eq!(after_plain.value(MUTATE_INF), n_f);
    let sum = after_plain.value(MUTATE_SUM);
    assert!(sum > 0.0 && sum < n_f, "latency sum {sum}");

    // A denial, an exempt DaemonSet, a malformed request, and one /validate.
    let response = respond(
        &server,
        "/mutate",
        with_uid(&fixture("create-restart-never.json"), "denied"),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 422);
    let response = respond(&server, "/mutate", with_uid(&annotated_exempt(), "exempt")).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
    let reply = connection.post_json("/mutate", &b"{not json"[..]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let response = respond(&server, "/validate", with_uid(&plain, "validate")).await;
    assert_eq!(response["allowed"], true);
    let (after_all, _) = scrape_both(&server).await;
    assert_eq!(
        changes(&after_plain, &after_all),
        expect(&[
            (MUTATE_200, 2.0),
            (MUTATE_400, 1.0),
            (MUTATE_COUNT, 3.0),
            (MUTATE_DENIED, 1.0),
            (MUTATE_ALLOWED, 1.0),
            (RESTART_POLICY_VIOLATIONS, 1.0),
            (RESTART_POLICY_DENIED, 1.0),
            (EXEMPT_BY_ANNOTATION, 1.0),
            (VALIDATE_200, 1.0),
            (VALIDATE_COUNT, 1.0),
            (VALIDATE_ALLOWED, 1.0),
        ]),
        "after a denial, an exemption, a malformed request and a /validate"
    );
    assert!(after_all.value(VALIDATE_SUM) > 0.0);
    assert_eq!(after_all.value(MUTATE_INF), n_f + 3.0);
    // Scraping is not counted as a review.
    let (again, _) = scrape_both(&server).await;
    assert!(changes(&after_all, &again).is_empty());
}

// -------------------------------------------------------------------------------------------
// Logs.

const SECRET_ENV_VALUE: &str = "hunter2-Zq8xW3-env-secret";
const SECRET_IMAGE: &str = "registry.example.com/team-x/secret-agent:9.9.9-f00d";

/// The plain fixture whose container has a distinctive image and an env value.
fn with_secrets(mut review: Value) -> Value {
    let container = &mut review["request"]["object"]["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(SECRET_IMAGE);
    container["env"] = json!([{ "name": "DB_PASSWORD", "value": SECRET_ENV_VALUE }]);
    review
}

/// The review log line of `uid`: exactly one.
fn review_line<'a>(logs: &'a [Value], uid: &str) -> &'a Value {
    let lines: Vec<&Value> = logs
        .iter()
        .filter(|l| l["message"] == "review" && l["uid"] == uid)
        .collect();
    assert_eq!(lines.len(), 1, "review lines for {uid}: {lines:#?}");
    lines[0]
}

/// Waits until the server has logged the review lines of all four reviews
/// [`send_log_reviews`] sends (stderr is read by another thread).
async fn wait_for_review_lines(server: &Server) {
    wait_until(
        "the four review log lines",
        Duration::from_secs(5),
        || async {
            let logs = server.json_logs();
            ["log-patched", "log-denied", "log-allowed", "log-exempt"]
                .iter()
                .all(|uid| {
                    logs.iter()
                        .any(|l| l["message"] == "review" && l["uid"] == *uid)
                })
        },
    )
    .await;
}

/// Sends the four kinds of review (and a malformed one) and returns each uid's response.
async fn send_log_reviews(server: &Server) -> BTreeMap<&'static str, Value> {
    let secret = with_secrets(fixture("create-plain.json"));
    let mut never = secret.clone();
    never["request"]["object"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    let mut exempt = secret.clone();
    exempt["request"]["object"]["metadata"]["annotations"]["daemonset-webhook.io/exclude"] =
        json!("true");
    let mut responses = BTreeMap::new();
    for (uid, endpoint, review) in [
        ("log-patched", "/mutate", &secret),
        ("log-denied", "/mutate", &never),
        ("log-allowed", "/validate", &secret),
        ("log-exempt", "/mutate", &exempt),
    ] {
        responses.insert(uid, respond(server, endpoint, with_uid(review, uid)).await);
    }
    let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
    let reply = connection
        .request(
            Method::POST,
            "/mutate",
            Some("application/json"),
            format!("{{\"secret\":\"{SECRET_ENV_VALUE}\""),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_review_and_never_the_object() {
    // No --log-format: JSON because stderr is not a terminal.
    let server = Server::start();
    let responses = send_log_reviews(&server).await;
    wait_for_review_lines(&server).await;
    let logs = server.json_logs();

    let fields: BTreeSet<&str> = [
        "timestamp",
        "level",
        "target",
        "message",
        "webhook",
        "uid",
        "operation",
        "kind",
        "namespace",
        "name",
        "decision",
        "patched",
        "violations",
        "warnings",
        "latency_us",
    ]
    .into();
    for (uid, webhook, decision, patched, violations) in [
        (
            "log-patched",
            "/mutate",
            "patched",
            "tolerations=6 limits=2 requests=2",
            "",
        ),
        (
            "log-denied",
            "/mutate",
            "denied",
            "",
            "spec.template.spec.restartPolicy",
        ),
        ("log-allowed", "/validate", "allowed", "", ""),
        ("log-exempt", "/mutate", "exempt", "", ""),
    ] {
        let line = review_line(&logs, uid);
        let keys: BTreeSet<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{uid}: fields at the top level: {line}");
        assert_eq!(line["level"], "INFO", "{uid}");
        assert_eq!(line["webhook"], webhook, "{uid}");
        assert_eq!(line["operation"], "CREATE", "{uid}");
        assert!(
            line["kind"].as_str().unwrap().contains("DaemonSet"),
            "{uid}: {line}"
        );
        assert_eq!(line["namespace"], "monitoring", "{uid}");
        assert_eq!(line["name"], "node-exporter", "{uid}");
        assert_eq!(line["decision"], decision, "{uid}: {line}");
        assert_eq!(line["patched"], patched, "{uid}: {line}");
        assert_eq!(line["violations"], violations, "{uid}: {line}");
        let response = &responses[uid];
        assert_eq!(
            line["warnings"].as_u64(),
            Some(warnings(response).len() as u64),
            "{uid}: {line} vs {response}"
        );
        let latency = line["latency_us"].as_u64().expect("latency_us, a number");
        assert!(latency > 0 && latency < 5_000_000, "{uid}: {latency}");
    }
    assert!(warnings(&responses["log-patched"]).len() >= 8);
    assert!(!warnings(&responses["log-exempt"]).is_empty());
    // One line per review, no more.
    let reviews = logs.iter().filter(|l| l["message"] == "review").count();
    assert_eq!(reviews, 4);
    // The malformed request is logged as such, without its body.
    assert!(
        logs.iter()
            .any(|l| l["level"] == "WARN" && l["message"] == "rejected a malformed review"),
        "{}",
        server.logs()
    );
    // Objects are not logged: not the image, not the env value.
    let text = server.logs();
    for secret in [SECRET_ENV_VALUE, SECRET_IMAGE, "DB_PASSWORD"] {
        assert!(!text.contains(secret), "the log holds {secret:?}:\n{text}");
    }
}

/// Whether a server started with `args` and `rust_log` logs the reviewed objects.
async fn logs_objects(args: &[&str], rust_log: &str) -> (bool, String) {
    let server = Server::start_with(StartOptions {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("RUST_LOG".into(), rust_log.into())],
        ..StartOptions::default()
    });
    send_log_reviews(&server).await;
    wait_for_review_lines(&server).await;
    let logs = server.json_logs();
    let text = server.logs();
    let logged = text.contains(SECRET_ENV_VALUE) && text.contains(SECRET_IMAGE);
    if logged {
        // As a debug line of its own, not in the review line.
        let line = logs
            .iter()
            .find(|l| l.to_string().contains(SECRET_ENV_VALUE))
            .unwrap();
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert_eq!(line["message"], "request", "{line}");
        for uid in ["log-patched", "log-denied", "log-allowed", "log-exempt"] {
            review_line(&logs, uid);
        }
    }
    (logged, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_logged_only_with_log_objects_and_debug() {
    let (logged, text) = logs_objects(&["--log-objects"], "debug").await;
    assert!(
        logged,
        "--log-objects with RUST_LOG=debug did not log the objects:\n{text}"
    );
    let (logged, _) = logs_objects(&["--log-objects"], "info").await;
    assert!(!logged, "--log-objects logged objects at RUST_LOG=info");
    let (logged, _) = logs_objects(&[], "debug").await;
    assert!(
        !logged,
        "RUST_LOG=debug without --log-objects logged objects"
    );
    let (logged, _) = logs_objects(&["--log-format", "json"], "info").await;
    assert!(!logged);
}

// -------------------------------------------------------------------------------------------
// The policy file.

/// Writes the policy file the `layout` way: in place, or as kubelet updates a ConfigMap volume
/// (`policy.yaml -> ..data/policy.yaml`, `..data -> ..<version>`, swapped by a rename).
fn publish_policy(symlinks: bool, dir: &Path, version: usize, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("policy.yaml");
    if !symlinks {
        std::fs::write(&path, text).unwrap();
        return path;
    }
    let versioned = format!("..2026_01_01_00_00_{version:02}.{version}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    std::fs::write(dir.join(&versioned).join("policy.yaml"), text).unwrap();
    std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if std::fs::symlink_metadata(&path).is_err() {
        std::os::unix::fs::symlink("..data/policy.yaml", &path).unwrap();
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("..") && name != "..data" && name != versioned {
            std::fs::remove_dir_all(dir.join(name)).unwrap();
        }
    }
    path
}

async fn wait_for_reloads(server: &Server, series: &str, count: f64) {
    wait_until(
        &format!("{series} to reach {count}"),
        Duration::from_secs(5),
        || async { server.scrape().await.value(series) >= count },
    )
    .await;
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(server.scrape().await.value(series), count, "{series}");
}

const WOULD_BE_DENIED: &str = "would be denied (policy mode warn): spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"";

async fn policy_file_reloads(symlinks: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let path = publish_policy(symlinks, &config, 1, "rules:\n  restartPolicy: enforce\n");
    let server = Server::start_with(StartOptions {
        args: vec![
            "--config".into(),
            path.to_str().unwrap().into(),
            "--reload-interval".into(),
            "100ms".into(),
        ],
        ..StartOptions::default()
    });
    let never = fixture("create-restart-never.json");
    let plain = fixture("create-plain.json");

    // enforce: denied.
    let response = respond(&server, "/mutate", with_uid(&never, "enforce-1")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 422);

    // warn: the same DaemonSet is allowed, with the warning of what enforce would do.
    publish_policy(symlinks, &config, 2, "rules:\n  restartPolicy: warn\n");
    wait_for_reloads(&server, POLICY_RELOADS_OK, 1.0).await;
    let warned_before = server.scrape().await;
    let response = respond(&server, "/mutate", with_uid(&never, "warn-1")).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        warnings(&response).iter().any(|w| w == WOULD_BE_DENIED),
        "{:#?}",
        warnings(&response)
    );
    let metrics = server.scrape().await;
    assert_eq!(
        metrics.value(RESTART_POLICY_WARNED) - warned_before.value(RESTART_POLICY_WARNED),
        1.0
    );
    assert_eq!(metrics.value(RESTART_POLICY_DENIED), 1.0, "the one denial");
    let reloaded = server
        .json_logs()
        .into_iter()
        .filter(|l| l["message"] == "reloaded the policy file")
        .collect::<Vec<_>>();
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert!(
        reloaded[0]["policy"]
            .as_str()
            .unwrap()
            .contains("restartPolicy=warn"),
        "{}",
        reloaded[0]
    );

    // An invalid file: logged with line and field, counted, and the warn policy stays.
    publish_policy(
        symlinks,
        &config,
        3,
        "rules:\n  restartPolicy: enforce\n  tolerationz: off\n",
    );
    wait_for_reloads(&server, POLICY_RELOADS_FAILED, 1.0).await;
    assert_eq!(server.scrape().await.value(POLICY_RELOADS_OK), 1.0);
    let errors: Vec<Value> = server
        .json_logs()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0]["message"],
        "policy reload failed; the previous policy stays in force"
    );
    let error = errors[0]["error"].as_str().unwrap();
    assert!(
        error.contains("line 3") && error.contains("tolerationz"),
        "{error}"
    );
    let response = respond(&server, "/mutate", with_uid(&never, "warn-2")).await;
    assert_eq!(
        response["allowed"], true,
        "the invalid file replaced the policy: {response}"
    );
    assert!(warnings(&response).iter().any(|w| w == WOULD_BE_DENIED));

    // Fixed, with another default cpu limit: enforce again, and the new limit patched in.
    publish_policy(
        symlinks,
        &config,
        4,
        "rules:\n  restartPolicy: enforce\nresources:\n  default:\n    cpu: 750m\n    memory: 512Mi\n",
    );
    wait_for_reloads(&server, POLICY_RELOADS_OK, 2.0).await;
    let response = respond(&server, "/mutate", with_uid(&never, "enforce-2")).await;
    assert_eq!(response["allowed"], false, "{response}");
    let response = respond(&server, "/mutate", with_uid(&plain, "cpu-750m")).await;
    let object = patched(&plain, &response);
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({
            "limits": { "cpu": "750m", "memory": "512Mi" },
            "requests": { "cpu": "50m", "memory": "64Mi" },
        })
    );

    // An exempt namespace: allowed untouched, with a warning saying why; others still patched.
    publish_policy(
        symlinks,
        &config,
        5,
        "exemptions:\n  namespaces: [monitoring]\n",
    );
    wait_for_reloads(&server, POLICY_RELOADS_OK, 3.0).await;
    let before = server.scrape().await;
    let response = respond(&server, "/mutate", with_uid(&plain, "exempt-namespace")).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(
        warnings(&response),
        [
            "daemonset-webhook: exempt (namespace monitoring is exempt in the policy file); allowed untouched"
        ]
    );
    let elsewhere = in_namespace(plain.clone(), "observability");
    let response = respond(&server, "/mutate", with_uid(&elsewhere, "not-exempt")).await;
    let object = patched(&elsewhere, &response);
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m",
        "back to the built-in default"
    );
    let after = server.scrape().await;
    assert_eq!(
        after.value(EXEMPT_BY_NAMESPACE) - before.value(EXEMPT_BY_NAMESPACE),
        1.0
    );
    assert_eq!(after.value(POLICY_RELOADS_FAILED), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_file_rewritten_in_place_is_reloaded() {
    policy_file_reloads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_file_swapped_like_a_configmap_is_reloaded() {
    policy_file_reloads(true).await;
}

/// Invalid policy files, with what their error must name.
const INVALID_POLICIES: &[(&str, &str, &[&str])] = &[
    (
        "unknown key",
        "rules:\n  selector: enforce\n  restartPolcy: warn\n",
        &["line 3", "restartPolcy"],
    ),
    (
        "unknown mode",
        "rules:\n  selector: sometimes\n",
        &["line 2", "sometimes"],
    ),
    (
        "not a quantity",
        "resources:\n  default:\n    cpu: lots\n    memory: 512Mi\n",
        &["line 3", "resources.default.cpu", "lots"],
    ),
    (
        "bad toleration operator",
        "tolerations:\n  extra:\n    - key: a\n      operator: Maybe\n",
        &["line 3", "tolerations.extra[0].operator"],
    ),
    (
        "not a namespace",
        "exemptions:\n  namespaces: [ok, -bad-]\n",
        &["line 2", "exemptions.namespaces", "-bad-"],
    ),
];

/// Invalid for how two fields relate: the error must name the line of the offending entry too.
const CROSS_FIELD_POLICIES: &[(&str, &str, &[&str])] = &[
    (
        "a default request above its limit",
        "resources:\n  default:\n    cpu: 100m\n  defaultRequest:\n    cpu: 200m\n",
        &["line 5", "resources.defaultRequest.cpu"],
    ),
    (
        "a default request without a default limit",
        "resources:\n  default:\n    cpu: 500m\n  defaultRequest:\n    memory: 64Mi\n",
        &["line 5", "resources.defaultRequest.memory"],
    ),
];

/// Starts `serve` with each policy file and returns what is wrong with how it refused.
fn serve_refusals(cases: &[(&str, &str, &[&str])]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    common::write_certificates(&dir.path().join("pki"));
    let cert = dir.path().join("pki/tls.crt");
    let key = dir.path().join("pki/tls.key");
    let mut problems = Vec::new();
    for (i, (what, text, named)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("policy-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let output = common::run_binary(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--config",
                path.to_str().unwrap(),
            ],
            dir.path(),
            &[],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: served:\n{stderr}");
        assert!(!stderr.contains("listening on"), "{what}: {stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{what}: {stderr}");
        for piece in *named {
            if !stderr.contains(piece) {
                problems.push(format!(
                    "serve, {what}: the error does not name {piece:?}: {stderr}"
                ));
            }
        }
    }
    problems
}

/// Runs `config check` on each policy file and returns what is wrong with how it refused.
fn check_refusals(cases: &[(&str, &str, &[&str])]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    for (i, (what, text, named)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = run_cli(&mut cli(&["config", "check", path.to_str().unwrap()]));
        assert_eq!(out.code, Some(2), "{what}: {out:?}");
        assert_eq!(out.stdout, "", "{what}");
        for piece in *named {
            if !out.stderr.contains(piece) {
                problems.push(format!(
                    "config check, {what}: the error does not name {piece:?}: {}",
                    out.stderr
                ));
            }
        }
    }
    problems
}

#[test]
fn serve_refuses_to_start_with_an_invalid_policy_file() {
    let problems = serve_refusals(INVALID_POLICIES);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The example file starts.
    let example = common::manifest_dir().join("examples/policy.yaml");
    let server = Server::start_with(StartOptions {
        args: vec!["--config".into(), example.to_str().unwrap().into()],
        ..StartOptions::default()
    });
    assert!(
        server
            .logs()
            .contains("node-role.kubernetes.io/control-plane")
    );
}

#[test]
fn config_check_accepts_good_files_and_names_line_and_field_in_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let example = common::manifest_dir().join("examples/policy.yaml");
    let out = run_cli(&mut cli(&["config", "check", example.to_str().unwrap()]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(": ok: rules selector=enforce restartPolicy=enforce"),
        "{}",
        out.stdout
    );
    let warn = dir.path().join("warn.yaml");
    std::fs::write(
        &warn,
        "rules:\n  restartPolicy: warn\nexemptions:\n  namespaces: [kube-system]\n",
    )
    .unwrap();
    let out = run_cli(&mut cli(&["config", "check", warn.to_str().unwrap()]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("restartPolicy=warn"), "{}", out.stdout);
    assert!(out.stdout.contains("kube-system"), "{}", out.stdout);

    let problems = check_refusals(INVALID_POLICIES);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let out = run_cli(&mut cli(&[
        "config",
        "check",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

/// README: "an invalid file is reported with its line and field". The relations between
/// `resources.default` and `resources.defaultRequest` are reported with the field only.
#[test]
fn cross_field_policy_errors_name_their_line() {
    let mut problems = serve_refusals(CROSS_FIELD_POLICIES);
    problems.extend(check_refusals(CROSS_FIELD_POLICIES));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A policy file that changes while the server starts must end up in force. Two races lost it:
/// a watch baseline taken after the first load (a change in between counted as loaded), and,
/// with the baseline first, a second read for the load (a file read as `enforce` for the load
/// but `warn` for the baseline, then back to `warn`, looks unchanged for good). Now the first
/// load, like every reload, is of the watch's own snapshot.
///
/// Each round flips the file between `enforce` and `warn` while the server starts, leaves it at
/// `warn`, and expects `warn` in force within a few seconds (a dozen or more reload intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_during_startup_is_not_lost() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let never = fixture("create-restart-never.json");
    let mut stale = Vec::new();
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let write = |mode: &str| {
            // Atomically, as kubelet's symlink swap is: only whole files are ever seen.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("rules:\n  restartPolicy: {mode}\n")).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write("enforce");
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let stop = stop.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mode = ["warn", "enforce"][i % 2];
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, format!("rules:\n  restartPolicy: {mode}\n")).unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                }
            })
        };
        let server = Server::start_with(StartOptions {
            args: vec![
                "--config".into(),
                path.to_str().unwrap().into(),
                "--reload-interval".into(),
                "50ms".into(),
            ],
            ..StartOptions::default()
        });
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        write("warn");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut allowed = false;
        while !allowed && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let uid = format!("round-{round}");
            allowed = respond(&server, "/mutate", with_uid(&never, &uid)).await["allowed"] == true;
        }
        if !allowed {
            let reloads = server.scrape().await.value(POLICY_RELOADS_OK);
            stale.push(format!(
                "round {round}: the file says warn, the server still enforces ({reloads} reloads)"
            ));
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}
