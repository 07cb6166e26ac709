//! `daemonset-webhook check` and `daemonset-webhook review` as a CI pipeline runs them: the real
//! binary on the manifests in tests/check/ (and the AdmissionReviews in tests/fixtures/), its
//! output in every format and its exit codes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use common::{CliOutput, cli, fixtures_dir, manifest_dir, run_cli};

// -------------------------------------------------------------------------------------------
// Helpers.

/// `daemonset-webhook ARGS`, run to completion.
fn run(args: &[&str]) -> CliOutput {
    run_cli(&mut cli(args))
}

/// `daemonset-webhook ARGS` with `stdin`.
fn run_stdin(args: &[&str], stdin: impl Into<Vec<u8>>) -> CliOutput {
    run_cli(cli(args).write_stdin(stdin.into()))
}

/// `check --output json ARGS`: the report, after checking that its exit code is the process's.
fn check_json(args: &[&str]) -> (Value, CliOutput) {
    let mut all = vec!["check", "--output", "json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let report = out.json();
    assert_eq!(
        report["summary"]["exitCode"].as_i64(),
        out.code.map(i64::from),
        "the report's exitCode is the exit code: {report}"
    );
    (report, out)
}

fn results(report: &Value) -> &Vec<Value> {
    report["results"].as_array().expect("results is an array")
}

/// The one result named `name`.
fn result<'a>(report: &'a Value, name: &str) -> &'a Value {
    let found: Vec<&Value> = results(report)
        .iter()
        .filter(|r| r["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one result named {name:?} in {report:#}");
    found[0]
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    results(report)
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The summary's counts that every report has.
fn counts(report: &Value) -> Value {
    let s = &report["summary"];
    json!({
        "files": s["files"], "daemonSets": s["daemonSets"], "complete": s["complete"],
        "incomplete": s["incomplete"], "invalid": s["invalid"], "unsupported": s["unsupported"],
        "skipped": s["skipped"], "errors": s["errors"], "exitCode": s["exitCode"],
    })
}

/// The documents of a YAML stream read independently of the binary (empty documents skipped,
/// YAML 1.1 octal as Kubernetes reads it).
fn documents(text: &str) -> Vec<Value> {
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .unwrap_or_else(|e| panic!("not a YAML stream ({e}):\n{text}"))
}

fn file_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifest_dir().join(path)).unwrap();
    documents(&text)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            assert_eq!(
                chars.next(),
                Some('['),
                "an escape that is not CSI in {text:?}"
            );
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const STANDARD_TOLERATIONS: &str = "node.kubernetes.io/not-ready:NoExecute, \
    node.kubernetes.io/unreachable:NoExecute, node.kubernetes.io/disk-pressure:NoSchedule, \
    node.kubernetes.io/memory-pressure:NoSchedule, node.kubernetes.io/pid-pressure:NoSchedule, \
    node.kubernetes.io/unschedulable:NoSchedule";

fn toleration(key: &str, effect: &str) -> Value {
    json!({ "key": key, "operator": "Exists", "effect": effect })
}

