//! The JSON Patch (RFC 6902) the policy asks for, as data that serializes itself: no
//! `serde_json::Value` tree is built, the operations borrow their values from the verdict and the
//! policy, and JSON Pointer tokens are escaped as they are written (`~0`, `~1`).

use std::fmt::Write as _;

use super::resources::Set;
use super::tolerations::RequiredToleration;
use crate::json;

/// The pod template's spec, under which every patched field lies.
const POD_SPEC: [&str; 3] = ["spec", "template", "spec"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

/// One token of a JSON Pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    Key(&'a str),
    Index(usize),
    /// `-`: the end of an array.
    End,
}

/// A JSON Pointer below `/spec/template/spec`: at most five more tokens
/// (`containers/3/resources/limits/cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer<'a> {
    tokens: [Token<'a>; 5],
    len: usize,
}

impl<'a> Pointer<'a> {
    /// `/spec/template/spec/<tokens>`.
    pub fn pod_spec(tokens: &[Token<'a>]) -> Self {
        let mut pointer = Pointer {
            tokens: [Token::End; 5],
            len: tokens.len(),
        };
        pointer.tokens[..tokens.len()].copy_from_slice(tokens);
        pointer
    }

    pub fn tokens(&self) -> impl Iterator<Item = Token<'a>> + '_ {
        POD_SPEC
            .iter()
            .map(|k| Token::Key(k))
            .chain(self.tokens[..self.len].iter().copied())
    }
}

impl Pointer<'_> {
    /// Appends the pointer's text to `out`.
    pub fn write_to(&self, out: &mut String) {
        for token in self.tokens() {
            out.push('/');
            match token {
                Token::Key(key) if !key.contains(['~', '/']) => out.push_str(key),
                Token::Key(key) => {
                    for c in key.chars() {
                        match c {
                            '~' => out.push_str("~0"),
                            '/' => out.push_str("~1"),
                            c => out.push(c),
                        }
                    }
                }
                Token::Index(i) => {
                    let _ = write!(out, "{i}");
                }
                Token::End => out.push('-'),
            }
        }
    }
}

impl std::fmt::Display for Pointer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::with_capacity(64);
        self.write_to(&mut text);
        f.write_str(&text)
    }
}

/// What an `add` puts in place.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    None,
    Toleration(&'a RequiredToleration),
    Tolerations(&'a [&'a RequiredToleration]),
    /// `{"limits": {...}, "requests": {...}}` from a container's sets (each map only if it has
    /// entries).
    Resources(&'a [Set<'a>]),
    /// The limits of a container's sets, as a `ResourceList`.
    Limits(&'a [Set<'a>]),
    /// The requests of a container's sets, as a `ResourceList`.
    Requests(&'a [Set<'a>]),
    Quantity(&'a str),
}

/// One operation of the patch.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    pub op: Op,
    pub path: Pointer<'a>,
    pub value: Value<'a>,
}

impl Operation<'_> {
    /// Writes the operation as JSON: `{"op":"add","path":"...","value":...}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self.op {
            Op::Add => br#"{"op":"add","path":"#,
            Op::Remove => br#"{"op":"remove","path":"#,
        });
        let mut path = String::with_capacity(64);
        self.path.write_to(&mut path);
        json::string(out, &path);
        if !matches!(self.value, Value::None) {
            out.extend_from_slice(br#","value":"#);
            self.value.write_json(out);
        }
        out.push(b'}');
    }
}

impl Value<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match *self {
            Value::None => out.extend_from_slice(b"null"),
            Value::Toleration(toleration) => toleration.write_json(out),
            Value::Tolerations(tolerations) => {
                out.push(b'[');
                for (i, toleration) in tolerations.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    toleration.write_json(out);
                }
                out.push(b']');
            }
            Value::Resources(sets) => {
                out.push(b'{');
                if !sets.is_empty() {
                    out.extend_from_slice(br#""limits":"#);
                    Value::Limits(sets).write_json(out);
                }
                if sets.iter().any(|s| s.request().is_some()) {
                    if !sets.is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(br#""requests":"#);
                    Value::Requests(sets).write_json(out);
                }
                out.push(b'}');
            }
            Value::Limits(sets) => {
                json::string_map(out, sets.iter().map(|set| (set.name(), set.limit())));
            }
            Value::Requests(sets) => json::string_map(
                out,
                sets.iter()
                    .filter_map(|set| Some((set.name(), set.request()?))),
            ),
            Value::Quantity(text) => json::string(out, text),
        }
    }
}

