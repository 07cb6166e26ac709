//! Writing the AdmissionReview the API server reads back: straight into one buffer, the patch
//! base64-encoded as it is serialized, and the explanations (warnings, audit annotations) fitted
//! to the limits the API server puts on them.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Serialize;

use super::{API_VERSION, KIND};
use crate::policy::{ChangeKind, Patch, Verdict, Violations, invalid_message};

/// Kubernetes' limits on admission warnings: each line, and all of them together.
pub const MAX_WARNING_LENGTH: usize = 256;
pub const MAX_WARNINGS_TOTAL: usize = 4096;
/// An audit annotation's value is cut to this many bytes: it is a summary, the patch has all.
const MAX_AUDIT_VALUE: usize = 1024;
/// Room kept for the summary line, longer than any it can be.
const SUMMARY_RESERVE: usize = 96;

/// What a response says besides `uid` and `allowed`.
pub struct Answer<'v, 'p> {
    pub uid: &'v str,
    /// The denial, with the object's name for its message.
    pub denied: Option<(&'v str, &'v Violations)>,
    /// The patch, when the response carries one.
    pub patch: Option<Patch<'v, 'p>>,
    /// The verdict whose warnings and audit annotations the response carries, and whether the
    /// changes are among them (only where the response can make them).
    pub explained: Option<(&'v Verdict<'p>, bool)>,
}

impl Answer<'_, '_> {
    /// The AdmissionReview as JSON, and how many warnings it carries.
    pub fn encode(&self, size_hint: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(size_hint);
        out.extend_from_slice(b"{\"apiVersion\":");
        string(&mut out, API_VERSION);
        out.extend_from_slice(b",\"kind\":");
        string(&mut out, KIND);
        out.extend_from_slice(b",\"response\":{\"uid\":");
        string(&mut out, self.uid);
        out.extend_from_slice(b",\"allowed\":");
        out.extend_from_slice(if self.denied.is_some() {
            b"false"
        } else {
            b"true"
        });
        if let Some((name, violations)) = self.denied {
            out.extend_from_slice(b",\"status\":");
            let _ = serde_json::to_writer(&mut out, &Invalid { name, violations });
        }
        if let Some(patch) = self.patch.filter(|p| !p.is_empty()) {
            let operations = patch.operations().count();
            out.extend_from_slice(b",\"patch\":\"");
            // Base64 in blocks as the patch is written: a patch of megabytes is never held
            // twice.
            const BLOCK: usize = 48 * 1024;
            let mut json = Vec::with_capacity(BLOCK.min(operations * 256) + 256);
            let mut encode = |json: &mut Vec<u8>, all: bool| {
                let take = if all { json.len() } else { json.len() / 3 * 3 };
                let start = out.len();
                out.resize(start + take.div_ceil(3) * 4, 0);
                let written = base64::Engine::encode_slice(
                    &base64::engine::general_purpose::STANDARD,
                    &json[..take],
                    &mut out[start..],
                )
                .unwrap_or(0);
                out.truncate(start + written);
                json.drain(..take);
            };
            patch.write_json_draining(&mut json, BLOCK, |json| encode(json, false));
            encode(&mut json, true);
            out.extend_from_slice(b"\",\"patchType\":\"JSONPatch\"");
        }
        let mut warnings = 0;
        if let Some((verdict, mutations)) = self.explained {
            let annotations = audit_annotations(verdict, mutations);
            if !annotations.is_empty() {
                out.extend_from_slice(b",\"auditAnnotations\":{");
                for (i, (key, value)) in annotations.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(&mut out, key);
                    out.push(b':');
                    string(&mut out, value);
                }
                out.push(b'}');
            }
            let mut lines = FittedWarnings {
                json: Vec::with_capacity(2048),
                scratch: String::with_capacity(256),
                ..FittedWarnings::default()
            };
            for line in verdict.warning_lines(mutations) {
                lines.push(line);
            }
            lines.finish();
            warnings = lines.count;
            if lines.count > 0 {
                out.extend_from_slice(b",\"warnings\":[");
                out.extend_from_slice(&lines.json);
                out.push(b']');
            }
        }
        out.extend_from_slice(b"}}");
        (out, warnings)
    }
}

use crate::json::string;

/// `metav1.Status` of a denial: the API server's own `Invalid`, 422, one cause per violation
/// (the first [`crate::policy::ErrorList::MAX`]; the message counts the rest).
struct Invalid<'a> {
    name: &'a str,
    violations: &'a Violations,
}

