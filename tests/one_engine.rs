//! One engine: `check` on a manifest, `review` on an AdmissionReview of the same object, and the
//! running server given that same AdmissionReview reach the same verdict, with the same message
//! and the same patch; `review` prints the server's response body byte for byte.
//!
//! The objects: every DaemonSet of tests/corpus/daemonsets (the older apiVersions as the API
//! server converts them to apps/v1 before calling the webhook), every DaemonSet an AdmissionReview
//! in tests/fixtures carries (written out as JSON and as YAML manifests), and the edge cases of
//! tests/check/engine-cases.yaml. Once with the built-in policy, once with a policy file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use common::{
    Alpn, CliOutput, Server, StartOptions, cli, decode_patch, fixtures_dir, manifest_dir, run_cli,
};

/// One DaemonSet, as a manifest `check` reads and as the object the API server would send.
struct Subject {
    /// Where it comes from, for messages.
    label: String,
    /// The files `check` reads it from (the same object in each), with its document index.
    manifests: Vec<(String, u64)>,
    /// As the manifest has it.
    original: Value,
    /// As the webhook receives it: converted to apps/v1.
    converted: Value,
    uid: String,
}

/// The documents of a YAML stream as Kubernetes tooling reads them (YAML 1.1 octal).
fn documents(text: &str) -> Vec<Value> {
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .unwrap_or_else(|e| panic!("not a YAML stream ({e})"))
}

/// What the API server sends an apps/v1 webhook (`matchPolicy: Equivalent`) for `object`.
fn as_apps_v1(object: &Value) -> Value {
    let mut converted = object.clone();
    match object["apiVersion"].as_str() {
        Some("apps/v1") => {}
        Some("apps/v1beta2") => converted["apiVersion"] = json!("apps/v1"),
        Some("extensions/v1beta1") => {
            converted["apiVersion"] = json!("apps/v1");
            // extensions/v1beta1 defaulted a missing selector to the template's labels.
            let labels = &object["spec"]["template"]["metadata"]["labels"];
            let missing = object["spec"].get("selector").is_none_or(Value::is_null);
            if missing && labels.as_object().is_some_and(|l| !l.is_empty()) {
                converted["spec"]["selector"] = json!({ "matchLabels": labels });
            }
        }
        other => panic!("no apps/v1 conversion for {other:?}"),
    }
    converted
}

fn subjects(scratch: &Path) -> Vec<Subject> {
    let mut subjects = Vec::new();
    let mut add = |label: String, manifests: Vec<(String, u64)>, original: Value| {
        let uid = format!("one-engine-{:03}", subjects.len());
        subjects.push(Subject {
            label,
            manifests,
            converted: as_apps_v1(&original),
            original,
            uid,
        });
    };

    // The corpus: one DaemonSet per file.
    let corpus = manifest_dir().join("tests/corpus/daemonsets");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let relative = path.strip_prefix(manifest_dir()).unwrap();
        let relative = relative.to_str().unwrap().to_owned();
        let docs = documents(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(docs.len(), 1, "{relative}");
        let object = docs.into_iter().next().unwrap();
        assert_eq!(object["kind"], "DaemonSet", "{relative}");
        add(relative.clone(), vec![(relative, 1)], object);
    }

    // The fixtures' DaemonSets, written out as JSON and as YAML.
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    for path in fixtures {
        let review: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        for field in ["object", "oldObject"] {
            let object = &review["request"][field];
            if object["kind"] != "DaemonSet" {
                continue;
            }
            let json_file = scratch.join(format!("{stem}-{field}.json"));
            std::fs::write(&json_file, serde_json::to_vec_pretty(object).unwrap()).unwrap();
            let yaml_file = scratch.join(format!("{stem}-{field}.yaml"));
            std::fs::write(&yaml_file, serde_saphyr::to_string(object).unwrap()).unwrap();
            let manifests = [json_file, yaml_file]
                .iter()
                .map(|f| (f.to_str().unwrap().to_owned(), 1))
                .collect();
            add(
                format!("tests/fixtures/{stem}.json request.{field}"),
                manifests,
                object.clone(),
            );
        }
    }

    // The edge cases, one per document.
    let edge = "tests/check/engine-cases.yaml";
    let docs = documents(&std::fs::read_to_string(manifest_dir().join(edge)).unwrap());
    for (i, object) in docs.into_iter().enumerate() {
        let document = i as u64 + 1;
        add(
            format!("{edge} document {document}"),
            vec![(edge.to_owned(), document)],
            object,
        );
    }
    subjects
}

