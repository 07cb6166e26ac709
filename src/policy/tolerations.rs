//! The tolerations the DaemonSet controller gives every daemon pod
//! (`AddOrUpdateDaemonPodTolerations`, pkg/controller/daemon/util), and those the policy file
//! adds, written into the template so that it says what the pods really get.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use super::object::{Given, Toleration};
use super::patch::{Op, Operation, Pointer, Token, Value};
use super::{ChangeKind, Rule};

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
#[derive(Debug, Clone)]
pub struct RequiredToleration {
    pub key: Cow<'static, str>,
    pub operator: Cow<'static, str>,
    pub value: Cow<'static, str>,
    pub effect: Cow<'static, str>,
    pub origin: Origin,
    /// What every review that adds it writes about it, made once.
    texts: OnceLock<Texts>,
}

/// A toleration's texts: its description (`key:effect`), its JSON as the patch adds it, and
/// the warning that says it was added.
#[derive(Debug, Clone)]
pub(super) struct Texts {
    pub(super) description: String,
    pub(super) json: Vec<u8>,
    pub(super) added: String,
}

impl PartialEq for RequiredToleration {
    fn eq(&self, other: &Self) -> bool {
        self.same_toleration(other) && self.origin == other.origin
    }
}

impl Eq for RequiredToleration {}

impl RequiredToleration {
    pub const fn new(
        key: Cow<'static, str>,
        operator: Cow<'static, str>,
        value: Cow<'static, str>,
        effect: Cow<'static, str>,
        origin: Origin,
    ) -> Self {
        Self {
            key,
            operator,
            value,
            effect,
            origin,
            texts: OnceLock::new(),
        }
    }

    pub(super) fn texts(&self) -> &Texts {
        self.texts.get_or_init(|| {
            let key = if self.key.is_empty() { "*" } else { &self.key };
            let effect = if self.effect.is_empty() {
                "*"
            } else {
                &self.effect
            };
            let description = if self.value.is_empty() {
                format!("{key}:{effect}")
            } else {
                format!("{key}={}:{effect}", self.value)
            };
            let added = format!(
                "added toleration {description} (operator {}), {}",
                self.operator,
                self.why()
            );
            let mut json = Vec::new();
            self.write_json_uncached(&mut json);
            Texts {
                description,
                json,
                added,
            }
        })
    }

    /// Whether `other` is the same toleration (whoever requires it).
    pub fn same_toleration(&self, other: &RequiredToleration) -> bool {
        (&self.key, &self.operator, &self.value, &self.effect)
            == (&other.key, &other.operator, &other.value, &other.effect)
    }
}

const fn controller(key: &'static str, effect: &'static str) -> RequiredToleration {
    RequiredToleration::new(
        Cow::Borrowed(key),
        Cow::Borrowed(EXISTS),
        Cow::Borrowed(""),
        Cow::Borrowed(effect),
        Origin::Controller,
    )
}

/// In the controller's order. Pods must survive the node problems the node lifecycle controller
/// taints for, and be schedulable on nodes under pressure or cordoned.
pub static DAEMON_TOLERATIONS: [RequiredToleration; 6] = [
    controller("node.kubernetes.io/not-ready", NO_EXECUTE),
    controller("node.kubernetes.io/unreachable", NO_EXECUTE),
    controller("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
    controller("node.kubernetes.io/unschedulable", NO_SCHEDULE),
];

/// Added only for `hostNetwork: true` pods: they do not need the pod network to be ready.
pub static HOST_NETWORK_TOLERATION: RequiredToleration =
    controller("node.kubernetes.io/network-unavailable", NO_SCHEDULE);

impl RequiredToleration {
    /// `key:effect`, `key=value:effect`, `*:effect` for a toleration of every key.
    pub fn describe(&self) -> String {
        self.texts().description.clone()
    }

    fn why(&self) -> &'static str {
        match self.origin {
            Origin::Controller => "which the DaemonSet controller gives every daemon pod",
            Origin::Policy => "which the webhook's policy requires of every DaemonSet",
        }
    }

    /// `Toleration.MatchToleration`: the same key, effect, operator and value, compared
    /// literally (an empty operator is not `Exists`).
    fn matches(&self, toleration: &Toleration<'_>) -> bool {
        fn text<'t>(field: &'t Option<Cow<'_, str>>) -> &'t str {
            field.as_deref().unwrap_or_default()
        }
        text(&toleration.key) == self.key
            && text(&toleration.effect) == self.effect
            && text(&toleration.operator) == self.operator
            && text(&toleration.value) == self.value
    }
}

