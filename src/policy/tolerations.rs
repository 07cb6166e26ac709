//! The tolerations the DaemonSet controller gives every daemon pod
//! (`AddOrUpdateDaemonPodTolerations`, pkg/controller/daemon/util), written into the template so
//! that it says what the pods really get.

use std::borrow::Cow;

use json_patch::{AddOperation, PatchOperation, RemoveOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Toleration;
use serde_json::{Map, Value};

use super::{Change, ChangeKind};

pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const EXISTS: &str = "Exists";
pub const EQUAL: &str = "Equal";

/// Who requires a toleration: the DaemonSet controller, or the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Controller,
    Policy,
}

/// A toleration every daemon pod must carry, without tolerationSeconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredToleration {
    pub key: Cow<'static, str>,
    pub operator: Cow<'static, str>,
    pub value: Cow<'static, str>,
    pub effect: Cow<'static, str>,
    pub origin: Origin,
}

impl RequiredToleration {
    /// Whether `other` is the same toleration (whoever requires it).
    pub fn same_toleration(&self, other: &RequiredToleration) -> bool {
        (&self.key, &self.operator, &self.value, &self.effect)
            == (&other.key, &other.operator, &other.value, &other.effect)
    }
}

const fn controller(key: &'static str, effect: &'static str) -> RequiredToleration {
    RequiredToleration {
        key: Cow::Borrowed(key),
        operator: Cow::Borrowed(EXISTS),
        value: Cow::Borrowed(""),
        effect: Cow::Borrowed(effect),
        origin: Origin::Controller,
    }
}

/// In the controller's order. Pods must survive the node problems the node lifecycle controller
/// taints for, and be schedulable on nodes under pressure or cordoned.
pub const DAEMON_TOLERATIONS: [RequiredToleration; 6] = [
    controller("node.kubernetes.io/not-ready", NO_EXECUTE),
    controller("node.kubernetes.io/unreachable", NO_EXECUTE),
    controller("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/unschedulable", NO_SCHEDULE),
];

/// Added only for `hostNetwork: true` pods: they do not need the pod network to be ready.
pub const HOST_NETWORK_TOLERATION: RequiredToleration =
    controller("node.kubernetes.io/network-unavailable", NO_SCHEDULE);

impl RequiredToleration {
    fn to_json(&self) -> Value {
        let mut toleration = Map::new();
        if !self.key.is_empty() {
            toleration.insert("key".to_owned(), Value::from(self.key.as_ref()));
        }
        toleration.insert("operator".to_owned(), Value::from(self.operator.as_ref()));
        if !self.value.is_empty() {
            toleration.insert("value".to_owned(), Value::from(self.value.as_ref()));
        }
        if !self.effect.is_empty() {
            toleration.insert("effect".to_owned(), Value::from(self.effect.as_ref()));
        }
        Value::Object(toleration)
    }

    /// `key:effect`, `key=value:effect`, `*:effect` for a toleration of every key.
    pub fn describe(&self) -> String {
        let key = if self.key.is_empty() { "*" } else { &self.key };
        let effect = if self.effect.is_empty() {
            "*"
        } else {
            &self.effect
        };
        if self.value.is_empty() {
            format!("{key}:{effect}")
        } else {
            format!("{key}={}:{effect}", self.value)
        }
    }

    fn why(&self) -> &'static str {
        match self.origin {
            Origin::Controller => "which the DaemonSet controller gives every daemon pod",
            Origin::Policy => "which the webhook's policy requires of every DaemonSet",
        }
    }

    /// `Toleration.MatchToleration`: the same key, effect, operator and value, compared
    /// literally (an empty operator is not `Exists`).
    fn matches(&self, toleration: &Toleration) -> bool {
        toleration.key.as_deref().unwrap_or_default() == self.key
            && toleration.effect.as_deref().unwrap_or_default() == self.effect
            && toleration.operator.as_deref().unwrap_or_default() == self.operator
            && toleration.value.as_deref().unwrap_or_default() == self.value
    }
}

/// The tolerations a pod template with `host_network` gets from the controller.
pub fn daemon_tolerations(host_network: bool) -> impl Iterator<Item = RequiredToleration> {
    DAEMON_TOLERATIONS
        .into_iter()
        .chain(host_network.then_some(HOST_NETWORK_TOLERATION))
}

