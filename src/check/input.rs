//! Reading manifests: files, directories (recursively), standard input; YAML streams of many
//! documents, JSON, and `kind: List`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::node::Node;

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
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|m| e.eq_ignore_ascii_case(m))
    })
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
            walk(path, &mut inputs, &mut errors, &mut HashSet::new());
        } else {
            inputs.push(Input::File(path.clone()));
        }
    }
    (inputs, errors)
}

/// Walks `dir`; `seen` holds the directories already walked (by canonical path), so a symlink
/// to an ancestor is not followed round and round.
fn walk(
    dir: &Path,
    inputs: &mut Vec<Input>,
    errors: &mut Vec<(String, String)>,
    seen: &mut HashSet<PathBuf>,
) {
    match std::fs::canonicalize(dir) {
        Ok(canonical) => {
            if !seen.insert(canonical) {
                return;
            }
        }
        Err(error) => {
            errors.push((dir.display().to_string(), error.to_string()));
            return;
        }
    }
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
                walk(&path, inputs, errors, seen);
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
    /// As written, a repeated key included: what the policy judges.
    pub written: Node,
    /// With repeated keys merged as the API server's decoder merges them: what is printed.
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
/// `0644` is octal, as in `defaultMode: 0644`. A repeated key is kept (see [`Node`]): the policy
/// merges and warns about it as the API server does. Budgets are raised for the output of
/// `helm template` and `kustomize build`, which can hold thousands of documents; nesting stays
/// bounded.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
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
pub fn for_each_document(reader: impl Read, mut visit: impl FnMut(Result<Document, ReadError>)) {
    let failure = Rc::new(RefCell::new(None));
    let mut reader = Utf8Checked::new(reader, failure.clone());
    let mut index = 0;
    for item in serde_saphyr::read_with_options::<_, Spanned<Node>>(&mut reader, options()) {
        // The parser reports our reader's error as a bare "IO error": say what it was.
        if let (Err(_), Some(error)) = (&item, failure.borrow_mut().take()) {
            visit(Err(error));
            continue;
        }
        visit(
            item.map(|spanned| {
                index += 1;
                Document {
                    index,
                    line: spanned.defined.line(),
                    value: spanned.value.merged(),
                    written: spanned.value,
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

/// Passes a stream through, stopping with an error that says where at the first byte that is
/// not UTF-8 (YAML is UTF-8; a UTF-16 stream with a byte order mark is passed on unchecked for
/// the parser to transcode).
struct Utf8Checked<R> {
    inner: R,
    failure: Rc<RefCell<Option<ReadError>>>,
    started: bool,
    unchecked: bool,
    /// The start of a multi-byte character cut by a read boundary.
    pending: Vec<u8>,
    line: u64,
    column: u64,
}

impl<R: Read> Utf8Checked<R> {
    fn new(inner: R, failure: Rc<RefCell<Option<ReadError>>>) -> Self {
        Self {
            inner,
            failure,
            started: false,
            unchecked: false,
            pending: Vec::new(),
            line: 1,
            column: 1,
        }
    }

    fn advance(&mut self, text: &str) {
        for c in text.chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
    }

    fn fail(&mut self) -> io::Error {
        let message = "not valid UTF-8 (manifests are UTF-8 text)".to_owned();
        *self.failure.borrow_mut() = Some(ReadError {
            line: Some(self.line),
            column: Some(self.column),
            message: message.clone(),
        });
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: Read> Read for Utf8Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.started && n > 0 {
            self.started = true;
            self.unchecked = buf.starts_with(&[0xff, 0xfe]) || buf.starts_with(&[0xfe, 0xff]);
        }
        if self.unchecked {
            return Ok(n);
        }
        if n == 0 {
            return if self.pending.is_empty() {
                Ok(0)
            } else {
                Err(self.fail())
            };
        }
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(&buf[..n]);
        match std::str::from_utf8(&data) {
            Ok(text) => {
                let text = text.to_owned();
                self.advance(&text);
            }
            Err(error) => {
                let valid = std::str::from_utf8(&data[..error.valid_up_to()])
                    .unwrap_or_default()
                    .to_owned();
                self.advance(&valid);
                if error.error_len().is_some() {
                    return Err(self.fail());
                }
                self.pending = data[error.valid_up_to()..].to_vec();
            }
        }
        Ok(n)
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
/// `*List` kind with `items`), with their item index. Items of a typed list (`DaemonSetList`,
/// as the API returns lists) carry no kind or apiVersion: they get the list's.
pub fn objects(document: &Node) -> Vec<(Option<usize>, Cow<'_, Node>)> {
    let kind = document
        .get("kind")
        .and_then(Node::as_str)
        .unwrap_or_default();
    let Some(Node::Seq(items)) = document.get("items").filter(|_| kind.ends_with("List")) else {
        return vec![(None, Cow::Borrowed(document))];
    };
    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    let api_version = document.get("apiVersion");
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let object = match (item_kind, item) {
                (Some(item_kind), Node::Map(_)) if item.get("kind").is_none() => {
                    let mut typed = item.clone();
                    typed.set_first("kind", Node::String(item_kind.to_owned()));
                    if let Some(api_version) = api_version {
                        typed.set_first("apiVersion", api_version.clone());
                    }
                    Cow::Owned(typed)
                }
                _ => Cow::Borrowed(item),
            };
            (Some(i), object)
        })
        .collect()
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
    fn text_that_is_not_utf8_is_reported_where_it_is() {
        let mut docs = Vec::new();
        for_each_document(&b"a: 1\n---\nname: caf\xe9\n"[..], |doc| docs.push(doc));
        let error = docs.last().unwrap().as_ref().unwrap_err();
        assert_eq!((error.line, error.column), (Some(3), Some(10)), "{error:?}");
        assert!(error.message.contains("UTF-8"), "{error:?}");
        // A character cut by a read boundary is fine.
        let text = "- caf\u{e9} \u{1F600}\n".repeat(5000);
        let mut docs = Vec::new();
        for_each_document(text.as_bytes(), |doc| docs.push(doc));
        assert!(docs.iter().all(Result::is_ok));
    }

    #[test]
    fn a_repeated_key_is_kept_as_written_and_merged_for_printing() {
        let doc = read("spec:\n  a: 1\nspec:\n  b: 2\n").remove(0).unwrap();
        assert_eq!(
            serde_json::to_string(&doc.written).unwrap(),
            r#"{"spec":{"a":1},"spec":{"b":2}}"#
        );
        assert_eq!(doc.value, json!({ "spec": { "a": 1, "b": 2 } }));
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
        let list = Node::from(
            &json!({ "apiVersion": "v1", "kind": "List", "items": [{ "kind": "A" }, { "kind": "B" }] }),
        );
        let objects = objects(&list);
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].0, Some(1));
        assert_eq!(objects[1].1.merged(), json!({ "kind": "B" }));
        let typed_list = Node::from(
            &json!({ "apiVersion": "apps/v1", "kind": "DaemonSetList", "items": [{ "metadata": { "name": "x" } }] }),
        );
        assert_eq!(
            serde_json::to_string(&super::objects(&typed_list)[0].1).unwrap(),
            r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"x"}}"#
        );
        let plain = Node::from(&json!({ "kind": "DaemonSet", "items": [1] }));
        assert_eq!(super::objects(&plain), vec![(None, Cow::Borrowed(&plain))]);
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