impl Serialize for Invalid<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Status<'a> {
            metadata: Empty,
            status: &'static str,
            message: String,
            reason: &'static str,
            details: Details<'a>,
            code: u16,
        }
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct Details<'a> {
            name: &'a str,
            group: &'static str,
            kind: &'static str,
            causes: Causes<'a>,
        }
        struct Causes<'a>(&'a Violations);
        impl Serialize for Causes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[derive(Serialize)]
                struct Cause<'a> {
                    reason: &'static str,
                    message: String,
                    field: &'a str,
                }
                s.collect_seq(self.0.iter().map(|v| Cause {
                    reason: v.error.cause_type(),
                    message: v.error.body(),
                    field: &v.error.field,
                }))
            }
        }
        Status {
            metadata: Empty {},
            status: "Failure",
            message: invalid_message(
                self.name,
                self.violations.errors(),
                self.violations.omitted(),
            ),
            reason: "Invalid",
            details: Details {
                name: self.name,
                group: "apps",
                kind: "DaemonSet",
                causes: Causes(self.violations),
            },
            code: http::StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
        }
        .serialize(serializer)
    }
}

/// Warning lines bounded as the API server bounds `response.warnings`: each line on one line
/// and within 256 bytes, all within 4096. Lines that do not fit are counted in a last line,
/// never dropped silently; they are formatted only as far as they fit. Kept as the JSON of
/// the array's elements.
#[derive(Default)]
struct FittedWarnings {
    json: Vec<u8>,
    count: usize,
    total: usize,
    /// A line that fitted only as the last one, held back until it is known to be last.
    held: Option<String>,
    /// Lines beyond the limit, counted.
    omitted: usize,
    scratch: String,
}

impl FittedWarnings {
    /// Adds the next line. Every line but the last must leave room for the summary line.
    fn push(&mut self, line: impl fmt::Display) {
        if self.omitted > 0 {
            self.omitted += 1;
            return;
        }
        // A line held back fits only as the last; this one says it was not: both are counted.
        if self.held.take().is_some() {
            self.omitted = 2;
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{line}");
        {
            let line = truncate(one_line(&scratch), MAX_WARNING_LENGTH);
            if self.total + line.len() + SUMMARY_RESERVE <= MAX_WARNINGS_TOTAL {
                self.emit(&line);
            } else if self.total + line.len() <= MAX_WARNINGS_TOTAL {
                self.held = Some(line.into_owned());
            } else {
                self.omitted = 1;
            }
        }
        self.scratch = scratch;
    }

    fn emit(&mut self, line: &str) {
        if self.count > 0 {
            self.json.push(b',');
        }
        string(&mut self.json, line);
        self.total += line.len();
        self.count += 1;
    }

    /// Writes the held line, or the count of lines left out.
    fn finish(&mut self) {
        if let Some(held) = self.held.take() {
            self.emit(&held);
        } else if self.omitted > 0 {
            let line = format!(
                "... and {} more warnings; the patch and audit annotations have every change",
                self.omitted
            );
            self.emit(&line);
        }
    }
}

/// Bounds `lines` as [`FittedWarnings`] does, as strings (for `check` and tests).
pub fn fit_warnings<T: fmt::Display>(lines: impl Iterator<Item = T>) -> Vec<String> {
    let mut fitted = FittedWarnings::default();
    for line in lines {
        fitted.push(line);
    }
    fitted.finish();
    serde_json::from_slice(&[b"[", fitted.json.as_slice(), b"]"].concat()).unwrap_or_default()
}

/// Escapes control characters (a map key may hold a newline), since a warning becomes an HTTP
/// `Warning` header and one line of `kubectl` output.
fn one_line(s: &str) -> Cow<'_, str> {
    if !crate::json::has_control(s.as_bytes()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return s;
    }
    let mut end = max - "...".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &s[..end]))
}

/// Joins items with ", " as far as [`MAX_AUDIT_VALUE`] allows, formatting no more than that.
#[derive(Default)]
struct Summary {
    text: String,
    full: bool,
}

impl Summary {
    fn add(&mut self, item: impl fmt::Display) {
        if self.full {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str(", ");
        }
        let _ = write!(self.text, "{item}");
        self.full = self.text.len() > MAX_AUDIT_VALUE;
    }

    fn finish(self) -> Option<String> {
        (!self.text.is_empty())
            .then(|| truncate(Cow::Owned(self.text), MAX_AUDIT_VALUE).into_owned())
    }
}

