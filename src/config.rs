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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy file {path}: {message}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
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
    load_contents(path, &crate::server::reload::read(path))
}

/// Validates the policy file at `path` from contents already read (or the reason they could
/// not be), so a reload applies exactly what its watch compared.
pub fn load_contents(
    path: &Path,
    contents: &crate::server::reload::Contents,
) -> Result<Policy, ConfigError> {
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        message,
    };
    let bytes = contents.as_deref().map_err(|e| error(e.clone()))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| error("not valid UTF-8 (the policy file is YAML text)".to_owned()))?;
    parse(text).map_err(error)
}

/// Parses and validates a policy file's text. The file is our own format, so YAML 1.2: only
/// `true` and `false` are booleans (`off` is a mode, not `false`).
pub fn parse(text: &str) -> Result<Policy, String> {
    if text.trim().is_empty() {
        return Ok(Policy::default());
    }
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: Option<PolicyFile> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            // The first line of serde-saphyr's report, without its own "error: " prefix.
            let report = e.to_string();
            let first = report.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_owned()
        })?;
    let file = file.unwrap_or_default();
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
                .map(|n| {
                    let problems = crate::policy::selector::label_value_errors(&n.value);
                    if n.value.is_empty() || !problems.is_empty() {
                        Err(format!(
                            "line {}: exemptions.namespaces: {:?} is not a namespace name",
                            n.defined.line(),
                            n.value
                        ))
                    } else {
                        Ok(n.value.clone())
                    }
                })
                .collect::<Result<_, _>>()?,
        },
    })
}

