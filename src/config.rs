//! The policy file: YAML, every key optional, unknown keys rejected (they are typos). Errors
//! name the line and the field.
//!
//! ```yaml
//! rules:                      # each: enforce (deny / patch), warn, or off
//!   selector: enforce
//!   restartPolicy: enforce
//!   tolerations: enforce
//!   resources: enforce
//! tolerations:
//!   extra:                    # required of every DaemonSet besides the controller's own
//!     - key: node-role.kubernetes.io/control-plane
//!       operator: Exists
//!       effect: NoSchedule
//! resources:
//!   default:                  # limits, LimitRange's word for them
//!     cpu: 500m
//!     memory: 512Mi
//!   defaultRequest:           # requests for a resource that has neither
//!     cpu: 50m
//!     memory: 64Mi
//!   initContainers: true
//! exemptions:
//!   namespaces: []
//! ```
//!
//! A resource map given replaces the built-in one: the resources it lists are the ones defaulted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::policy::selector::{label_key_errors, label_value_errors};
use crate::policy::tolerations::{
    EQUAL, EXISTS, NO_EXECUTE, NO_SCHEDULE, Origin, PREFER_NO_SCHEDULE,
};
use crate::policy::{
    DefaultQuantity, Exemptions, Mode, Policy, RequiredToleration, ResourceDefaults, Rule, Rules,
};

/// A policy file that could not be loaded: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy file {}: {error}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub error: PolicyError,
}

/// Why a policy file's contents make no policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Unreadable(String),
    #[error("not valid UTF-8 (the policy file is YAML text)")]
    NotUtf8,
    /// No document at all: most likely a write caught half-way, never meant as "no policy".
    #[error("the file is empty; write {{}} for the built-in defaults")]
    Empty,
    /// Not YAML, or not a policy file's shape (an unknown key, a mode misspelt): serde-saphyr's
    /// words, with the line.
    #[error("{0}")]
    Syntax(String),
    /// A value the policy cannot take.
    #[error("{}{field}: {problem}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        line: Option<u64>,
        field: String,
        problem: String,
    },
}

