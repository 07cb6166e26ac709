//! Default limits and requests for containers and init containers that lack them, in the spirit
//! of a LimitRange's `default` and `defaultRequest`. Like a LimitRange, this can change a pod's
//! QoS class: a container with no resources becomes Burstable, and one whose requests are all
//! above the default limits gets limits equal to them (Guaranteed, if every container does).
//! It never turns Guaranteed Burstable: a limit without a request is left for the API server to
//! copy into the request.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::field::{ErrorList, FieldError, Path, go_quote};
use super::object::{Container, PodSpec, QuantityMap, ResourceRequirements};
use super::patch::{Op, Operation, Pointer, Token, Value};
use super::quantity::Quantity;
use super::{ChangeKind, Rule};

/// A configured default: the text as written (what the patch carries) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultQuantity {
    pub text: String,
    pub value: Quantity,
}

impl DefaultQuantity {
    pub fn parse(text: &str) -> Result<Self, super::quantity::ParseQuantityError> {
        Ok(Self {
            text: text.to_owned(),
            value: Quantity::parse(text)?,
        })
    }
}

/// Defaults per resource name (`cpu`, `memory`, ...). Every resource with a default request
/// has a default limit at least as large; [`crate::config`] enforces that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDefaults {
    /// `default` in LimitRange terms: the limit a container gets.
    pub limits: BTreeMap<String, DefaultQuantity>,
    /// `defaultRequest`: the request a container with neither gets.
    pub requests: BTreeMap<String, DefaultQuantity>,
}

impl Default for ResourceDefaults {
    /// limits cpu 500m, memory 512Mi; requests cpu 50m, memory 64Mi.
    fn default() -> Self {
        let map = |pairs: [(&str, &str); 2]| {
            pairs
                .into_iter()
                .map(|(name, text)| {
                    let value = DefaultQuantity::parse(text).expect("built-in default parses");
                    (name.to_owned(), value)
                })
                .collect()
        };
        Self {
            limits: map([("cpu", "500m"), ("memory", "512Mi")]),
            requests: map([("cpu", "50m"), ("memory", "64Mi")]),
        }
    }
}

/// A pod template's container lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    Containers,
    InitContainers,
}

impl ContainerList {
    /// The field's JSON name.
    pub fn field(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
        }
    }

    /// What one of its containers is called in messages.
    fn noun(self) -> &'static str {
        match self {
            ContainerList::Containers => "container",
            ContainerList::InitContainers => "init container",
        }
    }
}

/// The lists the rule covers: init containers (sidecars among them) unless the policy leaves
/// them out.
fn lists<'s, 'a>(
    pod: &'s PodSpec<'a>,
    init_containers: bool,
) -> impl Iterator<Item = (ContainerList, &'s [Container<'a>])> {
    [
        (ContainerList::Containers, pod.containers.as_slice()),
        (
            ContainerList::InitContainers,
            if init_containers {
                pod.init_containers.as_slice()
            } else {
                &[]
            },
        ),
    ]
    .into_iter()
}

/// Every limit and request of every container, and of the pod (`spec.resources`), must be a
/// quantity. The API server rejects a malformed one when it decodes the object; we name the
/// field.
pub fn validate(pod: &PodSpec<'_>, init_containers: bool, errors: &mut ErrorList) {
    let base = Path::new("spec").child("template").child("spec");
    if let Some(resources) = &pod.resources {
        validate_requirements(resources, || base.child("resources"), errors);
    }
    for (list, containers) in lists(pod, init_containers) {
        for (i, container) in containers.iter().enumerate() {
            let path = || base.child(list.field()).index(i).child("resources");
            validate_requirements(&container.resources.value, path, errors);
        }
    }
}

/// Paths are made only for errors: thousands of well-formed quantities allocate nothing.
fn validate_requirements(
    resources: &ResourceRequirements<'_>,
    path: impl Fn() -> Path,
    errors: &mut ErrorList,
) {
    for (kind, map) in [
        ("limits", &resources.limits.value),
        ("requests", &resources.requests.value),
    ] {
        for (name, quantity) in map.iter() {
            // Quantity's UnmarshalJSON trims the string before it parses it.
            if let Err(error) = Quantity::parse(quantity.trim()) {
                errors.push_with(|| {
                    FieldError::invalid(
                        &path().child(kind).key(name),
                        go_quote(quantity),
                        error.to_string(),
                    )
                });
            }
        }
    }
}

