//! The three-phase live change of a pool's encapsulation and natOutgoing (docs/live-changes.md),
//! as one pure step: from the pool's spec, its status (`active`, `transition`), the nodes and
//! their NodeNetwork reports and the clock, the next `active`/`transition` and the Events.
//!
//! * Receive: every node keeps sending with the old settings and can receive the new ones.
//! * Switch: senders use the new settings (routes replaced); the old receive side stays.
//! * Cleanup: the old receive side is removed. Once every node reports it, `transition` is
//!   cleared and `active` holds the new settings.
//!
//! A phase ends when every node reports it in its NodeNetwork status (this pool's entry with
//! the phase, a generation at least the change's, no error). Every node counts, not only the
//! selected ones: every agent routes every pool's blocks. A node that has not reported after
//! the timeout is named (`stalled`) and the change *pauses* in its phase — moving on would
//! switch senders towards a node that may not receive the new encapsulation, or remove what
//! it still sends with. It goes on when the node reports, is deleted, or the pool is annotated
//! `trellis.dev/live-change: direct`.
//!
//! A new spec during Receive supersedes the change (no sender has switched, so the target
//! can still change; patched back to the old settings, the change is cancelled); during
//! Switch or Cleanup it is queued: the running change finishes, then the next one starts from
//! its result.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use trellis_api::ip_pool::{ActiveSettings, Transition};
use trellis_api::node_network::AppliedPool;

pub const RECEIVE: &str = "Receive";
pub const SWITCH: &str = "Switch";
pub const CLEANUP: &str = "Cleanup";

/// Everything one step depends on.
#[derive(Clone, Debug)]
pub struct LiveFacts<'a> {
    pub pool: &'a str,
    /// The spec's settings at its current generation.
    pub target: ActiveSettings,
    /// False with `trellis.dev/live-change: direct`: agents apply the spec on their own.
    pub phased: bool,
    pub active: Option<ActiveSettings>,
    pub transition: Option<Transition>,
    /// Every node (each agent routes every pool).
    pub nodes: &'a BTreeSet<String>,
    /// Node name → the pools its NodeNetwork status lists.
    pub reports: &'a BTreeMap<String, Vec<AppliedPool>>,
    pub now: Timestamp,
    /// How long a phase waits for a node before the node is reported as stalled.
    pub timeout: Duration,
}

/// An Event to publish about the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of one step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveStep {
    pub active: Option<ActiveSettings>,
    pub transition: Option<Transition>,
    /// Nodes the current phase still waits for, with why (no report yet, or their error).
    pub waiting: Vec<(String, String)>,
    /// Of those, the ones waited for longer than the timeout: the change pauses on them.
    pub stalled: Vec<(String, String)>,
    pub events: Vec<LiveEvent>,
}

fn same_settings(a: &ActiveSettings, b: &ActiveSettings) -> bool {
    a.encapsulation == b.encapsulation && a.nat_outgoing == b.nat_outgoing
}

fn describe(encapsulation: &str, nat: bool) -> String {
    format!("{encapsulation} (natOutgoing {nat})")
}

fn from_of(t: &Transition) -> String {
    describe(&t.from, t.from_nat_outgoing)
}

fn to_of(t: &Transition) -> String {
    describe(&t.to, t.to_nat_outgoing)
}

fn normal(reason: &'static str, message: String) -> LiveEvent {
    LiveEvent { warning: false, reason, message }
}

/// Why `node` has not reached the phase of `t` yet, or None when it has.
fn pending(pool: &str, t: &Transition, node: &str, reports: &BTreeMap<String, Vec<AppliedPool>>) -> Option<String> {
    let entry = reports.get(node).and_then(|pools| pools.iter().find(|p| p.name == pool));
    match entry {
        None => Some("no report for this pool".to_string()),
        Some(AppliedPool { error: Some(e), .. }) => Some(format!("reports an error: {e}")),
        Some(p) if p.generation >= t.generation && p.phase.as_deref() == Some(t.phase.as_str()) => None,
        Some(p) => {
            Some(format!("reports phase {} at generation {}", p.phase.as_deref().unwrap_or("none"), p.generation))
        }
    }
}

