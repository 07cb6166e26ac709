//! The policy file: YAML, every key optional, unknown keys rejected (they are typos).
//!
//! ```yaml
//! resources:
//!   default:          # limits, LimitRange's word for them
//!     cpu: 500m
//!     memory: 512Mi
//!   defaultRequest:   # requests for a resource that has neither
//!     cpu: 50m
//!     memory: 64Mi
//! ```
//!
//! A map given replaces the built-in one: the resources it lists are the ones defaulted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::selector::label_key_errors;
use crate::policy::{DefaultQuantity, Policy, ResourceDefaults};

#[derive(Debug, thiserror::Error)]
#[error("policy file {path}: {message}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    resources: Option<ResourcesFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourcesFile {
    #[serde(default)]
    default: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    default_request: Option<BTreeMap<String, Scalar>>,
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
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    parse(&text).map_err(error)
}

/// Parses and validates a policy file's text.
pub fn parse(text: &str) -> Result<Policy, String> {
    if text.trim().is_empty() {
        return Ok(Policy::default());
    }
    let file: Option<PolicyFile> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let file = file.unwrap_or_default();
    let mut policy = Policy::default();
    if let Some(resources) = file.resources {
        policy.resources = resource_defaults(resources, policy.resources)?;
    }
    Ok(policy)
}

fn resource_defaults(
    file: ResourcesFile,
    built_in: ResourceDefaults,
) -> Result<ResourceDefaults, String> {
    let quantities = |map: Option<BTreeMap<String, Scalar>>, key: &str, fallback| match map {
        None => Ok(fallback),
        Some(map) => map
            .into_iter()
            .map(|(name, value)| {
                let field = format!("resources.{key}.{name}");
                if let Some(message) = label_key_errors(&name).first() {
                    return Err(format!(
                        "{field}: {name:?} is not a resource name: {message}"
                    ));
                }
                let text = value.to_string();
                let quantity =
                    DefaultQuantity::parse(&text).map_err(|e| format!("{field}: {text:?}: {e}"))?;
                if quantity.value.is_negative() {
                    return Err(format!("{field}: {text:?} must not be negative"));
                }
                Ok((name, quantity))
            })
            .collect::<Result<BTreeMap<_, _>, String>>(),
    };
    let defaults = ResourceDefaults {
        limits: quantities(file.default, "default", built_in.limits)?,
        requests: quantities(file.default_request, "defaultRequest", built_in.requests)?,
    };
    for (name, request) in &defaults.requests {
        let Some(limit) = defaults.limits.get(name) else {
            return Err(format!(
                "resources.defaultRequest.{name} has no resources.default.{name}: a request is \
                 defaulted only together with a limit"
            ));
        };
        if request.value > limit.value {
            return Err(format!(
                "resources.defaultRequest.{name} ({}) is above resources.default.{name} ({}); \
                 a request may not exceed its limit",
                request.text, limit.text
            ));
        }
    }
    Ok(defaults)
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
        assert_eq!(parse("resources: {}\n").unwrap(), Policy::default());
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
    }

    #[test]
    fn maps_replace_the_built_in_ones() {
        let policy = parse(
            "resources:\n  default:\n    cpu: 1\n    memory: 1Gi\n    ephemeral-storage: 2Gi\n  defaultRequest:\n    cpu: 0.1\n",
        )
        .unwrap();
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
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = parse("resource:\n  default: {}\n").unwrap_err();
        assert!(err.contains("resource"), "{err}");
        let err = parse("resources:\n  defaults:\n    cpu: 1\n").unwrap_err();
        assert!(err.contains("defaults"), "{err}");
        assert!(
            err.contains("line 2") || err.contains("2:"),
            "no line in: {err}"
        );
    }

    #[test]
    fn bad_quantities_are_errors_naming_the_field() {
        let err = parse("resources:\n  default:\n    cpu: lots\n").unwrap_err();
        assert!(
            err.starts_with("resources.default.cpu: \"lots\": quantities must match"),
            "{err}"
        );
        let err = parse("resources:\n  default:\n    cpu: -1\n").unwrap_err();
        assert!(err.contains("must not be negative"), "{err}");
    }

    #[test]
    fn requests_need_a_limit_at_least_as_large() {
        let err = parse("resources:\n  defaultRequest:\n    cpu: 1\n").unwrap_err();
        assert!(err.contains("above resources.default.cpu (500m)"), "{err}");
        let err = parse("resources:\n  default:\n    cpu: 1\n  defaultRequest:\n    memory: 1Mi\n")
            .unwrap_err();
        assert!(err.contains("has no resources.default.memory"), "{err}");
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
