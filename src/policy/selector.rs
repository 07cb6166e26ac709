//! `spec.selector`: well-formed, not empty, and selecting the pod template's own labels.
//!
//! Mirrors `ValidateDaemonSetSpec` (pkg/apis/apps/validation), `ValidateLabelSelector`
//! (apimachinery meta/v1/validation), `LabelSelectorAsSelector` and `Requirement.Matches`
//! (apimachinery labels), including their wording.

use super::field::{ErrorList, FieldError, Path, go_json_string, go_json_string_map, go_quote};
use super::object::{LabelSelector, LabelSelectorRequirement, StrMap};

pub const OP_IN: &str = "In";
pub const OP_NOT_IN: &str = "NotIn";
pub const OP_EXISTS: &str = "Exists";
pub const OP_DOES_NOT_EXIST: &str = "DoesNotExist";

const MISMATCH: &str = "`selector` does not match template `labels`";
const EMPTY: &str = "empty selector is invalid for daemonset";

/// Validates `spec.selector` against `spec.template.metadata.labels`.
///
/// `selector` is `None` when `spec.selector` is absent or null. The API server then reports only
/// that the (nil, match-nothing) selector does not match the labels; we also name the selector
/// itself as empty, since that is the field to fix, after the mismatch as the API server orders
/// the two for an empty selector.
pub fn validate(
    selector: Option<&LabelSelector<'_>>,
    template_labels: Option<&StrMap<'_>>,
    errors: &mut ErrorList,
) {
    // Paths are made only for errors: a valid selector allocates nothing.
    let selector_path = || Path::new("spec").child("selector");
    let mismatch = || {
        FieldError::invalid(
            &Path::new("spec.template.metadata.labels"),
            go_json_string_map(template_labels.map(StrMap::iter)),
            MISMATCH,
        )
    };

    let Some(selector) = selector else {
        errors.push_with(mismatch);
        errors.push_with(|| FieldError::invalid(&selector_path(), "null".to_owned(), EMPTY));
        return;
    };

    let before = errors.len();
    validate_label_selector(selector, &selector_path, errors);
    // `LabelSelectorAsSelector` fails exactly when the selector is malformed; the API server
    // then skips the match check rather than report the mismatch of a selector it cannot read.
    if errors.len() == before && !matches(selector, template_labels) {
        errors.push_with(mismatch);
    }
    if is_empty(selector) {
        errors.push_with(|| FieldError::invalid(&selector_path(), "{}".to_owned(), EMPTY));
    }
}

fn is_empty(selector: &LabelSelector<'_>) -> bool {
    selector.match_labels.as_ref().is_none_or(StrMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// `ValidateLabelSelector` with `AllowInvalidLabelValueInSelector: false`.
fn validate_label_selector(
    selector: &LabelSelector<'_>,
    path: &dyn Fn() -> Path,
    errors: &mut ErrorList,
) {
    // Go iterates the map in random order; sorted keys make our order stable.
    let match_labels_path = || path().child("matchLabels");
    for (key, value) in selector.match_labels.iter().flat_map(StrMap::iter) {
        for message in label_key_errors(key) {
            errors.push_with(|| FieldError::invalid(&match_labels_path(), go_quote(key), message));
        }
        for message in label_value_errors(value) {
            errors
                .push_with(|| FieldError::invalid(&match_labels_path(), go_quote(value), message));
        }
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        validate_requirement(
            requirement,
            &|| path().child("matchExpressions").index(i),
            errors,
        );
    }
}

/// `ValidateLabelSelectorRequirement` of the requirement at `path`.
fn validate_requirement(
    requirement: &LabelSelectorRequirement<'_>,
    path: &dyn Fn() -> Path,
    errors: &mut ErrorList,
) {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_ref() {
        OP_IN | OP_NOT_IN => {
            if values.is_empty() {
                errors.push_with(|| {
                    FieldError::required(
                        &path().child("values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    )
                });
            }
        }
        OP_EXISTS | OP_DOES_NOT_EXIST => {
            if !values.is_empty() {
                errors.push_with(|| {
                    FieldError::forbidden(
                        &path().child("values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )
                });
            }
        }
        other => errors.push_with(|| {
            FieldError::invalid(
                &path().child("operator"),
                go_json_string(other),
                "not a valid selector operator",
            )
        }),
    }
    for message in label_key_errors(&requirement.key) {
        errors.push_with(|| {
            FieldError::invalid(&path().child("key"), go_quote(&requirement.key), message)
        });
    }
    for (i, value) in values.iter().enumerate() {
        for message in label_value_errors(value) {
            errors.push_with(|| {
                FieldError::invalid(&path().child("values").index(i), go_quote(value), message)
            });
        }
    }
}

/// Whether a well-formed selector selects `labels`: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold. An empty selector selects everything.
pub fn matches(selector: &LabelSelector<'_>, labels: Option<&StrMap<'_>>) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key)).map(|v| v.as_ref());
    let labels_hold = selector
        .match_labels
        .iter()
        .flat_map(StrMap::iter)
        .all(|(key, value)| get(key) == Some(value));
    labels_hold
        && selector.match_expressions.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            let label = get(&r.key);
            let listed = |v: &str| values.iter().any(|value| value == v);
            match r.operator.as_ref() {
                OP_IN => label.is_some_and(listed),
                OP_NOT_IN => label.is_none_or(|v| !listed(v)),
                OP_EXISTS => label.is_some(),
                OP_DOES_NOT_EXIST => label.is_none(),
                _ => false,
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Label syntax (apimachinery api/validate/content: IsLabelKey, IsLabelValue, DNS-1123).

const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_MAX_LENGTH: usize = 63;
const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;

/// `validation.RegexError`, including its doubled space between examples.
fn regex_error(message: &str, format: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{message} (regex used for validation is '{format}')");
    }
    let mut out = format!("{message} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{format}')"));
    out
}

fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain_syntax(s: &str) -> bool {
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                edge(first) && edge(last) && bytes.iter().all(|b| edge(b) || *b == b'-')
            }
            _ => false,
        }
    })
}

fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errors.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !is_dns1123_subdomain_syntax(value) {
        errors.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errors
}

/// `IsLabelKey` (formerly `IsQualifiedName`): an optional DNS subdomain prefix and `/`, then a
/// name of at most 63 characters.
pub fn label_key_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                errors.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errors.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(LABEL_KEY_ERR, LABEL_KEY_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > LABEL_MAX_LENGTH {
        errors.push(format!("name part {}", max_len_error(LABEL_MAX_LENGTH)));
    }
    if !is_label_name(name) {
        errors.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_ERR,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errors
}

/// `IsLabelValue`: empty, or at most 63 characters of the label-name alphabet.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > LABEL_MAX_LENGTH {
        errors.push(max_len_error(LABEL_MAX_LENGTH));
    }
    if !value.is_empty() && !is_label_name(value) {
        errors.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::borrow::Cow;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> StrMap<'a> {
        pairs.iter().copied().collect()
    }

    fn requirement<'a>(
        key: &'a str,
        operator: &'a str,
        values: &[&'a str],
    ) -> LabelSelectorRequirement<'a> {
        LabelSelectorRequirement {
            key: Cow::Borrowed(key),
            operator: Cow::Borrowed(operator),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| Cow::Borrowed(*v)).collect())
            },
        }
    }

    /// The errors of [`super::validate`], all of them.
    fn validate(
        selector: Option<&LabelSelector<'_>>,
        template_labels: Option<&StrMap<'_>>,
    ) -> Vec<FieldError> {
        let mut errors = ErrorList::default();
        super::validate(selector, template_labels, &mut errors);
        errors.into_vec()
    }

    fn selector<'a>(
        pairs: &[(&'a str, &'a str)],
        expressions: Vec<LabelSelectorRequirement<'a>>,
    ) -> LabelSelector<'a> {
        LabelSelector {
            match_labels: if pairs.is_empty() {
                None
            } else {
                Some(labels(pairs))
            },
            match_expressions: if expressions.is_empty() {
                None
            } else {
                Some(expressions)
            },
        }
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn match_labels_must_all_be_present_and_equal() {
        let s = selector(&[("app", "web"), ("tier", "fe")], vec![]);
        assert!(matches(
            &s,
            Some(&labels(&[("app", "web"), ("tier", "fe"), ("extra", "x")]))
        ));
        assert!(!matches(&s, Some(&labels(&[("app", "web")]))));
        assert!(!matches(
            &s,
            Some(&labels(&[("app", "web"), ("tier", "be")]))
        ));
        assert!(!matches(&s, None));
    }

    #[test]
    fn in_requires_the_key_with_one_of_the_values() {
        let s = selector(&[], vec![requirement("env", OP_IN, &["prod", "staging"])]);
        assert!(matches(&s, Some(&labels(&[("env", "prod")]))));
        assert!(matches(&s, Some(&labels(&[("env", "staging")]))));
        assert!(!matches(&s, Some(&labels(&[("env", "dev")]))));
        assert!(!matches(&s, Some(&labels(&[]))));
        assert!(!matches(&s, None));
    }

    #[test]
    fn not_in_matches_an_absent_key() {
        let s = selector(&[], vec![requirement("env", OP_NOT_IN, &["prod"])]);
        assert!(matches(&s, Some(&labels(&[("env", "dev")]))));
        assert!(matches(&s, Some(&labels(&[("other", "x")]))));
        assert!(matches(&s, None));
        assert!(!matches(&s, Some(&labels(&[("env", "prod")]))));
    }

    #[test]
    fn exists_and_does_not_exist_look_at_the_key_only() {
        let exists = selector(&[], vec![requirement("gpu", OP_EXISTS, &[])]);
        let absent = selector(&[], vec![requirement("gpu", OP_DOES_NOT_EXIST, &[])]);
        let with_empty_value = labels(&[("gpu", "")]);
        assert!(matches(&exists, Some(&with_empty_value)));
        assert!(!matches(&absent, Some(&with_empty_value)));
        assert!(!matches(&exists, None));
        assert!(matches(&absent, None));
        assert!(matches(&absent, Some(&labels(&[("app", "x")]))));
    }

    #[test]
    fn every_requirement_must_hold() {
        let s = selector(
            &[("app", "agent")],
            vec![
                requirement("env", OP_IN, &["prod"]),
                requirement("canary", OP_DOES_NOT_EXIST, &[]),
            ],
        );
        assert!(matches(
            &s,
            Some(&labels(&[("app", "agent"), ("env", "prod")]))
        ));
        assert!(!matches(
            &s,
            Some(&labels(&[
                ("app", "agent"),
                ("env", "prod"),
                ("canary", "1")
            ]))
        ));
        assert!(!matches(
            &s,
            Some(&labels(&[("app", "other"), ("env", "prod")]))
        ));
    }

    #[test]
    fn empty_selector_matches_everything_but_is_invalid() {
        let s = selector(&[], vec![]);
        assert!(matches(&s, None));
        assert_eq!(
            messages(&validate(Some(&s), Some(&labels(&[("app", "x")])))),
            ["spec.selector: Invalid value: {}: empty selector is invalid for daemonset"]
        );
        let explicit_empty = LabelSelector {
            match_labels: Some(StrMap::default()),
            match_expressions: Some(vec![]),
        };
        assert_eq!(validate(Some(&explicit_empty), None).len(), 1);
    }

    #[test]
    fn missing_selector_is_reported_as_empty_and_as_not_matching() {
        assert_eq!(
            messages(&validate(None, Some(&labels(&[("app", "x")])))),
            [
                r#"spec.template.metadata.labels: Invalid value: {"app":"x"}: `selector` does not match template `labels`"#,
                "spec.selector: Invalid value: null: empty selector is invalid for daemonset",
            ]
        );
    }

    #[test]
    fn mismatch_names_the_template_labels() {
        let s = selector(&[("app", "web")], vec![]);
        assert_eq!(
            messages(&validate(
                Some(&s),
                Some(&labels(&[("app", "db"), ("tier", "x")]))
            )),
            [
                r#"spec.template.metadata.labels: Invalid value: {"app":"db","tier":"x"}: `selector` does not match template `labels`"#
            ]
        );
        assert_eq!(
            messages(&validate(Some(&s), None)),
            [
                "spec.template.metadata.labels: Invalid value: null: `selector` does not match template `labels`"
            ]
        );
        assert!(validate(Some(&s), Some(&labels(&[("app", "web")]))).is_empty());
    }

    #[test]
    fn malformed_requirements_are_reported_and_skip_the_match() {
        let s = selector(
            &[],
            vec![
                requirement("a", "in", &["x"]),
                requirement("b", OP_IN, &[]),
                requirement("c", OP_NOT_IN, &[]),
                requirement("d", OP_EXISTS, &["x"]),
                requirement("e", OP_DOES_NOT_EXIST, &["x"]),
            ],
        );
        assert_eq!(
            messages(&validate(Some(&s), Some(&labels(&[("z", "z")])))),
            [
                r#"spec.selector.matchExpressions[0].operator: Invalid value: "in": not a valid selector operator"#,
                "spec.selector.matchExpressions[1].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[2].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[3].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                "spec.selector.matchExpressions[4].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ]
        );
    }

    #[test]
    fn label_syntax_in_the_selector_is_checked() {
        let s = selector(
            &[("bad key!", "ok"), ("app", "-bad-")],
            vec![requirement("k", OP_IN, &["fine", "not fine"])],
        );
        let got = messages(&validate(Some(&s), None));
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with(r#"spec.selector.matchLabels: Invalid value: "-bad-": a valid label must be an empty string"#), "{}", got[0]);
        assert_eq!(
            got[1],
            r#"spec.selector.matchLabels: Invalid value: "bad key!": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
        );
        assert!(got[2].starts_with(r#"spec.selector.matchExpressions[0].values[1]: Invalid value: "not fine": a valid label"#));
    }

    #[test]
    fn empty_and_null_values_are_alike() {
        let with_values =
            |operator: &'static str, values: Option<Vec<Cow<'static, str>>>| LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: Cow::Borrowed("k"),
                    operator: Cow::Borrowed(operator),
                    values,
                }]),
            };
        // `values: []` and `values: null` (or absent) are both "not specified".
        for values in [None, Some(vec![])] {
            let errors = validate(Some(&with_values(OP_IN, values.clone())), None);
            assert_eq!(errors.len(), 1, "{values:?}: {errors:?}");
            assert!(errors[0].to_string().contains("Required value"));
            assert!(
                validate(
                    Some(&with_values(OP_EXISTS, values)),
                    Some(&labels(&[("k", "")]))
                )
                .is_empty()
            );
        }
        // An empty string is a value: it makes In well formed and Exists malformed.
        let in_empty = with_values(OP_IN, Some(vec![Cow::Borrowed("")]));
        assert!(validate(Some(&in_empty), Some(&labels(&[("k", "")]))).is_empty());
        assert_eq!(
            validate(Some(&in_empty), Some(&labels(&[("k", "x")]))).len(),
            1
        );
        let exists_empty = with_values(OP_EXISTS, Some(vec![Cow::Borrowed("")]));
        assert_eq!(
            messages(&validate(Some(&exists_empty), Some(&labels(&[("k", "")])))),
            [
                "spec.selector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            ]
        );
    }

    #[test]
    fn empty_match_labels_with_expressions_is_not_an_empty_selector() {
        let s = LabelSelector {
            match_labels: Some(StrMap::default()),
            match_expressions: Some(vec![requirement("app", OP_EXISTS, &[])]),
        };
        assert!(validate(Some(&s), Some(&labels(&[("app", "x")]))).is_empty());
        assert_eq!(validate(Some(&s), Some(&labels(&[]))).len(), 1);
    }

    #[test]
    fn every_bad_match_label_is_reported_in_key_order() {
        let long = "v".repeat(64);
        let s = selector(&[("b!", "ok"), ("a", "bad value"), ("c", &long)], vec![]);
        let got = messages(&validate(Some(&s), None));
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with(
            r#"spec.selector.matchLabels: Invalid value: "bad value": a valid label"#
        ));
        assert!(got[1].starts_with(
            r#"spec.selector.matchLabels: Invalid value: "b!": name part must consist"#
        ));
        assert!(
            got[2].ends_with(": must be no more than 63 characters"),
            "{}",
            got[2]
        );
        // A malformed selector is not also reported as a mismatch.
        assert!(!got.iter().any(|m| m.contains("does not match")));
    }

    #[test]
    fn label_key_edges() {
        // "/": an empty prefix and an empty name, as IsQualifiedName reports them.
        assert_eq!(
            label_key_errors("/"),
            [
                "prefix part must be non-empty".to_owned(),
                "name part must be non-empty".to_owned(),
                format!(
                    "name part {}",
                    regex_error(
                        LABEL_KEY_ERR,
                        LABEL_KEY_FMT,
                        &["MyName", "my.name", "123-abc"]
                    )
                ),
            ]
        );
        let long_prefix = format!("{}.example.com", "a".repeat(250));
        assert_eq!(
            label_key_errors(&format!("{long_prefix}/name")),
            ["prefix part must be no more than 253 characters"]
        );
        let limit_prefix = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(limit_prefix.len(), 253);
        assert!(label_key_errors(&format!("{limit_prefix}/name")).is_empty());
        assert!(label_value_errors(&"v".repeat(63)).is_empty());
    }

    #[test]
    fn label_keys_follow_is_label_key() {
        assert!(label_key_errors("app").is_empty());
        assert!(label_key_errors("app.kubernetes.io/name").is_empty());
        assert!(label_key_errors("a").is_empty());
        assert!(label_key_errors(&"a".repeat(63)).is_empty());
        assert_eq!(
            label_key_errors(&"a".repeat(64)),
            ["name part must be no more than 63 characters"]
        );
        let empty = label_key_errors("");
        assert_eq!(empty.len(), 2);
        assert_eq!(empty[0], "name part must be non-empty");
        assert_eq!(label_key_errors("/name"), ["prefix part must be non-empty"]);
        assert_eq!(
            label_key_errors("Example.com/name"),
            [
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
        assert!(label_key_errors("a/b/c")[0].starts_with("a valid label key must consist of"));
        assert!(label_key_errors("a/b/c")[0].ends_with(
            "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ));
        assert_eq!(label_key_errors("-a").len(), 1);
        assert_eq!(label_key_errors("a..b").len(), 0);
        assert_eq!(label_key_errors("a.-b.c/x").len(), 1);
    }

    #[test]
    fn label_values_follow_is_label_value() {
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("v1.2_3-x").is_empty());
        assert_eq!(
            label_value_errors(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
        assert_eq!(label_value_errors("_a").len(), 1);
        assert_eq!(label_value_errors(&format!("-{}", "a".repeat(63))).len(), 2);
        assert_eq!(label_value_errors("é").len(), 1);
    }
}
