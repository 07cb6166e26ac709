//! End to end: the real binary over real TLS, driven by a verifying Rust client (HTTP/1.1 and
//! HTTP/2) and by the real `curl`.

mod common;

use daemonset_webhook::policy::patch::without_owned_fields;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode, Version};
use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{Value, json};

use common::{
    Alpn, Certs, CurlHttp, Reply, Server, StartOptions, TlsClient, apply_patch, decode_patch,
    fixture, fixture_path, fixtures_dir, review_of, run_binary,
};

// -------------------------------------------------------------------------------------------
// What the fixtures should get.

/// The tolerations the DaemonSet controller gives every daemon pod, in its order.
const STANDARD_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];
/// Added for `hostNetwork: true` only.
const NETWORK_UNAVAILABLE: (&str, &str) = ("node.kubernetes.io/network-unavailable", "NoSchedule");

const DEFAULT_LIMITS: [(&str, &str); 2] = [("cpu", "500m"), ("memory", "512Mi")];
const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "50m"), ("memory", "64Mi")];

enum Expect {
    /// Allowed by both endpoints; /mutate patches, and `check` looks at the patched object.
    Patched(fn(original: &Value, patched: &Value)),
    /// Allowed by both endpoints, no patch.
    Untouched,
    /// Denied by both endpoints with 422 Invalid; the message contains every substring.
    Denied(&'static [&'static str]),
}

struct Case {
    file: &'static str,
    expect: Expect,
}

const CASES: &[Case] = &[
    Case {
        file: "create-plain.json",
        expect: Expect::Patched(check_plain),
    },
    Case {
        file: "create-complete.json",
        expect: Expect::Untouched,
    },
    Case {
        file: "create-host-network.json",
        expect: Expect::Patched(check_host_network),
    },
    Case {
        file: "create-selector-mismatch.json",
        expect: Expect::Denied(&[
            r#"spec.template.metadata.labels: Invalid value: {"app":"fluentbit"}"#,
            "`selector` does not match template `labels`",
        ]),
    },
    Case {
        file: "create-empty-selector.json",
        expect: Expect::Denied(&["spec.selector", "empty selector is invalid for daemonset"]),
    },
    Case {
        file: "create-restart-never.json",
        expect: Expect::Denied(&[
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
        ]),
    },
    Case {
        file: "create-several-violations.json",
        expect: Expect::Denied(&[
            "is invalid: [spec.template.metadata.labels: ",
            "`selector` does not match template `labels`, ",
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"]"#,
        ]),
    },
    Case {
        file: "update-plain.json",
        expect: Expect::Patched(check_plain),
    },
    Case {
        file: "create-dry-run.json",
        expect: Expect::Patched(check_plain),
    },
    Case {
        file: "create-deployment.json",
        expect: Expect::Untouched,
    },
    Case {
        file: "delete.json",
        expect: Expect::Untouched,
    },
    Case {
        file: "create-invalid-quantity.json",
        expect: Expect::Denied(&[
            r#"spec.template.spec.containers[0].resources.limits[cpu]: Invalid value: "lots""#,
        ]),
    },
    Case {
        file: "create-label-keys-with-slash.json",
        expect: Expect::Patched(check_label_keys_with_slash),
    },
    Case {
        file: "create-unknown-fields.json",
        expect: Expect::Patched(check_unknown_fields),
    },
];

fn pod(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]
}

fn container<'a>(object: &'a Value, list: &str, name: &str) -> &'a Value {
    pod(object)[list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry named {name:?}"))
}

fn defaults() -> Value {
    json!({
        "limits": { "cpu": "500m", "memory": "512Mi" },
        "requests": { "cpu": "50m", "memory": "64Mi" },
    })
}

