//! The DaemonSet as the policy reads it: only the fields a rule looks at, borrowed from the JSON
//! text where it has no escapes, decoded in one pass. Everything else is skipped by serde_json's
//! non-recursive skipper without being built into a tree, so a huge or deeply nested field our
//! types do not know costs time linear in its size and no memory (and survives: the patch only
//! adds what a rule owns).
//!
//! A repeated key is decoded the way the API server's decoder (sigs.k8s.io/json, a fork of Go's
//! `encoding/json`) decodes it: into the value already there. Objects merge field by field, maps
//! entry by entry, a list's elements are decoded into the elements already there (then cut to the
//! new length), and scalars take the last value; `null` clears a map, list or pointer field and
//! leaves a string or struct field as it was. A repeat is noted ([`Decoded::repeated_keys`]) so
//! that the caller can warn, as the API server does.
//!
//! Each field records, besides its value, whether its last occurrence was a JSON object or array
//! (`given`): a patch may add into a field only where one exists, and replaces it whole where the
//! text has it absent or `null`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Text from the object: borrowed from the JSON when it has no escapes.
pub type Str<'a> = Cow<'a, str>;

/// What decoding noticed about the text besides the values: whether a key the policy reads was
/// repeated, and (when asked to record them) where.
#[derive(Debug, Default)]
pub struct Decoding {
    repeated: Cell<bool>,
    recorder: Option<std::cell::RefCell<Recorder>>,
}

/// The field paths of repeated keys, written as the API server's decoder writes them
/// (`spec.template.spec.containers[0].name`, map keys as they are: `metadata.labels.app`).
#[derive(Debug, Default)]
struct Recorder {
    /// The path of the value being decoded.
    path: String,
    repeats: Vec<String>,
}

/// The API server's decoder reports at most this many strict errors.
pub const MAX_REPEATED_KEYS: usize = 100;

impl Decoding {
    /// A decoding that records where keys repeat.
    pub fn recording() -> Self {
        Self {
            repeated: Cell::new(false),
            recorder: Some(Default::default()),
        }
    }

    pub fn repeated_keys(&self) -> bool {
        self.repeated.get()
    }

    /// The recorded paths, in the order met, each once (empty unless [`Decoding::recording`]).
    pub fn into_repeats(self) -> Vec<String> {
        self.recorder
            .map(|r| r.into_inner().repeats)
            .unwrap_or_default()
    }

    /// `key` at the current path is repeated.
    fn repeated(&self, key: &str) {
        self.repeated.set(true);
        if let Some(recorder) = &self.recorder {
            let mut recorder = recorder.borrow_mut();
            let mut path = recorder.path.clone();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            if recorder.repeats.len() < MAX_REPEATED_KEYS && !recorder.repeats.contains(&path) {
                recorder.repeats.push(path);
            }
        }
    }

    /// Descends into `key` (recording only); returns where to come back to.
    fn enter_key(&self, key: &str) -> usize {
        let Some(recorder) = &self.recorder else {
            return 0;
        };
        let path = &mut recorder.borrow_mut().path;
        let back = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        back
    }

    /// Descends into element `index` (recording only); returns where to come back to.
    fn enter_index(&self, index: usize) -> usize {
        let Some(recorder) = &self.recorder else {
            return 0;
        };
        let path = &mut recorder.borrow_mut().path;
        let back = path.len();
        let _ = write!(path, "[{index}]");
        back
    }

    fn leave(&self, back: usize) {
        if let Some(recorder) = &self.recorder {
            recorder.borrow_mut().path.truncate(back);
        }
    }

    fn recording_keys(&self) -> bool {
        self.recorder.is_some()
    }
}

/// A decoded DaemonSet and what decoding noticed.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub daemon_set: DaemonSet<'a>,
    /// Whether a key the policy reads was repeated somewhere in the object.
    pub repeated_keys: bool,
}

/// Decodes a DaemonSet from JSON text.
pub fn decode(text: &str) -> Result<Decoded<'_>, serde_json::Error> {
    let decoding = Decoding::default();
    let daemon_set = decode_with(text, &decoding)?;
    Ok(Decoded {
        daemon_set,
        repeated_keys: decoding.repeated_keys(),
    })
}