impl fmt::Display for RequiredToleration {
    /// `key:effect`, `key=value:effect`, `*:effect` for a toleration of every key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.texts().description)
    }
}

/// The tolerations a pod template with `host_network` gets from the controller.
pub fn daemon_tolerations(host_network: bool) -> impl Iterator<Item = &'static RequiredToleration> {
    DAEMON_TOLERATIONS
        .iter()
        .chain(host_network.then_some(&HOST_NETWORK_TOLERATION))
}

/// The controller's tolerations, as one list of references per `hostNetwork`.
static CONTROLLER: [&RequiredToleration; 7] = [
    &DAEMON_TOLERATIONS[0],
    &DAEMON_TOLERATIONS[1],
    &DAEMON_TOLERATIONS[2],
    &DAEMON_TOLERATIONS[3],
    &DAEMON_TOLERATIONS[4],
    &DAEMON_TOLERATIONS[5],
    &HOST_NETWORK_TOLERATION,
];

/// What the template must carry: the controller's tolerations, then the policy's. An extra
/// toleration the controller's list (or the policy, twice) already has is required once: added
/// one after another, the second would match the first.
pub fn required<'e>(
    host_network: bool,
    extra: &'e [RequiredToleration],
) -> Cow<'e, [&'e RequiredToleration]> {
    let controller = &CONTROLLER[..DAEMON_TOLERATIONS.len() + usize::from(host_network)];
    if extra.is_empty() {
        return Cow::Borrowed(controller);
    }
    let mut required: Vec<&RequiredToleration> = Vec::new();
    let controller = daemon_tolerations(host_network).map(|t| -> &'e RequiredToleration { t });
    for toleration in controller.chain(extra) {
        if !required.iter().any(|r| r.same_toleration(toleration)) {
            required.push(toleration);
        }
    }
    Cow::Owned(required)
}

/// One change to the tolerations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TolerationChange<'p> {
    pub toleration: &'p RequiredToleration,
    /// `None`: appended. Else the index of a matching toleration whose tolerationSeconds was
    /// dropped, and what it was.
    pub updated: Option<(usize, i64)>,
}

impl TolerationChange<'_> {
    pub fn kind(&self) -> ChangeKind {
        match self.updated {
            None => ChangeKind::TolerationAdded,
            Some(_) => ChangeKind::TolerationUpdated,
        }
    }

    /// What changed, briefly: `node.kubernetes.io/not-ready:NoExecute`.
    pub fn subject(&self) -> &RequiredToleration {
        self.toleration
    }

    /// One line for `response.warnings`.
    pub fn message(&self) -> impl fmt::Display + '_ {
        Message(self)
    }
}

struct Message<'c, 'p>(&'c TolerationChange<'p>);

impl fmt::Display for Message<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece: a format string's machinery costs more than the text.
        let wanted = self.0.toleration;
        match self.0.updated {
            Some((index, seconds)) => {
                f.write_str("toleration ")?;
                fmt::Display::fmt(wanted, f)?;
                write!(
                    f,
                    " (tolerations[{index}]): dropped tolerationSeconds {seconds}"
                )?;
                f.write_str(", so it matches the one ")?;
                f.write_str(wanted.why())?;
                f.write_str(" (without a time limit)")
            }
            None => f.write_str(&wanted.texts().added),
        }
    }
}

/// What the rule changes in one pod template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutation<'p> {
    /// Whether the template has a `tolerations` list to append to (else it is added whole).
    list_given: bool,
    pub changes: Vec<TolerationChange<'p>>,
    /// The tolerations appended, in order.
    appended: Vec<&'p RequiredToleration>,
}

impl<'p> Mutation<'p> {
    pub const RULE: Rule = Rule::Tolerations;