fn check_plain(_: &Value, patched: &Value) {
    assert_eq!(
        container(patched, "containers", "node-exporter")["resources"],
        defaults()
    );
    let tolerations = pod(patched)["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 6, "{tolerations:?}");
}

fn check_host_network(original: &Value, patched: &Value) {
    // A limit without a request is left alone: no request is invented for it.
    assert_eq!(
        container(patched, "containers", "cilium-agent")["resources"],
        json!({ "limits": { "cpu": "2", "memory": "1Gi" } })
    );
    assert_eq!(
        container(patched, "initContainers", "mount-cgroup")["resources"],
        defaults()
    );
    let tolerations = pod(patched)["tolerations"].as_array().unwrap();
    assert_eq!(tolerations[0], json!({ "operator": "Exists" }));
    assert_eq!(tolerations.len(), 1 + 7, "{tolerations:?}");
    assert_eq!(
        tolerations[7],
        toleration(NETWORK_UNAVAILABLE),
        "network-unavailable comes last"
    );
    assert_eq!(pod(original)["hostNetwork"], true);
}

fn check_label_keys_with_slash(_: &Value, patched: &Value) {
    // A cpu request above the default limit becomes the limit; memory had neither.
    assert_eq!(
        container(patched, "containers", "ebs-plugin")["resources"],
        json!({
            "requests": { "cpu": "2", "memory": "64Mi" },
            "limits": { "cpu": "2", "memory": "512Mi" },
        })
    );
    // Requests at or below the default limit get the default limit, memory above it the request;
    // the extended resource stays.
    assert_eq!(
        container(patched, "containers", "node-driver-registrar")["resources"],
        json!({
            "requests": { "cpu": "100m", "memory": "1Gi" },
            "limits": { "example.com/foo": "1", "cpu": "500m", "memory": "1Gi" },
        })
    );
    assert_eq!(
        patched["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "csi-node"
    );
}

fn check_unknown_fields(_: &Value, patched: &Value) {
    assert_eq!(
        patched["metadata"]["futureMetadataField"],
        json!({ "owner": "team-x" })
    );
    assert_eq!(
        patched["spec"]["futureField"],
        json!({ "enabled": true, "mode": "fast" })
    );
    assert_eq!(pod(patched)["futurePodField"], json!(["a", "b"]));
    let agent = container(patched, "containers", "node-exporter");
    assert_eq!(agent["futureContainerField"], json!({ "x": 1 }));
    assert_eq!(
        agent["resources"],
        json!({
            "futureResourcesField": "keep-me",
            "limits": { "cpu": "500m", "memory": "512Mi" },
            "requests": { "cpu": "50m", "memory": "64Mi" },
        })
    );
    assert_eq!(
        container(patched, "initContainers", "setup")["futureInitField"],
        42
    );
    assert_eq!(patched["status"]["futureStatusField"], "ok");
}

fn toleration((key, effect): (&str, &str)) -> Value {
    json!({ "key": key, "operator": "Exists", "effect": effect })
}

// -------------------------------------------------------------------------------------------
// Checks shared by every client.

fn assert_status_ok_json(what: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    assert_eq!(
        status,
        200,
        "{what}: HTTP {status}: {}",
        String::from_utf8_lossy(body)
    );
    if let Some(content_type) = content_type {
        assert_eq!(content_type, "application/json", "{what}");
    }
}

/// Checks the envelope of a review response and returns `response`.
fn response_of<'a>(what: &str, review: &'a Value, uid: &str) -> &'a Value {
    let keys: BTreeSet<&str> = review
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {review}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiVersion", "kind", "response"]),
        "{what}: {review}"
    );
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{what}");
    assert_eq!(review["kind"], "AdmissionReview", "{what}");
    let response = &review["response"];
    assert_eq!(response["uid"], uid, "{what}: uid not echoed");
    assert!(
        response["allowed"].is_boolean(),
        "{what}: allowed: {response}"
    );
    response
}

/// Checks a /mutate or /validate answer for `case`; returns the patch if there is one.
fn check_answer(
    case: &Case,
    endpoint: &str,
    review: &Value,
    request: &Value,
) -> Option<json_patch::Patch> {
    let what = format!("{} {endpoint}", case.file);
    let uid = request["request"]["uid"].as_str().unwrap();
    let response = response_of(&what, review, uid);
    let patch = decode_patch(response);
    match &case.expect {
        Expect::Patched(_) if endpoint == "/mutate" => {
            assert_eq!(response["allowed"], true, "{what}: {response}");
            assert!(patch.is_some(), "{what}: no patch: {response}");
            assert_eq!(response["patchType"], "JSONPatch", "{what}");
            let warnings = response["warnings"].as_array();
            assert!(
                warnings.is_some_and(|w| !w.is_empty() && w.iter().all(Value::is_string)),
                "{what}: a patch should come with warnings saying what it changed: {response}"
            );
            assert!(
                response["auditAnnotations"]
                    .as_object()
                    .is_some_and(|a| !a.is_empty() && a.values().all(Value::is_string)),
                "{what}: {response}"
            );
            assert!(response.get("status").is_none(), "{what}: {response}");
        }
        Expect::Patched(_) | Expect::Untouched => {
            assert_eq!(response["allowed"], true, "{what}: {response}");
            assert!(patch.is_none(), "{what}: unexpected patch: {response}");
            assert!(response.get("patchType").is_none(), "{what}: {response}");
        }
        Expect::Denied(substrings) => {
            assert_eq!(response["allowed"], false, "{what}: {response}");
            assert!(patch.is_none(), "{what}: a denial carries no patch");
            assert!(response.get("patchType").is_none(), "{what}: {response}");
            let status = &response["status"];
            assert_eq!(status["code"], 422, "{what}: {status}");
            assert_eq!(status["reason"], "Invalid", "{what}: {status}");
            assert_eq!(status["status"], "Failure", "{what}: {status}");
            let message = status["message"].as_str().expect("status.message");
            let name = request["request"]["name"].as_str().unwrap();
            let prefix = format!("DaemonSet.apps \"{name}\" is invalid: ");
            assert!(message.starts_with(&prefix), "{what}: {message}");
            for substring in *substrings {
                assert!(
                    message.contains(substring),
                    "{what}: message lacks {substring:?}: {message}"
                );
            }
        }
    }
    patch
}