/// The AdmissionReview of a CREATE of `subject`, as the API server would send it.
fn admission_review(subject: &Subject, object: &Value) -> Vec<u8> {
    let original_version = subject.original["apiVersion"].as_str().unwrap();
    let (group, version) = original_version.split_once('/').unwrap();
    let mut request = json!({
        "uid": subject.uid,
        "kind": { "group": "apps", "version": "v1", "kind": "DaemonSet" },
        "resource": { "group": "apps", "version": "v1", "resource": "daemonsets" },
        "requestKind": { "group": group, "version": version, "kind": "DaemonSet" },
        "requestResource": { "group": group, "version": version, "resource": "daemonsets" },
        "namespace": object["metadata"]["namespace"].as_str().unwrap_or("default"),
        "operation": "CREATE",
        "userInfo": { "username": "system:serviceaccount:argocd:argocd-application-controller" },
        "object": object,
        "oldObject": null,
        "dryRun": false,
        "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
    });
    if let Some(name) = object["metadata"]["name"].as_str() {
        request["name"] = json!(name);
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }))
    .unwrap()
}

/// `--config FILE` when there is one.
fn with_config<'a>(args: &[&'a str], config: Option<&'a str>) -> Vec<&'a str> {
    let mut all = args.to_vec();
    if let Some(config) = config {
        all.extend(["--config", config]);
    }
    all
}

/// POSTs each body to `path` on one keep-alive connection; the status and body of each answer.
fn post_all(server: &Server, path: &str, bodies: &[Vec<u8>]) -> Vec<(StatusCode, Bytes)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connection = server
            .client(Alpn::Http1)
            .connect()
            .await
            .expect("connecting to the server");
        let mut answers = Vec::new();
        for body in bodies {
            let reply = connection.post_json(path, body.clone()).await;
            answers.push((reply.status, reply.body));
        }
        answers
    })
}

