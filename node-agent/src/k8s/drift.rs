//! Kubernetes Events for drift the agent repaired: kernel state Trellis owns that changed
//! outside it (a route, neighbour or FDB entry deleted by hand, the VXLAN device removed, the
//! nftables table deleted) and that a pass put back.
//!
//! A pass repaired drift when it ran because the kernel changed or at a resync — not because
//! the cluster changed (that is a new desired state), not at start (adoption) and not as a
//! retry of a failed pass — and still had something to apply. The Event (Warning
//! `DriftRepaired`, on this node's Node object, so `kubectl describe node` shows it) lists what
//! was put back as the commands the agent ran. Something fighting Trellis (another tool
//! deleting its routes every second) must not flood the API server: Events are rate-limited
//! ([`EventBudget`]: a burst, then one per interval); repairs that find no budget are counted
//! and named in the next Event, and always logged.

use std::time::{Duration, Instant};

use crate::reconcile::PassReport;

/// The Event's reason.
pub const REASON: &str = "DriftRepaired";
/// Events may carry at most 1 kB of note.
const NOTE_LIMIT: usize = 1024;

/// What a pass put back (the changes as the agent's commands), if it repaired drift (see the
/// module comment). `unprompted`: the pass ran for a kernel event or a resync, not for a
/// cluster change, the start or a retry.
pub fn repairs(unprompted: bool, report: &PassReport) -> Vec<String> {
    if !unprompted {
        return Vec::new();
    }
    let mut out: Vec<String> = report.kernel.applied.iter().map(ToString::to_string).collect();
    if report.nat_changed == Some(true) {
        out.push("nftables table inet trellis (NAT outgoing) written again".into());
    }
    if report.cni_changed == Some(true) {
        out.push("CNI conflist written again".into());
    }
    if report.sysctls_changed > 0 {
        out.push(format!("{} sysctl(s) set again", report.sysctls_changed));
    }
    out
}

/// The Event's note: what was put back, and how many earlier repairs had no Event.
pub fn note(repairs: &[String], unreported: usize) -> String {
    let mut note = format!("Trellis restored kernel state that was changed outside it: {}", repairs.join("; "));
    if unreported > 0 {
        note.push_str(&format!(
            " ({unreported} earlier repair(s) were not reported as Events: rate limit; see the agent's log)"
        ));
    }
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// A token bucket for Events: `burst` at once, then one per `every`.
#[derive(Debug)]
pub struct EventBudget {
    burst: u32,
    every: Duration,
    tokens: u32,
    refilled: Instant,
    /// Repairs that found no token since the last Event.
    unreported: usize,
}

impl EventBudget {
    pub fn new(burst: u32, every: Duration, now: Instant) -> Self {
        EventBudget { burst, every, tokens: burst, refilled: now, unreported: 0 }
    }

    /// `Some(repairs not reported since the last Event)` when an Event may go out now;
    /// `None` (and the repair counted) when not.
    pub fn admit(&mut self, now: Instant) -> Option<usize> {
        let elapsed = now.saturating_duration_since(self.refilled);
        if !self.every.is_zero() {
            let earned = (elapsed.as_nanos() / self.every.as_nanos()).min(u128::from(self.burst)) as u32;
            if earned > 0 {
                self.tokens = (self.tokens + earned).min(self.burst);
                self.refilled += self.every * earned;
                if self.tokens == self.burst {
                    self.refilled = now;
                }
            }
        }
        if self.tokens == 0 {
            self.unreported += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ApplyReport;
    use crate::model::{Change, Route, RouteKind};

    fn report_with_route() -> PassReport {
        let dst = "10.244.1.0/26".parse().unwrap();
        PassReport {
            kernel: ApplyReport {
                applied: vec![Change::AddRoute(Route { dst, kind: RouteKind::Blackhole })],
                ..Default::default()
            },
            nat_changed: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn only_unprompted_passes_that_applied_something_repaired_drift() {
        let r = report_with_route();
        assert!(repairs(false, &r).is_empty(), "a cluster change, the start or a retry is not drift");
        let found = repairs(true, &r);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("route replace blackhole 10.244.1.0/26"), "{found:?}");
        assert!(found[1].contains("nftables"), "{found:?}");
        let nothing = PassReport { nat_changed: Some(false), cni_changed: Some(false), ..Default::default() };
        assert!(repairs(true, &nothing).is_empty(), "the echo of our own changes applies nothing");
    }

    #[test]
    fn the_note_names_the_repairs_and_stays_within_the_limit() {
        let n = note(&["route replace x".into(), "link add y".into()], 0);
        assert_eq!(n, "Trellis restored kernel state that was changed outside it: route replace x; link add y");
        assert!(note(&["a".into()], 3).contains("3 earlier repair(s) were not reported"));
        let long = note(&vec!["é".repeat(100); 20], 0);
        assert!(long.len() <= NOTE_LIMIT && long.ends_with("..."), "{}", long.len());
    }

    #[test]
    fn events_come_in_a_burst_then_one_per_interval_and_count_the_rest() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = EventBudget::new(2, 10 * s, t0);
        assert_eq!((b.admit(t0), b.admit(t0)), (Some(0), Some(0)));
        assert_eq!((b.admit(t0 + s), b.admit(t0 + 2 * s)), (None, None));
        assert_eq!(b.admit(t0 + 10 * s), Some(2), "one token back, with the two unreported repairs");
        assert_eq!(b.admit(t0 + 11 * s), None);
        // A long quiet time refills the burst, not more.
        let later = t0 + 1000 * s;
        assert_eq!((b.admit(later), b.admit(later), b.admit(later)), (Some(1), Some(0), None));
    }
}
