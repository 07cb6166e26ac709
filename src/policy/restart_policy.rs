//! `spec.template.spec.restartPolicy` must be `Always`: a daemon pod that exits is restarted in
//! place, never left completed.

use super::field::{ErrorList, FieldError, Path, go_json_string};

const ALWAYS: &str = "Always";
const POD_RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];

/// Validates the pod template's restart policy as `ValidateDaemonSetSpec` does.
///
/// Unset (or empty, which API defaulting treats as unset) is `Always`. A value no pod may have
/// gets the pod-spec error first, as `ValidatePodTemplateSpec` reports it, then the DaemonSet's.
pub fn validate(restart_policy: Option<&str>, errors: &mut ErrorList) {
    let policy = match restart_policy {
        None | Some("") | Some(ALWAYS) => return,
        Some(policy) => policy,
    };
    let path = Path::new("spec.template.spec.restartPolicy");
    if !POD_RESTART_POLICIES.contains(&policy) {
        errors.push(FieldError::not_supported(
            &path,
            go_json_string(policy),
            &POD_RESTART_POLICIES,
        ));
    }
    errors.push(FieldError::not_supported(
        &path,
        go_json_string(policy),
        &[ALWAYS],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(policy: Option<&str>) -> Vec<String> {
        let mut errors = ErrorList::default();
        validate(policy, &mut errors);
        errors.kept().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn always_and_unset_are_valid() {
        assert!(messages(Some("Always")).is_empty());
        assert!(messages(None).is_empty());
        assert!(messages(Some("")).is_empty());
    }

    #[test]
    fn never_and_on_failure_are_unsupported() {
        assert_eq!(
            messages(Some("Never")),
            [
                r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#
            ]
        );
        assert_eq!(
            messages(Some("OnFailure")),
            [
                r#"spec.template.spec.restartPolicy: Unsupported value: "OnFailure": supported values: "Always""#
            ]
        );
    }

    #[test]
    fn an_unknown_policy_is_reported_twice_like_the_api_server() {
        assert_eq!(
            messages(Some("always")),
            [
                r#"spec.template.spec.restartPolicy: Unsupported value: "always": supported values: "Always", "OnFailure", "Never""#,
                r#"spec.template.spec.restartPolicy: Unsupported value: "always": supported values: "Always""#,
            ]
        );
    }
}
