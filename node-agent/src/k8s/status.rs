//! This node's NodeNetwork `status`: what the last pass applied, per pool.
//!
//! Built purely from a [`PassOutcome`]; written through the status subresource by server-side
//! apply only when it differs from what was last written (condition timestamps aside), so a
//! quiet node does not write at every resync. Each pool reports the IPPool generation the pass
//! used, which is how the operator (and tests) know a `kubectl patch ippool` reached this node.
//! During a live change each pool also reports the phase (Receive, Switch, Cleanup) the pass
//! applied completely; the operator advances the change once every node reports it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use trellis_api::node_network::AppliedPool;
use trellis_api::{NodeNetwork, NodeNetworkStatus};

use super::node_network::FIELD_MANAGER;
use crate::model::PoolPlan;

/// What one pass did, in the terms of the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassOutcome {
    /// The planner's per-pool outcome of the pass.
    pub pools: Vec<PoolPlan>,
    /// IPPool generations the pass's snapshot came from.
    pub generations: BTreeMap<String, i64>,
    /// Effective pod MTU (None when the pass could not plan).
    pub mtu: Option<u32>,
    /// The pass applied everything it should have.
    pub applied: bool,
    /// The CNI conflist was written (or already in place).
    pub cni_in_place: bool,
    /// Why the node has no conflist on purpose (no block can give pods addresses).
    pub cni_unavailable: Option<String>,
    /// Why not everything was applied (kernel, NAT, CNI, snapshot errors).
    pub errors: Vec<String>,
}

impl PassOutcome {
    /// Ready: everything applied and pods can be wired (the conflist is there).
    pub fn ready(&self) -> bool {
        self.applied && self.cni_in_place && self.errors.is_empty()
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: None,
    }
}

/// Pure: the status for `outcome`. Conditions whose status did not change keep their
/// `lastTransitionTime` from `previous`.
pub fn status_for(outcome: &PassOutcome, previous: Option<&NodeNetworkStatus>, now: Time) -> NodeNetworkStatus {
    let pools = outcome
        .pools
        .iter()
        .map(|p| AppliedPool {
            name: p.name.clone(),
            generation: outcome.generations.get(&p.name).copied().unwrap_or_default(),
            encapsulation: p.encapsulation.to_string(),
            // A phase counts as reached only once a pass applied all of it.
            phase: p.phase.filter(|_| outcome.applied && outcome.errors.is_empty()).map(|p| p.to_string()),
            error: p.error.clone(),
        })
        .collect::<Vec<_>>();
    let pool_errors: Vec<String> =
        pools.iter().filter_map(|p| p.error.as_ref().map(|e| format!("pool {}: {e}", p.name))).collect();

    let ready = outcome.ready();
    let ready_message = if ready {
        "the data plane and the CNI conflist are in place".to_string()
    } else if !outcome.errors.is_empty() {
        outcome.errors.join("; ")
    } else if let Some(why) = &outcome.cni_unavailable {
        format!("no new pods on this node: {why}")
    } else if !outcome.cni_in_place {
        "the CNI conflist is not in place".to_string()
    } else {
        "the last pass did not apply everything".to_string()
    };
    let ready_reason = match (ready, &outcome.cni_unavailable) {
        (true, _) => "Applied",
        (false, Some(_)) if outcome.errors.is_empty() => "NoAllocatableBlock",
        (false, _) => "ApplyFailed",
    };
    let problems: Vec<String> = outcome.errors.iter().cloned().chain(pool_errors).collect();
    let degraded = !problems.is_empty();
    let (degraded_reason, degraded_message) = if degraded {
        let reason = if outcome.errors.is_empty() { "PoolNotProgrammed" } else { "ApplyFailed" };
        (reason, problems.join("; "))
    } else {
        ("AsExpected", "no errors".to_string())
    };

    let mut conditions = vec![
        condition("Ready", ready, ready_reason, ready_message, &now),
        condition("Degraded", degraded, degraded_reason, degraded_message, &now),
    ];
    for c in &mut conditions {
        // Calico/Kubernetes convention: the time of the last status flip.
        if let Some(old) = previous.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    NodeNetworkStatus { pools, mtu: outcome.mtu.and_then(|m| i32::try_from(m).ok()), conditions }
}

/// Whether two statuses say the same (condition timestamps aside).
pub fn same(a: &NodeNetworkStatus, b: &NodeNetworkStatus) -> bool {
    let strip = |s: &NodeNetworkStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Default::default());
        }
        s
    };
    strip(a) == strip(b)
}

