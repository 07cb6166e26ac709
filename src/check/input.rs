//! Reading manifests: files, directories (recursively), standard input; YAML streams of many
//! documents, JSON, and `kind: List`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use serde_saphyr::Spanned;

/// One place to read manifests from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// How reports name it: the path as given, or `-`.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_owned(),
            Input::File(path) => path.display().to_string(),
        }
    }

    pub fn open(&self) -> io::Result<Box<dyn Read>> {
        Ok(match self {
            Input::Stdin => Box::new(io::stdin().lock()),
            Input::File(path) => Box::new(BufReader::new(File::open(path)?)),
        })
    }
}

/// A manifest file's extension: what a directory walk picks up.
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Turns the command line's paths into inputs: `-` is standard input, a directory contributes
/// its `*.yaml`, `*.yml` and `*.json` files (recursively, in name order), a file is read whatever
/// its name. A path that cannot be listed is returned as an error beside the inputs.
pub fn expand(paths: &[PathBuf]) -> (Vec<Input>, Vec<(String, String)>) {
    let mut inputs = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            inputs.push(Input::Stdin);
        } else if path.is_dir() {
            walk(path, &mut inputs, &mut errors);
        } else {
            inputs.push(Input::File(path.clone()));
        }
    }
    (inputs, errors)
}

fn walk(dir: &Path, inputs: &mut Vec<Input>, errors: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(error) => {
            errors.push((dir.display().to_string(), error.to_string()));
            return;
        }
    };
    entries.sort();
    for path in entries {
        // Hidden directories (.git) are never manifests.
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if path.is_dir() {
            if !hidden {
                walk(&path, inputs, errors);
            }
        } else if is_manifest(&path) {
            inputs.push(Input::File(path));
        }
    }
}

/// A parsed document: its position in the stream and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based, counting the non-empty documents of the stream.
    pub index: usize,
    /// Where the document's content starts.
    pub line: u64,
    pub value: Value,
}

/// Why a stream could not be read, with the position the parser gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

/// The YAML rules Kubernetes' own tooling (sigs.k8s.io/yaml, YAML 1.1) reads manifests by:
/// `0644` is octal, as in `defaultMode: 0644`. Budgets are raised for the output of
/// `helm template` and `kustomize build`, which can hold thousands of documents; nesting stays
/// bounded.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: None,
            max_documents: 1_000_000,
            max_nodes: 100_000_000,
            max_events: 400_000_000,
            max_total_scalar_bytes: 1 << 32,
        },
    }
}

/// Reads a YAML (or JSON) stream one document at a time, handing each to `visit`; a syntax
/// error ends the stream. Only one document is held in memory at once.
pub fn for_each_document(
    mut reader: impl Read,
    mut visit: impl FnMut(Result<Document, ReadError>),
) {
    let mut index = 0;
    for item in serde_saphyr::read_with_options::<_, Spanned<Value>>(&mut reader, options()) {
        visit(
            item.map(|spanned| {
                index += 1;
                Document {
                    index,
                    line: spanned.defined.line(),
                    value: spanned.value,
                }
            })
            .map_err(|error| {
                let location = error.location();
                ReadError {
                    line: location.map(|l| l.line()),
                    column: location.map(|l| l.column()),
                    message: first_line(&error.to_string()),
                }
            }),
        );
    }
}

/// serde-saphyr renders a snippet below its message and repeats the position in it; reports
/// want the message, the position being reported on its own.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    match line.rfind(" at line ") {
        Some(at) if line[at..].contains(", column ") => line[..at].to_owned(),
        _ => line.to_owned(),
    }
}

/// The objects a document holds: itself, or the items of a `kind: List` (`v1/List` or any
/// `*List` kind with `items`), with their item index.
pub fn objects(value: &Value) -> Vec<(Option<usize>, &Value)> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    match value.get("items").and_then(Value::as_array) {
        Some(items) if is_list => items
            .iter()
            .enumerate()
            .map(|(i, item)| (Some(i), item))
            .collect(),
        _ => vec![(None, value)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> Vec<Result<Document, ReadError>> {
        let mut docs = Vec::new();
        for_each_document(text.as_bytes(), |doc| docs.push(doc));
        docs
    }

    #[test]
    fn streams_number_their_non_empty_documents_and_lines() {
        let docs = read("# Source: a\n---\nkind: A\n---\n---\n# c\nkind: B\n...\n");
        let docs: Vec<Document> = docs.into_iter().map(Result::unwrap).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (1, 3));
        assert_eq!((docs[1].index, docs[1].line), (2, 7));
        assert_eq!(docs[1].value, json!({ "kind": "B" }));
    }

    #[test]
    fn json_is_read_too() {
        let docs = read(r#"{"kind": "DaemonSet", "spec": {"n": [1, 2]}}"#);
        assert_eq!(docs[0].as_ref().unwrap().value["spec"]["n"], json!([1, 2]));
    }

    #[test]
    fn kubernetes_yaml_conventions_hold() {
        let doc = read("mode: 0644\nflag: yes\nversion: \"1.10\"\n")
            .remove(0)
            .unwrap();
        assert_eq!(
            doc.value,
            json!({ "mode": 420, "flag": true, "version": "1.10" })
        );
    }

    #[test]
    fn syntax_errors_carry_their_position_and_end_the_stream() {
        let docs = read("a: 1\n---\nb: [1, 2\nc: 3\n---\nd: 4\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_ok());
        let error = docs[1].as_ref().unwrap_err();
        assert_eq!((error.line, error.column), (Some(4), Some(2)));
        assert!(!error.message.contains('\n'));
    }

    #[test]
    fn lists_contribute_their_items() {
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": [{ "kind": "A" }, { "kind": "B" }] });
        let objects = objects(&list);
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1], (Some(1), &json!({ "kind": "B" })));
        let typed_list = json!({ "kind": "DaemonSetList", "items": [{ "kind": "DaemonSet" }] });
        assert_eq!(super::objects(&typed_list).len(), 1);
        let plain = json!({ "kind": "DaemonSet", "items": [1] });
        assert_eq!(super::objects(&plain), vec![(None, &plain)]);
    }

    #[test]
    fn directories_are_walked_in_order_for_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        std::fs::create_dir_all(d.join(".git")).unwrap();
        for file in [
            "b/c/z.yml",
            "b/a.json",
            "a.yaml",
            "notes.txt",
            ".git/x.yaml",
        ] {
            std::fs::write(d.join(file), "").unwrap();
        }
        let (inputs, errors) = expand(&[d.to_path_buf(), PathBuf::from("-")]);
        assert!(errors.is_empty());
        assert_eq!(
            inputs,
            vec![
                Input::File(d.join("a.yaml")),
                Input::File(d.join("b/a.json")),
                Input::File(d.join("b/c/z.yml")),
                Input::Stdin,
            ]
        );
    }
}