/// Decodes a DaemonSet from JSON text with `decoding` (which may record repeated keys).
pub fn decode_with<'a>(
    text: &'a str,
    decoding: &Decoding,
) -> Result<DaemonSet<'a>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let daemon_set = DaemonSet::seed(decoding).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(daemon_set.unwrap_or_default())
}

/// Where keys the policy reads repeat in `text`, as the API server's decoder reports them.
pub fn repeated_keys(text: &str) -> Vec<String> {
    let decoding = Decoding::recording();
    match decode_with(text, &decoding) {
        Ok(_) => decoding.into_repeats(),
        Err(_) => Vec::new(),
    }
}

/// Decodes a DaemonSet from JSON text, naming the field where decoding failed (`spec.template`,
/// `spec.template.spec.containers[0].resources.limits.cpu`). For the error path only: the field
/// tracking costs what the one-pass decode saves.
pub fn decode_with_path(text: &str) -> Result<(), serde_path_to_error::Error<serde_json::Error>> {
    let decoding = Decoding::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
    match DaemonSet::seed(&decoding).deserialize(tracked) {
        Ok(_) => Ok(()),
        Err(error) => Err(serde_path_to_error::Error::new(track.path(), error)),
    }
}

// ---------------------------------------------------------------------------------------------
// The view.

/// `apps/v1` `DaemonSet`, the fields the policy reads.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DaemonSet<'a> {
    pub metadata: Metadata<'a>,
    pub spec: DaemonSetSpec<'a>,
}

/// `metav1.ObjectMeta`: name, namespace, and of the annotations only the one the policy reads.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metadata<'a> {
    pub name: Option<Str<'a>>,
    pub namespace: Option<Str<'a>>,
    /// The value of [`super::EXCLUDE_ANNOTATION`], if annotated.
    pub exclude: Option<Str<'a>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct DaemonSetSpec<'a> {
    /// `None` when absent or `null` (a pointer in Kubernetes' types: a nil selector).
    pub selector: Option<LabelSelector<'a>>,
    pub template: PodTemplateSpec<'a>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct LabelSelector<'a> {
    pub match_labels: Option<StrMap<'a>>,
    pub match_expressions: Option<Vec<LabelSelectorRequirement<'a>>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct LabelSelectorRequirement<'a> {
    pub key: Str<'a>,
    pub operator: Str<'a>,
    pub values: Option<Vec<Str<'a>>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodTemplateSpec<'a> {
    /// `metadata.labels`; `None` when absent or `null`.
    pub labels: Option<StrMap<'a>>,
    pub spec: Given<PodSpec<'a>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodSpec<'a> {
    pub restart_policy: Option<Str<'a>>,
    pub host_network: bool,
    pub active_deadline_seconds: Option<i64>,
    pub tolerations: Given<Vec<Toleration<'a>>>,
    pub containers: Vec<Container<'a>>,
    pub init_containers: Vec<Container<'a>>,
    /// Whether `ephemeralContainers` holds any.
    pub ephemeral_containers: usize,
    /// Pod-level resources; `None` when absent or `null` (a pointer in Kubernetes' types).
    pub resources: Option<ResourceRequirements<'a>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Toleration<'a> {
    pub key: Option<Str<'a>>,
    pub operator: Option<Str<'a>>,
    pub value: Option<Str<'a>>,
    pub effect: Option<Str<'a>>,
    pub toleration_seconds: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Container<'a> {
    pub name: Str<'a>,
    /// `restartPolicy` (init containers: `Always` makes a sidecar).
    pub restart_policy: Option<Str<'a>>,
    pub resources: Given<ResourceRequirements<'a>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResourceRequirements<'a> {
    pub limits: Given<QuantityMap<'a>>,
    pub requests: Given<QuantityMap<'a>>,
}

/// A field's value, and whether its last occurrence in the text was an object (or, for a list,
/// an array) rather than absent or `null`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Given<T> {
    pub value: T,
    pub given: bool,
}

/// A JSON object of strings (labels), sorted by key, each key once (the last value wins, as in
/// Go's map decoding).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StrMap<'a>(Vec<(Str<'a>, Str<'a>)>);

/// A `ResourceList`: resource names and their quantities as text (`"500m"`; a JSON number as
/// Kubernetes formats it; `null`, which `Quantity` decodes as zero, as `"0"`), sorted by name.
pub type QuantityMap<'a> = StrMap<'a>;

impl<'a> StrMap<'a> {
    pub fn get(&self, key: &str) -> Option<&Str<'a>> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Sorts by key, keeping each key's last value. Returns whether a key repeated among the
    /// entries from `first` on (those of one JSON object).
    fn settle(&mut self, first: usize) -> bool {
        // Already sorted and distinct: the usual case, checked in one pass.
        if self.0.windows(2).all(|w| w[0].0 < w[1].0) {
            return false;
        }
        let before = self.0.len();
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        // Stable sort: of equal keys, the last written is the last of its run.
        self.0.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        // Entries added to a map decoded before come from a repeated field, noticed as such;
        // in a fresh map, fewer entries than keys means a key repeated.
        first == 0 && self.0.len() < before
    }
}

#[cfg(test)]
impl<'a> FromIterator<(&'a str, &'a str)> for StrMap<'a> {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut map = StrMap(
            iter.into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect(),
        );
        map.settle(0);
        map
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding into an existing value.

/// A value decoded into in place, as Go's decoder does for a repeated key.
trait Merge<'de> {
    fn merge<D: Deserializer<'de>>(
        &mut self,
        deserializer: D,
        decoding: &Decoding,
    ) -> Result<(), D::Error>;
}

/// The seed that decodes into `target`.
struct Into<'t, 'd, T> {
    target: &'t mut T,
    decoding: &'d Decoding,
}

impl<'de, T: Merge<'de>> DeserializeSeed<'de> for Into<'_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.target.merge(deserializer, self.decoding)
    }
}

/// Decodes the next map value into `target`.
fn next<'de, A: MapAccess<'de>, T: Merge<'de>>(
    map: &mut A,
    target: &mut T,
    decoding: &Decoding,
) -> Result<(), A::Error> {
    map.next_value_seed(Into { target, decoding })
}

/// A struct: its JSON keys, and how each is decoded.
trait Fields<'de> {
    /// What a mismatched type is reported as expecting.
    const EXPECTING: &'static str;
    /// The keys read, at most 64; any other is skipped.
    const KEYS: &'static [&'static str];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        decoding: &Decoding,
    ) -> Result<(), A::Error>;
}

