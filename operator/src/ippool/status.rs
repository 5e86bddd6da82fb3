//! An IPPool's status from what the operator knows about it: READY n/m and the conditions
//! `Ready`, `Progressing`, `Degraded`, `CIDROverlap`, `BlocksExhausted` and `UnsupportedFields`
//! (Calico fields accepted but not acted on yet), with reasons and
//! messages a user can act on.

use crate::conditions::{DEGRADED, Desired, PROGRESSING, READY};

/// The pool overlaps an older pool and is not used.
pub const CIDR_OVERLAP: &str = "CIDROverlap";
/// Selected nodes are left without a block because the pool has none free.
pub const BLOCKS_EXHAUSTED: &str = "BlocksExhausted";
/// The pool sets Calico fields Trellis accepts but does not act on yet.
pub const UNSUPPORTED_FIELDS: &str = "UnsupportedFields";
/// A live change waits longer than the timeout for nodes to report its phase.
pub const LIVE_CHANGE_STALLED: &str = "LiveChangeStalled";
use super::convergence::Convergence;

/// Everything the status of one pool depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolFacts {
    pub generation: i64,
    pub cidr: String,
    pub block_prefix: u8,
    /// The older pool this one overlaps, if any (then this one is not used).
    pub overlaps: Option<String>,
    /// Why the nodeSelector could not be parsed.
    pub selector_error: Option<String>,
    /// Selected nodes without a block of this pool because none is free.
    pub starved: Vec<String>,
    /// Accepted settings Trellis does not act on yet (human messages).
    pub unsupported: Vec<String>,
    pub convergence: Convergence,
    /// The live change in progress, if any.
    pub live: Option<LiveSummary>,
}

/// A running live change, as the conditions describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSummary {
    /// `None (natOutgoing false) -> VXLAN/Always (natOutgoing false)`.
    pub change: String,
    pub phase: String,
    /// Nodes waited for longer than the timeout, with why.
    pub stalled: Vec<(String, String)>,
    /// The timeout in seconds.
    pub timeout_secs: u64,
}

/// The status fields the IPPool controller owns (`transition` is not among them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatusView {
    pub observed_generation: i64,
    pub nodes_selected: i32,
    pub nodes_converged: i32,
    /// `converged/selected`, the READY column.
    pub ready: String,
    pub conditions: Vec<Desired>,
}

/// How many names a message lists before it says "and N more".
const LISTED: usize = 5;

fn listed(names: &[String]) -> String {
    let mut out = names.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > LISTED {
        out.push_str(&format!(" and {} more", names.len() - LISTED));
    }
    out
}

fn count(n: usize) -> String {
    format!("{n} node{}", if n == 1 { "" } else { "s" })
}

