//! Prometheus metrics: controller-runtime's webhook metrics under their own names and labels, so
//! existing dashboards and alerts work, and the webhook's own under `daemonset_webhook_`.
//! Every series a dashboard might plot is created at zero before the first request, and the
//! handles a review touches are looked up once, at start: recording a review is a few atomic
//! adds. What a review decided arrives as an [`admission::Record`] of labels and counts.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::{self, Action, Endpoint, Record};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets fine enough for reviews that take tens of microseconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    webhook: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    webhook: &'static str,
    allowed: bool,
    admission_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: &'static str,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The handles of one webhook's series that every review touches.
#[derive(Debug)]
struct WebhookHandles {
    ok: Counter,
    latency: Histogram,
    in_flight: Gauge,
    allowed: Counter,
    denied: Counter,
}

/// Counters by label, looked up by the label's text (a handful each).
#[derive(Debug)]
struct ByLabel<L>(Vec<(L, Counter)>);

impl<L: PartialEq> ByLabel<L> {
    fn get(&self, label: &L) -> Option<&Counter> {
        self.0.iter().find(|(l, _)| l == label).map(|(_, c)| c)
    }
}

/// The metrics the server records.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    webhooks: [WebhookHandles; 2],
    panics: Counter,
    violations: ByLabel<&'static str>,
    decisions: ByLabel<(&'static str, Action)>,
    mutations: [Counter; 3],
    exemptions: ByLabel<&'static str>,
    certificate_reloads: [Counter; 2],
    certificate_expiry: Gauge,
    policy_reloads: [Counter; 2],
    body_memory: Gauge,
    body_memory_limit: Gauge,
    shed: Counter,
    closed: ByLabel<&'static str>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::Mutate => 0,
        Endpoint::Validate => 1,
    }
}