/// A key's index in `KEYS`, or `None` for a key that is skipped.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        // Case-sensitive, as the API server's decoder matches keys.
        Ok(self.0.iter().position(|k| *k == key))
    }
}

/// Decodes a JSON object into the struct `target`, field by field; `null` leaves it as it was
/// (Go: a struct value). Returns whether the text held an object.
fn merge_struct<'de, D: Deserializer<'de>, T: Fields<'de>>(
    target: &mut T,
    deserializer: D,
    decoding: &Decoding,
) -> Result<bool, D::Error> {
    struct StructVisitor<'t, 'd, T> {
        target: &'t mut T,
        decoding: &'d Decoding,
    }
    impl<'de, T: Fields<'de>> Visitor<'de> for StructVisitor<'_, '_, T> {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }

        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = 0u64;
            while let Some(key) = map.next_key_seed(Key(T::KEYS))? {
                match key {
                    Some(index) => {
                        if seen & (1 << index) != 0 {
                            self.decoding.repeated(T::KEYS[index]);
                        }
                        seen |= 1 << index;
                        let back = self.decoding.enter_key(T::KEYS[index]);
                        self.target.field(index, &mut map, self.decoding)?;
                        self.decoding.leave(back);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(true)
        }
    }
    deserializer.deserialize_any(StructVisitor { target, decoding })
}

impl<'de, T: Fields<'de> + Default> Merge<'de> for Given<T> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        self.given = merge_struct(&mut self.value, d, decoding)?;
        Ok(())
    }
}

/// A pointer to a struct (Go): `null` makes it nil, an object is decoded into it.
impl<'de, T: Fields<'de> + Default> Merge<'de> for Option<T> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        let mut value = self.take().unwrap_or_default();
        if merge_struct(&mut value, d, decoding)? {
            *self = Some(value);
        }
        Ok(())
    }
}

/// A JSON string, borrowed when it can be. (Every visitor here is driven by `deserialize_any`:
/// serde_json's typed entry points reject `null` before a visitor could take it.)
struct StrVisitor(&'static str);

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Option<Str<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(s.to_owned())))
    }
}

/// A string field: `null` leaves it as it was (Go: a string value).
#[derive(Debug)]
struct Text<'t, 'de>(&'t mut Option<Str<'de>>);