/// Patches `tolerations` (at `path`, `None` when absent or null) the way
/// `AddOrUpdateTolerationInPodSpec` changes it: every matching toleration becomes exactly the
/// controller's (which here can only mean its `tolerationSeconds` goes), and a toleration with
/// no match is appended. Nothing is removed or reordered.
pub fn mutate(
    tolerations: Option<&[Toleration]>,
    required: &[RequiredToleration],
    path: &PointerBuf,
    operations: &mut Vec<PatchOperation>,
    changes: &mut Vec<Change>,
) {
    let existing = tolerations.unwrap_or_default();
    let mut appended: Vec<&RequiredToleration> = Vec::new();
    for wanted in required {
        let mut matched = false;
        for (i, toleration) in existing.iter().enumerate() {
            if !wanted.matches(toleration) {
                continue;
            }
            matched = true;
            if let Some(seconds) = toleration.toleration_seconds {
                operations.push(PatchOperation::Remove(RemoveOperation {
                    path: path
                        .with_trailing_token(i.to_string())
                        .with_trailing_token("tolerationSeconds"),
                }));
                changes.push(Change {
                    kind: ChangeKind::TolerationUpdated,
                    subject: wanted.describe(),
                    message: format!(
                        "toleration {} (tolerations[{i}]): dropped tolerationSeconds {seconds}, so it matches the one {} (without a time limit)",
                        wanted.describe(),
                        wanted.why()
                    ),
                });
            }
        }
        if !matched {
            appended.push(wanted);
            changes.push(Change {
                kind: ChangeKind::TolerationAdded,
                subject: wanted.describe(),
                message: format!(
                    "added toleration {} (operator {}), {}",
                    wanted.describe(),
                    wanted.operator,
                    wanted.why()
                ),
            });
        }
    }
    if appended.is_empty() {
        return;
    }
    if tolerations.is_none() {
        operations.push(PatchOperation::Add(AddOperation {
            path: path.clone(),
            value: Value::Array(
                appended
                    .into_iter()
                    .map(RequiredToleration::to_json)
                    .collect(),
            ),
        }));
    } else {
        let end = path.with_trailing_token("-");
        operations.extend(appended.into_iter().map(|t| {
            PatchOperation::Add(AddOperation {
                path: end.clone(),
                value: t.to_json(),
            })
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(key: &str, operator: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_owned()),
            operator: (!operator.is_empty()).then(|| operator.to_owned()),
            effect: (!effect.is_empty()).then(|| effect.to_owned()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    fn all_daemon(host_network: bool) -> Vec<Toleration> {
        daemon_tolerations(host_network)
            .map(|t| toleration(&t.key, EXISTS, &t.effect, None))
            .collect()
    }

    fn run_with(
        tolerations: Option<&[Toleration]>,
        required: &[RequiredToleration],
    ) -> (Value, Vec<Change>) {
        let mut ops = Vec::new();
        let mut changes = Vec::new();
        let path = PointerBuf::parse("/spec/template/spec/tolerations").unwrap();
        mutate(tolerations, required, &path, &mut ops, &mut changes);
        (serde_json::to_value(ops).unwrap(), changes)
    }

    fn run(tolerations: Option<&[Toleration]>, host_network: bool) -> (Value, Vec<Change>) {
        run_with(
            tolerations,
            &daemon_tolerations(host_network).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn policy_tolerations_are_added_like_the_controllers() {
        let control_plane = RequiredToleration {
            key: "node-role.kubernetes.io/control-plane".into(),
            operator: EXISTS.into(),
            value: "".into(),
            effect: NO_SCHEDULE.into(),
            origin: Origin::Policy,
        };
        let dedicated = RequiredToleration {
            key: "dedicated".into(),
            operator: EQUAL.into(),
            value: "agents".into(),
            effect: "".into(),
            origin: Origin::Policy,
        };
        let required = [control_plane.clone(), dedicated.clone()];
        let (ops, changes) = run_with(None, &required);
        assert_eq!(
            ops[0]["value"],
            json!([
                { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "dedicated", "operator": "Equal", "value": "agents" },
            ])
        );
        assert_eq!(changes[1].subject, "dedicated=agents:*");
        assert!(
            changes[0].message.contains("policy requires"),
            "{}",
            changes[0].message
        );
        let present = vec![
            toleration(
                "node-role.kubernetes.io/control-plane",
                EXISTS,
                NO_SCHEDULE,
                None,
            ),
            Toleration {
                value: Some("agents".into()),
                ..toleration("dedicated", EQUAL, "", Some(5))
            },
        ];
        let (ops, _) = run_with(Some(&present), &required);
        assert_eq!(
            ops,
            json!([{ "op": "remove", "path": "/spec/template/spec/tolerations/1/tolerationSeconds" }])
        );
    }

    #[test]
    fn absent_tolerations_get_the_whole_set_in_one_add() {
        let (ops, changes) = run(None, false);
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": "/spec/template/spec/tolerations", "value": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute" },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute" },
                { "key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule" },
            ]}])
        );
        assert_eq!(changes.len(), 6);
        assert!(
            changes
                .iter()
                .all(|c| c.kind == ChangeKind::TolerationAdded)
        );
    }

    #[test]
    fn host_network_adds_network_unavailable() {
        let (ops, changes) = run(None, true);
        assert_eq!(ops[0]["value"].as_array().unwrap().len(), 7);
        assert_eq!(
            ops[0]["value"][6],
            json!({ "key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule" })
        );
        assert_eq!(
            changes[6].subject,
            "node.kubernetes.io/network-unavailable:NoSchedule"
        );
    }

    #[test]
    fn existing_list_is_appended_to_without_reordering() {
        let user = vec![
            toleration("", EXISTS, "", None),
            toleration("node.kubernetes.io/not-ready", EXISTS, NO_EXECUTE, None),
        ];
        let (ops, _) = run(Some(&user), false);
        let ops = ops.as_array().unwrap();
        assert_eq!(ops.len(), 5, "not-ready is already there");
        for op in ops {
            assert_eq!(op["op"], "add");
            assert_eq!(op["path"], "/spec/template/spec/tolerations/-");
        }
        assert_eq!(ops[0]["value"]["key"], "node.kubernetes.io/unreachable");
    }

    #[test]
    fn complete_set_asks_for_nothing() {
        let (ops, changes) = run(Some(&all_daemon(false)), false);
        assert_eq!(ops, json!([]));
        assert!(changes.is_empty());
        let (ops, _) = run(Some(&all_daemon(true)), true);
        assert_eq!(ops, json!([]));
        // Without hostNetwork the network-unavailable toleration is the user's own business.
        let (ops, _) = run(Some(&all_daemon(true)), false);
        assert_eq!(ops, json!([]));
    }

    #[test]
    fn matching_toleration_with_seconds_is_updated_in_place() {
        let mut user = all_daemon(false);
        user[0].toleration_seconds = Some(300);
        user.push(toleration(
            "node.kubernetes.io/not-ready",
            EXISTS,
            NO_EXECUTE,
            Some(60),
        ));
        let (ops, changes) = run(Some(&user), false);
        assert_eq!(
            ops,
            json!([
                { "op": "remove", "path": "/spec/template/spec/tolerations/0/tolerationSeconds" },
                { "op": "remove", "path": "/spec/template/spec/tolerations/6/tolerationSeconds" },
            ])
        );
        assert_eq!(changes.len(), 2);
        assert!(
            changes[0].message.contains("dropped tolerationSeconds 300"),
            "{}",
            changes[0].message
        );
        assert!(
            changes
                .iter()
                .all(|c| c.kind == ChangeKind::TolerationUpdated)
        );
    }

    #[test]
    fn only_an_exact_key_operator_value_effect_match_counts() {
        // Operator Equal (or empty), another effect, or a value: not the controller's toleration.
        let user = vec![
            toleration("node.kubernetes.io/not-ready", "", NO_EXECUTE, Some(300)),
            toleration("node.kubernetes.io/not-ready", "Equal", NO_EXECUTE, None),
            toleration(
                "node.kubernetes.io/unreachable",
                EXISTS,
                NO_SCHEDULE,
                Some(5),
            ),
            Toleration {
                value: Some("x".to_owned()),
                ..toleration(
                    "node.kubernetes.io/disk-pressure",
                    EXISTS,
                    NO_SCHEDULE,
                    None,
                )
            },
            toleration("node.kubernetes.io/memory-pressure", EXISTS, "", None),
        ];
        let (ops, changes) = run(Some(&user), false);
        assert_eq!(ops.as_array().unwrap().len(), 6);
        assert!(
            changes
                .iter()
                .all(|c| c.kind == ChangeKind::TolerationAdded)
        );
    }

    #[test]
    fn every_warning_fits_the_api_servers_limit() {
        let mut user = all_daemon(true);
        for t in &mut user {
            t.toleration_seconds = Some(i64::MAX);
        }
        let (_, changes) = run(Some(&user), true);
        assert_eq!(changes.len(), 7);
        assert!(changes.iter().all(|c| c.message.len() <= 256));
    }
}
