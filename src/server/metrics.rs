//! Prometheus metrics: controller-runtime's webhook metrics under their own names and labels, so
//! existing dashboards and alerts work, and the webhook's own under `daemonset_webhook_`.
//! Every series a dashboard might plot is created at zero before the first request.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::policy::{ChangeKind, Exemption, Rule, Verdict, Violation};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The review endpoints, as the `webhook` label spells them (controller-runtime uses the path).
pub const WEBHOOKS: [&str; 2] = ["/mutate", "/validate"];

/// Latency buckets fine enough for reviews that take tens of microseconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    webhook: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    webhook: String,
    allowed: String,
    admission_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The metrics the server records.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<WebhookLabels, Histogram>,
    in_flight: Family<WebhookLabels, Gauge>,
    panics: Counter,
    responses: Family<ResponseLabels, Counter>,
    violations: Family<RuleLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    mutations: Family<KindLabels, Counter>,
    exemptions: Family<ReasonLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
    certificate_expiry: Gauge,
    policy_reloads: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels<T: From<Vec<String>>>(values: &[&str]) -> T {
    T::from(values.iter().map(|v| (*v).to_owned()).collect())
}

macro_rules! from_values {
    ($t:ident { $($field:ident),+ }) => {
        impl From<Vec<String>> for $t {
            fn from(values: Vec<String>) -> Self {
                let mut values = values.into_iter();
                Self { $($field: values.next().unwrap_or_default()),+ }
            }
        }
    };
}
from_values!(WebhookLabels { webhook });
from_values!(RequestLabels { webhook, code });
from_values!(ResponseLabels {
    webhook,
    allowed,
    admission_code
});
from_values!(RuleLabels { rule });
from_values!(DecisionLabels { rule, action });
from_values!(KindLabels { kind });
from_values!(ReasonLabels { reason });
from_values!(ResultLabels { result });

/// The `rule` label of a violation of no rule: an object that could not be read.
const UNREADABLE: &str = "unreadable";