impl<'de> Merge<'de> for Text<'_, 'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        if let Some(text) = d.deserialize_any(StrVisitor("a string"))? {
            *self.0 = Some(text);
        }
        Ok(())
    }
}

/// A string field that is a pointer (Go): `null` clears it.
struct TextPointer<'t, 'de>(&'t mut Option<Str<'de>>);

impl<'de> Merge<'de> for TextPointer<'_, 'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        *self.0 = d.deserialize_any(StrVisitor("a string"))?;
        Ok(())
    }
}

/// A required string (`name`, `key`, `operator`): `null` leaves it as it was.
impl<'de> Merge<'de> for Str<'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        if let Some(text) = d.deserialize_any(StrVisitor("a string"))? {
            *self = text;
        }
        Ok(())
    }
}

/// A pointer to an integer (`*int64`): `null` clears it.
impl<'de> Merge<'de> for Option<i64> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        *self = serde::Deserialize::deserialize(d)?;
        Ok(())
    }
}

/// A boolean value: `null` leaves it as it was.
impl<'de> Merge<'de> for bool {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        if let Some(value) = <Option<bool> as serde::Deserialize>::deserialize(d)? {
            *self = value;
        }
        Ok(())
    }
}

/// A list, decoded as Go decodes into a slice: each element into the element already at its
/// index, the list then cut to the new length; `null` empties it. Returns whether the text
/// held an array.
fn merge_list<'de, D: Deserializer<'de>, T: Merge<'de> + Default>(
    list: &mut Vec<T>,
    deserializer: D,
    decoding: &Decoding,
) -> Result<bool, D::Error> {
    struct ListVisitor<'t, 'd, T> {
        list: &'t mut Vec<T>,
        decoding: &'d Decoding,
    }
    impl<'de, T: Merge<'de> + Default> Visitor<'de> for ListVisitor<'_, '_, T> {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            self.list.clear();
            Ok(false)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut length = 0;
            loop {
                if length == self.list.len() {
                    self.list.push(T::default());
                }
                let element = Into {
                    target: &mut self.list[length],
                    decoding: self.decoding,
                };
                let back = self.decoding.enter_index(length);
                let more = seq.next_element_seed(element)?.is_some();
                self.decoding.leave(back);
                if !more {
                    break;
                }
                length += 1;
            }
            self.list.truncate(length);
            Ok(true)
        }
    }
    deserializer.deserialize_any(ListVisitor { list, decoding })
}

impl<'de, T: Merge<'de> + Default> Merge<'de> for Given<Vec<T>> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        self.given = merge_list(&mut self.value, d, decoding)?;
        Ok(())
    }
}

impl<'de, T: Merge<'de> + Default> Merge<'de> for Vec<T> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_list(self, d, decoding).map(drop)
    }
}

/// A list that may be nil (`matchExpressions`, `values`): `null` makes it `None`.
impl<'de, T: Merge<'de> + Default> Merge<'de> for Option<Vec<T>> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        let mut list = self.take().unwrap_or_default();
        if merge_list(&mut list, d, decoding)? {
            *self = Some(list);
        }
        Ok(())
    }
}

/// What a map's values are.
#[derive(Clone, Copy)]
enum Values {
    /// Strings (labels, annotations).
    Strings,
    /// Quantities: a string, a number, or `null` (zero).
    Quantities,
}

/// A map: `null` makes it nil; an object's entries are added to those already there (Go reuses
/// the map). Returns whether the text held an object.
fn merge_map<'de, D: Deserializer<'de>>(
    map: &mut Option<StrMap<'de>>,
    values: Values,
    deserializer: D,
    decoding: &Decoding,
) -> Result<bool, D::Error> {
    struct MapVisitor<'t, 'd, 'de> {
        map: &'t mut Option<StrMap<'de>>,
        values: Values,
        decoding: &'d Decoding,
    }
    impl<'de> Visitor<'de> for MapVisitor<'_, '_, 'de> {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            *self.map = None;
            Ok(false)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<bool, A::Error> {
            let map = self.map.get_or_insert_with(StrMap::default);
            // Keys repeated within this object (not those a repeated map adds again, which
            // the repeated field itself reports).
            let first = map.0.len();
            let mut keys = self
                .decoding
                .recording_keys()
                .then(std::collections::HashSet::<Str<'de>>::new);
            while let Some(key) = access.next_key_seed(StrSeed("a string"))? {
                if let Some(keys) = &mut keys
                    && !keys.insert(key.clone())
                {
                    self.decoding.repeated(&key);
                }
                let back = self.decoding.enter_key(&key);
                let value = match self.values {
                    Values::Strings => access.next_value_seed(StrSeed("a string"))?,
                    Values::Quantities => access.next_value_seed(QuantitySeed)?,
                };
                self.decoding.leave(back);
                map.0.push((key, value));
            }
            if map.settle(first) {
                self.decoding.repeated.set(true);
            }
            Ok(true)
        }
    }
    deserializer.deserialize_any(MapVisitor {
        map,
        values,
        decoding,
    })
}