/// A summary of the verdict by kind, for `response.auditAnnotations` (keys are qualified names
/// without `/`; the API server prefixes them with the webhook's name): `tolerations-added`,
/// `tolerations-updated`, `limits-added`, `requests-added`, `warned-changes`, `violations`,
/// `warned-violations`, `exempt`, each listing what it names. Sorted by key.
pub fn audit_annotations(verdict: &Verdict<'_>, mutations: bool) -> Vec<(&'static str, String)> {
    let mut tolerations_added = Summary::default();
    let mut tolerations_updated = Summary::default();
    let mut limits_added = Summary::default();
    let mut requests_added = Summary::default();
    let mut warned_changes = Summary::default();
    let mut violations = Summary::default();
    let mut warned_violations = Summary::default();
    let mut exempt = Summary::default();
    if mutations {
        for change in verdict.changes() {
            match change.kind() {
                ChangeKind::TolerationAdded => tolerations_added.add(change.subject()),
                ChangeKind::TolerationUpdated => tolerations_updated.add(change.subject()),
                ChangeKind::Limit => limits_added.add(change.subject()),
                ChangeKind::LimitAndRequest => {
                    limits_added.add(change.subject());
                    requests_added.add(change.subject());
                }
            }
        }
        for change in verdict.warned_changes() {
            warned_changes.add(change.subject());
        }
    }
    for violation in verdict.violations.iter() {
        violations.add(&violation.error.field);
    }
    for violation in verdict.warned_violations.iter() {
        warned_violations.add(&violation.error.field);
    }
    if let Some(exemption) = &verdict.exemption {
        exempt.add(exemption);
    }
    [
        ("exempt", exempt),
        ("limits-added", limits_added),
        ("requests-added", requests_added),
        ("tolerations-added", tolerations_added),
        ("tolerations-updated", tolerations_updated),
        ("violations", violations),
        ("warned-changes", warned_changes),
        ("warned-violations", warned_violations),
    ]
    .into_iter()
    .filter_map(|(key, summary)| Some((key, summary.finish()?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_warning_too_stays_within_the_total() {
        // Sixteen lines of 250 bytes leave 96 bytes: too few for a last line of 200.
        let mut lines = vec!["w".repeat(250); 16];
        lines.push("x".repeat(200));
        let warnings = fit_warnings(lines.iter());
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_TOTAL, "{total}");
        assert_eq!(warnings.len(), 17);
        assert!(
            warnings[16].starts_with("... and 1 more warnings"),
            "{}",
            warnings[16]
        );
        // A last line that fits is shown, using the room no summary needs.
        let mut lines = vec!["w".repeat(250); 16];
        lines.push("x".repeat(90));
        let warnings = fit_warnings(lines.iter());
        assert_eq!(warnings.last().unwrap(), &"x".repeat(90));
    }

    #[test]
    fn warnings_are_single_lines() {
        let warnings = fit_warnings(["key \"a\nb\r\u{7}\" ignored", "c1 \u{85} é"].iter());
        assert_eq!(warnings, ["key \"a\\nb\\r\\u{7}\" ignored", "c1 \\u{85} é"]);
    }

    #[test]
    fn lines_beyond_the_limit_are_counted_not_formatted() {
        struct Counted<'a>(&'a std::cell::Cell<usize>);
        impl fmt::Display for Counted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.set(self.0.get() + 1);
                f.write_str(&"w".repeat(200))
            }
        }
        let formatted = std::cell::Cell::new(0);
        let warnings = fit_warnings((0..100_000).map(|_| Counted(&formatted)));
        assert!(formatted.get() < 30, "{}", formatted.get());
        let last = warnings.last().unwrap();
        assert!(
            last.starts_with(&format!("... and {} more", 100_000 - (warnings.len() - 1))),
            "{last}"
        );
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate(Cow::Borrowed("abc"), 10), "abc");
        let cut = truncate(Cow::Owned("é".repeat(200)), 256);
        assert!(cut.len() <= 256 && cut.ends_with("..."));
    }

    #[test]
    fn summaries_stop_at_their_limit() {
        let mut summary = Summary::default();
        for i in 0..100_000 {
            summary.add(format_args!("container-{i}"));
        }
        let text = summary.finish().unwrap();
        assert!(
            text.len() <= MAX_AUDIT_VALUE && text.ends_with("..."),
            "{text}"
        );
        assert!(text.starts_with("container-0, container-1, "));
    }
}
