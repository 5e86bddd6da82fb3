//! Status conditions (Ready, Progressing, Degraded, CIDROverlap, ...), as pure functions.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, so
//! `kubectl describe` says since when something is true, not when the operator last looked.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Settings accepted at admission that Trellis does not act on (yet).
pub const IGNORED_SETTINGS: &str = "IgnoredSettings";

/// A condition as a reconcile decides it; [`merge`] turns it into the API type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// For humans: what is going on and what to do about it.
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// The new condition list: `desired` in order, each keeping its previous transition time when its
/// status did not change; conditions of other types in `previous` are kept as they are.
pub fn merge(previous: &[Condition], desired: &[Desired], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    out.extend(previous.iter().filter(|c| !desired.iter().any(|d| d.type_ == c.type_)).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_only_moves_when_the_status_changes() {
        let first = merge(&[], &[Desired::new(READY, false, "Rendering", "rendering")], Some(1), t(100));
        assert_eq!(first[0].last_transition_time, Time(t(100)));
        let same = merge(&first, &[Desired::new(READY, false, "Waiting", "still waiting")], Some(2), t(200));
        assert_eq!(same[0].last_transition_time, Time(t(100)), "same status keeps its time");
        assert_eq!(same[0].reason, "Waiting");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Desired::new(READY, true, "AllAgentsReady", "ok")], Some(2), t(300));
        assert_eq!(flipped[0].last_transition_time, Time(t(300)));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn conditions_of_other_owners_are_kept() {
        let other = merge(&[], &[Desired::new("CIDROverlap", true, "Overlap", "x")], None, t(1));
        let merged = merge(&other, &[Desired::new(READY, true, "Ok", "ok")], None, t(2));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].type_, READY);
        assert_eq!(merged[1].type_, "CIDROverlap");
    }
}