/// Everything a patched DaemonSet must satisfy, whatever the fixture.
fn check_patched(file: &str, original: &Value, patch: &json_patch::Patch) -> Value {
    for operation in &patch.0 {
        let path = operation.path().to_string();
        let allowed = path.starts_with("/spec/template/spec/tolerations")
            || ["containers", "initContainers"].iter().any(|list| {
                let prefix = format!("/spec/template/spec/{list}/");
                path.strip_prefix(&prefix).is_some_and(|rest| {
                    let mut parts = rest.splitn(3, '/');
                    parts.next().is_some_and(|i| i.parse::<usize>().is_ok())
                        && parts.next() == Some("resources")
                })
            });
        assert!(allowed, "{file}: the patch touches {path}: {patch:?}");
    }
    let patched = apply_patch(original, patch);
    let typed: DaemonSet = serde_json::from_value(patched.clone())
        .unwrap_or_else(|e| panic!("{file}: the patched object is not a DaemonSet: {e}"));

    // Tolerations: the user's, untouched and in order, then the missing standard ones.
    let host_network = pod(original)["hostNetwork"] == true;
    let wanted: Vec<Value> = STANDARD_TOLERATIONS
        .into_iter()
        .chain(host_network.then_some(NETWORK_UNAVAILABLE))
        .map(toleration)
        .collect();
    let before = pod(original)["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut expected = before.clone();
    expected.extend(wanted.iter().filter(|t| !before.contains(t)).cloned());
    assert_eq!(
        pod(&patched)["tolerations"],
        Value::Array(expected),
        "{file}: tolerations"
    );
    let pod_spec = typed.spec.template.spec.as_ref().unwrap();
    let typed_tolerations = pod_spec.tolerations.as_deref().unwrap_or_default();
    for (key, effect) in STANDARD_TOLERATIONS {
        assert!(
            typed_tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some(key)
                    && t.effect.as_deref() == Some(effect)
                    && t.operator.as_deref() == Some("Exists")
                    && t.toleration_seconds.is_none()),
            "{file}: no {key}:{effect}"
        );
    }
    if !host_network {
        assert!(
            !typed_tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some(NETWORK_UNAVAILABLE.0)),
            "{file}: network-unavailable without hostNetwork"
        );
    }

    // Resources: every container has cpu and memory limits; nothing the user set changed.
    let typed_containers = pod_spec
        .containers
        .iter()
        .chain(pod_spec.init_containers.iter().flatten());
    for c in typed_containers {
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        for resource in ["cpu", "memory"] {
            assert!(
                limits.is_some_and(|l| l.contains_key(resource)),
                "{file}: container {:?} has no {resource} limit",
                c.name
            );
        }
    }
    for list in ["containers", "initContainers"] {
        let empty = Vec::new();
        let before = pod(original)[list].as_array().unwrap_or(&empty);
        let after = pod(&patched)[list].as_array().unwrap_or(&empty);
        assert_eq!(before.len(), after.len(), "{file}: {list}");
        for (b, a) in before.iter().zip(after) {
            let what = format!("{file}: {list} {}", b["name"]);
            check_container_resources(&what, &b["resources"], &a["resources"]);
        }
    }

    // Nothing outside tolerations and container resources changed.
    assert_eq!(
        without_owned_fields(original),
        without_owned_fields(&patched),
        "{file}: the patch changed something it does not own"
    );
    patched
}

fn check_container_resources(what: &str, before: &Value, after: &Value) {
    let entry = |v: &Value, kind: &str, name: &str| v[kind][name].as_str().map(str::to_owned);
    // Whatever was there stays, fields we do not know included.
    if let Some(before) = before.as_object() {
        for (field, value) in before {
            if field == "limits" || field == "requests" {
                for (name, quantity) in value.as_object().into_iter().flatten() {
                    assert_eq!(&after[field][name], quantity, "{what}: {field}[{name}]");
                }
            } else {
                assert_eq!(&after[field], value, "{what}: resources.{field}");
            }
        }
    }
    for ((resource, default_limit), (_, default_request)) in
        DEFAULT_LIMITS.iter().zip(DEFAULT_REQUESTS)
    {
        let limit = entry(after, "limits", resource);
        let request = entry(after, "requests", resource);
        match (
            entry(before, "limits", resource),
            entry(before, "requests", resource),
        ) {
            (Some(_), old_request) => assert_eq!(
                request, old_request,
                "{what}: a {resource} limit without a request is left alone"
            ),
            (None, None) => {
                assert_eq!(limit.as_deref(), Some(*default_limit), "{what}: {resource}");
                assert_eq!(
                    request.as_deref(),
                    Some(default_request),
                    "{what}: {resource}"
                );
            }
            (None, Some(old_request)) => {
                let limit = limit.unwrap_or_else(|| panic!("{what}: no {resource} limit"));
                assert!(
                    limit == *default_limit || limit == old_request,
                    "{what}: {resource} limit {limit} is neither the default nor the request {old_request}"
                );
            }
        }
    }
    // Nothing but cpu and memory is added.
    for kind in ["limits", "requests"] {
        for name in after[kind]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            assert!(
                before[kind].get(name).is_some() || name == "cpu" || name == "memory",
                "{what}: added {kind}[{name}]"
            );
        }
    }
}