fn violation_rule(violation: &Violation) -> &'static str {
    violation.rule.map_or(UNREADABLE, Rule::as_str)
}
const MUTATION_KINDS: [&str; 3] = ["toleration", "limits", "requests"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "controller_runtime_webhook_requests",
            "Total number of admission requests by HTTP status code.",
            requests.clone(),
        );
        let latency = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "controller_runtime_webhook_latency_seconds",
            "Histogram of the latency of processing admission requests.",
            latency.clone(),
        );
        let in_flight = Family::<WebhookLabels, Gauge>::default();
        registry.register(
            "controller_runtime_webhook_requests_in_flight",
            "Current number of admission requests being served.",
            in_flight.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "controller_runtime_webhook_panics",
            "Total number of webhook panics.",
            panics.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "controller_runtime_webhook_admission_responses",
            "Total number of admission responses by whether they allowed and their status code.",
            responses.clone(),
        );
        let violations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_violations",
            "Violations found in DaemonSets, by rule (including those of rules in warn mode).",
            violations.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_rule_decisions",
            "Reviews in which a rule denied, warned, or patched.",
            decisions.clone(),
        );
        let mutations = Family::<KindLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_mutations",
            "Changes patched into DaemonSets, by kind: toleration, limits, requests.",
            mutations.clone(),
        );
        let exemptions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_exemptions",
            "DaemonSets allowed untouched because they are exempt, by reason.",
            exemptions.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_certificate_reloads",
            "Serving certificate (and client CA) reloads, by result.",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "daemonset_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (notAfter), as a Unix timestamp.",
            certificate_expiry.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "daemonset_webhook_policy_reloads",
            "Policy file reloads, by result.",
            policy_reloads.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "daemonset_webhook_build_info",
            "The running version.",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);

        let metrics = Self {
            registry,
            requests,
            latency,
            in_flight,
            panics,
            responses,
            violations,
            decisions,
            mutations,
            exemptions,
            certificate_reloads,
            certificate_expiry,
            policy_reloads,
        };
        metrics.initialize();
        metrics
    }

    /// Creates at zero the series dashboards plot, so rates exist before the first event.
    fn initialize(&self) {
        for webhook in WEBHOOKS {
            let _ = self.requests.get_or_create(&labels(&[webhook, "200"]));
            let _ = self.latency.get_or_create(&labels(&[webhook]));
            let _ = self.in_flight.get_or_create(&labels(&[webhook]));
            for (allowed, code) in [("true", "200"), ("false", "422")] {
                let _ = self
                    .responses
                    .get_or_create(&labels(&[webhook, allowed, code]));
            }
        }
        // Every rule may deny (an invalid quantity is the resources rule's), and an object
        // may be unreadable.
        for rule in Rule::ALL.map(Rule::as_str).into_iter().chain([UNREADABLE]) {
            let _ = self.violations.get_or_create(&labels(&[rule]));
        }
        for rule in Rule::ALL {
            for action in ["deny", "warn", "patch"] {
                let _ = self
                    .decisions
                    .get_or_create(&labels(&[rule.as_str(), action]));
            }
        }
        for kind in MUTATION_KINDS {
            let _ = self.mutations.get_or_create(&labels(&[kind]));
        }
        for reason in [Exemption::Namespace(String::new()), Exemption::Annotation]
            .iter()
            .map(Exemption::reason)
        {
            let _ = self.exemptions.get_or_create(&labels(&[reason]));
        }
        for result in ["success", "error"] {
            let _ = self.certificate_reloads.get_or_create(&labels(&[result]));
            let _ = self.policy_reloads.get_or_create(&labels(&[result]));
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self, webhook: &'static str) -> InFlight {
        let gauge = self.in_flight.get_or_create(&labels(&[webhook])).clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Records an answered request: its HTTP status and latency.
    pub fn request(&self, webhook: &str, code: u16, latency: Duration) {
        self.requests
            .get_or_create(&labels(&[webhook, &code.to_string()]))
            .inc();
        self.latency
            .get_or_create(&labels(&[webhook]))
            .observe(latency.as_secs_f64());
    }

    /// Records an admission response and what the policy decided.
    pub fn response(&self, webhook: &str, allowed: bool, code: u16, verdict: Option<&Verdict>) {
        self.responses
            .get_or_create(&labels(&[webhook, &allowed.to_string(), &code.to_string()]))
            .inc();
        let Some(verdict) = verdict else {
            return;
        };
        if let Some(exemption) = &verdict.exemption {
            self.exemptions
                .get_or_create(&labels(&[exemption.reason()]))
                .inc();
            return;
        }
        let mut denied: Vec<&str> = Vec::new();
        for violation in &verdict.violations {
            let rule = violation_rule(violation);
            self.violations.get_or_create(&labels(&[rule])).inc();
            denied.push(rule);
        }
        let mut warned: Vec<&str> = Vec::new();
        for violation in &verdict.warned_violations {
            let rule = violation_rule(violation);
            self.violations.get_or_create(&labels(&[rule])).inc();
            warned.push(rule);
        }
        warned.extend(
            verdict
                .warned_changes
                .iter()
                .map(|c| c.kind.rule().as_str()),
        );
        let patched: Vec<&str> = if webhook == WEBHOOKS[0] && verdict.allowed() {
            for change in &verdict.changes {
                let kinds: &[&str] = match change.kind {
                    ChangeKind::TolerationAdded | ChangeKind::TolerationUpdated => &["toleration"],
                    ChangeKind::Limit => &["limits"],
                    ChangeKind::LimitAndRequest => &["limits", "requests"],
                };
                for kind in kinds {
                    self.mutations.get_or_create(&labels(&[kind])).inc();
                }
            }
            verdict
                .changes
                .iter()
                .map(|c| c.kind.rule().as_str())
                .collect()
        } else {
            Vec::new()
        };
        for (action, mut rules) in [("deny", denied), ("warn", warned), ("patch", patched)] {
            rules.sort_unstable();
            rules.dedup();
            for rule in rules {
                self.decisions.get_or_create(&labels(&[rule, action])).inc();
            }
        }
    }

    pub fn panic(&self) {
        self.panics.inc();
    }

    pub fn certificate_reload(&self, success: bool, expiry_unix: Option<i64>) {
        let result = if success { "success" } else { "error" };
        self.certificate_reloads
            .get_or_create(&labels(&[result]))
            .inc();
        if let Some(expiry) = expiry_unix {
            self.certificate_expiry.set(expiry);
        }
    }

    pub fn certificate_expiry(&self, expiry_unix: i64) {
        self.certificate_expiry.set(expiry_unix);
    }

    pub fn policy_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.policy_reloads.get_or_create(&labels(&[result])).inc();
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
        assert!(
            text.contains(r#"le="5e-5""#) || text.contains(r#"le="0.00005""#),
            "{text}"
        );
    }

    #[test]
    fn records_requests_responses_and_decisions() {
        let metrics = Metrics::new();
        {
            let _guard = metrics.in_flight("/mutate");
            assert!(
                metrics.encode().contains(
                    r#"controller_runtime_webhook_requests_in_flight{webhook="/mutate"} 1"#
                )
            );
        }
        metrics.request("/mutate", 200, Duration::from_micros(80));
        let object = serde_json::json!({
            "metadata": { "name": "x" },
            "spec": {
                "selector": { "matchLabels": { "a": "b" } },
                "template": { "metadata": { "labels": { "a": "b" } }, "spec": { "containers": [{ "name": "c" }] } },
            },
        });
        let verdict = crate::policy::review(&object, None, &Default::default());
        metrics.response("/mutate", true, 200, Some(&verdict));
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