/// Whether the pod sets `name` at pod level (`spec.resources`). Its containers share that
/// budget: a container limit above the pod's, or container requests summing above the pod's,
/// make the pod invalid, so containers get no defaults for it.
fn at_pod_level(pod: Option<&ResourceRequirements<'_>>, name: &str) -> bool {
    pod.is_some_and(|r| r.limits.value.contains_key(name) || r.requests.value.contains_key(name))
}

/// A container, as changes name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub list: ContainerList,
    pub index: usize,
    /// `container "agent"`, or `initContainers[0]` for one without a name: made once, written
    /// in every change's subject and message.
    label: Box<str>,
}

impl ContainerRef {
    pub fn new(list: ContainerList, index: usize, name: &str) -> Self {
        let label = if name.is_empty() {
            format!("{}[{index}]", list.field())
        } else {
            format!("{} {name:?}", list.noun())
        };
        Self {
            list,
            index,
            label: label.into(),
        }
    }
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// How one resource of one container is defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How<'p> {
    /// It had neither request nor limit: the default limit and request.
    LimitAndRequest { limit: &'p str, request: &'p str },
    /// It had neither, and no default request exists: the default limit.
    Limit { limit: &'p str },
    /// It had a request above the default limit: a limit equal to the request.
    LimitOfRequest {
        request: Box<str>,
        default_limit: &'p str,
    },
    /// It had a request within the default limit: the default limit.
    DefaultLimit { limit: &'p str, request: Box<str> },
}

/// One resource of one container set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set<'p> {
    name: &'p str,
    how: How<'p>,
}

impl<'p> Set<'p> {
    /// The resource (`cpu`).
    pub fn name(&self) -> &'p str {
        self.name
    }

    /// The limit the patch sets.
    pub fn limit(&self) -> &str {
        match &self.how {
            How::LimitAndRequest { limit, .. } | How::Limit { limit } => limit,
            How::DefaultLimit { limit, .. } => limit,
            How::LimitOfRequest { request, .. } => request,
        }
    }

    /// The request the patch sets, if it sets one.
    pub fn request(&self) -> Option<&'p str> {
        match self.how {
            How::LimitAndRequest { request, .. } => Some(request),
            _ => None,
        }
    }

    pub fn kind(&self) -> ChangeKind {
        match self.how {
            How::LimitAndRequest { .. } => ChangeKind::LimitAndRequest,
            _ => ChangeKind::Limit,
        }
    }
}

/// What the rule changes in one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMutation<'p> {
    pub container: ContainerRef,
    /// Whether `resources`, `resources.limits` and `resources.requests` exist as objects to add
    /// into (else each is added whole).
    resources_given: bool,
    limits_given: bool,
    requests_given: bool,
    /// Shared with the container before it when they get the same (the usual case: a
    /// thousand containers cost one list).
    pub sets: Arc<[Set<'p>]>,
}

/// One resource of one container set, as a change.
#[derive(Debug, Clone, Copy)]
pub struct ResourceChange<'c, 'p> {
    pub container: &'c ContainerRef,
    pub set: &'c Set<'p>,
}

impl ResourceChange<'_, '_> {
    pub fn kind(&self) -> ChangeKind {
        self.set.kind()
    }

    /// `container "agent" cpu`.
    pub fn subject(&self) -> impl fmt::Display + '_ {
        Subject(*self)
    }

    /// One line for `response.warnings`.
    pub fn message(&self) -> impl fmt::Display + '_ {
        Message(*self)
    }
}

struct Subject<'c, 'p>(ResourceChange<'c, 'p>);

impl fmt::Display for Subject<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0.container, f)?;
        f.write_str(" ")?;
        f.write_str(self.0.set.name)
    }
}

struct Message<'c, 'p>(ResourceChange<'c, 'p>);

impl fmt::Display for Message<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece: a format string's machinery costs more than the text.
        let ResourceChange { container, set } = self.0;
        fmt::Display::fmt(container, f)?;
        f.write_str(": set ")?;
        f.write_str(set.name)?;
        f.write_str(" limit ")?;
        f.write_str(set.limit())?;
        match &set.how {
            How::LimitAndRequest { request, .. } => {
                f.write_str(" and request ")?;
                f.write_str(request)?;
                f.write_str(" (it had neither)")
            }
            How::Limit { .. } => f.write_str(" (it had neither limit nor request)"),
            How::LimitOfRequest { default_limit, .. } => {
                f.write_str(" equal to its request (above the default limit ")?;
                f.write_str(default_limit)?;
                f.write_str(")")
            }
            How::DefaultLimit { request, .. } => {
                f.write_str(" (it had a request of ")?;
                f.write_str(request)?;
                f.write_str(" but no limit)")
            }
        }
    }
}