/// A string that must be one (a map key or a label value): `null` is a type error.
struct StrSeed(&'static str);

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Str<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let expecting = self.0;
        d.deserialize_any(StrVisitor(expecting))?
            .ok_or_else(|| de::Error::invalid_type(de::Unexpected::Unit, &expecting))
    }
}

/// `Quantity.UnmarshalJSON`: a string, or a bare number (k8s-openapi formats it as Rust prints
/// it), or `null`, which is zero.
struct QuantitySeed;

impl<'de> DeserializeSeed<'de> for QuantitySeed {
    type Value = Str<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for QuantitySeed {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed("0"))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// Labels: a map of strings.
struct Labels<'t, 'de>(&'t mut Option<StrMap<'de>>);

impl<'de> Merge<'de> for Labels<'_, 'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_map(self.0, Values::Strings, d, decoding).map(drop)
    }
}

impl<'de> Merge<'de> for Given<QuantityMap<'de>> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        let mut map = Some(std::mem::take(&mut self.value));
        self.given = merge_map(&mut map, Values::Quantities, d, decoding)?;
        self.value = map.unwrap_or_default();
        Ok(())
    }
}

/// Annotations: only the exclude annotation's value is kept, but every value must be a string.
struct Annotations<'t, 'de>(&'t mut Option<Str<'de>>);

impl<'de> Merge<'de> for Annotations<'_, 'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        struct AnnotationsVisitor<'t, 'd, 'de>(&'t mut Option<Str<'de>>, &'d Decoding);
        impl<'de> Visitor<'de> for AnnotationsVisitor<'_, '_, 'de> {
            type Value = ();

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_unit<E: de::Error>(self) -> Result<(), E> {
                *self.0 = None;
                Ok(())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
                // Only the exclude annotation is told apart, so only its repeat is noticed.
                let mut seen = false;
                while let Some(key) = access.next_key_seed(Key(&[super::EXCLUDE_ANNOTATION]))? {
                    let value = access.next_value_seed(StrSeed("a string"))?;
                    if key.is_some() {
                        if seen {
                            self.1.repeated(super::EXCLUDE_ANNOTATION);
                        }
                        seen = true;
                        *self.0 = Some(value);
                    }
                }
                Ok(())
            }
        }
        d.deserialize_any(AnnotationsVisitor(self.0, decoding))
    }
}

/// `ephemeralContainers`: only how many there are.
struct Count<'t>(&'t mut usize);

impl<'de> Merge<'de> for Count<'_> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, _: &Decoding) -> Result<(), D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = usize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
                Ok(0)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
                let mut count = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(count)
            }
        }
        *self.0 = d.deserialize_any(CountVisitor)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The structs' keys.

impl<'a> DaemonSet<'a> {
    /// The seed that decodes a whole DaemonSet from a JSON object; `None` for `null`.
    pub fn seed(
        decoding: &Decoding,
    ) -> impl DeserializeSeed<'a, Value = Option<DaemonSet<'a>>> + '_ {
        DaemonSetSeed(decoding)
    }
}

struct DaemonSetSeed<'d>(&'d Decoding);

impl<'de> DeserializeSeed<'de> for DaemonSetSeed<'_> {
    type Value = Option<DaemonSet<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut daemon_set = DaemonSet::default();
        let given = merge_struct(&mut daemon_set, d, self.0)?;
        Ok(given.then_some(daemon_set))
    }
}

impl<'de> Fields<'de> for DaemonSet<'de> {
    const EXPECTING: &'static str = "a DaemonSet";
    const KEYS: &'static [&'static str] = &["metadata", "spec"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Struct(&mut self.metadata), d),
            _ => next(map, &mut Struct(&mut self.spec), d),
        }
    }
}