/// One step of the change (see the module comment).
pub fn step(f: &LiveFacts) -> LiveStep {
    let mut out = LiveStep::default();
    let now = Time(f.now);
    if !f.phased {
        if let Some(t) = &f.transition {
            out.events.push(normal(
                "LiveChangeDirect",
                format!(
                    "phases are off for this pool (trellis.dev/live-change: direct): the change from {} to {} \
                     in phase {} ends, every node applies {} on its own",
                    from_of(t),
                    to_of(t),
                    t.phase,
                    describe(&f.target.encapsulation, f.target.nat_outgoing)
                ),
            ));
        }
        out.active = Some(f.target.clone());
        return out;
    }

    let mut active = f.active.clone();
    let mut transition = f.transition.clone();
    // Start, advance and finish as far as the reports allow: at most start + three phases +
    // a queued start.
    for _ in 0..6 {
        let Some(mut t) = transition.take() else {
            match &mut active {
                None => active = Some(f.target.clone()), // a new pool: nothing to migrate from
                Some(a) if same_settings(a, &f.target) => a.generation = f.target.generation,
                Some(a) => {
                    let t = Transition {
                        from: a.encapsulation.clone(),
                        to: f.target.encapsulation.clone(),
                        from_nat_outgoing: a.nat_outgoing,
                        to_nat_outgoing: f.target.nat_outgoing,
                        generation: f.target.generation,
                        phase: RECEIVE.to_string(),
                        started: Some(now.clone()),
                        phase_started: Some(now.clone()),
                    };
                    out.events.push(normal(
                        "LiveChangeStarted",
                        format!(
                            "from {} to {}: phase Receive (every node prepares to receive the new settings)",
                            from_of(&t),
                            to_of(&t)
                        ),
                    ));
                    transition = Some(t);
                    continue;
                }
            }
            break;
        };

        let target_differs = t.to != f.target.encapsulation || t.to_nat_outgoing != f.target.nat_outgoing;
        if target_differs && t.phase == RECEIVE && t.generation < f.target.generation {
            if t.from == f.target.encapsulation && t.from_nat_outgoing == f.target.nat_outgoing {
                out.events.push(normal(
                    "LiveChangeCancelled",
                    format!("the pool is back at {} before any sender switched; the change ends", from_of(&t)),
                ));
                if let Some(a) = &mut active {
                    a.generation = f.target.generation;
                }
                break;
            }
            t.to = f.target.encapsulation.clone();
            t.to_nat_outgoing = f.target.nat_outgoing;
            t.generation = f.target.generation;
            t.phase_started = Some(now.clone());
            out.events.push(normal(
                "LiveChangeSuperseded",
                format!("a newer spec arrived before any sender switched: now from {} to {}", from_of(&t), to_of(&t)),
            ));
        }

        let waiting: Vec<(String, String)> =
            f.nodes.iter().filter_map(|n| pending(f.pool, &t, n, f.reports).map(|why| (n.clone(), why))).collect();
        if !waiting.is_empty() {
            let since = t.phase_started.as_ref().map(|s| s.0).unwrap_or(f.now);
            let waited = f.now.as_second().saturating_sub(since.as_second());
            if waited >= i64::try_from(f.timeout.as_secs()).unwrap_or(i64::MAX) {
                out.stalled = waiting.clone();
            }
            out.waiting = waiting;
            transition = Some(t);
            break;
        }
        match t.phase.as_str() {
            RECEIVE => {
                t.phase = SWITCH.to_string();
                out.events.push(normal(
                    "LiveChangeSwitch",
                    format!(
                        "every node can receive {}: senders switch (phase Switch, from {})",
                        to_of(&t),
                        from_of(&t)
                    ),
                ));
            }
            SWITCH => {
                t.phase = CLEANUP.to_string();
                out.events.push(normal(
                    "LiveChangeCleanup",
                    format!("every node sends with {}: the receive side of {} is removed", to_of(&t), from_of(&t)),
                ));
            }
            _ => {
                let took = t.started.as_ref().map(|s| f.now.as_second().saturating_sub(s.0.as_second()));
                out.events.push(normal(
                    "LiveChangeCompleted",
                    format!(
                        "from {} to {} on {} nodes{}",
                        from_of(&t),
                        to_of(&t),
                        f.nodes.len(),
                        took.map(|s| format!(" in {s} s")).unwrap_or_default()
                    ),
                ));
                active = Some(ActiveSettings {
                    generation: t.generation,
                    encapsulation: t.to.clone(),
                    nat_outgoing: t.to_nat_outgoing,
                });
                continue; // a queued spec starts the next change right away
            }
        }
        t.phase_started = Some(now.clone());
        transition = Some(t);
    }
    out.active = active;
    out.transition = transition;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(generation: i64, encapsulation: &str, nat: bool) -> ActiveSettings {
        ActiveSettings { generation, encapsulation: encapsulation.into(), nat_outgoing: nat }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn report(generation: i64, phase: Option<&str>, error: Option<&str>) -> Vec<AppliedPool> {
        vec![AppliedPool {
            name: "p".into(),
            generation,
            encapsulation: "x".into(),
            phase: phase.map(String::from),
            error: error.map(String::from),
        }]
    }

    struct World {
        nodes: BTreeSet<String>,
        reports: BTreeMap<String, Vec<AppliedPool>>,
    }

    impl World {
        fn new(nodes: &[&str]) -> Self {
            Self { nodes: nodes.iter().map(|s| s.to_string()).collect(), reports: BTreeMap::new() }
        }
        fn all_report(&mut self, generation: i64, phase: &str) {
            for n in &self.nodes {
                self.reports.insert(n.clone(), report(generation, Some(phase), None));
            }
        }
        fn step(&self, target: ActiveSettings, prev: &LiveStep, now: i64) -> LiveStep {
            step(&LiveFacts {
                pool: "p",
                target,
                phased: true,
                active: prev.active.clone(),
                transition: prev.transition.clone(),
                nodes: &self.nodes,
                reports: &self.reports,
                now: at(now),
                timeout: Duration::from_secs(60),
            })
        }
    }

    fn phase(s: &LiveStep) -> Option<&str> {
        s.transition.as_ref().map(|t| t.phase.as_str())
    }

    fn reasons(s: &LiveStep) -> Vec<&str> {
        s.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_new_pool_settles_at_once_and_a_generation_without_a_live_setting_changes_nothing() {
        let w = World::new(&["a"]);
        let s = w.step(settings(1, "None", false), &LiveStep::default(), 0);
        assert_eq!((s.active, s.transition, s.events), (Some(settings(1, "None", false)), None, vec![]));
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(settings(2, "None", false), &prev, 0);
        assert_eq!((s.active, s.transition), (Some(settings(2, "None", false)), None));
    }

    #[test]
    fn each_phase_waits_for_every_node_then_the_change_completes() {
        let mut w = World::new(&["a", "b"]);
        let target = settings(2, "VXLAN/Always", true);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(target.clone(), &prev, 10);
        let t = s.transition.clone().unwrap();
        assert_eq!((t.from.as_str(), t.to.as_str(), t.phase.as_str()), ("None", "VXLAN/Always", RECEIVE));
        assert_eq!((t.from_nat_outgoing, t.to_nat_outgoing, t.generation), (false, true, 2));
        assert_eq!(reasons(&s), ["LiveChangeStarted"]);
        assert_eq!(s.waiting.len(), 2);
        assert_eq!(s.active, Some(settings(1, "None", false)), "active stays until the end");

        // One node in Receive is not enough.
        w.reports.insert("a".into(), report(2, Some(RECEIVE), None));
        let s = w.step(target.clone(), &s, 11);
        assert_eq!((phase(&s), s.waiting.len()), (Some(RECEIVE), 1));
        assert_eq!(s.waiting[0].0, "b");

        w.all_report(2, RECEIVE);
        let s = w.step(target.clone(), &s, 12);
        assert_eq!((phase(&s), reasons(&s)), (Some(SWITCH), vec!["LiveChangeSwitch"]));
        assert_eq!(s.transition.as_ref().unwrap().phase_started, Some(Time(at(12))));

        w.all_report(2, SWITCH);
        let s = w.step(target.clone(), &s, 13);
        assert_eq!(phase(&s), Some(CLEANUP));

        w.all_report(2, CLEANUP);
        let s = w.step(target.clone(), &s, 14);
        assert_eq!((s.transition.clone(), s.active.clone()), (None, Some(target)));
        assert_eq!(reasons(&s), ["LiveChangeCompleted"]);
        assert!(s.events[0].message.contains("in 4 s"), "{}", s.events[0].message);
    }

    #[test]
    fn stale_reports_errors_and_missing_nodes_keep_a_phase_waiting() {
        let mut w = World::new(&["a", "b", "c", "d"]);
        let target = settings(5, "VXLAN/Always", false);
        let prev = LiveStep { active: Some(settings(4, "None", false)), ..Default::default() };
        let s = w.step(target.clone(), &prev, 0);
        w.reports.insert("a".into(), report(5, Some(RECEIVE), None));
        w.reports.insert("b".into(), report(3, Some(RECEIVE), None)); // an older change's report
        w.reports.insert("c".into(), report(5, Some(RECEIVE), Some("no vxlan in this kernel")));
        let s = w.step(target, &s, 1);
        let waiting: Vec<&str> = s.waiting.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(waiting, ["b", "c", "d"]);
        assert!(s.waiting[1].1.contains("no vxlan"), "{:?}", s.waiting);
        assert!(s.waiting[2].1.contains("no report"), "{:?}", s.waiting);
    }

    #[test]
    fn a_node_that_does_not_report_in_time_is_named_and_the_change_pauses() {
        let mut w = World::new(&["a", "b"]);
        let target = settings(2, "VXLAN/Always", false);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(target.clone(), &prev, 100);
        w.reports.insert("a".into(), report(2, Some(RECEIVE), None));
        let early = w.step(target.clone(), &s, 159);
        assert!(early.stalled.is_empty());
        let late = w.step(target.clone(), &early, 160);
        assert_eq!(late.stalled, vec![("b".to_string(), "no report for this pool".to_string())]);
        assert_eq!(phase(&late), Some(RECEIVE), "paused, not skipped");
        // The node deleted (or reporting): the change goes on.
        w.nodes.remove("b");
        let s = w.step(target, &late, 161);
        assert_eq!(phase(&s), Some(SWITCH));
        assert!(s.stalled.is_empty());
    }

    #[test]
    fn a_newer_spec_supersedes_during_receive_and_is_queued_after() {
        let mut w = World::new(&["a"]);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(settings(2, "VXLAN/Always", false), &prev, 0);

        // Receive: superseded, same origin, new target, Receive again.
        let s = w.step(settings(3, "VXLAN/CrossSubnet", false), &s, 1);
        let t = s.transition.clone().unwrap();
        assert_eq!(
            (t.from.as_str(), t.to.as_str(), t.generation, t.phase.as_str()),
            ("None", "VXLAN/CrossSubnet", 3, RECEIVE)
        );
        assert_eq!(reasons(&s), ["LiveChangeSuperseded"]);
        // A report of the superseded target does not count.
        w.all_report(2, RECEIVE);
        assert_eq!(phase(&w.step(settings(3, "VXLAN/CrossSubnet", false), &s, 2)), Some(RECEIVE));

        // Switch: queued; the running change finishes first, then the next one starts.
        w.all_report(3, RECEIVE);
        let s = w.step(settings(3, "VXLAN/CrossSubnet", false), &s, 3);
        assert_eq!(phase(&s), Some(SWITCH));
        let s = w.step(settings(4, "None", true), &s, 4);
        let t = s.transition.clone().unwrap();
        assert_eq!((t.to.as_str(), t.phase.as_str()), ("VXLAN/CrossSubnet", SWITCH), "queued, not superseded");
        w.all_report(4, SWITCH);
        let s = w.step(settings(4, "None", true), &s, 5);
        assert_eq!(phase(&s), Some(CLEANUP));
        w.all_report(4, CLEANUP);
        let s = w.step(settings(4, "None", true), &s, 6);
        assert_eq!(reasons(&s), ["LiveChangeCompleted", "LiveChangeStarted"]);
        assert_eq!(s.active, Some(settings(3, "VXLAN/CrossSubnet", false)));
        let t = s.transition.unwrap();
        assert_eq!(
            (t.from.as_str(), t.to.as_str(), t.to_nat_outgoing, t.phase.as_str()),
            ("VXLAN/CrossSubnet", "None", true, RECEIVE)
        );
    }

    #[test]
    fn patching_back_during_receive_cancels() {
        let w = World::new(&["a"]);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(settings(2, "VXLAN/Always", false), &prev, 0);
        let s = w.step(settings(3, "None", false), &s, 1);
        assert_eq!((s.transition.clone(), s.active.clone()), (None, Some(settings(3, "None", false))));
        assert_eq!(reasons(&s), ["LiveChangeCancelled"]);
    }

    #[test]
    fn phases_off_applies_the_spec_and_ends_a_running_change() {
        let w = World::new(&["a"]);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let running = w.step(settings(2, "VXLAN/Always", false), &prev, 0);
        let s = step(&LiveFacts {
            pool: "p",
            target: settings(2, "VXLAN/Always", false),
            phased: false,
            active: running.active.clone(),
            transition: running.transition.clone(),
            nodes: &w.nodes,
            reports: &w.reports,
            now: at(1),
            timeout: Duration::from_secs(60),
        });
        assert_eq!(reasons(&s), ["LiveChangeDirect"]);
        assert_eq!((s.transition, s.active), (None, Some(settings(2, "VXLAN/Always", false))));
    }

    #[test]
    fn without_nodes_a_change_runs_through_at_once() {
        let w = World::new(&[]);
        let prev = LiveStep { active: Some(settings(1, "None", false)), ..Default::default() };
        let s = w.step(settings(2, "IPIP/Always", false), &prev, 0);
        assert_eq!(reasons(&s), ["LiveChangeStarted", "LiveChangeSwitch", "LiveChangeCleanup", "LiveChangeCompleted"]);
        assert_eq!((s.transition, s.active), (None, Some(settings(2, "IPIP/Always", false))));
    }
}