fn standard_tolerations() -> Vec<Value> {
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

// -------------------------------------------------------------------------------------------
// Verdicts and exit codes, in text.

#[test]
fn a_complete_daemonset_is_complete_and_exits_0_even_with_require_mutated() {
    for args in [
        &["check", "tests/check/complete.yaml"][..],
        &["check", "--require-mutated", "tests/check/complete.yaml"][..],
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert_eq!(
            out.stdout,
            "complete    tests/check/complete.yaml:2 DaemonSet logging/fluent-bit (apps/v1)\n\
             checked 1 DaemonSet(s) in 1 input(s): 1 complete, 0 would be patched, 0 invalid; \
             0 other object(s) passed over\n",
            "{args:?}"
        );
        assert_eq!(out.stderr, "", "{args:?}");
    }
}

#[test]
fn an_incomplete_daemonset_exits_0_but_1_with_require_mutated() {
    let out = run(&["check", "tests/check/incomplete.yaml"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let expected = format!(
        "incomplete  tests/check/incomplete.yaml:2 DaemonSet monitoring/node-exporter (apps/v1)\n    \
         + add the tolerations the DaemonSet controller gives every daemon pod: {STANDARD_TOLERATIONS}\n    \
         + container \"node-exporter\": set cpu limit 500m and request 50m (it had neither)\n    \
         + container \"node-exporter\": set memory limit 512Mi and request 64Mi (it had neither)\n\
         checked 1 DaemonSet(s) in 1 input(s): 0 complete, 1 would be patched, 0 invalid; \
         0 other object(s) passed over\n"
    );
    assert_eq!(out.stdout, expected);

    let strict = run(&["check", "--require-mutated", "tests/check/incomplete.yaml"]);
    assert_eq!(strict.code, Some(1), "{strict:?}");
    assert!(strict.stdout.starts_with(&expected), "{}", strict.stdout);
    assert!(
        strict
            .stdout
            .contains("--require-mutated: 1 DaemonSet(s) lack what the webhook would add"),
        "{}",
        strict.stdout
    );
}

#[test]
fn invalid_daemonsets_exit_1_with_the_api_servers_messages() {
    let out = run(&[
        "check",
        "tests/check/invalid-selector.yaml",
        "tests/check/invalid-restart-policy.yaml",
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout,
        "invalid     tests/check/invalid-selector.yaml:1 DaemonSet logging/fluent-bit (apps/v1)\n    \
         - spec.template.metadata.labels: Invalid value: {\"app\":\"fluentbit\"}: `selector` does not match template `labels`\n\
         invalid     tests/check/invalid-restart-policy.yaml:1 DaemonSet ops/disk-cleaner (apps/v1)\n    \
         - spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"\n\
         checked 2 DaemonSet(s) in 2 input(s): 0 complete, 0 would be patched, 2 invalid; \
         0 other object(s) passed over\n"
    );

    let (report, _) = check_json(&[
        "tests/check/invalid-selector.yaml",
        "tests/check/invalid-restart-policy.yaml",
    ]);
    let selector = result(&report, "fluent-bit");
    assert_eq!(selector["status"], "invalid");
    assert_eq!(
        selector["message"],
        "DaemonSet.apps \"fluent-bit\" is invalid: spec.template.metadata.labels: Invalid value: \
         {\"app\":\"fluentbit\"}: `selector` does not match template `labels`"
    );
    assert_eq!(
        selector["violations"],
        json!([{
            "field": "spec.template.metadata.labels",
            "type": "FieldValueInvalid",
            "message": "Invalid value: {\"app\":\"fluentbit\"}: `selector` does not match template `labels`",
        }])
    );
    assert_eq!(selector["patch"], json!([]));
    assert_eq!(selector["changes"], json!([]));
    let restart = result(&report, "disk-cleaner");
    assert_eq!(
        restart["message"],
        "DaemonSet.apps \"disk-cleaner\" is invalid: spec.template.spec.restartPolicy: \
         Unsupported value: \"Never\": supported values: \"Always\""
    );
    assert_eq!(restart["violations"][0]["type"], "FieldValueNotSupported");

    // The data formats keep stdout for data: the reasons go to stderr.
    let patch = run(&[
        "check",
        "--output",
        "patch",
        "tests/check/invalid-restart-policy.yaml",
    ]);
    assert_eq!(patch.code, Some(1));
    assert_eq!(patch.stdout, "");
    assert!(
        patch.stderr.contains(
            "invalid: tests/check/invalid-restart-policy.yaml:1: DaemonSet.apps \"disk-cleaner\" \
             is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Never\": \
             supported values: \"Always\"\n"
        ),
        "{}",
        patch.stderr
    );
}

#[test]
fn an_apiversion_that_never_served_daemonsets_is_unsupported_and_exits_1() {
    let out = run(&["check", "tests/check/unsupported.yaml"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let first = out.stdout.lines().next().unwrap();
    assert_eq!(
        first,
        "unsupported tests/check/unsupported.yaml:2 DaemonSet ops/agent (apps/v1beta1)"
    );
    assert!(
        out.stdout
            .contains("apiVersion \"apps/v1beta1\" never served DaemonSets; use apps/v1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(", 1 unsupported;"), "{}", out.stdout);

    let (report, _) = check_json(&["tests/check/unsupported.yaml"]);
    let agent = result(&report, "agent");
    assert_eq!(agent["status"], "unsupported");
    assert_eq!(agent["apiVersion"], "apps/v1beta1");
    assert!(
        agent["message"]
            .as_str()
            .unwrap()
            .starts_with("apiVersion \"apps/v1beta1\" never served DaemonSets"),
        "{agent}"
    );
    assert_eq!(report["summary"]["unsupported"], 1);
    // Unsupported fails the check even when nothing is invalid.
    assert_eq!(report["summary"]["invalid"], 0);
}

// -------------------------------------------------------------------------------------------
// Inputs: streams, lists, JSON, standard input, directories.

#[test]
fn a_helm_template_stream_reports_document_indexes_and_lines() {
    let (report, out) = check_json(&["tests/check/helm-template.yaml"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    // ServiceAccount 1, ConfigMap 2 (whose block scalar holds a `---` line), an empty document
    // (not counted), Service 3, DaemonSet 4, an empty document, DaemonSet 5, Pod 6.
    let found: Vec<Value> = results(&report)
        .iter()
        .map(|r| json!([r["document"], r["line"], r["item"], r["name"], r["status"]]))
        .collect();
    assert_eq!(
        found,
        vec![
            json!([4, 37, null, "node-agent", "incomplete"]),
            json!([5, 63, null, "node-agent-debug", "invalid"]),
        ]
    );
    assert_eq!(
        counts(&report),
        json!({ "files": 1, "daemonSets": 2, "complete": 0, "incomplete": 1, "invalid": 1,
                "unsupported": 0, "skipped": 4, "errors": 0, "exitCode": 1 })
    );
    let agent = result(&report, "node-agent");
    assert_eq!(agent["namespace"], "agents");
    // hostNetwork: the seventh toleration; a request without a limit gets the default limit.
    let changes: Vec<&str> = agent["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"].as_str().unwrap())
        .collect();
    assert!(
        changes.contains(
            &"container \"agent\": set cpu limit 500m (it had a request of 100m but no limit)"
        ),
        "{changes:?}"
    );
    let added: Vec<&str> = agent["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "TolerationAdded")
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(added.len(), 7, "{added:?}");
    assert_eq!(
        added[6],
        "node.kubernetes.io/network-unavailable:NoSchedule"
    );

    let text = run(&["check", "tests/check/helm-template.yaml"]);
    assert!(
        text.stdout.contains(
            "incomplete  tests/check/helm-template.yaml:37 DaemonSet agents/node-agent (apps/v1)\n"
        ) && text.stdout.contains(
            "invalid     tests/check/helm-template.yaml:63 DaemonSet agents/node-agent-debug (apps/v1)\n    \
             - spec.template.metadata.labels: Invalid value: {\"app.kubernetes.io/name\":\"node-agent\"}: \
             `selector` does not match template `labels`\n"
        ) && text.stdout.ends_with(
            "checked 2 DaemonSet(s) in 1 input(s): 0 complete, 1 would be patched, 1 invalid; \
             4 other object(s) passed over\n"
        ),
        "{}",
        text.stdout
    );
}

#[test]
fn standard_input_is_read_as_dash_alone_or_beside_files() {
    let stream = std::fs::read(manifest_dir().join("tests/check/helm-template.yaml")).unwrap();
    let out = run_stdin(&["check", "--output", "json", "-"], stream.clone());
    assert_eq!(out.code, Some(1), "{out:?}");
    let report = out.json();
    let found: Vec<Value> = results(&report)
        .iter()
        .map(|r| json!([r["file"], r["document"], r["line"], r["name"]]))
        .collect();
    assert_eq!(
        found,
        vec![
            json!(["-", 4, 37, "node-agent"]),
            json!(["-", 5, 63, "node-agent-debug"]),
        ]
    );

    // JSON on standard input, between two files: each input named as given, in order.
    let object = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": "piped", "namespace": "ci" },
        "spec": {
            "selector": { "matchLabels": { "app": "piped" } },
            "template": {
                "metadata": { "labels": { "app": "piped" } },
                "spec": { "containers": [{ "name": "c", "image": "c:1" }] },
            },
        },
    });
    let out = run_stdin(
        &[
            "check",
            "--output",
            "json",
            "tests/check/complete.yaml",
            "-",
            "tests/check/incomplete.yaml",
        ],
        serde_json::to_vec(&object).unwrap(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let report = out.json();
    let found: Vec<Value> = results(&report)
        .iter()
        .map(|r| json!([r["file"], r["line"], r["name"], r["status"]]))
        .collect();
    assert_eq!(
        found,
        vec![
            json!(["tests/check/complete.yaml", 2, "fluent-bit", "complete"]),
            json!(["-", 1, "piped", "incomplete"]),
            json!([
                "tests/check/incomplete.yaml",
                2,
                "node-exporter",
                "incomplete"
            ]),
        ]
    );
    assert_eq!(report["summary"]["files"], 3);
}

#[test]
fn kind_list_items_are_judged_with_their_index_in_yaml_and_json() {
    let (report, out) = check_json(&["tests/check/list.yaml", "tests/check/list.json"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let found: Vec<Value> = results(&report)
        .iter()
        .map(|r| {
            json!([
                r["file"],
                r["document"],
                r["line"],
                r["item"],
                r["name"],
                r["apiVersion"],
                r["status"]
            ])
        })
        .collect();
    assert_eq!(
        found,
        vec![
            json!([
                "tests/check/list.yaml",
                1,
                2,
                1,
                "agent",
                "apps/v1",
                "incomplete"
            ]),
            json!([
                "tests/check/list.yaml",
                1,
                2,
                2,
                "broken",
                "apps/v1",
                "invalid"
            ]),
            json!([
                "tests/check/list.yaml",
                1,
                2,
                3,
                "legacy",
                "extensions/v1beta1",
                "incomplete"
            ]),
            json!([
                "tests/check/list.json",
                1,
                1,
                0,
                "kube-proxy",
                "apps/v1",
                "incomplete"
            ]),
            json!([
                "tests/check/list.json",
                1,
                1,
                2,
                "csi-node",
                "apps/v1",
                "invalid"
            ]),
        ]
    );
    // The ConfigMap and the Service are passed over.
    assert_eq!(report["summary"]["skipped"], 2);
    assert_eq!(
        result(&report, "broken")["message"],
        "DaemonSet.apps \"broken\" is invalid: spec.selector: Invalid value: {}: empty selector is invalid for daemonset"
    );
    assert_eq!(
        result(&report, "csi-node")["message"],
        "DaemonSet.apps \"csi-node\" is invalid: spec.template.spec.restartPolicy: Unsupported \
         value: \"OnFailure\": supported values: \"Always\""
    );
    // extensions/v1beta1: judged as apps/v1 with its selector defaulted, and says so.
    let legacy = result(&report, "legacy");
    assert!(
        legacy["note"]
            .as_str()
            .is_some_and(|n| n.contains("extensions/v1beta1") && n.contains("selector")),
        "{legacy}"
    );
    assert_eq!(result(&report, "agent")["note"], Value::Null);
    // The JSON list's hostNetwork DaemonSet gets network-unavailable too.
    let proxy = result(&report, "kube-proxy");
    assert_eq!(
        proxy["patch"][0],
        json!({
            "op": "add",
            "path": "/spec/template/spec/tolerations",
            "value": standard_tolerations().into_iter()
                .chain([toleration("node.kubernetes.io/network-unavailable", "NoSchedule")])
                .collect::<Vec<_>>(),
        })
    );

    let text = run(&["check", "tests/check/list.yaml"]);
    assert!(
        text.stdout.contains(
            "incomplete  tests/check/list.yaml:2 (items[1]) DaemonSet ops/agent (apps/v1)\n"
        ) && text
            .stdout
            .contains("invalid     tests/check/list.yaml:2 (items[2]) DaemonSet ops/broken (apps/v1)\n")
            && text.stdout.contains(
                "incomplete  tests/check/list.yaml:2 (items[3]) DaemonSet ops/legacy (extensions/v1beta1)\n    note: "
            ),
        "{}",
        text.stdout
    );
}

#[test]
fn directories_are_walked_for_manifests_skipping_hidden_directories_and_other_files() {
    let (report, out) = check_json(&["tests/check/tree"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let found: Vec<Value> = results(&report)
        .iter()
        .map(|r| json!([r["file"], r["name"], r["status"]]))
        .collect();
    // In name order; notes.txt, README.md, daemonset.yaml.orig, .github/ and .hidden-overlay/
    // would each add an invalid DaemonSet, an error or an object passed over.
    assert_eq!(
        found,
        vec![
            json!([
                "tests/check/tree/apps/agent/daemonset.json",
                "json-agent",
                "incomplete"
            ]),
            json!([
                "tests/check/tree/apps/agent/invalid.yml",
                "yml-agent",
                "invalid"
            ]),
            json!([
                "tests/check/tree/base/daemonset.yaml",
                "base-agent",
                "incomplete"
            ]),
        ]
    );
    assert_eq!(
        counts(&report),
        json!({ "files": 4, "daemonSets": 3, "complete": 0, "incomplete": 2, "invalid": 1,
                "unsupported": 0, "skipped": 1, "errors": 0, "exitCode": 1 })
    );

    // A file named on the command line is read whatever its name.
    let (report, _) = check_json(&["tests/check/tree/apps/agent/notes.txt"]);
    assert_eq!(
        statuses(&report),
        pairs(&[("from-a-txt-file", "invalid")]),
        "{report:#}"
    );
}

// -------------------------------------------------------------------------------------------
// Inputs that cannot be read: exit 2, and everything else is still checked.

#[test]
fn a_nonexistent_path_exits_2_and_the_other_inputs_are_still_checked() {
    let out = run(&[
        "check",
        "tests/check/does-not-exist.yaml",
        "tests/check/complete.yaml",
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stdout
            .starts_with("error       tests/check/does-not-exist.yaml: No such file or directory"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("complete    tests/check/complete.yaml:2 DaemonSet logging/fluent-bit"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("; 1 input error(s)\n"),
        "{}",
        out.stdout
    );

    let (report, _) = check_json(&[
        "tests/check/does-not-exist.yaml",
        "tests/check/complete.yaml",
    ]);
    assert_eq!(report["errors"].as_array().unwrap().len(), 1, "{report:#}");
    let error = &report["errors"][0];
    assert_eq!(error["file"], "tests/check/does-not-exist.yaml");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "{error}"
    );
    assert_eq!(report["summary"]["errors"], 1);
    assert_eq!(report["summary"]["complete"], 1);
    // An input error outranks everything, --require-mutated or not.
    let out = run(&[
        "check",
        "--require-mutated",
        "tests/check/does-not-exist.yaml",
    ]);
    assert_eq!(out.code, Some(2));
}

/// A directory holding a good manifest, a file with bytes that are not UTF-8, a symbolic link to
/// nothing, and (when not running as root, which reads everything) a file without read
/// permission.
fn unreadable_tree() -> (tempfile::TempDir, bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        manifest_dir().join("tests/check/incomplete.yaml"),
        d.join("a-good.yaml"),
    )
    .unwrap();
    std::fs::write(
        d.join("b-latin1.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/nonexistent/daemonset.yaml", d.join("c-dangling.yaml")).unwrap();
    let locked = d.join("d-locked.yaml");
    std::fs::copy(manifest_dir().join("tests/check/complete.yaml"), &locked).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked_is_unreadable = std::fs::read(&locked).is_err();
    if !locked_is_unreadable {
        std::fs::remove_file(&locked).unwrap();
    }
    (dir, locked_is_unreadable)
}

#[test]
fn unreadable_and_non_utf8_files_in_a_directory_exit_2_and_the_rest_is_checked() {
    let (dir, locked) = unreadable_tree();
    let path = dir.path().to_str().unwrap();
    let (report, out) = check_json(&[path]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let errors: Vec<String> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = vec![
        format!("{path}/b-latin1.yaml"),
        format!("{path}/c-dangling.yaml"),
    ];
    if locked {
        expected.push(format!("{path}/d-locked.yaml"));
    }
    assert_eq!(errors, expected, "{report:#}");
    for error in report["errors"].as_array().unwrap() {
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    assert!(
        report["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "{report:#}"
    );
    assert_eq!(statuses(&report), pairs(&[("node-exporter", "incomplete")]));
    assert_eq!(
        report["summary"]["errors"].as_u64(),
        Some(expected.len() as u64)
    );

    let text = run(&["check", path]);
    assert_eq!(text.code, Some(2));
    assert!(
        text.stdout
            .contains(&format!("error       {path}/b-latin1.yaml")),
        "{}",
        text.stdout
    );
}

#[test]
fn invalid_yaml_is_reported_with_file_line_and_column_and_exits_2() {
    let out = run(&["check", "tests/check/invalid-yaml.yaml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("error       tests/check/invalid-yaml.yaml:13:5: ")
            && first.contains("flow mapping"),
        "{first}"
    );

    let (report, _) = check_json(&["tests/check/invalid-yaml.yaml"]);
    let error = &report["errors"][0];
    assert_eq!(error["file"], "tests/check/invalid-yaml.yaml");
    assert_eq!((&error["line"], &error["column"]), (&json!(13), &json!(5)));
    assert!(
        !error["message"].as_str().unwrap().contains('\n'),
        "{error}"
    );
    // The ConfigMap before the error was read and passed over.
    assert_eq!(
        counts(&report),
        json!({ "files": 1, "daemonSets": 0, "complete": 0, "incomplete": 0, "invalid": 0,
                "unsupported": 0, "skipped": 1, "errors": 1, "exitCode": 2 })
    );

    // On standard input, in the data formats: the position on stderr, stdout kept for data.
    let tabbed =
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: tabbed\nspec:\n\tselector: {}\n";
    for format in ["patch", "yaml"] {
        let out = run_stdin(&["check", "--output", format, "-"], tabbed);
        assert_eq!(out.code, Some(2), "{format}: {out:?}");
        assert_eq!(out.stdout, "", "{format}");
        assert!(
            out.stderr.starts_with("error: -:6:2: "),
            "{format}: {}",
            out.stderr
        );
    }
}

#[test]
fn empty_input_is_zero_daemonsets_and_exits_0() {
    let empty_file = tempfile::NamedTempFile::new().unwrap();
    let empty_path = empty_file.path().to_str().unwrap();
    for (what, args, stdin) in [
        ("empty stdin", vec!["check", "-"], ""),
        (
            "comments and separators only",
            vec!["check", "--require-mutated", "-"],
            "# nothing rendered\n---\n# Source: chart/templates/disabled.yaml\n---\n...\n",
        ),
        ("an empty file", vec!["check", empty_path], ""),
    ] {
        let out = run_stdin(&args, stdin);
        assert_eq!(out.code, Some(0), "{what}: {out:?}");
        assert_eq!(
            out.stdout,
            "checked 0 DaemonSet(s) in 1 input(s): 0 complete, 0 would be patched, 0 invalid; \
             0 other object(s) passed over\n",
            "{what}"
        );
    }
    let out = run_stdin(&["check", "--output", "json", "-"], "");
    assert_eq!(out.code, Some(0));
    let report = out.json();
    assert_eq!(report["results"], json!([]));
    assert_eq!(report["errors"], json!([]));
    assert_eq!(
        counts(&report),
        json!({ "files": 1, "daemonSets": 0, "complete": 0, "incomplete": 0, "invalid": 0,
                "unsupported": 0, "skipped": 0, "errors": 0, "exitCode": 0 })
    );
    for format in ["patch", "yaml"] {
        let out = run_stdin(&["check", "--output", format, "-"], "");
        assert_eq!(out.code, Some(0), "{format}");
        assert_eq!(out.stdout, "", "{format}");
        assert!(
            out.stderr.contains("checked 0 DaemonSet(s)"),
            "{format}: {}",
            out.stderr
        );
    }
}

/// How many DaemonSets the large stream holds.
const HUGE_COUNT: usize = 2_000;

/// One `helm template`-like document of about 10.5 kB: a DaemonSet carrying its agent's
/// configuration in an annotation. Every 100th has `restartPolicy: Never`.
fn huge_document(i: usize, config: &str) -> String {
    let restart = if i % 100 == 7 { "Never" } else { "Always" };
    format!(
        "---\n# Source: node-agents/templates/daemonset-{i}.yaml\napiVersion: apps/v1\n\
         kind: DaemonSet\nmetadata:\n  name: agent-{i:04}\n  namespace: ns-{ns}\n  annotations:\n    \
         agent.example.com/config: |\n{config}spec:\n  selector:\n    matchLabels:\n      \
         app.kubernetes.io/instance: agent-{i}\n  template:\n    metadata:\n      labels:\n        \
         app.kubernetes.io/instance: agent-{i}\n    spec:\n      restartPolicy: {restart}\n      \
         containers:\n        - name: agent\n          image: registry.example.com/agent:{i}\n          \
         args: [\"--config=/etc/agent/agent.conf\"]\n",
        ns = i % 7
    )
}

#[test]
fn a_twenty_megabyte_stream_of_two_thousand_daemonsets_on_stdin_is_checked_in_full() {
    let config: String = (0..160)
        .map(|k| {
            format!("      [input.tail-{k:03}]\n      path = /var/log/containers/*-{k:03}.log\n")
        })
        .collect();
    let mut stream = String::new();
    let mut lines = Vec::new();
    let mut line = 1;
    for i in 0..HUGE_COUNT {
        let document = huge_document(i, &config);
        // The content starts after `---` and the `# Source:` comment.
        lines.push(line + 2);
        line += document.matches('\n').count();
        stream.push_str(&document);
    }
    assert!(stream.len() > 20_000_000, "{} bytes", stream.len());

    // How fast is for the README's measurements, not for a test on a shared machine; the
    // timeout only catches a hang.
    let out = run_cli(
        cli(&["check", "--output", "json", "-"])
            .write_stdin(stream.into_bytes())
            .timeout(Duration::from_secs(300)),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let report = out.json();
    let results = results(&report);
    assert_eq!(results.len(), HUGE_COUNT);
    for (i, result) in results.iter().enumerate() {
        let expected_status = if i % 100 == 7 {
            "invalid"
        } else {
            "incomplete"
        };
        assert_eq!(
            json!([
                result["name"],
                result["document"],
                result["line"],
                result["status"]
            ]),
            json!([format!("agent-{i:04}"), i + 1, lines[i], expected_status]),
            "DaemonSet {i}"
        );
    }
    assert_eq!(
        counts(&report),
        json!({ "files": 1, "daemonSets": 2000, "complete": 0, "incomplete": 1980, "invalid": 20,
                "unsupported": 0, "skipped": 0, "errors": 0, "exitCode": 1 })
    );
}

// -------------------------------------------------------------------------------------------
// The policy file.

#[test]
fn config_changes_the_defaults_and_a_bad_config_exits_2() {
    let out = run(&[
        "check",
        "--config",
        "tests/check/policy-cpu-1.yaml",
        "tests/check/incomplete.yaml",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(
            "    + container \"node-exporter\": set cpu limit 1 and request 250m (it had neither)\n    \
             + container \"node-exporter\": set memory limit 1Gi and request 128Mi (it had neither)\n"
        ),
        "{}",
        out.stdout
    );
    // The environment variable is the flag's twin.
    let out = run_cli(
        cli(&["check", "--output", "patch", "tests/check/incomplete.yaml"])
            .env("DAEMONSET_WEBHOOK_CONFIG", "tests/check/policy-cpu-1.yaml"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let line: Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    assert_eq!(
        line["patch"][1],
        json!({
            "op": "add",
            "path": "/spec/template/spec/containers/0/resources",
            "value": {
                "limits": { "cpu": "1", "memory": "1Gi" },
                "requests": { "cpu": "250m", "memory": "128Mi" },
            },
        })
    );
    // What already has resources keeps them: the complete DaemonSet stays complete.
    let (report, _) = check_json(&[
        "--config",
        "tests/check/policy-cpu-1.yaml",
        "tests/check/complete.yaml",
    ]);
    assert_eq!(statuses(&report), pairs(&[("fluent-bit", "complete")]));

    for (config, message) in [
        (
            "tests/check/policy-unknown-field.yaml",
            "error: policy file tests/check/policy-unknown-field.yaml: line 4 column 3: unknown field `defaultRequests`",
        ),
        (
            "tests/check/policy-bad-quantity.yaml",
            "error: policy file tests/check/policy-bad-quantity.yaml: line 3: resources.default.cpu: \"one-core\": quantities must match",
        ),
        (
            "tests/check/no-such-policy.yaml",
            "error: policy file tests/check/no-such-policy.yaml: No such file or directory",
        ),
    ] {
        for format in ["text", "json"] {
            let out = run(&[
                "check",
                "--output",
                format,
                "--config",
                config,
                "tests/check/complete.yaml",
            ]);
            assert_eq!(out.code, Some(2), "{config} {format}: {out:?}");
            assert_eq!(out.stdout, "", "{config} {format}: nothing is checked");
            assert!(
                out.stderr.starts_with(message),
                "{config}: {:?} does not start with {message:?}",
                out.stderr
            );
        }
    }
}

// -------------------------------------------------------------------------------------------
// The output formats.

#[test]
fn the_json_report_has_the_documented_schema_and_exit_code() {
    let (report, out) = check_json(&[
        "tests/check/complete.yaml",
        "tests/check/incomplete.yaml",
        "tests/check/invalid-selector.yaml",
        "tests/check/unsupported.yaml",
        "tests/check/list.yaml",
        "tests/check/invalid-yaml.yaml",
    ]);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stderr, "", "the report says it all");
    assert_eq!(report["apiVersion"], "daemonset-webhook.io/v1");
    assert_eq!(report["kind"], "CheckReport");
    for key in ["results", "errors", "summary"] {
        assert!(report.get(key).is_some(), "no {key}: {report:#}");
    }
    let results = results(&report);
    assert_eq!(results.len(), 7);
    for r in results {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "file",
            "document",
            "line",
            "item",
            "apiVersion",
            "kind",
            "namespace",
            "name",
            "status",
            "note",
            "message",
            "violations",
            "changes",
            "patch",
        ] {
            assert!(keys.contains(key), "no {key} in {r:#}");
        }
        assert!(r["file"].is_string() && r["document"].is_u64() && r["line"].is_u64());
        assert!(r["item"].is_null() || r["item"].is_u64(), "{r}");
        assert_eq!(r["kind"], "DaemonSet");
        let status = r["status"].as_str().unwrap();
        assert!(
            ["complete", "incomplete", "invalid", "unsupported"].contains(&status),
            "{r}"
        );
        // What each status carries, and what it does not.
        let patch = r["patch"].as_array().expect("patch is an array");
        let changes = r["changes"].as_array().expect("changes is an array");
        let violations = r["violations"].as_array().expect("violations is an array");
        match status {
            "complete" => {
                assert!(
                    patch.is_empty() && changes.is_empty() && violations.is_empty(),
                    "{r}"
                );
                assert!(r["message"].is_null(), "{r}");
            }
            "incomplete" => {
                assert!(
                    !patch.is_empty() && !changes.is_empty() && violations.is_empty(),
                    "{r}"
                );
                assert!(r["message"].is_null(), "{r}");
                for change in changes {
                    assert!(
                        [
                            "TolerationAdded",
                            "TolerationUpdated",
                            "LimitAdded",
                            "LimitAndRequestAdded"
                        ]
                        .contains(&change["kind"].as_str().unwrap()),
                        "{change}"
                    );
                    assert!(change["subject"].is_string() && change["message"].is_string());
                }
                for op in patch {
                    assert!(op["op"].is_string() && op["path"].is_string(), "{op}");
                }
            }
            "invalid" => {
                assert!(
                    patch.is_empty() && changes.is_empty() && !violations.is_empty(),
                    "{r}"
                );
                let message = r["message"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("DaemonSet.apps {} is invalid: ", r["name"])),
                    "{message}"
                );
                for v in violations {
                    assert!(v["field"].is_string() && v["message"].is_string(), "{v}");
                    assert!(v["type"].as_str().unwrap().starts_with("FieldValue"), "{v}");
                }
            }
            _ => assert!(r["message"].is_string() && patch.is_empty(), "{r}"),
        }
    }
    let error = &report["errors"][0];
    assert_eq!(
        json!([error["file"], error["line"], error["column"]]),
        json!(["tests/check/invalid-yaml.yaml", 13, 5])
    );
    assert!(error["message"].is_string());
    // The summary counts what results and errors hold.
    let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
    assert_eq!(
        counts(&report),
        json!({ "files": 6, "daemonSets": 7, "complete": count("complete"),
                "incomplete": count("incomplete"), "invalid": count("invalid"),
                "unsupported": count("unsupported"), "skipped": 2, "errors": 1, "exitCode": 2 })
    );
    assert_eq!(
        (
            count("complete"),
            count("incomplete"),
            count("invalid"),
            count("unsupported")
        ),
        (1, 3, 2, 1)
    );

    // exitCode follows the worst finding, and --require-mutated.
    for (args, code) in [
        (&["tests/check/complete.yaml"][..], 0),
        (&["tests/check/incomplete.yaml"][..], 0),
        (&["--require-mutated", "tests/check/incomplete.yaml"][..], 1),
        (
            &["tests/check/complete.yaml", "tests/check/unsupported.yaml"][..],
            1,
        ),
    ] {
        let (report, out) = check_json(args);
        assert_eq!(out.code, Some(code), "{args:?}");
        assert_eq!(report["summary"]["exitCode"], code, "{args:?}");
    }
}

/// The object at `document` (1-based, empty documents not counted) and `item` of `file`.
fn object_at(docs: &[Value], document: &Value, item: &Value) -> Value {
    let doc = &docs[document.as_u64().unwrap() as usize - 1];
    match item.as_u64() {
        Some(i) => doc["items"][i as usize].clone(),
        None => doc.clone(),
    }
}

fn apply(object: &Value, patch: &Value) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone())
        .unwrap_or_else(|e| panic!("not an RFC 6902 patch ({e}): {patch}"));
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply ({e}): {patch:?}"));
    patched
}

#[test]
fn patch_lines_apply_to_the_input_and_the_result_checks_complete() {
    let inputs = [
        "tests/check/incomplete.yaml",
        "tests/check/complete.yaml",
        "tests/check/helm-template.yaml",
        "tests/check/list.yaml",
        "tests/check/roundtrip.yaml",
        "tests/check/tree/apps/agent/daemonset.json",
    ];
    let mut args = vec!["check", "--output", "patch"];
    args.extend(inputs);
    let out = run(&args);
    assert_eq!(
        out.code,
        Some(1),
        "invalid DaemonSets in list.yaml and helm: {out:?}"
    );
    // The invalid ones are said on stderr, with the summary.
    for expected in [
        "invalid: tests/check/helm-template.yaml:63: DaemonSet.apps \"node-agent-debug\" is invalid",
        "invalid: tests/check/list.yaml:2 (items[2]): DaemonSet.apps \"broken\" is invalid",
        "checked 11 DaemonSet(s) in 6 input(s): 1 complete, 8 would be patched, 2 invalid; 8 other object(s) passed over\n",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} not in {}",
            out.stderr
        );
    }

    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let located: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!([
                l["file"],
                l["document"],
                l["line"],
                l["item"],
                l["namespace"],
                l["name"]
            ])
        })
        .collect();
    assert_eq!(
        located,
        vec![
            json!([
                "tests/check/incomplete.yaml",
                1,
                2,
                null,
                "monitoring",
                "node-exporter"
            ]),
            json!([
                "tests/check/helm-template.yaml",
                4,
                37,
                null,
                "agents",
                "node-agent"
            ]),
            json!(["tests/check/list.yaml", 1, 2, 1, "ops", "agent"]),
            json!(["tests/check/list.yaml", 1, 2, 3, "ops", "legacy"]),
            json!([
                "tests/check/roundtrip.yaml",
                2,
                21,
                null,
                "agents",
                "future-agent"
            ]),
            json!([
                "tests/check/roundtrip.yaml",
                3,
                71,
                0,
                "agents",
                "in-a-list"
            ]),
            json!([
                "tests/check/roundtrip.yaml",
                4,
                113,
                null,
                "agents",
                "legacy-agent"
            ]),
            json!([
                "tests/check/tree/apps/agent/daemonset.json",
                1,
                1,
                null,
                "apps",
                "json-agent"
            ]),
        ]
    );

    // Each patch applies to the object as the input holds it; the results ask for nothing more.
    let mut patched = Vec::new();
    for line in &lines {
        let docs = file_documents(line["file"].as_str().unwrap());
        let object = object_at(&docs, &line["document"], &line["item"]);
        assert_eq!(object["metadata"]["name"], line["name"]);
        let after = apply(&object, &line["patch"]);
        assert_ne!(after, object, "{line}");
        patched.push(serde_json::to_string(&after).unwrap());
    }
    // The tolerationSeconds of a matching toleration is dropped, the user's own kept.
    let in_a_list: Value = serde_json::from_str(&patched[5]).unwrap();
    let tolerations = in_a_list["spec"]["template"]["spec"]["tolerations"]
        .as_array()
        .unwrap();
    assert_eq!(
        tolerations[0],
        toleration("node.kubernetes.io/not-ready", "NoExecute")
    );
    assert_eq!(tolerations[1]["key"], "dedicated");
    assert_eq!(tolerations.len(), 7);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("patched.yaml");
    std::fs::write(&file, patched.join("\n---\n")).unwrap();
    let (report, out) = check_json(&["--require-mutated", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{report:#}");
    assert_eq!(report["summary"]["complete"], lines.len());
    assert_eq!(report["summary"]["daemonSets"], lines.len());
}

#[test]
fn yaml_output_round_trips_every_document_and_rechecks_complete() {
    let inputs = [
        "tests/check/roundtrip.yaml",
        "tests/check/incomplete.yaml",
        "tests/check/complete.yaml",
        "tests/check/tree/base",
    ];
    let mut args = vec!["check", "--output", "yaml"];
    args.extend(inputs);
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("checked 6 DaemonSet(s) in 5 input(s): 1 complete, 5 would be patched, 0 invalid; 4 other object(s) passed over"),
        "{}",
        out.stderr
    );
    // `---` before each document, `# Source:` before each input's first.
    let sources: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# Source: "))
        .collect();
    assert_eq!(
        sources,
        [
            "tests/check/roundtrip.yaml",
            "tests/check/incomplete.yaml",
            "tests/check/complete.yaml",
            "tests/check/tree/base/daemonset.yaml",
            "tests/check/tree/base/kustomization.yml",
        ]
    );
    assert!(
        out.stdout
            .starts_with("---\n# Source: tests/check/roundtrip.yaml\n")
    );
    let written = documents(&out.stdout);
    assert_eq!(
        out.stdout.lines().filter(|l| *l == "---").count(),
        written.len()
    );

    // What should come out: every input document, with the patches `--output patch` gives.
    let mut expected = Vec::new();
    for input in [
        "tests/check/roundtrip.yaml",
        "tests/check/incomplete.yaml",
        "tests/check/complete.yaml",
        "tests/check/tree/base/daemonset.yaml",
        "tests/check/tree/base/kustomization.yml",
    ] {
        let patch_lines = run(&["check", "--output", "patch", input]);
        let mut docs = file_documents(input);
        for line in patch_lines.stdout.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let index = line["document"].as_u64().unwrap() as usize - 1;
            match line["item"].as_u64() {
                Some(i) => {
                    let item = &mut docs[index]["items"][i as usize];
                    *item = apply(item, &line["patch"]);
                }
                None => docs[index] = apply(&docs[index], &line["patch"]),
            }
        }
        expected.extend(docs);
    }
    assert_eq!(written.len(), expected.len());
    for (i, (written, expected)) in written.iter().zip(&expected).enumerate() {
        assert_eq!(written, expected, "document {i}");
    }

    // What no schema knows, and YAML 1.1's traps, came through.
    let configmap = &written[0];
    assert_eq!(configmap["data"]["mode"], "0644");
    assert_eq!(configmap["data"]["enabled"], "yes");
    assert_eq!(configmap["data"]["switch"], "on");
    assert_eq!(configmap["data"]["version"], "1.10");
    assert_eq!(configmap["data"]["tilde"], "~");
    assert_eq!(
        configmap["data"]["start.sh"],
        "#!/bin/sh\nset -eu\nexec /agent --config \"$CONFIG\"   \n"
    );
    let agent = &written[1];
    assert_eq!(
        agent["metadata"]["futureMetadataField"],
        json!({ "owner": "team-x" })
    );
    assert_eq!(
        agent["spec"]["futureField"],
        json!({ "enabled": true, "mode": "fast" })
    );
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["futurePodField"], json!(["a", "b"]));
    assert_eq!(pod["futureList"], json!([{}, [], null]));
    assert_eq!(pod["volumes"][0]["configMap"]["defaultMode"], 0o755);
    assert_eq!(
        pod["containers"][0]["futureContainerField"],
        json!({ "x": 1 })
    );
    assert_eq!(
        pod["containers"][0]["resources"],
        json!({
            "futureResourcesField": "keep-me",
            "limits": { "cpu": "500m", "memory": "512Mi" },
            "requests": { "cpu": "50m", "memory": "64Mi" },
        })
    );
    assert_eq!(written[2]["items"][1]["stringData"]["token"], "0x1F");
    assert_eq!(written[3]["apiVersion"], "extensions/v1beta1");
    assert!(
        written[3]["spec"].get("selector").is_none(),
        "the object is written as it was, in its own apiVersion"
    );
    assert_eq!(
        written[4]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"],
        true
    );

    // Checked again, it is all complete; written again, the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("written.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let file = file.to_str().unwrap();
    let (report, again) = check_json(&["--require-mutated", file]);
    assert_eq!(again.code, Some(0), "{report:#}");
    assert_eq!(
        counts(&report),
        json!({ "files": 1, "daemonSets": 6, "complete": 6, "incomplete": 0, "invalid": 0,
                "unsupported": 0, "skipped": 4, "errors": 0, "exitCode": 0 })
    );
    let rewritten = run(&["check", "--output", "yaml", file]);
    let without_sources: String = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("# Source: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(rewritten.stdout, without_sources);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let args = [
        "tests/check/complete.yaml",
        "tests/check/incomplete.yaml",
        "tests/check/invalid-selector.yaml",
        "tests/check/unsupported.yaml",
        "tests/check/does-not-exist.yaml",
    ];
    let with = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut all = vec!["check"];
        all.extend_from_slice(extra);
        all.extend(args);
        let mut command = cli(&all);
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        run_cli(&mut command)
    };
    let plain = with(&["--color", "never"], None);
    assert_eq!(plain.code, Some(2));
    assert!(!plain.stdout.contains('\x1b'), "{}", plain.stdout);
    // Standard output is a pipe here: auto means none.
    assert_eq!(with(&[], None).stdout, plain.stdout);
    assert_eq!(with(&["--color", "auto"], None).stdout, plain.stdout);

    let coloured = with(&["--color", "always"], Some(("NO_COLOR", "1")));
    assert_eq!(coloured.code, Some(2));
    assert_eq!(strip_ansi(&coloured.stdout), plain.stdout);
    for tag in ["complete", "incomplete", "invalid", "unsupported", "error"] {
        assert!(
            coloured
                .stdout
                .lines()
                .any(|l| l.starts_with("\x1b[") && strip_ansi(l).starts_with(tag)),
            "no coloured {tag} line in {:?}",
            coloured.stdout
        );
    }
    // Different statuses, different colours.
    let colour_of = |tag: &str| {
        let line = coloured
            .stdout
            .lines()
            .find(|l| strip_ansi(l).starts_with(&format!("{tag} ")))
            .unwrap();
        line[..line.find(tag).unwrap()].to_owned()
    };
    assert_ne!(colour_of("complete"), colour_of("invalid"));
    assert_ne!(colour_of("incomplete"), colour_of("complete"));

    // Never in the data formats.
    let json = with(&["--color", "always", "--output", "json"], None);
    assert!(!json.stdout.contains('\x1b'));
    json.json();
}

// -------------------------------------------------------------------------------------------
// review: exactly what the server would answer.

enum Expect {
    Patched,
    Untouched,
    Denied(&'static [&'static str]),
}

/// The same expectations as tests/e2e.rs has for the server.
const FIXTURES: &[(&str, Expect)] = &[
    ("create-plain.json", Expect::Patched),
    ("create-complete.json", Expect::Untouched),
    ("create-host-network.json", Expect::Patched),
    (
        "create-selector-mismatch.json",
        Expect::Denied(&[
            r#"spec.template.metadata.labels: Invalid value: {"app":"fluentbit"}"#,
            "`selector` does not match template `labels`",
        ]),
    ),
    (
        "create-empty-selector.json",
        Expect::Denied(&["spec.selector", "empty selector is invalid for daemonset"]),
    ),
    (
        "create-restart-never.json",
        Expect::Denied(&[
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
        ]),
    ),
    (
        "create-several-violations.json",
        Expect::Denied(&[
            "is invalid: [spec.template.metadata.labels: ",
            "`selector` does not match template `labels`, ",
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"]"#,
        ]),
    ),
    ("update-plain.json", Expect::Patched),
    ("create-dry-run.json", Expect::Patched),
    ("create-deployment.json", Expect::Untouched),
    ("delete.json", Expect::Untouched),
    (
        "create-invalid-quantity.json",
        Expect::Denied(&[
            r#"spec.template.spec.containers[0].resources.limits[cpu]: Invalid value: "lots""#,
        ]),
    ),
    ("create-label-keys-with-slash.json", Expect::Patched),
    ("create-unknown-fields.json", Expect::Patched),
];

fn fixture_files() -> BTreeSet<String> {
    std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect()
}

/// Checks one line of `review` output and returns the AdmissionReview.
fn review_answer(what: &str, out: &CliOutput, request: &Value) -> Value {
    assert!(
        out.stdout.ends_with('\n') && out.stdout.matches('\n').count() == 1,
        "{what}: one line of compact JSON: {:?}",
        out.stdout
    );
    let answer = out.json();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{what}");
    assert_eq!(answer["kind"], "AdmissionReview", "{what}");
    assert_eq!(
        answer["response"]["uid"], request["request"]["uid"],
        "{what}: uid echoed"
    );
    // Byte for byte the server's encoding: compact, in the server's field order.
    assert_eq!(
        out.stdout.trim_end(),
        serde_json::to_string(&answer).unwrap(),
        "{what}"
    );
    answer
}

#[test]
fn review_answers_every_fixture_as_the_e2e_tests_expect_of_the_server() {
    let listed: BTreeSet<String> = FIXTURES.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(listed, fixture_files(), "every fixture has an expectation");

    for (file, expect) in FIXTURES {
        let path = fixtures_dir().join(file);
        let bytes = std::fs::read(&path).unwrap();
        let request: Value = serde_json::from_slice(&bytes).unwrap();
        let by_path = run(&["review", path.to_str().unwrap()]);
        let by_stdin = run_stdin(&["review", "-"], bytes.clone());
        let by_default = run_stdin(&["review"], bytes.clone());
        assert_eq!(by_path.stdout, by_stdin.stdout, "{file}: file and - agree");
        assert_eq!(
            by_path.stdout, by_default.stdout,
            "{file}: - is the default"
        );
        let answer = review_answer(file, &by_path, &request);
        let response = &answer["response"];
        match expect {
            Expect::Patched => {
                assert_eq!(by_path.code, Some(0), "{file}");
                assert_eq!(response["allowed"], true, "{file}");
                assert_eq!(response["patchType"], "JSONPatch", "{file}");
                let patch = common::decode_patch(response).expect("a patch");
                common::apply_patch(&request["request"]["object"], &patch);
                assert!(
                    response["warnings"]
                        .as_array()
                        .is_some_and(|w| !w.is_empty())
                );
            }
            Expect::Untouched => {
                assert_eq!(by_path.code, Some(0), "{file}");
                assert_eq!(response["allowed"], true, "{file}");
                assert!(response.get("patch").is_none(), "{file}: {response}");
            }
            Expect::Denied(substrings) => {
                assert_eq!(by_path.code, Some(1), "{file}");
                assert_eq!(response["allowed"], false, "{file}");
                assert!(response.get("patch").is_none(), "{file}");
                let status = &response["status"];
                assert_eq!(
                    json!([status["code"], status["reason"], status["status"]]),
                    json!([422, "Invalid", "Failure"]),
                    "{file}"
                );
                let message = status["message"].as_str().unwrap();
                let name = request["request"]["name"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("DaemonSet.apps \"{name}\" is invalid: ")),
                    "{file}: {message}"
                );
                for s in *substrings {
                    assert!(message.contains(s), "{file}: {message:?} lacks {s:?}");
                }
            }
        }

        // The validating endpoint: the same decision, never a patch.
        let validate = run(&["review", "--endpoint", "validate", path.to_str().unwrap()]);
        let answer = review_answer(file, &validate, &request);
        let response = &answer["response"];
        let denied = matches!(expect, Expect::Denied(_));
        assert_eq!(validate.code, Some(i32::from(denied)), "{file}");
        assert_eq!(response["allowed"], !denied, "{file}");
        for field in ["patch", "patchType"] {
            assert!(response.get(field).is_none(), "{file}: /validate {field}");
        }
        if denied {
            assert_eq!(
                response["status"],
                review_answer(file, &by_path, &request)["response"]["status"],
                "{file}: both endpoints deny alike"
            );
        }
    }
}

#[test]
fn review_of_a_malformed_request_exits_2_with_a_status() {
    let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#;
    let mut oversized = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"DaemonSet"},"operation":"CREATE","object":{"pad":""#.to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 7 * 1024 * 1024));
    oversized.extend(br#""}}}"#);
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("not JSON", b"{".to_vec(), 400, "BadRequest", "request body is not valid JSON"),
        ("empty", Vec::new(), 400, "BadRequest", "request body is empty"),
        ("v1beta1", v1beta1.to_vec(), 400, "BadRequest", "admissionReviewVersions"),
        (
            "a CREATE without its object",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"DaemonSet"},"operation":"CREATE"}}"#.to_vec(),
            400,
            "BadRequest",
            "request.object is missing",
        ),
        ("over 7 MiB", oversized, 413, "RequestEntityTooLarge", "larger than"),
    ];
    for (what, body, code, reason, message) in cases {
        let out = run_stdin(&["review"], body);
        assert_eq!(out.code, Some(2), "{what}: {out:?}");
        assert!(out.stdout.ends_with('\n'), "{what}");
        let status = out.json();
        assert_eq!(
            json!([
                status["apiVersion"],
                status["kind"],
                status["status"],
                status["code"],
                status["reason"]
            ]),
            json!(["v1", "Status", "Failure", code, reason]),
            "{what}: {status}"
        );
        let text = status["message"].as_str().unwrap();
        assert!(text.contains(message), "{what}: {text}");
        assert!(
            out.stderr.contains(text),
            "{what}: the error on stderr too: {}",
            out.stderr
        );
    }

    let missing = run(&["review", "tests/fixtures/no-such-review.json"]);
    assert_eq!(missing.code, Some(2));
    assert_eq!(missing.stdout, "");
    assert!(
        missing
            .stderr
            .contains("error: tests/fixtures/no-such-review.json: No such file or directory"),
        "{}",
        missing.stderr
    );
}

#[test]
fn review_reads_the_same_policy_file_as_serve() {
    let out = run(&[
        "review",
        "--config",
        "tests/check/policy-cpu-1.yaml",
        "tests/fixtures/create-plain.json",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let answer = out.json();
    let patch = common::decode_patch(&answer["response"]).unwrap();
    let patch = serde_json::to_value(&patch).unwrap();
    assert!(
        patch.as_array().unwrap().contains(&json!({
            "op": "add",
            "path": "/spec/template/spec/containers/0/resources",
            "value": {
                "limits": { "cpu": "1", "memory": "1Gi" },
                "requests": { "cpu": "250m", "memory": "128Mi" },
            },
        })),
        "{patch:#}"
    );
    let bad = run(&[
        "review",
        "--config",
        "tests/check/policy-unknown-field.yaml",
        "tests/fixtures/create-plain.json",
    ]);
    assert_eq!(bad.code, Some(2));
    assert_eq!(bad.stdout, "");
    assert!(
        bad.stderr.contains("unknown field `defaultRequests`"),
        "{}",
        bad.stderr
    );
}

// -------------------------------------------------------------------------------------------
// Known product bugs: each test states the behaviour we expect and fails today. Run them with
// `cargo test --test check_cli -- --ignored`.

#[test]

fn a_daemonset_list_from_the_api_has_its_items_judged() {
    // `kubectl get --raw /apis/apps/v1/daemonsets` and client-go lists: the list says
    // apiVersion and kind; its items do not.
    let list = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSetList",
        "metadata": { "resourceVersion": "1" },
        "items": [{
            "metadata": { "name": "listed", "namespace": "ops" },
            "spec": {
                "selector": { "matchLabels": { "app": "a" } },
                "template": {
                    "metadata": { "labels": { "app": "b" } },
                    "spec": { "containers": [{ "name": "c", "image": "c:1" }] },
                },
            },
        }],
    });
    let out = run_stdin(
        &["check", "--output", "json", "-"],
        serde_json::to_vec(&list).unwrap(),
    );
    let report = out.json();
    assert_eq!(
        statuses(&report),
        pairs(&[("listed", "invalid")]),
        "{report:#}"
    );
    assert_eq!(out.code, Some(1));
}

#[test]

fn a_non_utf8_file_is_reported_as_such_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.yaml");
    std::fs::write(
        &file,
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n",
    )
    .unwrap();
    let (report, _) = check_json(&[file.to_str().unwrap()]);
    let error = &report["errors"][0];
    assert!(
        error["message"].as_str().unwrap().contains("UTF-8"),
        "{error}"
    );
    assert_eq!(error["line"], 4, "{error}");
}

#[test]
fn a_symlink_cycle_in_a_directory_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("manifests");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(
        manifest_dir().join("tests/check/incomplete.yaml"),
        d.join("agent.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..", d.join("up")).unwrap();
    std::os::unix::fs::symlink("..", d.join("up-again")).unwrap();
    let out = run_cli(
        cli(&["check", "--output", "json", dir.path().to_str().unwrap()])
            .timeout(Duration::from_secs(20)),
    );
    assert!(out.code.is_some(), "did not finish within 20 s");
    let report = out.json();
    assert_eq!(
        report["summary"]["daemonSets"], 1,
        "{:#}",
        report["summary"]
    );
}
