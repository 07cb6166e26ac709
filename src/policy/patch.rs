//! The JSON Patch (RFC 6902) the policy asks for, as data that serializes itself: no
//! `serde_json::Value` tree is built, the operations borrow their values from the verdict and the
//! policy, and JSON Pointer tokens are escaped as they are written (`~0`, `~1`).

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::resources::Set;
use super::tolerations::RequiredToleration;

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

impl Serialize for Operation<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        match self.op {
            Op::Add => map.serialize_entry("op", "add")?,
            Op::Remove => map.serialize_entry("op", "remove")?,
        }
        let mut path = String::with_capacity(64);
        self.path.write_to(&mut path);
        map.serialize_entry("path", &path)?;
        if !matches!(self.value, Value::None) {
            map.serialize_entry("value", &self.value)?;
        }
        map.end()
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::None => serializer.serialize_unit(),
            Value::Toleration(toleration) => toleration.serialize(serializer),
            Value::Tolerations(tolerations) => {
                let mut seq = serializer.serialize_seq(Some(tolerations.len()))?;
                for toleration in tolerations {
                    seq.serialize_element(toleration)?;
                }
                seq.end()
            }
            Value::Resources(sets) => {
                let has_requests = sets.iter().any(|s| s.request().is_some());
                let mut map = serializer.serialize_map(None)?;
                if !sets.is_empty() {
                    map.serialize_entry("limits", &Value::Limits(sets))?;
                }
                if has_requests {
                    map.serialize_entry("requests", &Value::Requests(sets))?;
                }
                map.end()
            }
            Value::Limits(sets) => {
                let mut map = serializer.serialize_map(Some(sets.len()))?;
                for set in sets {
                    map.serialize_entry(set.name(), set.limit())?;
                }
                map.end()
            }
            Value::Requests(sets) => {
                let mut map = serializer.serialize_map(None)?;
                for set in sets {
                    if let Some(request) = set.request() {
                        map.serialize_entry(set.name(), request)?;
                    }
                }
                map.end()
            }
            Value::Quantity(text) => serializer.serialize_str(text),
        }
    }
}

impl Serialize for RequiredToleration {
    /// As the controller writes it: empty fields left out.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.key.is_empty() {
            map.serialize_entry("key", &self.key)?;
        }
        map.serialize_entry("operator", &self.operator)?;
        if !self.value.is_empty() {
            map.serialize_entry("value", &self.value)?;
        }
        if !self.effect.is_empty() {
            map.serialize_entry("effect", &self.effect)?;
        }
        map.end()
    }
}

/// The operations of a patch, in order; serializes as the JSON Patch array.
pub struct Patch<'a>(pub Vec<Operation<'a>>);

impl<'a> Patch<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn operations(&self) -> &[Operation<'a>] {
        &self.0
    }

    /// The patch as the json-patch crate reads it, to apply it to a `serde_json::Value`.
    pub fn to_json_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.to_json()).expect("a patch we wrote reads back")
    }

    /// The patch as JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a patch serializes")
    }
}

impl Serialize for Patch<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for operation in &self.0 {
            seq.serialize_element(operation)?;
        }
        seq.end()
    }
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