fn toleration(
    index: usize,
    spanned: &Spanned<TolerationFile>,
) -> Result<RequiredToleration, String> {
    let t = &spanned.value;
    let at = format!(
        "line {}: tolerations.extra[{index}]",
        spanned.defined.line()
    );
    let operator = t.operator.clone().unwrap_or_else(|| EXISTS.to_owned());
    match operator.as_str() {
        EXISTS if !t.value.is_empty() => {
            return Err(format!("{at}.value: must be empty when operator is Exists"));
        }
        EXISTS => {}
        EQUAL if t.key.is_empty() => {
            return Err(format!("{at}.key: required when operator is Equal"));
        }
        EQUAL => {
            if let Some(problem) = label_value_errors(&t.value).first() {
                return Err(format!("{at}.value: {:?}: {problem}", t.value));
            }
        }
        other => {
            return Err(format!(
                "{at}.operator: {other:?}: supported values: \"Exists\", \"Equal\""
            ));
        }
    }
    if let Some(problem) = label_key_errors(&t.key)
        .first()
        .filter(|_| !t.key.is_empty())
    {
        return Err(format!("{at}.key: {:?}: {problem}", t.key));
    }
    if !["", NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE].contains(&t.effect.as_str()) {
        return Err(format!(
            "{at}.effect: {:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\" (or none for all)",
            t.effect
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
) -> Result<ResourceDefaults, String> {
    let quantities = |map: &Option<BTreeMap<String, Spanned<Scalar>>>, key: &str, fallback| {
        let Some(map) = map else {
            return Ok(fallback);
        };
        map.iter()
            .map(|(name, value)| {
                let field = format!("line {}: resources.{key}.{name}", value.defined.line());
                if let Some(message) = label_key_errors(name).first() {
                    return Err(format!(
                        "{field}: {name:?} is not a resource name: {message}"
                    ));
                }
                // Kubernetes lets a request differ from its limit only for these (its
                // IsOvercommitAllowed): an extended resource or hugepages must request exactly
                // its limit, and a default for them would make invalid pods.
                if !OVERCOMMITTABLE_RESOURCES.contains(&name.as_str()) {
                    return Err(format!(
                        "{field}: defaults are only for {}; {name:?} cannot be overcommitted,                          so a default would make pods the API server rejects",
                        OVERCOMMITTABLE_RESOURCES.join(", ")
                    ));
                }
                let text = value.value.to_string();
                let quantity =
                    DefaultQuantity::parse(&text).map_err(|e| format!("{field}: {text:?}: {e}"))?;
                if quantity.value.is_negative() {
                    return Err(format!("{field}: {text:?} must not be negative"));
                }
                Ok((name.clone(), quantity))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
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
            .map_or_else(String::new, |v| format!("line {}: ", v.defined.line()))
    };
    for (name, request) in &defaults.requests {
        let Some(limit) = defaults.limits.get(name) else {
            if file.default_request.is_none() {
                return Err(format!(
                    "resources.default replaces the built-in limits but has no {name}, which the \
                     built-in resources.defaultRequest defaults: add resources.default.{name} or \
                     set resources.defaultRequest too"
                ));
            }
            return Err(format!(
                "{}resources.defaultRequest.{name} has no resources.default.{name}: a request is \
                 defaulted only together with a limit",
                at(name)
            ));
        };
        if request.value > limit.value {
            return Err(format!(
                "{}resources.defaultRequest.{name} ({}) is above resources.default.{name} ({}); \
                 a request may not exceed its limit",
                at(name),
                request.text,
                limit.text
            ));
        }
    }
    Ok(defaults)
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
    fn empty_file_means_built_in_defaults() {
        assert_eq!(parse("").unwrap(), Policy::default());
        assert_eq!(parse("# nothing\n").unwrap(), Policy::default());
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
        let err = parse("resource:\n  default: {}\n").unwrap_err();
        assert!(err.contains("resource"), "{err}");
        let err = parse("resources:\n  defaults:\n    cpu: 1\n").unwrap_err();
        assert!(err.contains("defaults") && err.contains("line 2"), "{err}");
        let err = parse("rules:\n  selector: deny\n").unwrap_err();
        assert!(err.contains("deny") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_line_and_field() {
        let err = parse("resources:\n  default:\n    cpu: lots\n").unwrap_err();
        assert!(
            err.starts_with("line 3: resources.default.cpu: \"lots\": quantities must match"),
            "{err}"
        );
        let err = parse("resources:\n  default:\n    cpu: -1\n").unwrap_err();
        assert!(err.contains("must not be negative"), "{err}");
        for name in ["example.com/foo", "hugepages-2Mi", "nvidia.com/gpu"] {
            let err = parse(&format!("resources:\n  default:\n    {name}: 1\n")).unwrap_err();
            assert!(
                err.starts_with(&format!("line 3: resources.default.{name}: defaults are only for cpu, memory, ephemeral-storage")),
                "{err}"
            );
        }
        let err = parse("tolerations:\n  extra:\n    - key: a\n      operator: In\n").unwrap_err();
        assert!(
            err.starts_with("line 3: tolerations.extra[0].operator"),
            "{err}"
        );
        let err = parse("tolerations:\n  extra:\n    - {key: a, value: b}\n").unwrap_err();
        assert!(
            err.contains("must be empty when operator is Exists"),
            "{err}"
        );
        let err = parse("tolerations:\n  extra:\n    - {key: a, effect: Sometimes}\n").unwrap_err();
        assert!(err.contains("effect"), "{err}");
        let err = parse("exemptions:\n  namespaces: [\"Not A Name\"]\n").unwrap_err();
        assert!(err.starts_with("line 2: exemptions.namespaces"), "{err}");
    }

    #[test]
    fn requests_need_a_limit_at_least_as_large() {
        let err = parse("resources:\n  defaultRequest:\n    cpu: 1\n").unwrap_err();
        assert!(err.contains("above resources.default.cpu (500m)"), "{err}");
        assert!(err.starts_with("line 3: "), "{err}");
        let err = parse("resources:\n  default:\n    cpu: 1\n  defaultRequest:\n    memory: 1Mi\n")
            .unwrap_err();
        assert!(err.contains("has no resources.default.memory"), "{err}");
        let err = parse("resources:\n  default:\n    cpu: 1\n").unwrap_err();
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