impl<'p> ContainerMutation<'p> {
    pub fn changes(&self) -> impl Iterator<Item = ResourceChange<'_, 'p>> {
        self.sets.iter().map(|set| ResourceChange {
            container: &self.container,
            set,
        })
    }

    /// The patch operations: `resources` whole where the container has none, else each of
    /// `limits` and `requests` whole, or their entries one by one. Made as they are read.
    pub fn operations(&self) -> impl Iterator<Item = Operation<'_>> {
        let sets = &self.sets[..];
        let has_requests = sets.iter().any(|s| s.request().is_some());
        let container = &self.container;
        let inside = self.resources_given;
        let whole = (!inside).then(|| add(container, &[], Value::Resources(sets)));
        let limits = (inside && !self.limits_given)
            .then(|| add(container, &[Token::Key("limits")], Value::Limits(sets)));
        let each_limit = sets
            .iter()
            .filter(move |_| inside && self.limits_given)
            .map(move |set| {
                let path = [Token::Key("limits"), Token::Key(set.name)];
                add(container, &path, Value::Quantity(set.limit()))
            });
        let requests = (inside && has_requests && !self.requests_given)
            .then(|| add(container, &[Token::Key("requests")], Value::Requests(sets)));
        let each_request = sets
            .iter()
            .filter(move |_| inside && self.requests_given)
            .filter_map(move |set| {
                let path = [Token::Key("requests"), Token::Key(set.name)];
                Some(add(container, &path, Value::Quantity(set.request()?)))
            });
        whole
            .into_iter()
            .chain(limits)
            .chain(each_limit)
            .chain(requests)
            .chain(each_request)
    }
}

/// An `add` under the container's `resources` (at `tokens` below it).
fn add<'a>(container: &ContainerRef, tokens: &[Token<'a>], value: Value<'a>) -> Operation<'a> {
    let mut path = [
        Token::Key(container.list.field()),
        Token::Index(container.index),
        Token::Key("resources"),
        Token::End,
        Token::End,
    ];
    path[3..3 + tokens.len()].copy_from_slice(tokens);
    Operation {
        op: Op::Add,
        path: Pointer::pod_spec(&path[..3 + tokens.len()]),
        value,
    }
}

/// What the rule changes in one pod template: the containers it sets resources of, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutation<'p> {
    pub containers: Vec<ContainerMutation<'p>>,
}

impl<'p> Mutation<'p> {
    pub const RULE: Rule = Rule::Resources;

    pub fn changes(&self) -> impl Iterator<Item = ResourceChange<'_, 'p>> {
        self.containers.iter().flat_map(ContainerMutation::changes)
    }

    pub fn operations(&self) -> impl Iterator<Item = Operation<'_>> {
        self.containers
            .iter()
            .flat_map(ContainerMutation::operations)
    }
}

/// Sets limits and requests for every container (and, unless `init_containers` is false, init
/// container) lacking them, resource by resource, except for resources the pod sets at pod
/// level.
pub fn mutate<'p>(
    pod: &PodSpec<'_>,
    init_containers: bool,
    defaults: &'p ResourceDefaults,
) -> Mutation<'p> {
    let mut mutation = Mutation::default();
    let mut sets = Vec::new();
    let mut previous: Option<Arc<[Set<'p>]>> = None;
    for (list, containers) in lists(pod, init_containers) {
        for (index, container) in containers.iter().enumerate() {
            container_sets(container, pod.resources.as_ref(), defaults, &mut sets);
            if sets.is_empty() {
                continue;
            }
            let sets = match previous.as_ref().filter(|p| p[..] == sets[..]) {
                Some(same) => same.clone(),
                None => previous.insert(Arc::from(sets.as_slice())).clone(),
            };
            let resources = &container.resources;
            mutation.containers.push(ContainerMutation {
                container: ContainerRef::new(list, index, &container.name),
                resources_given: resources.given,
                limits_given: resources.value.limits.given,
                requests_given: resources.value.requests.given,
                sets,
            });
        }
    }
    mutation
}