/// The status of one pool.
pub fn pool_status(facts: &PoolFacts) -> PoolStatusView {
    let c = &facts.convergence;
    let selected = i32::try_from(c.selected).unwrap_or(i32::MAX);
    let converged = i32::try_from(c.converged).unwrap_or(i32::MAX);
    let generation = facts.generation;

    let overlap = match &facts.overlaps {
        Some(older) => Desired::new(
            CIDR_OVERLAP,
            true,
            "OverlapsOlderPool",
            format!(
                "{} overlaps IPPool {older}, which is older; no blocks are allocated from this pool \
                 until one of the two is changed or deleted",
                facts.cidr
            ),
        ),
        None => Desired::new(CIDR_OVERLAP, false, "NoOverlap", "the CIDR overlaps no older pool"),
    };
    let exhausted = if facts.starved.is_empty() {
        Desired::new(BLOCKS_EXHAUSTED, false, "BlocksAvailable", "every selected node has a block")
    } else {
        Desired::new(
            BLOCKS_EXHAUSTED,
            true,
            "NoFreeBlock",
            format!(
                "no free /{} block left in {} for {} without one: {}; add a pool or delete unused nodes",
                facts.block_prefix,
                facts.cidr,
                count(facts.starved.len()),
                listed(&facts.starved)
            ),
        )
    };

    // A warning, not a degradation: the pool works as far as Trellis implements it.
    let unsupported = if facts.unsupported.is_empty() {
        Desired::new(UNSUPPORTED_FIELDS, false, "AllFieldsSupported", "Trellis acts on every field this pool sets")
    } else {
        Desired::new(UNSUPPORTED_FIELDS, true, "FieldsNotImplemented", facts.unsupported.join("; "))
    };

    let errors: Vec<String> = c.errors.iter().map(|(n, e)| format!("{n}: {e}")).collect();
    let problems: Vec<(&str, String)> = [
        facts.overlaps.as_ref().map(|_| ("CIDROverlap", overlap.message.clone())),
        facts.selector_error.as_ref().map(|e| ("InvalidNodeSelector", format!("spec.nodeSelector: {e}"))),
        (!facts.starved.is_empty()).then(|| ("BlocksExhausted", exhausted.message.clone())),
        (!errors.is_empty())
            .then(|| ("NodeErrors", format!("{} report errors: {}", count(errors.len()), listed(&errors)))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let degraded = match problems.first() {
        Some((reason, _)) => Desired::new(
            DEGRADED,
            true,
            *reason,
            problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
        ),
        None => Desired::new(DEGRADED, false, "AsExpected", "no problems"),
    };

    let stalled = match &facts.live {
        Some(live) if !live.stalled.is_empty() => {
            let nodes: Vec<String> = live.stalled.iter().map(|(n, why)| format!("{n} ({why})")).collect();
            Desired::new(
                LIVE_CHANGE_STALLED,
                true,
                "NodesNotReporting",
                format!(
                    "the change {} is paused in phase {}: {} did not report the phase within {} s: {}; it goes on \
                     when they report or are deleted, or at once with the annotation trellis.dev/live-change: direct",
                    live.change,
                    live.phase,
                    count(live.stalled.len()),
                    live.timeout_secs,
                    listed(&nodes)
                ),
            )
        }
        _ => Desired::new(LIVE_CHANGE_STALLED, false, "NotStalled", "no live change waits beyond its timeout"),
    };

    let progressing = if let Some(live) = &facts.live {
        let waiting =
            if c.lagging.is_empty() { String::new() } else { format!("; waiting for {}", listed(&c.lagging)) };
        Desired::new(
            PROGRESSING,
            true,
            "LiveChange",
            format!("{}: phase {}, {converged}/{selected} selected nodes there{waiting}", live.change, live.phase),
        )
    } else if c.lagging.is_empty() {
        Desired::new(
            PROGRESSING,
            false,
            "NothingPending",
            format!("no selected node is still applying generation {generation}"),
        )
    } else {
        Desired::new(
            PROGRESSING,
            true,
            "NodesApplying",
            format!(
                "{converged}/{selected} selected nodes applied generation {generation}; waiting for {}",
                listed(&c.lagging)
            ),
        )
    };

    let usable = facts.overlaps.is_none() && facts.selector_error.is_none();
    let ready = if !usable {
        let (reason, message) = problems.first().cloned().unwrap_or(("NotUsable", String::new()));
        Desired::new(READY, false, reason, message)
    } else if selected == 0 {
        Desired::new(READY, true, "NoNodesSelected", "the nodeSelector selects no node")
    } else if converged == selected {
        Desired::new(
            READY,
            true,
            "AllNodesApplied",
            format!("all {} selected applied generation {generation}", count(c.selected)),
        )
    } else {
        let reason = if !facts.starved.is_empty() {
            "BlocksExhausted"
        } else if !c.errors.is_empty() {
            "NodeErrors"
        } else {
            "NodesApplying"
        };
        Desired::new(
            READY,
            false,
            reason,
            format!("{converged}/{selected} selected nodes applied generation {generation}"),
        )
    };

    PoolStatusView {
        observed_generation: generation,
        nodes_selected: selected,
        nodes_converged: converged,
        ready: format!("{converged}/{selected}"),
        conditions: vec![ready, progressing, degraded, overlap, exhausted, unsupported, stalled],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(selected: usize, converged: usize) -> PoolFacts {
        PoolFacts {
            generation: 4,
            cidr: "10.0.0.0/16".into(),
            block_prefix: 26,
            convergence: Convergence {
                selected,
                converged,
                lagging: (converged..selected).map(|i| format!("n{i}")).collect(),
                errors: vec![],
            },
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a PoolStatusView, type_: &str) -> &'a Desired {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    /// (case, facts, ready column, Ready, its reason, Progressing, Degraded, its reason)
    type Row = (&'static str, PoolFacts, &'static str, bool, &'static str, bool, bool, &'static str);

    #[test]
    fn unsupported_fields_warn_without_degrading_a_working_pool() {
        let fine = pool_status(&facts(2, 2));
        assert!(!cond(&fine, UNSUPPORTED_FIELDS).status);
        let f = PoolFacts { unsupported: vec!["spec.disableBGPExport: Trellis runs no BGP".into()], ..facts(2, 2) };
        let s = pool_status(&f);
        let warning = cond(&s, UNSUPPORTED_FIELDS);
        assert!(warning.status);
        assert_eq!(warning.reason, "FieldsNotImplemented");
        assert!(warning.message.contains("disableBGPExport"), "{}", warning.message);
        assert!(cond(&s, "Ready").status, "a warning does not make the pool unready");
        assert!(!cond(&s, "Degraded").status);
    }

    #[test]
    fn status_follows_overlap_selector_exhaustion_and_convergence() {
        let rows: Vec<Row> = vec![
            ("all converged", facts(3, 3), "3/3", true, "AllNodesApplied", false, false, "AsExpected"),
            ("some applying", facts(3, 1), "1/3", false, "NodesApplying", true, false, "AsExpected"),
            ("no nodes selected", facts(0, 0), "0/0", true, "NoNodesSelected", false, false, "AsExpected"),
            (
                "overlap wins over everything",
                PoolFacts { overlaps: Some("old".into()), ..facts(2, 0) },
                "0/2",
                false,
                "CIDROverlap",
                true,
                true,
                "CIDROverlap",
            ),
            (
                "bad selector",
                PoolFacts { selector_error: Some("unexpected character '!'".into()), ..facts(0, 0) },
                "0/0",
                false,
                "InvalidNodeSelector",
                false,
                true,
                "InvalidNodeSelector",
            ),
            (
                "exhausted",
                PoolFacts { starved: vec!["n2".into()], ..facts(3, 2) },
                "2/3",
                false,
                "BlocksExhausted",
                true,
                true,
                "BlocksExhausted",
            ),
            (
                "a node error",
                PoolFacts {
                    convergence: Convergence {
                        selected: 2,
                        converged: 1,
                        lagging: vec![],
                        errors: vec![("n1".into(), "no ipip module".into())],
                    },
                    ..facts(2, 1)
                },
                "1/2",
                false,
                "NodeErrors",
                false,
                true,
                "NodeErrors",
            ),
        ];
        for (name, f, column, ready, ready_reason, progressing, degraded, degraded_reason) in rows {
            let s = pool_status(&f);
            assert_eq!(s.ready, column, "{name}");
            assert_eq!(s.observed_generation, 4, "{name}");
            assert_eq!((cond(&s, "Ready").status, cond(&s, "Ready").reason.as_str()), (ready, ready_reason), "{name}");
            assert_eq!(cond(&s, "Progressing").status, progressing, "{name}");
            assert_eq!(
                (cond(&s, "Degraded").status, cond(&s, "Degraded").reason.as_str()),
                (degraded, degraded_reason),
                "{name}"
            );
            assert_eq!(cond(&s, "CIDROverlap").status, f.overlaps.is_some(), "{name}");
            assert_eq!(cond(&s, "BlocksExhausted").status, !f.starved.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_live_change_is_progress_and_a_stall_names_the_nodes() {
        let live = LiveSummary {
            change: "None (natOutgoing false) -> VXLAN/Always (natOutgoing false)".into(),
            phase: "Receive".into(),
            stalled: vec![],
            timeout_secs: 60,
        };
        let s = pool_status(&PoolFacts { live: Some(live.clone()), ..facts(3, 1) });
        let p = cond(&s, "Progressing");
        assert_eq!((p.status, p.reason.as_str()), (true, "LiveChange"));
        assert!(p.message.contains("phase Receive, 1/3"), "{}", p.message);
        assert!(!cond(&s, LIVE_CHANGE_STALLED).status);
        let stalled = LiveSummary { stalled: vec![("n2".into(), "no report for this pool".into())], ..live };
        let s = pool_status(&PoolFacts { live: Some(stalled), ..facts(3, 2) });
        let c = cond(&s, LIVE_CHANGE_STALLED);
        assert!(c.status);
        assert!(c.message.contains("paused in phase Receive") && c.message.contains("n2 (no report"), "{}", c.message);
    }

    #[test]
    fn messages_name_the_older_pool_and_the_waiting_nodes() {
        let s = pool_status(&PoolFacts { overlaps: Some("default-ipv4".into()), ..facts(7, 0) });
        assert!(cond(&s, "CIDROverlap").message.contains("overlaps IPPool default-ipv4"));
        assert!(cond(&s, "Progressing").message.ends_with("waiting for n0, n1, n2, n3, n4 and 2 more"));
    }
}