/// A struct value (Go): `null` leaves it as it was.
struct Struct<'t, T>(&'t mut T);

impl<'de, T: Fields<'de>> Merge<'de> for Struct<'_, T> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_struct(self.0, d, decoding).map(drop)
    }
}

impl<'de> Fields<'de> for Metadata<'de> {
    const EXPECTING: &'static str = "ObjectMeta";
    const KEYS: &'static [&'static str] = &["name", "namespace", "annotations"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Text(&mut self.name), d),
            1 => next(map, &mut Text(&mut self.namespace), d),
            _ => next(map, &mut Annotations(&mut self.exclude), d),
        }
    }
}

impl<'de> Fields<'de> for DaemonSetSpec<'de> {
    const EXPECTING: &'static str = "DaemonSetSpec";
    const KEYS: &'static [&'static str] = &["selector", "template"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut self.selector, d),
            _ => next(map, &mut Struct(&mut self.template), d),
        }
    }
}

impl<'de> Fields<'de> for LabelSelector<'de> {
    const EXPECTING: &'static str = "LabelSelector";
    const KEYS: &'static [&'static str] = &["matchLabels", "matchExpressions"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Labels(&mut self.match_labels), d),
            _ => next(map, &mut self.match_expressions, d),
        }
    }
}

impl<'de> Merge<'de> for LabelSelectorRequirement<'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_struct(self, d, decoding).map(drop)
    }
}

impl<'de> Fields<'de> for LabelSelectorRequirement<'de> {
    const EXPECTING: &'static str = "LabelSelectorRequirement";
    const KEYS: &'static [&'static str] = &["key", "operator", "values"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut self.key, d),
            1 => next(map, &mut self.operator, d),
            _ => next(map, &mut self.values, d),
        }
    }
}

/// The template's `metadata`, of which only the labels are read.
struct TemplateMetadata<'t, 'de>(&'t mut Option<StrMap<'de>>);

impl<'de> Fields<'de> for TemplateMetadata<'_, 'de> {
    const EXPECTING: &'static str = "ObjectMeta";
    const KEYS: &'static [&'static str] = &["labels"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        _: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        next(map, &mut Labels(self.0), d)
    }
}

impl<'de> Fields<'de> for PodTemplateSpec<'de> {
    const EXPECTING: &'static str = "PodTemplateSpec";
    const KEYS: &'static [&'static str] = &["metadata", "spec"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Struct(&mut TemplateMetadata(&mut self.labels)), d),
            _ => next(map, &mut self.spec, d),
        }
    }
}

impl<'de> Fields<'de> for PodSpec<'de> {
    const EXPECTING: &'static str = "PodSpec";
    const KEYS: &'static [&'static str] = &[
        "restartPolicy",
        "hostNetwork",
        "activeDeadlineSeconds",
        "tolerations",
        "containers",
        "initContainers",
        "ephemeralContainers",
        "resources",
    ];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Text(&mut self.restart_policy), d),
            1 => next(map, &mut self.host_network, d),
            2 => next(map, &mut self.active_deadline_seconds, d),
            3 => next(map, &mut self.tolerations, d),
            4 => next(map, &mut self.containers, d),
            5 => next(map, &mut self.init_containers, d),
            6 => next(map, &mut Count(&mut self.ephemeral_containers), d),
            _ => next(map, &mut self.resources, d),
        }
    }
}

impl<'de> Merge<'de> for Toleration<'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_struct(self, d, decoding).map(drop)
    }
}

impl<'de> Fields<'de> for Toleration<'de> {
    const EXPECTING: &'static str = "Toleration";
    const KEYS: &'static [&'static str] =
        &["key", "operator", "value", "effect", "tolerationSeconds"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut Text(&mut self.key), d),
            1 => next(map, &mut Text(&mut self.operator), d),
            2 => next(map, &mut Text(&mut self.value), d),
            3 => next(map, &mut Text(&mut self.effect), d),
            _ => next(map, &mut self.toleration_seconds, d),
        }
    }
}

impl<'de> Merge<'de> for Container<'de> {
    fn merge<D: Deserializer<'de>>(&mut self, d: D, decoding: &Decoding) -> Result<(), D::Error> {
        merge_struct(self, d, decoding).map(drop)
    }
}