// -------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_over_http1_and_http2() {
    let server = Server::start();
    for (alpn, protocol, version) in [
        (Alpn::Http1, &b"http/1.1"[..], Version::HTTP_11),
        (Alpn::Http2, &b"h2"[..], Version::HTTP_2),
        // Offered both, the server prefers h2.
        (Alpn::Both, &b"h2"[..], Version::HTTP_2),
    ] {
        let mut connection = server.client(alpn).connect().await.unwrap();
        assert_eq!(connection.alpn.as_deref(), Some(protocol), "{alpn:?}");
        assert_eq!(connection.is_http2(), version == Version::HTTP_2);
        for path in ["/healthz", "/readyz"] {
            let reply = connection.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{alpn:?} {path}");
            assert_eq!(reply.version, version, "{alpn:?} {path}");
            assert_eq!(reply.text(), "ok", "{alpn:?} {path}");
        }
    }
    for (http, version) in [(CurlHttp::Http1, "1.1"), (CurlHttp::Http2, "2")] {
        for path in ["/healthz", "/readyz"] {
            let out = server.curl(path).http(http).run();
            assert!(out.success(), "curl {path} {http:?}: {}", out.stderr);
            assert_eq!(out.status, 200, "curl {path} {http:?}");
            assert_eq!(out.version, version, "curl {path} {http:?}");
            assert_eq!(out.text(), "ok");
        }
    }
    let logs = server.logs();
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_through_both_endpoints_with_rust_and_curl() {
    // Every fixture on disk has an expectation here, and the other way round.
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let listed: BTreeSet<String> = CASES.iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(on_disk, listed);

    let server = Server::start();
    let mut h1 = server.client(Alpn::Http1).connect().await.unwrap();
    let mut h2 = server.client(Alpn::Http2).connect().await.unwrap();
    assert!(!h1.is_http2() && h2.is_http2());
    let mut plain_mutate_response = None;
    let mut dry_run_mutate_response = None;

    for case in CASES {
        let (bytes, request) = fixture(case.file);
        let object = request["request"]["object"].clone();
        for endpoint in ["/mutate", "/validate"] {
            let what = format!("{} {endpoint}", case.file);
            let r1 = h1.post_json(endpoint, bytes.clone()).await;
            let r2 = h2.post_json(endpoint, bytes.clone()).await;
            assert_eq!(r1.version, Version::HTTP_11, "{what}");
            assert_eq!(r2.version, Version::HTTP_2, "{what}");
            for reply in [&r1, &r2] {
                assert_status_ok_json(
                    &what,
                    reply.status.as_u16(),
                    Some(reply.content_type()),
                    &reply.body,
                );
            }
            let path = fixture_path(case.file);
            for (http, version) in [(CurlHttp::Http1, "1.1"), (CurlHttp::Http2, "2")] {
                let out = server.curl(endpoint).http(http).json_file(&path).run();
                assert!(out.success(), "{what} curl {http:?}: {}", out.stderr);
                assert_eq!(out.version, version, "{what} curl {http:?}");
                assert_status_ok_json(&what, out.status, None, &out.body);
                assert_eq!(
                    out.text(),
                    r1.text(),
                    "{what}: curl {http:?} and the Rust client got different bodies"
                );
            }
            assert_eq!(
                r1.body, r2.body,
                "{what}: HTTP/1.1 and HTTP/2 bodies differ"
            );

            let review = r1.json();
            let patch = check_answer(case, endpoint, &review, &request);
            match case.file {
                "create-plain.json" if endpoint == "/mutate" => {
                    plain_mutate_response = Some(review["response"].clone())
                }
                "create-dry-run.json" if endpoint == "/mutate" => {
                    dry_run_mutate_response = Some(review["response"].clone())
                }
                _ => {}
            }
            let (Some(patch), Expect::Patched(check)) = (patch, &case.expect) else {
                continue;
            };
            let patched = check_patched(case.file, &object, &patch);
            check(&object, &patched);

            // Idempotent: the patched object needs nothing more, and is valid.
            let again = review_of(&request, "idempotence-check", patched.clone());
            for (endpoint, connection) in [("/mutate", &mut h1), ("/validate", &mut h2)] {
                let reply = connection.post_json(endpoint, again.clone()).await;
                assert_eq!(reply.status, StatusCode::OK);
                let review = reply.json();
                let response = response_of(&what, &review, "idempotence-check");
                assert_eq!(response["allowed"], true, "{what} again: {response}");
                assert!(
                    response.get("patch").is_none(),
                    "{what}: patching the patched object again asks for more: {response}"
                );
            }
        }
    }

    // A dry run is answered exactly like the real thing.
    let mut plain = plain_mutate_response.unwrap();
    let mut dry_run = dry_run_mutate_response.unwrap();
    plain.as_object_mut().unwrap().remove("uid");
    dry_run.as_object_mut().unwrap().remove("uid");
    assert_eq!(plain, dry_run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_and_wrong_name_fail_the_handshake() {
    let server = Server::start();
    let other = tempfile::tempdir().unwrap();
    common::write_certificates(other.path());
    let other_ca = other.path().join(daemonset_webhook::certs::CA_FILE);

    // Positive controls: the names in the certificate verify.
    for name in [
        "localhost",
        "127.0.0.1",
        "daemonset-webhook.daemonset-webhook.svc",
    ] {
        let mut connection = TlsClient::builder(&server.ca_path, server.addr)
            .server_name(name)
            .build()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(connection.get("/healthz").await.text(), "ok");
    }

    let rustls_error = |error: std::io::Error| -> rustls::Error {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("not a TLS error: {error:?}"))
    };
    let error = TlsClient::builder(&other_ca, server.addr)
        .build()
        .connect()
        .await
        .err()
        .expect("a client trusting another CA connected");
    let error = rustls_error(error);
    assert!(
        matches!(
            error,
            // All development CAs share one subject name, so an unrelated one is found as
            // the issuer and its key fails the signature.
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            )
        ),
        "unrelated CA: {error:?}"
    );
    // A bundle holding an unrelated development CA before the right one (as a caBundle does
    // during a CA rotation) still verifies, with both clients.
    let bundle = other.path().join("bundle.crt");
    std::fs::write(
        &bundle,
        [
            std::fs::read(&other_ca).unwrap(),
            std::fs::read(&server.ca_path).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let mut connection = TlsClient::builder(&bundle, server.addr)
        .build()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("CA bundle: {e}"));
    assert_eq!(connection.get("/healthz").await.text(), "ok");
    let out = common::Curl::new(server.port(), "/healthz")
        .cacert(&bundle)
        .run();
    assert!(out.success(), "curl with a CA bundle: {}", out.stderr);
    let error = TlsClient::builder(&server.ca_path, server.addr)
        .server_name("example.com")
        .build()
        .connect()
        .await
        .err()
        .expect("a client expecting example.com connected");
    let error = rustls_error(error);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "wrong name: {error:?}"
    );

    // curl: no CA given (only the system's), an unrelated CA, a name not in the certificate.
    let port = server.port();
    let out = common::Curl::new(port, "/healthz").run();
    assert_eq!(out.exit_code, Some(60), "without --cacert: {}", out.stderr);
    assert_eq!(out.status, 0);
    let out = common::Curl::new(port, "/healthz").cacert(&other_ca).run();
    assert_eq!(out.exit_code, Some(60), "unrelated CA: {}", out.stderr);
    let out = server.curl("/healthz").host("wrong.example.com").run();
    assert_eq!(out.exit_code, Some(60), "wrong name: {}", out.stderr);
    assert!(out.body.is_empty());

    // Failed handshakes do not hurt the server.
    let out = server.curl("/healthz").run();
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.text(), "ok");
}

