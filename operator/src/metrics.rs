//! Prometheus metrics of the operator, served on /metrics ([`crate::health`]).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: String,
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// Every metric the operator exports, registered once.
pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica leads.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trellis_operator");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 12))) as fn() -> Histogram,
        );
        let leader = Gauge::default();
        registry.register("reconciliations", "Reconciliations run", reconciliations.clone());
        registry.register("reconcile_failures", "Reconciliations that failed, by error", failures.clone());
        registry.register("reconcile_duration_seconds", "Duration of a reconciliation", reconcile_duration.clone());
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        Metrics { registry, reconciliations, failures, reconcile_duration, leader }
    }
}

impl Metrics {
    /// Counts one reconciliation of `controller` that took `took`.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        let labels = ControllerLabels { controller: controller.to_string() };
        self.reconciliations.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts one failed reconciliation.
    pub fn failed(&self, controller: &str, error: &crate::Error) {
        let labels = FailureLabels { controller: controller.to_string(), error: error.metric_label().to_string() };
        self.failures.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_by_error_variant() {
        let m = Metrics::default();
        m.reconciled("installation", Duration::from_millis(3));
        m.failed("installation", &crate::Error::NotLeader);
        let text = m.encode();
        assert!(text.contains(r#"trellis_operator_reconciliations_total{controller="installation"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"trellis_operator_reconcile_failures_total{controller="installation",error="not_leader"} 1"#
            ),
            "{text}"
        );
    }
}