impl<'de> Fields<'de> for Container<'de> {
    const EXPECTING: &'static str = "Container";
    const KEYS: &'static [&'static str] = &["name", "restartPolicy", "resources"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut self.name, d),
            1 => next(map, &mut TextPointer(&mut self.restart_policy), d),
            _ => next(map, &mut self.resources, d),
        }
    }
}

impl<'de> Fields<'de> for ResourceRequirements<'de> {
    const EXPECTING: &'static str = "ResourceRequirements";
    const KEYS: &'static [&'static str] = &["limits", "requests"];

    fn field<A: MapAccess<'de>>(
        &mut self,
        key: usize,
        map: &mut A,
        d: &Decoding,
    ) -> Result<(), A::Error> {
        match key {
            0 => next(map, &mut self.limits, d),
            _ => next(map, &mut self.requests, d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(text: &str) -> PodSpec<'_> {
        decode(text).unwrap().daemon_set.spec.template.spec.value
    }

    #[test]
    fn reads_what_the_policy_needs_and_skips_the_rest() {
        let text = r#"{"apiVersion":"apps/v1","kind":"DaemonSet",
            "metadata":{"name":"agent","namespace":"ops","annotations":{"a":"b","daemonset-webhook.io/exclude":"true"},"x":[[[{}]]]},
            "spec":{"selector":{"matchLabels":{"b":"2","a":"1"},"matchExpressions":[{"key":"k","operator":"In","values":["v"]}]},
              "template":{"metadata":{"labels":{"app":"agent"}},
                "spec":{"restartPolicy":"Always","hostNetwork":true,"tolerations":[{"key":"k","operator":"Exists","tolerationSeconds":30}],
                  "containers":[{"name":"c","image":"i","resources":{"limits":{"cpu":"1","memory":2},"requests":{"cpu":null}}}],
                  "initContainers":[{"name":"init","restartPolicy":"Always"}],"ephemeralContainers":[{},{}],
                  "resources":{"requests":{"memory":"1Gi"}},"future":{"deep":[1,2,3]}}}},
            "status":{"numberReady":3}}"#;
        let decoded = decode(text).unwrap();
        assert!(!decoded.repeated_keys);
        let ds = decoded.daemon_set;
        assert_eq!(ds.metadata.name.as_deref(), Some("agent"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(ds.metadata.exclude.as_deref(), Some("true"));
        let selector = ds.spec.selector.unwrap();
        let labels: Vec<_> = selector.match_labels.as_ref().unwrap().iter().collect();
        assert_eq!(labels, [("a", "1"), ("b", "2")], "sorted by key");
        assert_eq!(
            selector.match_expressions.unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["v"]
        );
        let template = ds.spec.template;
        assert!(template.labels.unwrap().contains_key("app"));
        assert!(template.spec.given);
        let pod = template.spec.value;
        assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
        assert!(pod.host_network);
        assert!(pod.tolerations.given);
        assert_eq!(pod.tolerations.value[0].toleration_seconds, Some(30));
        let c = &pod.containers[0];
        assert_eq!(c.name, "c");
        assert!(c.resources.given && c.resources.value.limits.given);
        assert_eq!(c.resources.value.limits.value.get("memory").unwrap(), "2");
        assert_eq!(
            c.resources.value.requests.value.get("cpu").unwrap(),
            "0",
            "null is zero"
        );
        assert_eq!(
            pod.init_containers[0].restart_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(pod.ephemeral_containers, 2);
        assert!(pod.resources.unwrap().requests.value.contains_key("memory"));
    }

    #[test]
    fn unescaped_text_is_borrowed_and_escaped_text_decoded() {
        let pod = pod(
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"plain"},{"name":"a\u0062c"}]}}}}"#,
        );
        assert!(matches!(pod.containers[0].name, Cow::Borrowed("plain")));
        assert_eq!(pod.containers[1].name, "abc");
    }

    #[test]
    fn absent_null_and_given_are_told_apart() {
        let pod = pod(
            r#"{"spec":{"template":{"spec":{"tolerations":null,"containers":[{"name":"a"},{"name":"b","resources":null},{"name":"c","resources":{"limits":null}}]}}}}"#,
        );
        assert!(!pod.tolerations.given);
        assert!(!pod.containers[0].resources.given);
        assert!(!pod.containers[1].resources.given);
        assert!(pod.containers[2].resources.given);
        assert!(!pod.containers[2].resources.value.limits.given);
        let ds = decode(r#"{"spec":{"selector":null,"template":{"spec":null}}}"#)
            .unwrap()
            .daemon_set;
        assert!(ds.spec.selector.is_none());
        assert!(!ds.spec.template.spec.given);
        assert!(decode("null").unwrap().daemon_set == DaemonSet::default());
    }

    #[test]
    fn repeated_keys_merge_as_the_api_servers_decoder_merges_them() {
        let decoded = decode(
            r#"{"spec":{"selector":{"matchLabels":{"a":"1"}}},
                "spec":{"selector":{"matchLabels":{"b":"2","a":"3"}},"template":{"metadata":{"labels":{"a":"3"}}}}}"#,
        )
        .unwrap();
        assert!(decoded.repeated_keys);
        let spec = decoded.daemon_set.spec;
        let labels: Vec<_> = spec
            .selector
            .unwrap()
            .match_labels
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            labels,
            [
                ("a".to_owned(), "3".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        assert!(spec.template.labels.is_some());

        // Lists: elements decoded into those already there, then cut to the new length.
        let merged = pod(r#"{"spec":{"template":{"spec":{
            "containers":[{"name":"a","resources":{"limits":{"cpu":"1"}}},{"name":"b"}],
            "containers":[{"name":"c"}]}}}}"#);
        assert_eq!(merged.containers.len(), 1);
        assert_eq!(merged.containers[0].name, "c");
        assert!(
            merged.containers[0]
                .resources
                .value
                .limits
                .value
                .contains_key("cpu")
        );

        // null: clears a pointer, a map or a list; leaves a string or a struct.
        let pod = pod(
            r#"{"spec":{"template":{"spec":{"restartPolicy":"Never","restartPolicy":null,
            "resources":{"limits":{"cpu":"1"}},"resources":null,"tolerations":[{}],"tolerations":null,
            "containers":[{"name":"a","restartPolicy":"Always","restartPolicy":null,"resources":{"limits":{"cpu":"1"}},"resources":null}]}}}}"#,
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert!(pod.resources.is_none());
        assert!(pod.tolerations.value.is_empty() && !pod.tolerations.given);
        let c = &pod.containers[0];
        assert!(c.restart_policy.is_none());
        assert!(c.resources.value.limits.value.contains_key("cpu"));
        assert!(
            !c.resources.given,
            "the text's last word on the field is null"
        );
        // A key repeated inside one map: the last value.
        let ds =
            decode(r#"{"spec":{"template":{"metadata":{"labels":{"a":"1","a":"2"}}}}}"#).unwrap();
        assert_eq!(
            ds.daemon_set
                .spec
                .template
                .labels
                .unwrap()
                .get("a")
                .unwrap(),
            "2"
        );
    }

    #[test]
    fn wrong_types_of_read_fields_are_errors_with_a_path() {
        for (text, path) in [
            (
                r#"{"spec":{"template":{"spec":{"containers":"x"}}}}"#,
                "spec.template.spec.containers",
            ),
            (
                r#"{"spec":{"template":{"spec":{"containers":[{"resources":{"limits":{"cpu":[]}}}]}}}}"#,
                "spec.template.spec.containers[0].resources.limits.cpu",
            ),
            (
                r#"{"metadata":{"annotations":{"a":1}}}"#,
                "metadata.annotations.a",
            ),
            (
                r#"{"spec":{"selector":{"matchLabels":{"a":null}}}}"#,
                "spec.selector.matchLabels.a",
            ),
            (
                r#"{"spec":{"template":{"spec":{"hostNetwork":"yes"}}}}"#,
                "spec.template.spec.hostNetwork",
            ),
            (r#"[]"#, "."),
        ] {
            assert!(decode(text).is_err(), "{text}");
            let error = decode_with_path(text).unwrap_err();
            assert_eq!(error.path().to_string(), path, "{text}: {}", error.inner());
        }
        // Fields not read may hold anything.
        assert!(decode(r#"{"spec":{"template":{"spec":{"containers":[{"ports":[{"containerPort":"x"}]}]}}}}"#).is_ok());
    }

    #[test]
    fn depth_inside_skipped_fields_costs_no_stack() {
        let deep = format!(
            r#"{{"spec":{{"future":{}{}}}}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert!(decode(&deep).is_ok());
    }
}
