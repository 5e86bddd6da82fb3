//! GlobalNetworkPolicy (trellis.dev/v1, Calico's shape) semantics for one pod and direction.
//!
//! Policies apply to the pods matching `selector` (over the pod's labels plus
//! `projectcalico.org/namespace` and `projectcalico.org/orchestrator`) in namespaces matching
//! `namespaceSelector`, in the directions of `types`. They run in ascending `order` (unset last,
//! ties by name), rule by rule: Allow and Deny decide, Log logs and goes on, Pass continues with
//! the pod's Kubernetes NetworkPolicies (allowed when none isolates it). When a pod is selected
//! by some policy for a direction and no rule decided, the packet is dropped (Calico's
//! end-of-tier deny).
//!
//! A rule's `source` and `destination` conditions all hold: for ingress the destination is the
//! policed pod (its `selector`/`namespaceSelector` filter the pods the rule applies to; its
//! nets and ports are matched on the packet) and the source is the other party (selectors
//! become a set of pod addresses); for egress the other way round.

use ipnet::IpNet;
use trellis_api::global_network_policy::{Action, EntityRule, PolicyRule, PolicyType, parse_port};
use trellis_api::{GlobalNetworkPolicySpec, Selector};

use super::compile::{Ctx, Direction, Group};
use super::inputs::{Pod, Protocol};
use super::rule::{self, Alternatives, Cond, End, Line, Ports, Verdict};

/// A policy with its selectors parsed.
pub struct Prepared {
    name: String,
    order: Option<f64>,
    selector: Selector,
    namespaces: Option<Selector>,
    spec: GlobalNetworkPolicySpec,
}

fn parse(ctx: &mut Ctx, policy: &str, field: &str, text: Option<&String>) -> Result<Option<Selector>, ()> {
    match text.map(|t| Selector::parse(t)) {
        None => Ok(None),
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(e)) => {
            ctx.warnings.push(format!("GlobalNetworkPolicy {policy}: {field}: {e}"));
            Err(())
        }
    }
}