impl PolicyError {
    fn invalid(line: Option<u64>, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            line,
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    rules: RulesFile,
    #[serde(default)]
    tolerations: TolerationsFile,
    #[serde(default)]
    resources: ResourcesFile,
    #[serde(default)]
    exemptions: ExemptionsFile,
}

/// Each rule named (by [`Rule::as_str`]) with its mode; a rule not named enforces.
type RulesFile = BTreeMap<Rule, Mode>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TolerationsFile {
    #[serde(default)]
    extra: Vec<Spanned<TolerationFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TolerationFile {
    #[serde(default)]
    key: String,
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    value: String,
    #[serde(default)]
    effect: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourcesFile {
    #[serde(default)]
    default: Option<BTreeMap<String, Spanned<Scalar>>>,
    #[serde(default)]
    default_request: Option<BTreeMap<String, Spanned<Scalar>>>,
    #[serde(default)]
    init_containers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExemptionsFile {
    #[serde(default)]
    namespaces: Vec<Spanned<String>>,
}

/// A quantity as YAML lets people write it: `500m`, `1`, `0.5`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Text(s) => f.write_str(s),
            Scalar::Integer(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Reads and validates the policy file at `path`.
pub fn load(path: &Path) -> Result<Policy, ConfigError> {
    load_contents(path, &crate::files::read(path))
}

/// Validates the policy file at `path` from contents already read (or the reason they could
/// not be), so a reload applies exactly what its watch compared.
pub fn load_contents(
    path: &Path,
    contents: &crate::files::Contents,
) -> Result<Policy, ConfigError> {
    let error = |error: PolicyError| ConfigError {
        path: path.to_path_buf(),
        error,
    };
    let bytes = contents
        .as_deref()
        .map_err(|e| error(PolicyError::Unreadable(e.clone())))?;
    let text = std::str::from_utf8(bytes).map_err(|_| error(PolicyError::NotUtf8))?;
    parse(text).map_err(error)
}

/// Parses and validates a policy file's text. The file is our own format, so YAML 1.2: only
/// `true` and `false` are booleans (`off` is a mode, not `false`).
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: Option<PolicyFile> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            // The first line of serde-saphyr's report, without its own "error: " prefix.
            let report = e.to_string();
            let first = report.lines().next().unwrap_or_default();
            PolicyError::Syntax(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        })?;
    let file = file.ok_or(PolicyError::Empty)?;
    let built_in = Policy::default();
    let mut rules = Rules::default();
    for (&rule, &mode) in &file.rules {
        rules.set(rule, mode);
    }
    Ok(Policy {
        rules,
        extra_tolerations: file
            .tolerations
            .extra
            .iter()
            .enumerate()
            .map(|(i, t)| toleration(i, t))
            .collect::<Result<_, _>>()?,
        resources: resource_defaults(&file.resources, built_in.resources)?,
        init_containers: file.resources.init_containers.unwrap_or(true),
        exemptions: Exemptions {
            namespaces: file
                .exemptions
                .namespaces
                .iter()
                .map(|n| match dns1123_label_error(&n.value) {
                    Some(problem) => Err(PolicyError::invalid(
                        Some(n.defined.line()),
                        "exemptions.namespaces",
                        format!("{:?} is not a namespace name: {problem}", n.value),
                    )),
                    None => Ok(n.value.clone()),
                })
                .collect::<Result<_, _>>()?,
        },
    })
}

fn toleration(
    index: usize,
    spanned: &Spanned<TolerationFile>,
) -> Result<RequiredToleration, PolicyError> {
    let t = &spanned.value;
    let line = Some(spanned.defined.line());
    let error = |field: &str, problem: String| {
        PolicyError::invalid(line, format!("tolerations.extra[{index}].{field}"), problem)
    };
    let operator = t.operator.clone().unwrap_or_else(|| EXISTS.to_owned());
    match operator.as_str() {
        EXISTS if !t.value.is_empty() => {
            return Err(error(
                "value",
                "must be empty when operator is Exists".to_owned(),
            ));
        }
        EXISTS => {}
        EQUAL if t.key.is_empty() => {
            return Err(error("key", "required when operator is Equal".to_owned()));
        }
        EQUAL => {
            if let Some(problem) = label_value_errors(&t.value).first() {
                return Err(error("value", format!("{:?}: {problem}", t.value)));
            }
        }
        other => {
            return Err(error(
                "operator",
                format!("{other:?}: supported values: \"Exists\", \"Equal\""),
            ));
        }
    }
    if let Some(problem) = label_key_errors(&t.key)
        .first()
        .filter(|_| !t.key.is_empty())
    {
        return Err(error("key", format!("{:?}: {problem}", t.key)));
    }
    if !["", NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE].contains(&t.effect.as_str()) {
        return Err(error(
            "effect",
            format!(
                "{:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\" (or none for all)",
                t.effect
            ),
        ));
    }
    Ok(RequiredToleration::new(
        t.key.clone().into(),
        operator.into(),
        t.value.clone().into(),
        t.effect.clone().into(),
        Origin::Policy,
    ))
}

/// The container resources whose request may be below the limit.
const OVERCOMMITTABLE_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

fn resource_defaults(
    file: &ResourcesFile,
    built_in: ResourceDefaults,
) -> Result<ResourceDefaults, PolicyError> {
    let quantities = |map: &Option<BTreeMap<String, Spanned<Scalar>>>, key: &str, fallback| {
        let Some(map) = map else {
            return Ok(fallback);
        };
        map.iter()
            .map(|(name, value)| {
                let error = |problem: String| {
                    PolicyError::invalid(
                        Some(value.defined.line()),
                        format!("resources.{key}.{name}"),
                        problem,
                    )
                };
                if let Some(message) = label_key_errors(name).first() {
                    return Err(error(format!("{name:?} is not a resource name: {message}")));
                }
                // Kubernetes lets a request differ from its limit only for these (its
                // IsOvercommitAllowed): an extended resource or hugepages must request exactly
                // its limit, and a default for them would make invalid pods.
                if !OVERCOMMITTABLE_RESOURCES.contains(&name.as_str()) {
                    return Err(error(format!(
                        "defaults are only for {}; {name:?} cannot be overcommitted, so a \
                         default would make pods the API server rejects",
                        OVERCOMMITTABLE_RESOURCES.join(", ")
                    )));
                }
                let text = value.value.to_string();
                let quantity =
                    DefaultQuantity::parse(&text).map_err(|e| error(format!("{text:?}: {e}")))?;
                if quantity.value.is_negative() {
                    return Err(error(format!("{text:?} must not be negative")));
                }
                Ok((name.clone(), quantity))
            })
            .collect::<Result<BTreeMap<_, _>, PolicyError>>()
    };
    let defaults = ResourceDefaults {
        limits: quantities(&file.default, "default", built_in.limits)?,
        requests: quantities(&file.default_request, "defaultRequest", built_in.requests)?,
    };
    // Where each request is written, to point at it; a built-in one is nowhere in the file.
    let at = |name: &str| {
        file.default_request
            .as_ref()
            .and_then(|m| m.get(name))
            .map(|v| v.defined.line())
    };
    for (name, request) in &defaults.requests {
        let Some(limit) = defaults.limits.get(name) else {
            if file.default_request.is_none() {
                return Err(PolicyError::invalid(
                    None,
                    "resources.default",
                    format!(
                        "replaces the built-in limits but has no {name}, which the built-in \
                         resources.defaultRequest defaults: add resources.default.{name} or \
                         set resources.defaultRequest too"
                    ),
                ));
            }
            return Err(PolicyError::invalid(
                at(name),
                format!("resources.defaultRequest.{name}"),
                format!(
                    "has no resources.default.{name}: a request is defaulted only together \
                     with a limit"
                ),
            ));
        };
        if request.value > limit.value {
            return Err(PolicyError::invalid(
                at(name),
                format!("resources.defaultRequest.{name}"),
                format!(
                    "{} is above resources.default.{name} ({}); a request may not exceed its \
                     limit",
                    request.text, limit.text
                ),
            ));
        }
    }
    Ok(defaults)
}

/// `IsDNS1123Label`, the form of a namespace's name: at most 63 lower-case alphanumerics or `-`,
/// starting and ending with an alphanumeric.
fn dns1123_label_error(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    let well_formed = bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-');
    (!well_formed).then_some(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character",
    )
}

/// A one-line description of a policy, for logs and `config check`.
pub fn describe(policy: &Policy) -> String {
    let quantities = |map: &BTreeMap<String, DefaultQuantity>| {
        map.iter()
            .map(|(name, q)| format!("{name}={}", q.text))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "rules {}; extra tolerations [{}]; limits {}; requests {}; init containers {}; \
         exempt namespaces [{}]",
        policy
            .rules
            .iter()
            .map(|(rule, mode)| format!("{rule}={}", mode.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        policy
            .extra_tolerations
            .iter()
            .map(RequiredToleration::describe)
            .collect::<Vec<_>>()
            .join(", "),
        quantities(&policy.resources.limits),
        quantities(&policy.resources.requests),
        if policy.init_containers {
            "included"
        } else {
            "excluded"
        },
        policy
            .exemptions
            .namespaces
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(map: &BTreeMap<String, DefaultQuantity>) -> Vec<(String, String)> {
        map.iter()
            .map(|(k, v)| (k.clone(), v.text.clone()))
            .collect()
    }

    #[test]
    fn an_empty_file_is_an_error_and_an_empty_mapping_the_built_in_defaults() {
        // A file with no document at all is a write caught half-way, not a policy.
        for empty in ["", "\n  \n", "# nothing\n"] {
            assert_eq!(parse(empty).unwrap_err(), PolicyError::Empty, "{empty:?}");
        }
        assert_eq!(parse("{}\n").unwrap(), Policy::default());
        assert_eq!(
            parse("resources: {}\nrules: {}\n").unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn built_in_defaults_are_the_documented_ones() {
        let policy = Policy::default();
        assert_eq!(
            texts(&policy.resources.limits),
            [
                ("cpu".into(), "500m".into()),
                ("memory".into(), "512Mi".into())
            ]
        );
        assert_eq!(
            texts(&policy.resources.requests),
            [
                ("cpu".into(), "50m".into()),
                ("memory".into(), "64Mi".into())
            ]
        );
        assert_eq!(policy.rules, Rules::default());
        assert!(policy.init_containers);
        assert!(policy.extra_tolerations.is_empty());
        assert!(policy.exemptions.namespaces.is_empty());
    }

    #[test]
    fn the_documented_example_parses_to_what_it_says() {
        let example = include_str!("../examples/policy.yaml");
        let policy = parse(example).unwrap();
        assert_eq!(policy.rules.mode(Rule::Selector), Mode::Enforce);
        assert_eq!(policy.extra_tolerations.len(), 1);
        assert_eq!(
            policy.extra_tolerations[0].describe(),
            "node-role.kubernetes.io/control-plane:NoSchedule"
        );
    }

    #[test]
    fn every_key_is_read() {
        let policy = parse(
            "rules:\n  selector: warn\n  restartPolicy: off\n  tolerations: warn\n  resources: off\n\
             tolerations:\n  extra:\n    - key: dedicated\n      operator: Equal\n      value: agents\n\
             resources:\n  default:\n    cpu: 1\n    memory: 1Gi\n    ephemeral-storage: 2Gi\n  defaultRequest:\n    cpu: 0.1\n  initContainers: false\n\
             exemptions:\n  namespaces: [kube-system, monitoring]\n",
        )
        .unwrap();
        assert_eq!(
            policy.rules.iter().collect::<Vec<_>>(),
            [
                (Rule::Selector, Mode::Warn),
                (Rule::RestartPolicy, Mode::Off),
                (Rule::Tolerations, Mode::Warn),
                (Rule::Resources, Mode::Off),
            ]
        );
        assert_eq!(policy.extra_tolerations[0].describe(), "dedicated=agents:*");
        assert_eq!(
            texts(&policy.resources.limits),
            [
                ("cpu".into(), "1".into()),
                ("ephemeral-storage".into(), "2Gi".into()),
                ("memory".into(), "1Gi".into())
            ]
        );
        assert_eq!(
            texts(&policy.resources.requests),
            [("cpu".into(), "0.1".into())]
        );
        assert!(!policy.init_containers);
        assert_eq!(
            policy.exemptions.namespaces.iter().collect::<Vec<_>>(),
            ["kube-system", "monitoring"]
        );
        assert!(describe(&policy).contains("restartPolicy=off"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_line() {
        let err = parse("resource:\n  default: {}\n").unwrap_err().to_string();
        assert!(err.contains("resource"), "{err}");
        let err = parse("resources:\n  defaults:\n    cpu: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("defaults") && err.contains("line 2"), "{err}");
        let err = parse("rules:\n  selector: deny\n").unwrap_err().to_string();
        assert!(err.contains("deny") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_line_and_field() {
        let err = parse("resources:\n  default:\n    cpu: lots\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 3: resources.default.cpu: \"lots\": quantities must match"),
            "{err}"
        );
        let err = parse("resources:\n  default:\n    cpu: -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not be negative"), "{err}");
        for name in ["example.com/foo", "hugepages-2Mi", "nvidia.com/gpu"] {
            let err = parse(&format!("resources:\n  default:\n    {name}: 1\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("line 3: resources.default.{name}: defaults are only for cpu, memory, ephemeral-storage")),
                "{err}"
            );
        }
        let err = parse("tolerations:\n  extra:\n    - key: a\n      operator: In\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 3: tolerations.extra[0].operator"),
            "{err}"
        );
        let err = parse("tolerations:\n  extra:\n    - {key: a, value: b}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must be empty when operator is Exists"),
            "{err}"
        );
        let err = parse("tolerations:\n  extra:\n    - {key: a, effect: Sometimes}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("effect"), "{err}");
        let err = parse("exemptions:\n  namespaces: [\"Not A Name\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 2: exemptions.namespaces"), "{err}");
        // A namespace's name is a DNS-1123 label, not any label value.
        for bad in ["My_NS", "UPPER", "a.b", "-dash", &"x".repeat(64)] {
            let err = parse(&format!("exemptions:\n  namespaces: [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is not a namespace name"), "{bad}: {err}");
        }
        assert!(parse("exemptions:\n  namespaces: [kube-system, ns-1, \"9\"]\n").is_ok());
    }

    #[test]
    fn requests_need_a_limit_at_least_as_large() {
        let err = parse("resources:\n  defaultRequest:\n    cpu: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("above resources.default.cpu (500m)"), "{err}");
        assert!(err.starts_with("line 3: "), "{err}");
        let err = parse("resources:\n  default:\n    cpu: 1\n  defaultRequest:\n    memory: 1Mi\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no resources.default.memory"), "{err}");
        let err = parse("resources:\n  default:\n    cpu: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("but has no memory"), "{err}");
    }

    #[test]
    fn not_yaml_is_an_error() {
        assert!(parse("resources: [").is_err());
        assert!(parse("- a\n- b\n").is_err());
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("policy file /nonexistent/policy.yaml: "),
            "{err}"
        );
    }
}