/// The server's answer, decoded: `allowed`, the patch (`[]` for none), the response.
fn decode(what: &str, status: StatusCode, body: &[u8], uid: &str) -> (bool, Value, Value) {
    assert_eq!(
        status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    let answer: Value = serde_json::from_slice(body).unwrap();
    let response = answer["response"].clone();
    assert_eq!(response["uid"], uid, "{what}");
    let patch = decode_patch(&response)
        .map(|p| serde_json::to_value(p).unwrap())
        .unwrap_or_else(|| json!([]));
    (response["allowed"] == true, patch, response)
}

fn review_stdin(args: &[&str], body: &[u8]) -> CliOutput {
    run_cli(cli(args).write_stdin(body.to_vec()))
}

/// check, review and the server on every subject, under `config` (`None`: built-in policy).
fn prove_one_engine(config: Option<&str>) {
    let policy = config.unwrap_or("the built-in policy");
    let scratch = tempfile::tempdir().unwrap();
    let subjects = subjects(scratch.path());
    let old_versions = subjects
        .iter()
        .filter(|s| s.original["apiVersion"] != "apps/v1")
        .count();
    assert!(
        subjects.len() >= 70 && old_versions >= 10,
        "{} subjects, {old_versions} in older apiVersions",
        subjects.len()
    );

    let mut start = StartOptions::default();
    if let Some(config) = config {
        start.args = vec![
            "--config".to_owned(),
            manifest_dir().join(config).to_str().unwrap().to_owned(),
        ];
    }
    let server = Server::start_with(start);

    // (a) check, once over every manifest.
    let mut args = vec!["check", "--output", "json"];
    let paths: Vec<String> = subjects
        .iter()
        .flat_map(|s| s.manifests.iter().map(|(f, _)| f.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    args.extend(paths.iter().map(String::as_str));
    let checked = run_cli(&mut cli(&with_config(&args, config)));
    assert!(
        matches!(checked.code, Some(0 | 1)),
        "{policy}: check failed: {}",
        checked.stderr
    );
    let report = checked.json();
    assert_eq!(report["errors"], json!([]), "{policy}");
    let mut by_manifest: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for result in report["results"].as_array().unwrap() {
        let key = (
            result["file"].as_str().unwrap().to_owned(),
            result["document"].as_u64().unwrap(),
        );
        assert!(
            by_manifest.insert(key.clone(), result.clone()).is_none(),
            "{policy}: two results for {key:?}"
        );
    }
    let manifest_count: usize = subjects.iter().map(|s| s.manifests.len()).sum();
    assert_eq!(
        by_manifest.len(),
        manifest_count,
        "{policy}: one result per DaemonSet"
    );

    // (b) review and (c) the server, on the same AdmissionReviews.
    let reviews: Vec<Vec<u8>> = subjects
        .iter()
        .map(|s| admission_review(s, &s.converted))
        .collect();
    let answers = post_all(&server, "/mutate", &reviews);

    let mut patched_manifests = Vec::new();
    let mut patched_reviews = Vec::new();
    let mut verdicts = BTreeMap::<&str, usize>::new();
    for ((subject, review), (status, body)) in subjects.iter().zip(&reviews).zip(&answers) {
        let what = format!("{policy}: {}", subject.label);
        let reviewed = review_stdin(&with_config(&["review", "-"], config), review);
        assert_eq!(
            reviewed.stdout_bytes,
            [body.as_ref(), b"\n"].concat(),
            "{what}: review and the server answer differently"
        );
        let (allowed, server_patch, response) = decode(&what, *status, body, &subject.uid);
        assert_eq!(
            reviewed.code,
            Some(if allowed { 0 } else { 1 }),
            "{what}: {}",
            reviewed.stderr
        );

        let results: Vec<&Value> = subject
            .manifests
            .iter()
            .map(|key| {
                by_manifest
                    .get(key)
                    .unwrap_or_else(|| panic!("{what}: no check result for {key:?}"))
            })
            .collect();
        let result = results[0];
        // The same object in JSON and in YAML: the same judgement.
        for other in &results[1..] {
            let strip = |r: &Value| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("file");
                r.as_object_mut().unwrap().remove("line");
                r
            };
            assert_eq!(strip(other), strip(result), "{what}: JSON and YAML differ");
        }

        // The verdict.
        let status = result["status"].as_str().unwrap();
        *verdicts.entry(status).or_default() += 1;
        let expected_status = match (allowed, server_patch.as_array().unwrap().is_empty()) {
            (false, _) => "invalid",
            (true, false) => "incomplete",
            (true, true) if status == "exempt" => "exempt",
            (true, true) => "complete",
        };
        assert_eq!(status, expected_status, "{what}: server {response}");
        assert_eq!(
            result["patch"], server_patch,
            "{what}: check's patch is not the server's"
        );
        if allowed {
            assert!(result["message"].is_null(), "{what}");
            assert_eq!(result["violations"], json!([]), "{what}");
        } else {
            let status = &response["status"];
            assert_eq!(
                result["message"], status["message"],
                "{what}: check's message is not the server's"
            );
            let causes: Vec<Value> = status["details"]["causes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| json!({ "field": c["field"], "type": c["reason"], "message": c["message"] }))
                .collect();
            assert_eq!(result["violations"], json!(causes), "{what}");
        }
        if let Some(warnings) = result.get("warnings") {
            let server_warnings = response.get("warnings").cloned().unwrap_or(json!([]));
            assert_eq!(warnings, &server_warnings, "{what}: warnings");
        }

        // Judged as apps/v1, reported in its own apiVersion.
        assert_eq!(
            result["apiVersion"], subject.original["apiVersion"],
            "{what}"
        );
        let converted = subject.original["apiVersion"] != "apps/v1";
        assert_eq!(
            result["note"]
                .as_str()
                .is_some_and(|n| n.contains(subject.original["apiVersion"].as_str().unwrap())),
            converted,
            "{what}: note {}",
            result["note"]
        );
        assert_eq!(
            result["name"],
            subject.original["metadata"]["name"]
                .as_str()
                .unwrap_or_default(),
            "{what}"
        );

        // What check would write applies to the manifest's object.
        if status == "incomplete" {
            let patch: json_patch::Patch = serde_json::from_value(result["patch"].clone()).unwrap();
            let mut patched = subject.original.clone();
            json_patch::patch(&mut patched, &patch)
                .unwrap_or_else(|e| panic!("{what}: check's patch does not apply: {e}"));
            patched_reviews.push(admission_review(subject, &as_apps_v1(&patched)));
            patched_manifests.push((subject.label.clone(), patched, subject.uid.clone()));
        }
    }
    assert!(
        verdicts.get("incomplete").copied().unwrap_or(0) >= 40
            && verdicts.get("invalid").copied().unwrap_or(0) >= 5,
        "{policy}: too few of each verdict to prove much: {verdicts:?}"
    );

    // Patched, every DaemonSet is complete: for check, and for the server.
    let stream: Vec<String> = patched_manifests
        .iter()
        .map(|(_, object, _)| serde_json::to_string(object).unwrap())
        .collect();
    let file = scratch.path().join("patched.yaml");
    std::fs::write(&file, stream.join("\n---\n")).unwrap();
    let again = run_cli(&mut cli(&with_config(
        &[
            "check",
            "--output",
            "json",
            "--require-mutated",
            file.to_str().unwrap(),
        ],
        config,
    )));
    let report = again.json();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), patched_manifests.len(), "{policy}");
    for (result, (label, _, _)) in results.iter().zip(&patched_manifests) {
        assert_eq!(
            result["status"], "complete",
            "{policy}: {label} patched is not complete: {result:#}"
        );
    }
    assert_eq!(again.code, Some(0), "{policy}: {}", again.stdout);
    for ((status, body), (label, _, uid)) in post_all(&server, "/mutate", &patched_reviews)
        .iter()
        .zip(&patched_manifests)
    {
        let (allowed, patch, _) = decode(label, *status, body, uid);
        assert!(allowed, "{policy}: {label}");
        assert_eq!(
            patch,
            json!([]),
            "{policy}: {label}: the server would patch again"
        );
    }
}

#[test]
fn check_review_and_server_judge_every_daemonset_alike() {
    prove_one_engine(None);
}

#[test]
fn check_review_and_server_judge_alike_under_a_policy_file() {
    prove_one_engine(Some("tests/check/policy-engine.yaml"));
}

/// The fixtures as they are (UPDATE, dry run, DELETE, a Deployment), through both endpoints:
/// `review` prints the server's body byte for byte and exits 0 or 1 as it allows or denies.
#[test]
fn review_prints_the_servers_answer_to_every_fixture_byte_for_byte() {
    let server = Server::start();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 14);
    let bodies: Vec<Vec<u8>> = fixtures.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for (endpoint, path) in [("mutate", "/mutate"), ("validate", "/validate")] {
        let answers = post_all(&server, path, &bodies);
        for ((fixture, body), (status, answer)) in fixtures.iter().zip(&bodies).zip(&answers) {
            let what = format!("{} {path}", fixture.display());
            let reviewed = run_cli(&mut cli(&[
                "review",
                "--endpoint",
                endpoint,
                fixture.to_str().unwrap(),
            ]));
            assert_eq!(
                reviewed.stdout_bytes,
                [answer.as_ref(), b"\n"].concat(),
                "{what}"
            );
            let request: Value = serde_json::from_slice(body).unwrap();
            let uid = request["request"]["uid"].as_str().unwrap();
            let (allowed, patch, _) = decode(&what, *status, answer, uid);
            assert_eq!(reviewed.code, Some(if allowed { 0 } else { 1 }), "{what}");
            if endpoint == "validate" {
                assert_eq!(patch, json!([]), "{what}: /validate never patches");
            }
        }
    }
}