/// The policies with valid selectors, in evaluation order. A policy whose own selectors do not
/// parse (admission refuses those) is left out with a warning.
pub fn prepare(ctx: &mut Ctx) -> Vec<Prepared> {
    let mut out = Vec::new();
    for gnp in &ctx.inputs().global_policies {
        let name = gnp.metadata.name.clone().unwrap_or_default();
        let Ok(selector) = parse(ctx, &name, "spec.selector", gnp.spec.selector.as_ref()) else { continue };
        let Ok(namespaces) = parse(ctx, &name, "spec.namespaceSelector", gnp.spec.namespace_selector.as_ref()) else {
            ctx.warnings.push(format!("GlobalNetworkPolicy {name} ignored"));
            continue;
        };
        let selector = selector.unwrap_or_default();
        out.push(Prepared { name, order: gnp.spec.order, selector, namespaces, spec: gnp.spec.clone() });
    }
    out.sort_by(|a, b| {
        let key = |p: &Prepared| p.order.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// The rules of the policies selecting `pod` for `direction`, in order; `None` when none does.
/// `kubernetes` is the chain of the pod's Kubernetes policies (Pass continues there).
pub fn lines(
    ctx: &mut Ctx,
    policies: &[Prepared],
    pod: &Pod,
    direction: Direction,
    kubernetes: Option<&str>,
) -> Option<Vec<Line>> {
    let labels = Ctx::calico_labels(pod);
    let ns_labels = ctx.namespace_labels(&pod.namespace);
    let wanted = match direction {
        Direction::Ingress => PolicyType::Ingress,
        Direction::Egress => PolicyType::Egress,
    };
    let mut selected = false;
    let mut out = Vec::new();
    for p in policies {
        if !p.selector.matches(&labels)
            || p.namespaces.as_ref().is_some_and(|s| !s.matches(&ns_labels))
            || !p.spec.effective_types().contains(&wanted)
        {
            continue;
        }
        selected = true;
        let rules = match direction {
            Direction::Ingress => p.spec.ingress.as_deref(),
            Direction::Egress => p.spec.egress.as_deref(),
        };
        for (i, r) in rules.unwrap_or_default().iter().enumerate() {
            let verdict = match r.action {
                Action::Allow => Verdict::Allow,
                Action::Deny => Verdict::Drop,
                Action::Log => {
                    let mut prefix = format!("trellis-policy {} {}[{i}] ", p.name, direction.short());
                    prefix.truncate(120);
                    Verdict::Log(prefix)
                }
                Action::Pass => kubernetes.map_or(Verdict::Allow, |c| Verdict::Goto(c.to_string())),
            };
            let Some(alts) = rule_alternatives(ctx, &p.name, r, direction, &labels, &ns_labels) else { continue };
            out.extend(alts.lines(&verdict));
        }
    }
    selected.then_some(out)
}

fn nets(ctx: &mut Ctx, policy: &str, list: Option<&Vec<String>>) -> Option<Vec<IpNet>> {
    let mut out = Vec::new();
    for n in list.into_iter().flatten() {
        match n.parse::<IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) => out.push(net),
            Err(_) => {
                ctx.warnings.push(format!("GlobalNetworkPolicy {policy}: {n:?} is not a CIDR; rule ignored"));
                return None;
            }
        }
    }
    Some(out)
}

/// Conditions of one end's nets, notNets and ports.
fn entity_conditions(ctx: &mut Ctx, policy: &str, e: &EntityRule, end: End) -> Option<Alternatives> {
    let mut alts = Alternatives::any();
    let included = nets(ctx, policy, e.nets.as_ref())?;
    if !included.is_empty() {
        alts = alts.and(&rule::nets(end, &included, false));
    }
    let excluded = nets(ctx, policy, e.not_nets.as_ref())?;
    if !excluded.is_empty() {
        // Each family's excluded nets only constrain packets of that family.
        let mut per_family = Alternatives::none();
        for family in rule::Family::BOTH {
            let of: Vec<IpNet> = excluded.iter().copied().filter(|n| rule::Family::of(n) == family).collect();
            per_family = per_family.or(if of.is_empty() {
                Alternatives::one(vec![family_only(family, end)])
            } else {
                rule::nets(end, &of, true)
            });
        }
        alts = alts.and(&per_family);
    }
    if let Some(ports) = e.ports.as_ref().filter(|p| !p.is_empty()) {
        let mut ranges = Vec::new();
        for p in ports {
            match parse_port(p) {
                Ok(r) => ranges.push(Ports { first: r.first, last: r.last }),
                Err(e) => {
                    ctx.warnings.push(format!("GlobalNetworkPolicy {policy}: {e}; rule ignored"));
                    return None;
                }
            }
        }
        alts = alts.and(&Alternatives::one(vec![Cond::Ports { end, ranges }]));
    }
    Some(alts)
}

/// "Any address of this family" at `end`.
fn family_only(family: rule::Family, end: End) -> Cond {
    let all: IpNet = match family {
        rule::Family::V4 => "0.0.0.0/0".parse().expect("literal"),
        rule::Family::V6 => "::/0".parse().expect("literal"),
    };
    Cond::Nets { end, family, nets: vec![all], negated: false }
}

fn rule_alternatives(
    ctx: &mut Ctx,
    policy: &str,
    r: &PolicyRule,
    direction: Direction,
    labels: &super::inputs::Labels,
    ns_labels: &super::inputs::Labels,
) -> Option<Alternatives> {
    let default = EntityRule::default();
    let (local, remote) = match direction {
        Direction::Ingress => (r.destination.as_ref(), r.source.as_ref()),
        Direction::Egress => (r.source.as_ref(), r.destination.as_ref()),
    };
    let (local, remote) = (local.unwrap_or(&default), remote.unwrap_or(&default));
    // The policed pod's side: selectors decide whether the rule applies to this pod at all.
    let local_selector = parse(ctx, policy, "selector", local.selector.as_ref()).ok()?;
    let local_namespaces = parse(ctx, policy, "namespaceSelector", local.namespace_selector.as_ref()).ok()?;
    if local_selector.is_some_and(|s| !s.matches(labels)) || local_namespaces.is_some_and(|s| !s.matches(ns_labels)) {
        return None;
    }
    let mut alts = entity_conditions(ctx, policy, local, direction.local())?;
    let remote_selector = parse(ctx, policy, "selector", remote.selector.as_ref()).ok()?;
    let remote_namespaces = parse(ctx, policy, "namespaceSelector", remote.namespace_selector.as_ref()).ok()?;
    if remote_selector.is_some() || remote_namespaces.is_some() {
        let group = Group::Calico { pods: remote_selector, namespaces: remote_namespaces };
        alts = alts.and(&ctx.group_addresses(direction.remote(), &group));
    }
    alts = alts.and(&entity_conditions(ctx, policy, remote, direction.remote())?);
    if let Some(p) = r.protocol {
        alts = alts.and(&Alternatives::one(vec![Cond::Protocol(Protocol::from(p))]));
    }
    Some(alts)
}
