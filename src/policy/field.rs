//! Field errors as the API server words them (k8s.io/apimachinery/pkg/util/validation/field).
//!
//! `Error()` is `<field>: <body>`; the body is the error type's text, then the bad value where
//! the type shows one, then `: <detail>`. Bad values render as the API server renders them: a
//! Go `string` with `%q`, everything else (maps, structs, named string types) as Go's
//! `json.Marshal` output.

use std::fmt::{self, Write as _};

/// A field path such as `spec.template.spec.containers[0].resources.limits[cpu]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    /// The value has the wrong JSON type for its field.
    TypeInvalid,
}

impl ErrorType {
    /// The `CauseType` of a `metav1.StatusCause`.
    pub fn cause_type(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    fn text(self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TypeInvalid => "Invalid value",
        }
    }
}

/// One violation: `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub error_type: ErrorType,
    pub field: String,
    /// The bad value, already rendered as the API server renders it; `None` for types that
    /// never show a value (Required, Forbidden).
    pub bad_value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: &Path, detail: impl Into<String>) -> Self {
        Self {
            error_type: ErrorType::Required,
            field: field.to_string(),
            bad_value: None,
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: &Path, detail: impl Into<String>) -> Self {
        Self {
            error_type: ErrorType::Forbidden,
            field: field.to_string(),
            bad_value: None,
            detail: detail.into(),
        }
    }

    /// `field.TypeInvalid` without the value: the object could not be decoded at `field`.
    pub fn type_invalid(field: &Path, detail: impl Into<String>) -> Self {
        Self {
            error_type: ErrorType::TypeInvalid,
            field: field.to_string(),
            bad_value: None,
            detail: detail.into(),
        }
    }

    /// `field.Invalid` with a value already rendered by [`go_quote`] or [`go_json`].
    pub fn invalid(field: &Path, rendered_value: String, detail: impl Into<String>) -> Self {
        Self {
            error_type: ErrorType::Invalid,
            field: field.to_string(),
            bad_value: Some(rendered_value),
            detail: detail.into(),
        }
    }

    /// `field.NotSupported`: the detail lists the supported values, each `strconv.Quote`d.
    pub fn not_supported(field: &Path, rendered_value: String, supported: &[&str]) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self {
            error_type: ErrorType::NotSupported,
            field: field.to_string(),
            bad_value: Some(rendered_value),
            detail,
        }
    }

    /// `ErrorBody()`: the message without the field, as `metav1.StatusCause.message` carries it.
    pub fn body(&self) -> String {
        let mut body = self.error_type.text().to_owned();
        if let Some(value) = &self.bad_value {
            body.push_str(": ");
            body.push_str(value);
        }
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }

    pub fn cause_type(&self) -> &'static str {
        self.error_type.cause_type()
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A `field.ErrorList` with a bound: the first [`ErrorList::MAX`] errors are kept, the rest
/// only counted, so that an object with a million bad labels costs time, not memory, and its
/// answer stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorList {
    errors: Vec<FieldError>,
    omitted: usize,
}

impl ErrorList {
    /// Errors kept, as many as any person reads.
    pub const MAX: usize = 100;

    pub fn push(&mut self, error: FieldError) {
        self.push_with(|| error);
    }

    /// Adds the error `make` builds, building it only if it is kept.
    pub fn push_with(&mut self, make: impl FnOnce() -> FieldError) {
        if self.errors.len() < Self::MAX {
            self.errors.push(make());
        } else {
            self.omitted += 1;
        }
    }

    /// Errors found, kept or not.
    pub fn len(&self) -> usize {
        self.errors.len() + self.omitted
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The errors kept, in the order found.
    pub fn kept(&self) -> &[FieldError] {
        &self.errors
    }

    /// Errors found beyond those kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    #[cfg(test)]
    pub fn into_vec(self) -> Vec<FieldError> {
        assert_eq!(self.omitted, 0, "test lists stay within the bound");
        self.errors
    }
}

/// `ErrorList.ToAggregate().Error()`: one message alone, several as `[a, b]`, exact duplicates
/// dropped; `omitted` errors not listed are counted at the end (`[a, b, and 7 more errors]`).
pub fn aggregate<'e>(errors: impl IntoIterator<Item = &'e FieldError>, omitted: usize) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut messages: Vec<String> = Vec::new();
    for message in errors.into_iter().map(FieldError::to_string) {
        if seen.insert(message.clone()) {
            messages.push(message);
        }
    }
    if omitted > 0 {
        messages.push(format!("and {omitted} more errors"));
    }
    match messages.len() {
        1 => messages.remove(0),
        _ => format!("[{}]", messages.join(", ")),
    }
}

/// `apierrors.NewInvalid(...).Error()` for a DaemonSet: `DaemonSet.apps "<name>" is invalid: ...`.
pub fn invalid_message<'e>(
    name: &str,
    errors: impl IntoIterator<Item = &'e FieldError>,
    omitted: usize,
) -> String {
    let mut errors = errors.into_iter().peekable();
    if errors.peek().is_none() && omitted == 0 {
        format!("DaemonSet.apps {} is invalid", go_quote(name))
    } else {
        format!(
            "DaemonSet.apps {} is invalid: {}",
            go_quote(name),
            aggregate(errors, omitted)
        )
    }
}