/// For one container, resource by resource:
/// - neither request nor limit: the default limit and the default request;
/// - a request but no limit: limit = max(default limit, request), so request ≤ limit holds;
/// - a limit but no request: nothing. Kubernetes defaults the request to the limit; inventing a
///   smaller one would turn a Guaranteed pod Burstable.
///
/// Quantities that do not parse are left to [`validate`].
fn container_sets<'p>(
    container: &Container<'_>,
    pod: Option<&ResourceRequirements<'_>>,
    defaults: &'p ResourceDefaults,
    sets: &mut Vec<Set<'p>>,
) {
    let limits: &QuantityMap<'_> = &container.resources.value.limits.value;
    let requests: &QuantityMap<'_> = &container.resources.value.requests.value;
    sets.clear();
    for (name, default_limit) in &defaults.limits {
        if limits.contains_key(name) || at_pod_level(pod, name) {
            continue;
        }
        let how = match requests.get(name) {
            None => match defaults.requests.get(name) {
                Some(default_request) => How::LimitAndRequest {
                    limit: &default_limit.text,
                    request: &default_request.text,
                },
                None => How::Limit {
                    limit: &default_limit.text,
                },
            },
            Some(request) => {
                let request = request.trim();
                let Ok(value) = Quantity::parse(request) else {
                    continue;
                };
                if value > default_limit.value {
                    How::LimitOfRequest {
                        request: request.into(),
                        default_limit: &default_limit.text,
                    }
                } else {
                    How::DefaultLimit {
                        limit: &default_limit.text,
                        request: request.into(),
                    }
                }
            }
        };
        sets.push(Set { name, how });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::object;
    use serde_json::{Value as Json, json};

    /// A pod template holding these containers and init containers, as JSON text.
    fn pod_text(containers: &[Json], init_containers: &[Json]) -> String {
        json!({ "spec": { "template": { "spec": {
            "containers": containers,
            "initContainers": init_containers,
        } } } })
        .to_string()
    }

    /// A change as the tests look at it.
    struct Seen {
        kind: ChangeKind,
        message: String,
    }

    fn run_with(container: Json, defaults: &ResourceDefaults) -> (Json, Vec<Seen>) {
        let text = pod_text(&[container], &[]);
        let decoded = object::decode(&text).unwrap();
        let mutation = mutate(&decoded.daemon_set.spec.template.spec.value, true, defaults);
        let operations: Vec<Operation<'_>> = mutation.operations().collect();
        let seen = mutation
            .changes()
            .map(|c| Seen {
                kind: c.kind(),
                message: c.message().to_string(),
            })
            .collect();
        (
            serde_json::from_slice(&crate::policy::patch::to_json(operations)).unwrap(),
            seen,
        )
    }

    fn run(container: Json) -> (Json, Vec<Seen>) {
        run_with(container, &ResourceDefaults::default())
    }

    const R: &str = "/spec/template/spec/containers/0/resources";

    #[test]
    fn no_resources_get_every_default_in_one_add() {
        let (ops, changes) = run(json!({ "name": "c" }));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": R, "value": {
                "limits": { "cpu": "500m", "memory": "512Mi" },
                "requests": { "cpu": "50m", "memory": "64Mi" },
            }}])
        );
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|c| c.kind == ChangeKind::LimitAndRequest)
        );
        assert_eq!(
            changes[0].message,
            "container \"c\": set cpu limit 500m and request 50m (it had neither)"
        );
        let unnamed = ContainerRef::new(ContainerList::InitContainers, 2, "");
        assert_eq!(unnamed.to_string(), "initContainers[2]");
    }

    #[test]
    fn null_resources_are_replaced_like_absent_ones() {
        let (ops, _) = run(json!({ "name": "c", "resources": null }));
        assert_eq!(ops[0]["path"], R);
    }

    #[test]
    fn empty_resources_get_limits_and_requests_added_inside() {
        let (ops, _) = run(json!({ "name": "c", "resources": {} }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "512Mi" } },
                { "op": "add", "path": format!("{R}/requests"), "value": { "cpu": "50m", "memory": "64Mi" } },
            ])
        );
        let (ops, _) = run(json!({ "name": "c", "resources": { "limits": null, "requests": {} } }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "512Mi" } },
                { "op": "add", "path": format!("{R}/requests/cpu"), "value": "50m" },
                { "op": "add", "path": format!("{R}/requests/memory"), "value": "64Mi" },
            ])
        );
    }

    #[test]
    fn a_request_without_limit_gets_the_larger_of_default_and_request() {
        let (ops, changes) = run(json!({ "name": "c", "resources": {
            "requests": { "cpu": "100m", "memory": "1Gi" }
        }}));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits"), "value": { "cpu": "500m", "memory": "1Gi" } }])
        );
        assert!(changes.iter().all(|c| c.kind == ChangeKind::Limit));
        assert_eq!(
            changes[1].message,
            "container \"c\": set memory limit 1Gi equal to its request (above the default limit 512Mi)"
        );
    }

    #[test]
    fn quantities_compare_by_value_not_text() {
        // 0.5 = 500m: not above the default, so the default's text is used.
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": "0.5", "memory": "536870912" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "500m", "memory": "512Mi" }));
        // 1e3m = 1 > 500m; 513Mi > 512Mi; 1G < 1Gi.
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": "1", "memory": "513Mi" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "1", "memory": "513Mi" }));
        let (ops, _) = run(
            json!({ "name": "c", "resources": { "requests": { "cpu": 2, "memory": "600M" } } }),
        );
        assert_eq!(ops[0]["value"], json!({ "cpu": "2", "memory": "600M" }));
    }

    #[test]
    fn a_limit_without_request_is_left_alone() {
        let (ops, changes) = run(json!({ "name": "c", "resources": {
            "limits": { "cpu": "1", "memory": "128Mi" }
        }}));
        assert_eq!(ops, json!([]));
        assert!(changes.is_empty());
    }

    #[test]
    fn each_resource_is_judged_on_its_own() {
        // memory limit only (Kubernetes defaults its request to it); cpu has nothing.
        let (ops, _) =
            run(json!({ "name": "c", "resources": { "limits": { "memory": "128Mi" } } }));
        assert_eq!(
            ops,
            json!([
                { "op": "add", "path": format!("{R}/limits/cpu"), "value": "500m" },
                { "op": "add", "path": format!("{R}/requests"), "value": { "cpu": "50m" } },
            ])
        );
    }

    #[test]
    fn complete_resources_ask_for_nothing() {
        let (ops, _) = run(json!({ "name": "c", "resources": {
            "limits": { "cpu": "1", "memory": "1Gi" },
            "requests": { "cpu": "1", "memory": "1Gi" },
            "claims": [{ "name": "gpu" }],
        }}));
        assert_eq!(ops, json!([]));
    }

    #[test]
    fn resource_names_are_escaped_in_the_pointer() {
        let mut defaults = ResourceDefaults::default();
        defaults.limits.clear();
        defaults.requests.clear();
        defaults.limits.insert(
            "example.com/gpu~x".to_owned(),
            DefaultQuantity::parse("1").unwrap(),
        );
        let (ops, _) = run_with(
            json!({ "name": "c", "resources": { "limits": { "cpu": "1" } } }),
            &defaults,
        );
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits/example.com~1gpu~0x"), "value": "1" }])
        );
    }

    #[test]
    fn a_default_limit_without_default_request_adds_only_the_limit() {
        let mut defaults = ResourceDefaults::default();
        defaults.requests.remove("memory");
        let (ops, changes) = run_with(json!({ "name": "c" }), &defaults);
        assert_eq!(
            ops[0]["value"],
            json!({ "limits": { "cpu": "500m", "memory": "512Mi" }, "requests": { "cpu": "50m" } })
        );
        assert_eq!(changes[1].kind, ChangeKind::Limit);
    }

    #[test]
    fn validate_names_every_malformed_quantity() {
        let c = json!({ "name": "c", "resources": {
            "limits": { "cpu": "lots", "memory": "1Gi" },
            "requests": { "example.com/x": "1.2.3" },
        }});
        let init = json!({ "name": "i", "resources": { "limits": { "memory": "1 Gi" } } });
        let text = pod_text(&[c], &[init]);
        let decoded = object::decode(&text).unwrap();
        let mut list = ErrorList::default();
        validate(
            &decoded.daemon_set.spec.template.spec.value,
            true,
            &mut list,
        );
        let errors: Vec<String> = list.kept().iter().map(ToString::to_string).collect();
        let regex = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
        assert_eq!(
            errors,
            [
                format!(
                    r#"spec.template.spec.containers[0].resources.limits[cpu]: Invalid value: "lots": {regex}"#
                ),
                format!(
                    r#"spec.template.spec.containers[0].resources.requests[example.com/x]: Invalid value: "1.2.3": {regex}"#
                ),
                format!(
                    r#"spec.template.spec.initContainers[0].resources.limits[memory]: Invalid value: "1 Gi": {regex}"#
                ),
            ]
        );
    }

    #[test]
    fn a_malformed_request_is_not_patched() {
        let (ops, _) = run(json!({ "name": "c", "resources": { "requests": { "cpu": "lots" } } }));
        assert_eq!(
            ops,
            json!([{ "op": "add", "path": format!("{R}/limits"), "value": { "memory": "512Mi" } },
                   { "op": "add", "path": format!("{R}/requests/memory"), "value": "64Mi" }])
        );
    }
}
