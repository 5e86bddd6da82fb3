//! The agent's Prometheus metrics and readiness, shared between the loop and the HTTP server.
//!
//! A handful of counters rendered by hand in the text exposition format (0.0.4): no registry
//! crate is needed for four series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the reconcile loop.
#[derive(Debug, Default)]
pub struct Metrics {
    passes: Mutex<BTreeMap<&'static str, u64>>,
    changes: AtomicU64,
    errors: AtomicU64,
    /// Microseconds of the last pass.
    last_apply_micros: AtomicU64,
    ready: AtomicBool,
}

impl Metrics {
    /// Records one pass: why it ran, the kernel/NAT/CNI changes it applied, the errors it met,
    /// how long it took, and whether the node is ready afterwards.
    pub fn record_pass(&self, trigger: &'static str, changes: usize, errors: usize, took: Duration, ready: bool) {
        if let Ok(mut passes) = self.passes.lock() {
            *passes.entry(trigger).or_default() += 1;
        }
        self.changes.fetch_add(changes as u64, Ordering::Relaxed);
        self.errors.fetch_add(errors as u64, Ordering::Relaxed);
        self.last_apply_micros.store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Counts an error outside a pass (e.g. the API server refused a status write).
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The data plane and the CNI conflist are in place (after the last pass).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP trellis_agent_passes_total Reconcile passes, by what triggered them.");
        let _ = writeln!(out, "# TYPE trellis_agent_passes_total counter");
        if let Ok(passes) = self.passes.lock() {
            for (trigger, n) in passes.iter() {
                let _ = writeln!(out, "trellis_agent_passes_total{{trigger=\"{trigger}\"}} {n}");
            }
        }
        let counters = [
            ("trellis_agent_changes_applied_total", "Kernel, NAT, CNI and sysctl changes applied.", &self.changes),
            ("trellis_agent_errors_total", "Changes that failed, host sync errors and API write errors.", &self.errors),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let seconds = self.last_apply_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "# HELP trellis_agent_last_apply_duration_seconds Duration of the last pass.");
        let _ = writeln!(out, "# TYPE trellis_agent_last_apply_duration_seconds gauge");
        let _ = writeln!(out, "trellis_agent_last_apply_duration_seconds {seconds}");
        let _ = writeln!(out, "# HELP trellis_agent_ready 1 when the data plane and the CNI conflist are in place.");
        let _ = writeln!(out, "# TYPE trellis_agent_ready gauge");
        let _ = writeln!(out, "trellis_agent_ready {}", u8::from(self.ready()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_counted_per_trigger_and_rendered() {
        let m = Metrics::default();
        m.record_pass("start", 5, 0, Duration::from_millis(250), true);
        m.record_pass("cluster", 2, 1, Duration::from_millis(10), false);
        m.record_pass("cluster", 0, 0, Duration::from_millis(20), true);
        m.record_error();
        let text = m.render();
        assert!(text.contains("trellis_agent_passes_total{trigger=\"start\"} 1\n"), "{text}");
        assert!(text.contains("trellis_agent_passes_total{trigger=\"cluster\"} 2\n"), "{text}");
        assert!(text.contains("trellis_agent_changes_applied_total 7\n"), "{text}");
        assert!(text.contains("trellis_agent_errors_total 2\n"), "{text}");
        assert!(text.contains("trellis_agent_last_apply_duration_seconds 0.02\n"), "{text}");
        assert!(text.contains("trellis_agent_ready 1\n"), "{text}");
        assert!(m.ready());
    }
}