/// Repeated keys (finding 8 of issue 13): one rule on every path. The API server's decoder
/// (sigs.k8s.io/json) decodes a repeated key into the value already there, so objects merge,
/// scalars take the last value and a list's elements are decoded into the elements already
/// there; it warns `duplicate field "<path>"`. `check` (given the object as JSON and as YAML
/// with the same repeats), `review` and the server all judge and warn alike.
#[test]
fn a_repeated_key_is_merged_and_named_alike_by_check_review_and_the_server() {
    let meta =
        r#""apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"dup","namespace":"ops"}"#;
    let template =
        r#"{"metadata":{"labels":{"app":"a"}},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
    // (label, JSON text with the repeat, the same as block YAML, the warning, allowed)
    let cases: Vec<(&str, String, String, &str, bool)> = vec![
        (
            "spec given twice, selector in the first, template in the second",
            format!(r#"{{{meta},"spec":{{"selector":{{"matchLabels":{{"app":"a"}}}}}},"spec":{{"template":{template}}}}}"#),
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: dup, namespace: ops}\nspec:\n  selector: {matchLabels: {app: a}}\nspec:\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      containers: [{name: c, image: i}]\n".to_owned(),
            r#"duplicate field "spec""#,
            true,
        ),
        (
            "two identical templates",
            format!(r#"{{{meta},"spec":{{"selector":{{"matchLabels":{{"app":"a"}}}},"template":{template},"template":{template}}}}}"#),
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: dup, namespace: ops}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: i}]}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: i}]}\n".to_owned(),
            r#"duplicate field "spec.template""#,
            true,
        ),
        (
            "containers given twice: the second decoded into the first's element",
            format!(r#"{{{meta},"spec":{{"selector":{{"matchLabels":{{"app":"a"}}}},"template":{{"metadata":{{"labels":{{"app":"a"}}}},"spec":{{"containers":[{{"name":"c","image":"i","resources":{{"limits":{{"cpu":"2"}}}}}}],"containers":[{{"name":"d"}}]}}}}}}}}"#),
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: dup, namespace: ops}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      containers: [{name: c, image: i, resources: {limits: {cpu: '2'}}}]\n      containers: [{name: d}]\n".to_owned(),
            r#"duplicate field "spec.template.spec.containers""#,
            true,
        ),
        (
            "restartPolicy Always then Never: the last is judged",
            format!(r#"{{{meta},"spec":{{"selector":{{"matchLabels":{{"app":"a"}}}},"template":{{"metadata":{{"labels":{{"app":"a"}}}},"spec":{{"restartPolicy":"Always","containers":[{{"name":"c","image":"i"}}],"restartPolicy":"Never"}}}}}}}}"#),
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: dup, namespace: ops}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      restartPolicy: Always\n      containers: [{name: c, image: i}]\n      restartPolicy: Never\n".to_owned(),
            r#"duplicate field "spec.template.spec.restartPolicy""#,
            false,
        ),
    ];
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start();
    let reviews: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, object, ..))| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"dup-{i}","kind":{{"group":"apps","version":"v1","kind":"DaemonSet"}},"resource":{{"group":"apps","version":"v1","resource":"daemonsets"}},"namespace":"ops","operation":"CREATE","userInfo":{{"username":"u"}},"object":{object}}}}}"#
            )
            .into_bytes()
        })
        .collect();
    let answers = post_all(&server, "/mutate", &reviews);
    for (i, ((label, json_text, yaml_text, warning, allowed), (status, body))) in
        cases.iter().zip(&answers).enumerate()
    {
        let (server_allowed, server_patch, response) =
            decode(label, *status, body, &format!("dup-{i}"));
        assert_eq!(server_allowed, *allowed, "{label}: server {response}");
        let server_warnings = response["warnings"].clone();
        assert!(
            server_warnings
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w == warning)),
            "{label}: server warnings {server_warnings}"
        );
        if *allowed {
            // Merged, the object is the plain one: patched like it.
            assert!(!server_patch.as_array().unwrap().is_empty(), "{label}");
        }

        let reviewed = review_stdin(&["review", "-"], &reviews[i]);
        assert_eq!(
            reviewed.stdout_bytes,
            [body.as_ref(), b"\n"].concat(),
            "{label}: review and the server answer differently"
        );

        for (ext, text) in [("json", json_text), ("yaml", yaml_text)] {
            let file = scratch.path().join(format!("case-{i}.{ext}"));
            std::fs::write(&file, text).unwrap();
            let checked = run_cli(&mut cli(&[
                "check",
                "--output",
                "json",
                file.to_str().unwrap(),
            ]));
            let report = checked.json();
            assert_eq!(report["errors"], json!([]), "{label} ({ext})");
            let result = &report["results"][0];
            assert_eq!(
                result["status"],
                if *allowed { "incomplete" } else { "invalid" },
                "{label} ({ext}): {result:#}"
            );
            assert_eq!(result["patch"], server_patch, "{label} ({ext})");
            assert_eq!(result["warnings"], server_warnings, "{label} ({ext})");
            if !*allowed {
                assert_eq!(
                    result["message"], response["status"]["message"],
                    "{label} ({ext})"
                );
            }
        }
    }
}
