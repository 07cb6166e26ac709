//! A manifest's value as written: a mapping keeps its entries in order, a repeated key included.
//!
//! The API server's decoder (sigs.k8s.io/json, Go's `encoding/json`) decodes a repeated key into
//! the value already there, and warns. So that `check` follows the same rule as the server, and in
//! the same place, a repeat is not resolved while reading: the object is handed to the policy as
//! JSON text with the repeat in it ([`Node`] serializes as written), and the policy's decoder
//! merges and names it. [`Node::merged`] is only the document as `check` prints and reads it
//! (its kind, name, the patched copy).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Node>),
    /// Entries in the order written; a key may repeat.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The last entry under `key`: what the decoder leaves in a string field.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|e| &e.1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// Sets `key` to `value` as its only entry, first in the mapping.
    pub fn set_first(&mut self, key: &str, value: Node) {
        if let Node::Map(entries) = self {
            entries.retain(|(k, _)| k != key);
            entries.insert(0, (key.to_owned(), value));
        }
    }

    /// The value once every repeated key is decoded into the value already there: mappings merge
    /// entry by entry, a sequence's elements are decoded into the elements already there (then
    /// cut to the new length), anything else takes the last value. A `null` leaves a mapping as
    /// it was, as the decoder leaves a struct (the fields a patch goes through are structs, so
    /// the policy's patch always applies); it clears anything else. Only where a repeated map
    /// field (`labels`) is `null`, which the decoder clears, does this differ from it.
    pub fn merged(&self) -> Value {
        let mut value = Value::Null;
        merge_into(&mut value, self);
        value
    }
}

fn merge_into(target: &mut Value, node: &Node) {
    match node {
        Node::Map(entries) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(fields) = target {
                for (key, value) in entries {
                    merge_into(fields.entry(key.as_str()).or_insert(Value::Null), value);
                }
            }
        }
        Node::Seq(items) => {
            let mut elements = match std::mem::take(target) {
                Value::Array(elements) => elements,
                _ => Vec::new(),
            };
            elements.truncate(items.len());
            for (i, item) in items.iter().enumerate() {
                match elements.get_mut(i) {
                    Some(element) => merge_into(element, item),
                    None => elements.push(item.merged()),
                }
            }
            *target = Value::Array(elements);
        }
        Node::Null if target.is_object() => {}
        Node::Null => *target = Value::Null,
        Node::Bool(b) => *target = Value::Bool(*b),
        Node::Number(n) => *target = Value::Number(n.clone()),
        Node::String(s) => *target = Value::String(s.clone()),
    }
}

impl From<&Value> for Node {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s.clone()),
            Value::Array(items) => Node::Seq(items.iter().map(Node::from).collect()),
            Value::Object(fields) => Node::Map(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Node::from(v)))
                    .collect(),
            ),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(b) => serializer.serialize_bool(*b),
            Node::Number(n) => n.serialize(serializer),
            Node::String(s) => serializer.serialize_str(s),
            Node::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<Node, E> {
        match i64::try_from(n) {
            Ok(n) => Ok(Node::Number(n.into())),
            Err(_) => self.visit_f64(n as f64),
        }
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<Node, E> {
        match u64::try_from(n) {
            Ok(n) => Ok(Node::Number(n.into())),
            Err(_) => self.visit_f64(n as f64),
        }
    }

    /// JSON has no NaN or infinity; as serde_json's own `Value` does, they read as null.
    fn visit_f64<E>(self, n: f64) -> Result<Node, E> {
        Ok(Number::from_f64(n).map_or(Node::Null, Node::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(Node::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Node, E> {
        Ok(Node::String(s))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Node>()? {
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(entries: &[(&str, Node)]) -> Node {
        Node::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn node(value: Value) -> Node {
        Node::from(&value)
    }

    #[test]
    fn a_repeat_is_written_out_as_it_was_read() {
        let written = map(&[
            ("a", node(json!({ "x": 1 }))),
            ("a", node(json!({ "y": 2 }))),
        ]);
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            r#"{"a":{"x":1},"a":{"y":2}}"#
        );
    }

    #[test]
    fn merged_mappings_merge_entry_by_entry_and_scalars_take_the_last() {
        let written = map(&[
            ("spec", node(json!({ "x": 1, "s": "old", "n": { "a": 1 } }))),
            ("spec", node(json!({ "s": "new", "n": { "b": 2 } }))),
            ("k", node(json!("one"))),
            ("k", node(json!({ "now": "a mapping" }))),
        ]);
        assert_eq!(
            written.merged(),
            json!({
                "spec": { "x": 1, "s": "new", "n": { "a": 1, "b": 2 } },
                "k": { "now": "a mapping" },
            })
        );
    }

    #[test]
    fn merged_sequences_decode_into_the_elements_already_there() {
        let written = map(&[
            (
                "c",
                node(json!([{ "name": "a", "image": "i" }, { "name": "b" }])),
            ),
            ("c", node(json!([{ "name": "z" }]))),
        ]);
        assert_eq!(
            written.merged(),
            json!({ "c": [{ "name": "z", "image": "i" }] })
        );
        let cleared = map(&[("c", node(json!([1, 2]))), ("c", Node::Null)]);
        assert_eq!(cleared.merged(), json!({ "c": null }));
    }

    #[test]
    fn a_null_leaves_a_mapping_as_it_was_and_clears_the_rest() {
        let written = map(&[
            ("template", node(json!({ "spec": {} }))),
            ("name", node(json!("a"))),
            ("template", Node::Null),
            ("name", Node::Null),
        ]);
        assert_eq!(
            written.merged(),
            json!({ "template": { "spec": {} }, "name": null })
        );
    }

    #[test]
    fn get_reads_the_last_entry_and_set_first_leaves_one() {
        let mut written = map(&[
            ("apiVersion", node(json!("a"))),
            ("kind", node(json!("DaemonSet"))),
            ("apiVersion", node(json!("b"))),
        ]);
        assert_eq!(written.get("apiVersion").and_then(Node::as_str), Some("b"));
        written.set_first("apiVersion", node(json!("apps/v1")));
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            r#"{"apiVersion":"apps/v1","kind":"DaemonSet"}"#
        );
    }

    #[test]
    fn a_value_round_trips() {
        let value = json!({ "a": [1, -2, 3.5, true, null, "s"], "b": {} });
        assert_eq!(node(value.clone()).merged(), value);
    }
}