    /// The patch operations, in order: the updates, then the appends.
    pub fn operations(&self) -> impl Iterator<Item = Operation<'_>> {
        let removes = self.changes.iter().filter_map(|c| {
            let (index, _) = c.updated?;
            Some(Operation {
                op: Op::Remove,
                path: Pointer::pod_spec(&[
                    Token::Key("tolerations"),
                    Token::Index(index),
                    Token::Key("tolerationSeconds"),
                ]),
                value: Value::None,
            })
        });
        let whole = (!self.list_given && !self.appended.is_empty()).then(|| Operation {
            op: Op::Add,
            path: Pointer::pod_spec(&[Token::Key("tolerations")]),
            value: Value::Tolerations(&self.appended),
        });
        let appends = self
            .appended
            .iter()
            .filter(|_| self.list_given)
            .map(|toleration| Operation {
                op: Op::Add,
                path: Pointer::pod_spec(&[Token::Key("tolerations"), Token::End]),
                value: Value::Toleration(toleration),
            });
        removes.chain(whole).chain(appends)
    }
}

/// Changes `tolerations` the way `AddOrUpdateTolerationInPodSpec` does for each of `required`:
/// every matching toleration becomes exactly the required one (which here can only mean its
/// `tolerationSeconds` goes), and a toleration with no match is appended. Nothing is removed or
/// reordered.
pub fn mutate<'p>(
    tolerations: &Given<Vec<Toleration<'_>>>,
    required: &[&'p RequiredToleration],
) -> Mutation<'p> {
    let existing = &tolerations.value;
    let mut mutation = Mutation {
        list_given: tolerations.given,
        ..Mutation::default()
    };
    for &wanted in required {
        let mut matched = false;
        for (i, toleration) in existing.iter().enumerate() {
            if !wanted.matches(toleration) {
                continue;
            }
            matched = true;
            if let Some(seconds) = toleration.toleration_seconds {
                mutation.changes.push(TolerationChange {
                    toleration: wanted,
                    updated: Some((i, seconds)),
                });
            }
        }
        if !matched {
            mutation.appended.push(wanted);
            mutation.changes.push(TolerationChange {
                toleration: wanted,
                updated: None,
            });
        }
    }
    mutation
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn text(s: &str) -> Option<Cow<'_, str>> {
        (!s.is_empty()).then_some(Cow::Borrowed(s))
    }

    fn toleration<'a>(
        key: &'a str,
        operator: &'a str,
        effect: &'a str,
        seconds: Option<i64>,
    ) -> Toleration<'a> {
        Toleration {
            key: text(key),
            operator: text(operator),
            effect: text(effect),
            toleration_seconds: seconds,
            value: None,
        }
    }

    fn all_daemon(host_network: bool) -> Vec<Toleration<'static>> {
        daemon_tolerations(host_network)
            .map(|t| toleration(&t.key, EXISTS, &t.effect, None))
            .collect()
    }

    /// A change as the tests look at it.
    struct Seen {
        kind: ChangeKind,
        subject: String,
        message: String,
    }

    fn run_with(
        tolerations: Option<&[Toleration<'_>]>,
        required: &[RequiredToleration],
    ) -> (Value, Vec<Seen>) {
        let given = Given {
            value: tolerations.map(<[_]>::to_vec).unwrap_or_default(),
            given: tolerations.is_some(),
        };
        let required: Vec<&RequiredToleration> = required.iter().collect();
        let mutation = mutate(&given, &required);
        let ops: Vec<Operation<'_>> = mutation.operations().collect();
        let seen = mutation
            .changes
            .iter()
            .map(|c| Seen {
                kind: c.kind(),
                subject: c.subject().to_string(),
                message: c.message().to_string(),
            })
            .collect();
        (
            serde_json::from_slice(&crate::policy::patch::to_json(ops)).unwrap(),
            seen,
        )
    }

    fn run(tolerations: Option<&[Toleration<'_>]>, host_network: bool) -> (Value, Vec<Seen>) {
        run_with(
            tolerations,
            &daemon_tolerations(host_network)
                .cloned()
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn policy_tolerations_are_added_like_the_controllers() {
        let control_plane = RequiredToleration::new(
            "node-role.kubernetes.io/control-plane".into(),
            EXISTS.into(),
            "".into(),
            NO_SCHEDULE.into(),
            Origin::Policy,
        );
        let dedicated = RequiredToleration::new(
            "dedicated".into(),
            EQUAL.into(),
            "agents".into(),
            "".into(),
            Origin::Policy,
        );
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
                value: text("agents"),
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
                value: text("x"),
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