/// A TLS ClientHello record offering at most `version`, with modern and legacy cipher suites
/// and the extensions a TLS 1.2 server needs for an ECDSA certificate.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut body = Vec::new();
    body.extend(version);
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 7] = [0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc009, 0xc013, 0x002f];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut extensions = Vec::new();
    let host = b"localhost";
    let mut sni = ((host.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((host.len() as u16).to_be_bytes());
    sni.extend(host);
    extension(&mut extensions, 0x0000, &sni);
    extension(
        &mut extensions,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    extension(&mut extensions, 0x000b, &[1, 0]);
    extension(&mut extensions, 0x000d, &[0, 8, 4, 3, 8, 4, 4, 1, 2, 3]);
    extension(&mut extensions, 0x0017, &[]); // extended master secret
    extension(&mut extensions, 0xff01, &[0]); // renegotiation info
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends a raw ClientHello and returns the first bytes the server answers with.
fn first_answer(server: &Server, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(hello).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 64];
    while answer.len() < 11 {
        match tcp.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend(&buffer[..n]),
        }
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_work() {
    let server = Server::start();

    // The same ClientHello but for its version: TLS 1.2 gets a ServerHello, 1.1 and 1.0 a
    // fatal alert.
    let answer = first_answer(&server, &client_hello([3, 3]));
    assert!(
        answer.len() >= 11 && answer[0] == 0x16 && answer[5] == 2 && answer[9..11] == [3, 3],
        "TLS 1.2 ClientHello answered with {answer:02x?}"
    );
    for version in [[3, 2], [3, 1]] {
        let answer = first_answer(&server, &client_hello(version));
        assert!(
            answer.len() >= 7 && answer[0] == 0x15 && answer[5] == 2,
            "a TLS {version:?} ClientHello must get a fatal alert, got {answer:02x?}"
        );
    }

    let out = server
        .curl("/healthz")
        .arg("--tlsv1.0")
        .arg("--tls-max")
        .arg("1.1")
        .run();
    assert!(!out.success(), "TLS <= 1.1 accepted: {out:?}");
    assert_eq!(out.status, 0);
    for (args, version) in [
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
        (&["--tlsv1.3"][..], "TLSv1.3"),
    ] {
        let mut curl = server.curl("/healthz").arg("-v");
        for arg in args {
            curl = curl.arg(arg);
        }
        let out = curl.run();
        assert!(out.success(), "{version}: {}", out.stderr);
        assert_eq!(out.text(), "ok");
        assert!(
            out.stderr
                .contains(&format!("SSL connection using {version}")),
            "{version} not negotiated: {}",
            out.stderr
        );
    }

    for (versions, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [Alpn::Http1, Alpn::Http2] {
            let mut connection = TlsClient::builder(&server.ca_path, server.addr)
                .versions(&[versions])
                .alpn(alpn)
                .build()
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{expected:?} {alpn:?}: {e}"));
            assert_eq!(connection.tls_version, expected);
            let (bytes, _) = fixture("create-plain.json");
            let reply = connection.post_json("/mutate", bytes).await;
            assert_eq!(reply.status, StatusCode::OK, "{expected:?} {alpn:?}");
            assert_eq!(reply.json()["response"]["allowed"], true);
        }
    }
}

struct Malformed {
    what: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
    /// A piece of the message, lower-cased.
    message: &'static str,
}

fn check_status_body(what: &str, status: u16, body: &[u8], reason: &str, message: &str) {
    let json: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: HTTP {status} without a JSON body ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(json["kind"], "Status", "{what}: {json}");
    assert_eq!(json["apiVersion"], "v1", "{what}: {json}");
    assert_eq!(json["status"], "Failure", "{what}: {json}");
    assert_eq!(json["code"], status, "{what}: {json}");
    assert_eq!(json["reason"], reason, "{what}: {json}");
    let text = json["message"].as_str().unwrap_or_default();
    assert!(
        text.to_lowercase().contains(message),
        "{what}: message {text:?} lacks {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_status_and_the_server_keeps_serving() {
    let server = Server::start();
    let (plain_bytes, plain) = fixture("create-plain.json");
    let with_request = |edit: fn(&mut Value)| {
        let mut review = plain.clone();
        edit(&mut review);
        serde_json::to_vec(&review).unwrap()
    };
    let too_large = {
        let mut review = plain.clone();
        review["request"]["object"]["metadata"]["annotations"]["padding"] =
            Value::String("x".repeat(7 * 1024 * 1024));
        serde_json::to_vec(&review).unwrap()
    };
    assert!(too_large.len() > 7 * 1024 * 1024);
    let deeply_nested_object = {
        let text =
            String::from_utf8(with_request(|r| r["request"]["object"] = json!("HOLE"))).unwrap();
        text.replace(
            "\"HOLE\"",
            &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        )
        .into_bytes()
    };
    let json_type = Some("application/json");
    let bad_request = |what, body: Vec<u8>, message| Malformed {
        what,
        method: Method::POST,
        path: "/mutate",
        content_type: json_type,
        body,
        status: 400,
        reason: "BadRequest",
        message,
    };
    let cases = vec![
        bad_request("empty body", Vec::new(), "empty"),
        bad_request("whitespace body", b" \n ".to_vec(), "empty"),
        bad_request("not JSON", b"this is not json".to_vec(), "json"),
        bad_request("truncated JSON", plain_bytes[..100].to_vec(), "json"),
        bad_request("a JSON array", b"[]".to_vec(), "admissionreview"),
        bad_request("{}", b"{}".to_vec(), "admission.k8s.io/v1"),
        bad_request(
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        bad_request(
            "v1beta1",
            with_request(|r| r["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "admission.k8s.io/v1",
        ),
        bad_request(
            "wrong kind",
            with_request(|r| r["kind"] = json!("ConversionReview")),
            "admissionreview",
        ),
        bad_request(
            "missing uid",
            with_request(|r| {
                r["request"].as_object_mut().unwrap().remove("uid");
            }),
            "uid",
        ),
        bad_request(
            "empty uid",
            with_request(|r| r["request"]["uid"] = json!("")),
            "uid",
        ),
        bad_request(
            "CREATE without object",
            with_request(|r| r["request"]["object"] = Value::Null),
            "object",
        ),
        bad_request(
            "trailing garbage",
            [plain_bytes.as_slice(), b"}"].concat(),
            "json",
        ),
        bad_request("100000 [", "[".repeat(100_000).into_bytes(), "request body"),
        bad_request(
            "deeply nested unknown field",
            format!(
                r#"{{"future":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            "apiversion",
        ),
        bad_request("deeply nested object", deeply_nested_object, "json"),
        Malformed {
            what: "text/plain",
            method: Method::POST,
            path: "/validate",
            content_type: Some("text/plain"),
            body: plain_bytes.clone(),
            status: 415,
            reason: "UnsupportedMediaType",
            message: "content-type must be application/json",
        },
        Malformed {
            what: "no Content-Type",
            method: Method::POST,
            path: "/mutate",
            content_type: None,
            body: plain_bytes.clone(),
            status: 415,
            reason: "UnsupportedMediaType",
            message: "content-type must be application/json",
        },
        Malformed {
            what: "body over 7 MiB",
            method: Method::POST,
            path: "/mutate",
            content_type: json_type,
            body: too_large.clone(),
            status: 413,
            reason: "RequestEntityTooLarge",
            message: "larger than",
        },
        Malformed {
            what: "unknown path",
            method: Method::POST,
            path: "/admit",
            content_type: json_type,
            body: plain_bytes.clone(),
            status: 404,
            reason: "NotFound",
            message: "/admit",
        },
        Malformed {
            what: "GET /mutate",
            method: Method::GET,
            path: "/mutate",
            content_type: None,
            body: Vec::new(),
            status: 405,
            reason: "MethodNotAllowed",
            message: "get",
        },
        Malformed {
            what: "PUT /validate",
            method: Method::PUT,
            path: "/validate",
            content_type: json_type,
            body: plain_bytes.clone(),
            status: 405,
            reason: "MethodNotAllowed",
            message: "put",
        },
        Malformed {
            what: "POST /healthz",
            method: Method::POST,
            path: "/healthz",
            content_type: None,
            body: Vec::new(),
            status: 405,
            reason: "MethodNotAllowed",
            message: "/healthz",
        },
    ];

    for alpn in [Alpn::Http1, Alpn::Http2] {
        for case in &cases {
            let what = format!("{} over {alpn:?}", case.what);
            // A fresh connection each: a server may close an HTTP/1.1 connection after an error.
            let mut connection = server.client(alpn).connect().await.unwrap();
            let reply: Reply = connection
                .request(
                    case.method.clone(),
                    case.path,
                    case.content_type,
                    case.body.clone(),
                )
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                reply.status.as_u16(),
                case.status,
                "{what}: {}",
                reply.text()
            );
            assert_eq!(reply.content_type(), "application/json", "{what}");
            check_status_body(&what, case.status, &reply.body, case.reason, case.message);
        }
    }

    // The same with curl: its -d sends application/x-www-form-urlencoded.
    let plain_path = fixture_path("create-plain.json");
    let scratch = server.scratch().to_owned();
    let big_path = scratch.join("too-large.json");
    std::fs::write(&big_path, &too_large).unwrap();
    let nested_path = scratch.join("nested.json");
    std::fs::write(&nested_path, "[".repeat(100_000)).unwrap();
    let empty_path = scratch.join("empty.json");
    std::fs::write(&empty_path, "").unwrap();
    let data_arg = format!("@{}", plain_path.display());
    for http in [CurlHttp::Http1, CurlHttp::Http2] {
        let checks = [
            (
                server.curl("/mutate").http(http).arg("-d").arg(&data_arg),
                415,
                "UnsupportedMediaType",
                "x-www-form-urlencoded",
            ),
            (
                server.curl("/mutate").http(http).json_file(&empty_path),
                400,
                "BadRequest",
                "empty",
            ),
            (
                server.curl("/validate").http(http).json_file(&nested_path),
                400,
                "BadRequest",
                "request body",
            ),
            (
                server.curl("/mutate").http(http).json_file(&big_path),
                413,
                "RequestEntityTooLarge",
                "larger than",
            ),
            (
                server.curl("/nothing-here").http(http),
                404,
                "NotFound",
                "/nothing-here",
            ),
            (
                server.curl("/mutate").http(http),
                405,
                "MethodNotAllowed",
                "get",
            ),
        ];
        for (curl, status, reason, message) in checks {
            let out = curl.run();
            let what = format!("curl {http:?} {curl:?}");
            assert!(out.success(), "{what}: {}", out.stderr);
            assert_eq!(out.status, status, "{what}: {}", out.text());
            check_status_body(&what, status, &out.body, reason, message);
        }
    }

    // Still serving.
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let mut connection = server.client(alpn).connect().await.unwrap();
        assert_eq!(connection.get("/healthz").await.text(), "ok");
        let reply = connection.post_json("/mutate", plain_bytes.clone()).await;
        assert_eq!(reply.status, StatusCode::OK);
        let review = reply.json();
        let response = response_of(
            "after the malformed requests",
            &review,
            "0d8e3f5a-1c2b-4e6f-9a7d-5b3c2e1f0a01",
        );
        assert_eq!(response["allowed"], true);
        assert!(response["patch"].is_string());
    }
    let out = server.curl("/readyz").run();
    assert_eq!((out.status, out.text().as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_serves_several_reviews_on_one_connection() {
    let server = Server::start();
    let mut connection = server.client(Alpn::Http1).connect().await.unwrap();
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let files = [
        "create-plain.json",
        "create-selector-mismatch.json",
        "create-complete.json",
        "update-plain.json",
        "delete.json",
    ];
    for round in 0..3 {
        for (i, file) in files.iter().enumerate() {
            let (_, request) = fixture(file);
            let uid = format!("keep-alive-{round}-{i}");
            let body = review_of(&request, &uid, request["request"]["object"].clone());
            let endpoint = if i % 2 == 0 { "/mutate" } else { "/validate" };
            let reply = connection.post_json(endpoint, body).await;
            assert_eq!(reply.status, StatusCode::OK, "{file}: {}", reply.text());
            assert_eq!(reply.version, Version::HTTP_11);
            let review = reply.json();
            let response = response_of(file, &review, &uid);
            assert_eq!(
                response["allowed"],
                !file.contains("mismatch"),
                "{file}: {response}"
            );
        }
        // A malformed request answered with an error does not end the connection.
        let reply = connection.post_json("/mutate", &b"not json"[..]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(connection.get("/healthz").await.text(), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reviews_over_twenty_concurrent_connections() {
    let server = Server::start();
    let (bytes, request) = fixture("create-plain.json");
    // The reference answer; every other differs only in its uid.
    let mut reference = server.client(Alpn::Http1).connect().await.unwrap();
    let reference = reference.post_json("/mutate", bytes).await.json();
    let mut reference = reference["response"].clone();
    reference.as_object_mut().unwrap().remove("uid");

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..20 {
        let client = server.client(if c % 2 == 0 { Alpn::Http1 } else { Alpn::Http2 });
        let request = request.clone();
        tasks.spawn(async move {
            let connection = client.connect().await.expect("connecting");
            let bodies: Vec<(String, Vec<u8>)> = (0..10)
                .map(|r| {
                    let uid = format!("conn-{c}-review-{r}");
                    let body = review_of(&request, &uid, request["request"]["object"].clone());
                    (uid, body)
                })
                .collect();
            let mut replies = Vec::new();
            if connection.is_http2() {
                // Ten concurrent streams on the one connection.
                let mut streams = tokio::task::JoinSet::new();
                for (uid, body) in bodies {
                    let mut handle = connection.h2_handle();
                    streams.spawn(async move { (uid, handle.post_json("/mutate", body).await) });
                }
                while let Some(done) = streams.join_next().await {
                    replies.push(done.expect("a stream task"));
                }
            } else {
                let mut connection = connection;
                for (uid, body) in bodies {
                    let reply = connection.post_json("/mutate", body).await;
                    replies.push((uid, reply));
                }
            }
            replies
        });
    }
    let mut count = 0;
    let mut uids = BTreeSet::new();
    while let Some(replies) = tasks.join_next().await {
        for (uid, reply) in replies.expect("a connection task") {
            assert_eq!(reply.status, StatusCode::OK, "{uid}: {}", reply.text());
            let review = reply.json();
            let mut response = response_of(&uid, &review, &uid).clone();
            response.as_object_mut().unwrap().remove("uid");
            assert_eq!(response, reference, "{uid}");
            uids.insert(uid);
            count += 1;
        }
    }
    assert_eq!(count, 200);
    assert_eq!(uids.len(), 200);
    // A hang detector, not a speed test (speed is measured by the README's load runs).
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "200 reviews took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_paths_generate_a_development_certificate_once() {
    let cwd = tempfile::tempdir().unwrap();
    let certs = cwd.path().join("certs");
    let options = || StartOptions {
        cwd: Some(cwd.path().to_owned()),
        certs: Certs::Defaults,
        ..StartOptions::default()
    };

    let mut server = Server::start_with(options());
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(certs.join(file).is_file(), "certs/{file} not generated");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "tls.key mode {:o}", mode & 0o777);
    }
    let logs = server.logs();
    let warning = logs
        .lines()
        .find(|line| {
            // JSON lines when stderr is not a terminal (the default `--log-format auto`).
            serde_json::from_str::<Value>(line).is_ok_and(|event| event["level"] == "WARN")
                && line.contains("certs/ca.crt")
        })
        .unwrap_or_else(|| panic!("no loud warning naming certs/ca.crt:\n{logs}"));
    assert!(warning.to_lowercase().contains("development"), "{warning}");
    assert!(!logs.contains('\u{1b}'), "ANSI escapes in the log:\n{logs}");

    // As a person would: curl --cacert certs/ca.crt https://localhost:PORT/healthz.
    let out = common::Curl::new(server.port(), "/healthz")
        .cacert(&certs.join("ca.crt"))
        .run();
    assert!(out.success(), "{}", out.stderr);
    assert_eq!((out.status, out.text().as_str()), (200, "ok"));
    // The other development names verify too.
    for name in [
        "127.0.0.1",
        "daemonset-webhook.daemonset-webhook.svc.cluster.local",
    ] {
        let mut connection = TlsClient::builder(&server.ca_path, server.addr)
            .server_name(name)
            .build()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(connection.get("/readyz").await.text(), "ok");
    }

    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let cert = std::fs::read(certs.join("tls.crt")).unwrap();
    let key = std::fs::read(certs.join("tls.key")).unwrap();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // A second start serves the same files and does not warn again.
    let server = Server::start_with(options());
    assert_eq!(std::fs::read(certs.join("tls.crt")).unwrap(), cert);
    assert_eq!(std::fs::read(certs.join("tls.key")).unwrap(), key);
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca);
    let logs = server.logs();
    assert!(
        !logs.contains("WARN"),
        "warned although the certificate existed:\n{logs}"
    );
    let out = server.curl("/healthz").run();
    assert_eq!(
        (out.status, out.text().as_str()),
        (200, "ok"),
        "{}",
        out.stderr
    );
}

#[test]
fn explicit_missing_certificate_paths_fail_without_generating() {
    let cwd = tempfile::tempdir().unwrap();
    let missing = cwd.path().join("missing");
    let cert = missing.join("tls.crt");
    let key = missing.join("tls.key");
    let cert_arg = cert.to_str().unwrap();
    let key_arg = key.to_str().unwrap();
    let timeout = Duration::from_secs(20);

    let runs = [
        (
            "flags",
            run_binary(
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-cert",
                    cert_arg,
                    "--tls-key",
                    key_arg,
                ],
                cwd.path(),
                &[],
                timeout,
            ),
            cert_arg.to_owned(),
        ),
        (
            "serve subcommand",
            run_binary(
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-cert",
                    cert_arg,
                    "--tls-key",
                    key_arg,
                ],
                cwd.path(),
                &[],
                timeout,
            ),
            cert_arg.to_owned(),
        ),
        (
            "environment",
            run_binary(
                &["--listen", "127.0.0.1:0"],
                cwd.path(),
                &[
                    ("DAEMONSET_WEBHOOK_TLS_CERT", cert_arg),
                    ("DAEMONSET_WEBHOOK_TLS_KEY", key_arg),
                ],
                timeout,
            ),
            cert_arg.to_owned(),
        ),
        (
            // The default paths, but given explicitly: still an error, not a generated pair.
            "explicit default paths",
            run_binary(
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-cert",
                    "certs/tls.crt",
                    "--tls-key",
                    "certs/tls.key",
                ],
                cwd.path(),
                &[],
                timeout,
            ),
            "certs/tls.crt".to_owned(),
        ),
    ];
    for (what, output, path) in runs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: exited {}", output.status);
        assert!(
            stderr.contains(&path),
            "{what}: stderr does not name {path}:\n{stderr}"
        );
        assert!(
            !stderr.contains("listening on"),
            "{what}: served anyway:\n{stderr}"
        );
    }
    assert!(!missing.exists(), "created {}", missing.display());
    assert!(
        !cwd.path().join("certs").exists(),
        "generated certs/ although paths were given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_promptly_with_idle_connections_open() {
    let mut server = Server::start();
    // Idle keep-alive connections must not hold up the shutdown.
    let mut h1 = server.client(Alpn::Http1).connect().await.unwrap();
    let mut h2 = server.client(Alpn::Http2).connect().await.unwrap();
    assert_eq!(h1.get("/healthz").await.text(), "ok");
    assert_eq!(h2.get("/healthz").await.text(), "ok");

    let started = Instant::now();
    server.terminate();
    // Well within the 15 s shutdown timeout: idle connections do not hold the exit up.
    let status = server.wait_exit(Duration::from_secs(10));
    let logs = server.logs();
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{logs}"));
    assert_eq!(status.code(), Some(0), "{status}:\n{logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The idle connections were open until the end.
    drop((h1, h2));
}

#[test]
fn help_documents_the_environment_and_the_listen_default() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let output = run_binary(args, cwd.path(), &[], Duration::from_secs(10));
        assert!(output.status.success(), "{args:?}: {}", output.status);
        let help = String::from_utf8_lossy(&output.stdout);
        for needle in [
            "DAEMONSET_WEBHOOK_LISTEN",
            "DAEMONSET_WEBHOOK_TLS_CERT",
            "DAEMONSET_WEBHOOK_TLS_KEY",
            "DAEMONSET_WEBHOOK_CONFIG",
            "0.0.0.0:8443",
            "--tls-cert",
            "--tls-key",
            "--config",
        ] {
            assert!(help.contains(needle), "{args:?} lacks {needle}:\n{help}");
        }
    }
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "--help wrote files"
    );
}