impl RequiredToleration {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.texts().json);
    }

    /// As the controller writes it: empty fields left out.
    pub(super) fn write_json_uncached(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        if !self.key.is_empty() {
            out.extend_from_slice(br#""key":"#);
            json::string(out, &self.key);
            out.push(b',');
        }
        out.extend_from_slice(br#""operator":"#);
        json::string(out, &self.operator);
        if !self.value.is_empty() {
            out.extend_from_slice(br#","value":"#);
            json::string(out, &self.value);
        }
        if !self.effect.is_empty() {
            out.extend_from_slice(br#","effect":"#);
            json::string(out, &self.effect);
        }
        out.push(b'}');
    }
}

/// Writes `operations` as a JSON Patch into `out`, handing `out` to `drain` whenever it holds
/// more than `chunk` bytes (so that a huge patch can be encoded as it is written).
pub fn write_json<'a>(
    operations: impl IntoIterator<Item = Operation<'a>>,
    out: &mut Vec<u8>,
    chunk: usize,
    mut drain: impl FnMut(&mut Vec<u8>),
) {
    out.push(b'[');
    for (i, operation) in operations.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        operation.write_json(out);
        if out.len() > chunk {
            drain(out);
        }
    }
    out.push(b']');
}

/// `operations` as JSON Patch text.
pub fn to_json<'a>(operations: impl IntoIterator<Item = Operation<'a>>) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(operations, &mut out, usize::MAX, |_| {});
    out
}

/// A verdict's patch: its operations, made as they are read, never held in a list.
#[derive(Clone, Copy)]
pub struct Patch<'v, 'p> {
    verdict: &'v super::Verdict<'p>,
}

impl<'v, 'p> Patch<'v, 'p> {
    pub(super) fn of(verdict: &'v super::Verdict<'p>) -> Self {
        Self { verdict }
    }

    pub fn operations(&self) -> impl Iterator<Item = Operation<'v>> + use<'v, 'p> {
        self.verdict.operations()
    }

    /// How many operations; counting makes each.
    pub fn len(&self) -> usize {
        self.operations().count()
    }

    pub fn is_empty(&self) -> bool {
        self.operations().next().is_none()
    }

    /// See [`write_json`].
    pub fn write_json_draining(
        &self,
        out: &mut Vec<u8>,
        chunk: usize,
        drain: impl FnMut(&mut Vec<u8>),
    ) {
        write_json(self.operations(), out, chunk, drain);
    }

    /// The patch as JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self.operations())
    }

    /// The patch as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.to_json()).expect("a patch we wrote reads back")
    }

    /// The patch as the json-patch crate reads it, to apply it to a `serde_json::Value`.
    pub fn to_json_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.to_json()).expect("a patch we wrote reads back")
    }
}

impl std::fmt::Debug for Patch<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_json()))
    }
}

/// The object without the fields a patch may change (the pod's tolerations, every container's
/// resources): what a patch must leave exactly as it was. For tests and tools that check that.
pub fn without_owned_fields(object: &serde_json::Value) -> serde_json::Value {
    let mut object = object.clone();
    if let Some(pod) = object
        .pointer_mut("/spec/template/spec")
        .and_then(serde_json::Value::as_object_mut)
    {
        pod.remove("tolerations");
        for list in ["containers", "initContainers"] {
            for container in pod
                .get_mut(list)
                .and_then(serde_json::Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(container) = container.as_object_mut() {
                    container.remove("resources");
                }
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_their_tokens() {
        let pointer = Pointer::pod_spec(&[
            Token::Key("containers"),
            Token::Index(3),
            Token::Key("resources"),
            Token::Key("limits"),
            Token::Key("example.com/a~b"),
        ]);
        assert_eq!(
            pointer.to_string(),
            "/spec/template/spec/containers/3/resources/limits/example.com~1a~0b"
        );
        assert_eq!(
            Pointer::pod_spec(&[Token::Key("tolerations"), Token::End]).to_string(),
            "/spec/template/spec/tolerations/-"
        );
    }
}