/// `success` and `error`, the `result` label of reloads.
const RESULTS: [&str; 2] = ["success", "error"];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "controller_runtime_webhook_requests",
            "Total number of admission requests by HTTP status code",
            requests.clone(),
        );
        let latency = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "controller_runtime_webhook_latency_seconds",
            "Histogram of the latency of processing admission requests",
            latency.clone(),
        );
        let in_flight = Family::<WebhookLabels, Gauge>::default();
        registry.register(
            "controller_runtime_webhook_requests_in_flight",
            "Current number of admission requests being served",
            in_flight.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "controller_runtime_webhook_panics",
            "Total number of webhook panics",
            panics.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "controller_runtime_webhook_admission_responses",
            "Total number of admission responses by whether they allowed and their status code",
            responses.clone(),
        );
        let violations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_violations",
            "Violations found in DaemonSets, by rule (including those of rules in warn mode)",
            violations.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_rule_decisions",
            "Reviews in which a rule denied, warned, or patched",
            decisions.clone(),
        );
        let mutations = Family::<KindLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_mutations",
            "Changes patched into DaemonSets, by kind: toleration, limits, requests",
            mutations.clone(),
        );
        let exemptions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_exemptions",
            "DaemonSets allowed untouched because they are exempt, by reason",
            exemptions.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_certificate_reloads",
            "Serving certificate (and client CA) reloads, by result",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "daemonset_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (notAfter), as a Unix timestamp",
            certificate_expiry.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_policy_reloads",
            "Policy file reloads, by result",
            policy_reloads.clone(),
        );
        registry.register(
            "daemonset_webhook_log_lines_dropped",
            "Log lines not written: stderr too slow (its queue full) or failing",
            crate::logging::dropped_lines().clone(),
        );
        let body_memory = Gauge::default();
        registry.register(
            "daemonset_webhook_request_body_memory_bytes",
            "Bytes of the memory budget held by request bodies (and their answers) now",
            body_memory.clone(),
        );
        let body_memory_limit = Gauge::default();
        registry.register(
            "daemonset_webhook_request_body_memory_limit_bytes",
            "The memory budget for request bodies, --max-body-memory",
            body_memory_limit.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "daemonset_webhook_requests_shed",
            "Requests answered 503 because the memory budget had no room for their body",
            shed.clone(),
        );
        let closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_connections_dropped",
            "Connections the server closed on a client, by reason",
            closed.clone(),
        );
        let closed = ByLabel(
            super::connection::Dropped::ALL
                .iter()
                .map(|dropped| {
                    let reason = dropped.as_str();
                    (
                        reason,
                        closed.get_or_create(&ReasonLabels { reason }).clone(),
                    )
                })
                .collect(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "daemonset_webhook_build_info",
            "The running version",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        // Every series a dashboard plots exists from the start, at zero.
        let webhooks = Endpoint::ALL.map(|endpoint| {
            let webhook = endpoint.path();
            let response = |allowed, admission_code| {
                responses
                    .get_or_create(&ResponseLabels {
                        webhook,
                        allowed,
                        admission_code,
                    })
                    .clone()
            };
            WebhookHandles {
                ok: requests
                    .get_or_create(&RequestLabels { webhook, code: 200 })
                    .clone(),
                latency: latency.get_or_create(&WebhookLabels { webhook }).clone(),
                in_flight: in_flight.get_or_create(&WebhookLabels { webhook }).clone(),
                allowed: response(true, 200),
                denied: response(false, 422),
            }
        });
        let rule_counter = |rule| violations.get_or_create(&RuleLabels { rule }).clone();
        let violations_by_rule = ByLabel(
            admission::violation_labels()
                .map(|rule| (rule, rule_counter(rule)))
                .collect(),
        );
        let decisions_by_rule = ByLabel(
            admission::rule_labels()
                .flat_map(|rule| Action::ALL.map(|action| (rule, action)))
                .map(|(rule, action)| {
                    let counter = decisions
                        .get_or_create(&DecisionLabels {
                            rule,
                            action: action.as_str(),
                        })
                        .clone();
                    ((rule, action), counter)
                })
                .collect(),
        );
        let mutations = admission::MUTATION_KINDS
            .map(|kind| mutations.get_or_create(&KindLabels { kind }).clone());
        let exemptions = ByLabel(
            admission::EXEMPTION_REASONS
                .iter()
                .map(|&reason| {
                    let counter = exemptions.get_or_create(&ReasonLabels { reason }).clone();
                    (reason, counter)
                })
                .collect(),
        );
        let results = |family: &Family<ResultLabels, Counter>| {
            RESULTS.map(|result| family.get_or_create(&ResultLabels { result }).clone())
        };
        Self {
            certificate_reloads: results(&certificate_reloads),
            policy_reloads: results(&policy_reloads),
            registry,
            requests,
            responses,
            webhooks,
            panics,
            violations: violations_by_rule,
            decisions: decisions_by_rule,
            mutations,
            exemptions,
            certificate_expiry,
            body_memory,
            body_memory_limit,
            shed,
            closed,
        }
    }

    /// The gauge the memory budget keeps, and the limit it is shown against.
    pub fn body_memory(&self, limit: usize) -> Gauge {
        self.body_memory_limit.set(limit as i64);
        self.body_memory.clone()
    }

    /// A request turned away for want of memory budget.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// A connection the server dropped.
    pub fn dropped(&self, why: super::connection::Dropped) {
        if let Some(counter) = self.closed.get(&why.as_str()) {
            counter.inc();
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self, endpoint: Endpoint) -> InFlight {
        let gauge = self.webhooks[index(endpoint)].in_flight.clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Records an answered request: its HTTP status and latency.
    pub fn request(&self, endpoint: Endpoint, code: u16, latency: Duration) {
        let handles = &self.webhooks[index(endpoint)];
        if code == 200 {
            handles.ok.inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    webhook: endpoint.path(),
                    code,
                })
                .inc();
        }
        handles.latency.observe(latency.as_secs_f64());
    }

    /// Records an admission response and what the review decided.
    pub fn response(&self, endpoint: Endpoint, record: &Record) {
        let handles = &self.webhooks[index(endpoint)];
        match (record.allowed, record.code) {
            (true, 200) => handles.allowed.inc(),
            (false, 422) => handles.denied.inc(),
            (allowed, admission_code) => self
                .responses
                .get_or_create(&ResponseLabels {
                    webhook: endpoint.path(),
                    allowed,
                    admission_code,
                })
                .inc(),
        };
        if let Some(reason) = record.exemption {
            if let Some(counter) = self.exemptions.get(&reason) {
                counter.inc();
            }
            return;
        }
        for (rule, count) in &record.violations {
            if let Some(counter) = self.violations.get(rule) {
                counter.inc_by(*count as u64);
            }
        }
        for action in &record.actions {
            if let Some(counter) = self.decisions.get(action) {
                counter.inc();
            }
        }
        let patched = record.patched;
        for (counter, count) in
            self.mutations
                .iter()
                .zip([patched.tolerations, patched.limits, patched.requests])
        {
            if count > 0 {
                counter.inc_by(count as u64);
            }
        }
    }

    pub fn panic(&self) {
        self.panics.inc();
    }

    pub fn certificate_reload(&self, success: bool, expiry_unix: Option<i64>) {
        self.certificate_reloads[usize::from(!success)].inc();
        if let Some(expiry) = expiry_unix {
            self.certificate_expiry.set(expiry);
        }
    }

    pub fn certificate_expiry(&self, expiry_unix: i64) {
        self.certificate_expiry.set(expiry_unix);
    }

    pub fn policy_reload(&self, success: bool) {
        self.policy_reloads[usize::from(!success)].inc();
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Decrements the in-flight gauge when dropped, however the request ends.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn series_exist_at_zero_before_any_request() {
        let text = Metrics::new().encode();
        for series in [
            r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="200"}"#,
            r#"controller_runtime_webhook_requests_in_flight{webhook="/validate"}"#,
            "controller_runtime_webhook_panics_total",
            r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="false",admission_code="422"}"#,
            r#"controller_runtime_webhook_latency_seconds_count{webhook="/mutate"}"#,
            r#"daemonset_webhook_violations_total{rule="selector"}"#,
            r#"daemonset_webhook_rule_decisions_total{rule="tolerations",action="patch"}"#,
            r#"daemonset_webhook_mutations_total{kind="requests"}"#,
            r#"daemonset_webhook_certificate_reloads_total{result="error"}"#,
            r#"daemonset_webhook_policy_reloads_total{result="success"}"#,
            "daemonset_webhook_certificate_expiry_timestamp_seconds",
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
        }
        // Process-wide: other tests in this binary may have dropped lines already.
        assert!(value(&text, "daemonset_webhook_log_lines_dropped_total").is_some());
        assert!(
            text.contains(r#"le="5e-5""#) || text.contains(r#"le="0.00005""#),
            "{text}"
        );
    }

    #[test]
    fn records_requests_responses_and_decisions() {
        let metrics = Metrics::new();
        {
            let _guard = metrics.in_flight(Endpoint::Mutate);
            assert!(
                metrics.encode().contains(
                    r#"controller_runtime_webhook_requests_in_flight{webhook="/mutate"} 1"#
                )
            );
        }
        metrics.request(Endpoint::Mutate, 200, Duration::from_micros(80));
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": { "group": "apps", "version": "v1", "kind": "DaemonSet" },
                "operation": "CREATE",
                "object": {
                    "metadata": { "name": "x" },
                    "spec": {
                        "selector": { "matchLabels": { "a": "b" } },
                        "template": { "metadata": { "labels": { "a": "b" } }, "spec": { "containers": [{ "name": "c" }] } },
                    },
                },
            },
        });
        let reviewed = admission::review(
            &serde_json::to_vec(&review).unwrap(),
            Endpoint::Mutate,
            &Default::default(),
        )
        .unwrap();
        metrics.response(Endpoint::Mutate, &reviewed.record);
        let text = metrics.encode();
        assert_eq!(
            value(
                &text,
                r#"controller_runtime_webhook_requests_total{webhook="/mutate",code="200"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"controller_runtime_webhook_requests_in_flight{webhook="/mutate"}"#
            ),
            Some(0.0)
        );
        assert_eq!(value(&text, r#"controller_runtime_webhook_latency_seconds_bucket{le="0.0001",webhook="/mutate"}"#).or_else(|| value(&text, r#"controller_runtime_webhook_latency_seconds_bucket{webhook="/mutate",le="0.0001"}"#)), Some(1.0), "{text}");
        assert_eq!(
            value(
                &text,
                r#"daemonset_webhook_mutations_total{kind="toleration"}"#
            ),
            Some(6.0)
        );
        assert_eq!(
            value(&text, r#"daemonset_webhook_mutations_total{kind="limits"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"daemonset_webhook_mutations_total{kind="requests"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"daemonset_webhook_rule_decisions_total{rule="tolerations",action="patch"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"daemonset_webhook_rule_decisions_total{rule="resources",action="patch"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"controller_runtime_webhook_admission_responses_total{webhook="/mutate",allowed="true",admission_code="200"}"#
            ),
            Some(1.0)
        );
    }
}