#[derive(Debug, thiserror::Error)]
#[error("status of NodeNetwork {name}: {source}")]
pub struct StatusError {
    name: String,
    source: kube::Error,
}

/// Writes `status` through the status subresource (server-side apply).
pub async fn write(api: &Api<NodeNetwork>, name: &str, status: &NodeNetworkStatus) -> Result<(), StatusError> {
    let body = serde_json::json!({
        "apiVersion": "trellis.dev/v1",
        "kind": "NodeNetwork",
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| StatusError { name: name.to_string(), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Encapsulation;
    use trellis_api::EncapMode;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn outcome() -> PassOutcome {
        PassOutcome {
            pools: vec![
                PoolPlan {
                    name: "a".into(),
                    encapsulation: Encapsulation::Vxlan(EncapMode::Always),
                    phase: None,
                    disabled: false,
                    error: None,
                },
                PoolPlan {
                    name: "b".into(),
                    encapsulation: Encapsulation::Ipip(EncapMode::CrossSubnet),
                    phase: None,
                    disabled: false,
                    error: Some("the kernel has no ipip".into()),
                },
            ],
            generations: BTreeMap::from([("a".into(), 4), ("b".into(), 2)]),
            mtu: Some(1450),
            applied: true,
            cni_in_place: true,
            cni_unavailable: None,
            errors: vec![],
        }
    }

    fn cond<'a>(s: &'a NodeNetworkStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn pools_report_generation_encapsulation_and_error() {
        let s = status_for(&outcome(), None, at(100));
        assert_eq!(s.pools.len(), 2);
        assert_eq!((s.pools[0].generation, s.pools[0].encapsulation.as_str()), (4, "VXLAN/Always"));
        assert_eq!((s.pools[1].generation, s.pools[1].encapsulation.as_str()), (2, "IPIP/CrossSubnet"));
        assert_eq!(s.pools[1].error.as_deref(), Some("the kernel has no ipip"));
        assert!(s.pools.iter().all(|p| p.phase.is_none()));
        assert_eq!(s.mtu, Some(1450));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "True", "a pool error degrades");
        assert!(cond(&s, "Degraded").message.contains("pool b"));
    }

    #[test]
    fn a_phase_is_reported_only_after_a_pass_applied_all_of_it() {
        let mut o = outcome();
        o.pools[0].phase = Some(crate::model::Phase::Switch);
        let s = status_for(&o, None, at(1));
        assert_eq!(s.pools[0].phase.as_deref(), Some("Switch"));
        assert_eq!(s.pools[1].phase, None);
        o.applied = false;
        assert_eq!(status_for(&o, None, at(1)).pools[0].phase, None, "a failed pass reaches no phase");
        o.applied = true;
        o.errors = vec!["route 10.244.2.0/26: EPERM".into()];
        assert_eq!(status_for(&o, None, at(1)).pools[0].phase, None);
    }

    #[test]
    fn failed_pass_or_missing_conflist_is_not_ready() {
        let mut o = outcome();
        o.errors = vec!["cni /x: permission denied".into()];
        let s = status_for(&o, None, at(1));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert!(cond(&s, "Ready").message.contains("permission denied"));
        assert_eq!(cond(&s, "Degraded").reason, "ApplyFailed");
        let mut o = outcome();
        o.cni_in_place = false;
        assert_eq!(cond(&status_for(&o, None, at(1)), "Ready").status, "False");
    }

    #[test]
    fn no_allocatable_block_is_not_ready_and_says_why() {
        let mut o = outcome();
        o.cni_in_place = false;
        o.cni_unavailable =
            Some("no block of this node can give pods addresses (10.244.1.0/26: pool a is disabled)".into());
        let s = status_for(&o, None, at(1));
        let ready = cond(&s, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoAllocatableBlock"));
        assert!(ready.message.contains("pool a is disabled"), "{}", ready.message);
    }

    #[test]
    fn unchanged_status_keeps_transition_times_and_compares_same() {
        let first = status_for(&outcome(), None, at(100));
        let second = status_for(&outcome(), Some(&first), at(200));
        assert_eq!(cond(&second, "Ready").last_transition_time, at(100));
        assert!(same(&first, &second));
        let mut o = outcome();
        o.generations.insert("a".into(), 5);
        assert!(!same(&first, &status_for(&o, Some(&first), at(300))));
    }
}