/// Go's `strconv.Quote`: double-quoted, with Go escapes for quotes, backslashes and characters
/// that are not printable.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols
/// and the ASCII space. Control, format, separator (other than U+0020), private-use and
/// unassigned characters are not printable.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    let u = c as u32;
    // Separators other than the ASCII space, format characters (Cf) commonly met, and the
    // private-use areas.
    !(c.is_whitespace()
        || matches!(u, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
            | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb
            | 0xe000..=0xf8ff | 0xf0000..=0x10ffff))
}

/// Go's `json.Marshal` of a string: HTML-sensitive characters and U+2028/U+2029 escaped too.
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `json.Marshal` of a `map[string]string`, given its entries sorted by key (as Go sorts
/// them); a nil map is `null`.
pub fn go_json_string_map<'a>(map: Option<impl IntoIterator<Item = (&'a str, &'a str)>>) -> String {
    let Some(map) = map else {
        return "null".to_owned();
    };
    let mut out = String::from("{");
    for (i, (key, value)) in map.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&go_json_string(key));
        out.push(':');
        out.push_str(&go_json_string(value));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn paths_render_like_field_path() {
        let p = Path::new("spec")
            .child("template")
            .child("spec")
            .child("containers")
            .index(0)
            .child("resources")
            .child("limits")
            .key("cpu");
        assert_eq!(
            p.as_str(),
            "spec.template.spec.containers[0].resources.limits[cpu]"
        );
    }

    #[test]
    fn not_supported_reads_like_the_api_server() {
        let e = FieldError::not_supported(
            &Path::new("spec")
                .child("template")
                .child("spec")
                .child("restartPolicy"),
            go_json_string("Never"),
            &["Always"],
        );
        assert_eq!(
            e.to_string(),
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#
        );
        assert_eq!(e.cause_type(), "FieldValueNotSupported");
    }

    #[test]
    fn required_and_forbidden_show_no_value() {
        let p = Path::new("spec").child("selector");
        assert_eq!(
            FieldError::required(&p, "").to_string(),
            "spec.selector: Required value"
        );
        assert_eq!(
            FieldError::forbidden(&p, "nope").to_string(),
            "spec.selector: Forbidden: nope"
        );
    }

    #[test]
    fn aggregate_brackets_only_several_distinct_messages() {
        let p = Path::new("a");
        let one = FieldError::required(&p, "x");
        let two = FieldError::required(&p, "y");
        assert_eq!(
            aggregate(std::slice::from_ref(&one), 0),
            "a: Required value: x"
        );
        assert_eq!(
            aggregate(&[one.clone(), one.clone()], 0),
            "a: Required value: x"
        );
        assert_eq!(
            aggregate(&[one.clone(), two.clone(), one.clone()], 0),
            "[a: Required value: x, a: Required value: y]"
        );
        assert_eq!(
            invalid_message("ds", &[two], 0),
            r#"DaemonSet.apps "ds" is invalid: a: Required value: y"#
        );
        assert_eq!(
            invalid_message("ds", &[one], 3),
            r#"DaemonSet.apps "ds" is invalid: [a: Required value: x, and 3 more errors]"#
        );
    }

    #[test]
    fn error_lists_keep_a_bounded_number_and_count_the_rest() {
        let mut list = ErrorList::default();
        let mut built = 0;
        for i in 0..ErrorList::MAX + 5 {
            list.push_with(|| {
                built += 1;
                FieldError::required(&Path::new("a").index(i), "")
            });
        }
        assert_eq!(
            built,
            ErrorList::MAX,
            "errors beyond the bound are not built"
        );
        assert_eq!(list.kept().len(), ErrorList::MAX);
        assert_eq!(list.omitted(), 5);
        assert_eq!(list.len(), ErrorList::MAX + 5);
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote("plain"), r#""plain""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(go_quote("\u{1}"), r#""\x01""#);
        assert_eq!(go_quote("\u{7f}"), r#""\x7f""#);
        assert_eq!(go_quote("héllo ünïcode"), "\"héllo ünïcode\"");
        assert_eq!(go_quote("\u{200b}"), r#""\u200b""#);
        assert_eq!(go_quote("\u{feff}"), r#""\ufeff""#);
    }

    #[test]
    fn go_json_escapes_html_characters() {
        assert_eq!(go_json_string("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(go_json_string("\u{1}\u{8}"), r#""\u0001\b""#);
        let mut labels = BTreeMap::new();
        labels.insert("tier".to_owned(), "web".to_owned());
        labels.insert("app".to_owned(), "x".to_owned());
        fn entries(map: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
        }
        assert_eq!(
            go_json_string_map(Some(entries(&labels))),
            r#"{"app":"x","tier":"web"}"#
        );
        assert_eq!(go_json_string_map(None::<Vec<(&str, &str)>>), "null");
        assert_eq!(go_json_string_map(Some(entries(&BTreeMap::new()))), "{}");
    }
}
