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
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::global_network_policy::{Action, EntityRule, PolicyRule, PolicyType, PortMatch, parse_port};
use trellis_api::{GlobalNetworkPolicySpec, Selector};

use super::compile::{Ctx, Direction, Group};
use super::inputs::{Pod, Protocol};
use super::problem::PolicyRef;
use super::rule::{self, Alternatives, Cond, End, Line, Ports, Verdict};

/// A policy with its selectors parsed.
pub struct Prepared {
    policy: PolicyRef,
    order: Option<f64>,
    selector: Selector,
    namespaces: Option<Selector>,
    spec: GlobalNetworkPolicySpec,
}

fn parse(ctx: &mut Ctx, policy: &PolicyRef, field: &str, text: Option<&String>) -> Result<Option<Selector>, ()> {
    match text.map(|t| Selector::parse(t)) {
        None => Ok(None),
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(e)) => {
            ctx.warn(policy, format!("{field}: {e}"));
            Err(())
        }
    }
}

/// The policies with valid selectors, in evaluation order. A policy whose own selectors do not
/// parse (admission refuses those) is left out with a warning.
pub fn prepare(ctx: &mut Ctx) -> Vec<Prepared> {
    let mut out = Vec::new();
    for gnp in &ctx.inputs().global_policies {
        let policy = PolicyRef::global(gnp);
        let Ok(selector) = parse(ctx, &policy, "spec.selector", gnp.spec.selector.as_ref()) else { continue };
        let Ok(namespaces) = parse(ctx, &policy, "spec.namespaceSelector", gnp.spec.namespace_selector.as_ref()) else {
            ctx.warn(&policy, "policy ignored".to_string());
            continue;
        };
        let selector = selector.unwrap_or_default();
        out.push(Prepared { policy, order: gnp.spec.order, selector, namespaces, spec: gnp.spec.clone() });
    }
    out.sort_by(|a, b| {
        let key = |p: &Prepared| p.order.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| a.policy.name.cmp(&b.policy.name))
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
                    let mut prefix = format!("trellis-policy {} {}[{i}] ", p.policy.name, direction.short());
                    prefix.truncate(120);
                    Verdict::Log(prefix)
                }
                Action::Pass => kubernetes.map_or(Verdict::Allow, |c| Verdict::Goto(c.to_string())),
            };
            let at = Rule { policy: &p.policy, field: format!("spec.{}[{i}]", direction.field()), rule: r };
            let Some(alts) = rule_alternatives(ctx, &at, direction, pod, &labels, &ns_labels) else { continue };
            out.extend(alts.lines(&verdict));
        }
    }
    selected.then_some(out)
}

/// A rule being compiled, with where it is (for warnings).
struct Rule<'a> {
    policy: &'a PolicyRef,
    /// `spec.ingress[2]`.
    field: String,
    rule: &'a PolicyRule,
}

impl Rule<'_> {
    /// Records that this rule is left out, and why.
    fn ignored(&self, ctx: &mut Ctx, why: String) {
        ctx.warn(self.policy, format!("{}: {why}; rule ignored", self.field));
    }
}

fn nets(ctx: &mut Ctx, r: &Rule, list: Option<&Vec<String>>) -> Option<Vec<IpNet>> {
    let mut out = Vec::new();
    for n in list.into_iter().flatten() {
        match n.parse::<IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) => out.push(net),
            Err(_) => {
                r.ignored(ctx, format!("{n:?} is not a CIDR"));
                return None;
            }
        }
    }
    Some(out)
}

/// Where the pods of one end of a rule are: the policed pod itself, or the pods of a group
/// (named ports resolve in them).
enum Pods<'a> {
    Local(&'a Pod),
    Remote(Group),
}

/// Conditions of one end's nets, notNets, ports and notPorts.
fn entity_conditions(ctx: &mut Ctx, r: &Rule, e: &EntityRule, end: End, pods: &Pods) -> Option<Alternatives> {
    let mut alts = Alternatives::any();
    let included = nets(ctx, r, e.nets.as_ref())?;
    if !included.is_empty() {
        alts = alts.and(&rule::nets(end, &included, false));
    }
    let excluded = nets(ctx, r, e.not_nets.as_ref())?;
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
    for (list, negated) in [(e.ports.as_ref(), false), (e.not_ports.as_ref(), true)] {
        if let Some(list) = list.filter(|p| !p.is_empty()) {
            alts = alts.and(&port_conditions(ctx, r, list, end, pods, negated)?);
        }
    }
    Some(alts)
}

/// `ports` (or, `negated`, `notPorts`) of one end: numbers and ranges, and names resolved in
/// the end's pods (in the policed pod to a number; for other pods to a set of their (address,
/// protocol, port)). A name no pod there has matches nothing.
fn port_conditions(
    ctx: &mut Ctx,
    r: &Rule,
    list: &[IntOrString],
    end: End,
    pods: &Pods,
    negated: bool,
) -> Option<Alternatives> {
    let mut ranges = Vec::new();
    let mut names = Vec::new();
    for p in list {
        match parse_port(p) {
            Ok(PortMatch::Range(range)) => ranges.push(Ports { first: range.first, last: range.last }),
            Ok(PortMatch::Named(name)) => names.push(name),
            Err(e) => {
                r.ignored(ctx, e.to_string());
                return None;
            }
        }
    }
    let protocol = match (names.is_empty(), r.rule.protocol) {
        (true, _) => None,
        (false, Some(p)) => Some(Protocol::from(p)),
        (false, None) => {
            r.ignored(ctx, "named ports need the rule's protocol".to_string());
            return None;
        }
    };
    let mut sets = Vec::new();
    for name in &names {
        let Some(protocol) = protocol else { break };
        match pods {
            Pods::Local(pod) => {
                let found = pod.ports.iter().find(|np| np.name == *name && np.protocol == protocol);
                ranges.extend(found.map(|np| Ports { first: np.port, last: np.port }));
            }
            Pods::Remote(group) => sets.push(ctx.group_named_port(end, group, name, protocol, negated)),
        }
    }
    let ranges = rule::merge_ports(ranges);
    if negated {
        let mut out = if ranges.is_empty() {
            Alternatives::any()
        } else {
            Alternatives::one(vec![Cond::Ports { end, ranges, negated }])
        };
        for set in sets {
            out = out.and(&set);
        }
        Some(out)
    } else {
        let mut out = if ranges.is_empty() {
            Alternatives::none()
        } else {
            Alternatives::one(vec![Cond::Ports { end, ranges, negated }])
        };
        for set in sets {
            out = out.or(set);
        }
        Some(out)
    }
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
    r: &Rule,
    direction: Direction,
    pod: &Pod,
    labels: &super::inputs::Labels,
    ns_labels: &super::inputs::Labels,
) -> Option<Alternatives> {
    let default = EntityRule::default();
    let (local, remote) = match direction {
        Direction::Ingress => (r.rule.destination.as_ref(), r.rule.source.as_ref()),
        Direction::Egress => (r.rule.source.as_ref(), r.rule.destination.as_ref()),
    };
    let (local, remote) = (local.unwrap_or(&default), remote.unwrap_or(&default));
    let selector = |ctx: &mut Ctx, field: &str, text: Option<&String>| {
        parse(ctx, r.policy, &format!("{}: {field}", r.field), text).ok()
    };
    // The policed pod's side: selectors decide whether the rule applies to this pod at all.
    let local_selector = selector(ctx, "selector", local.selector.as_ref())?;
    let local_not = selector(ctx, "notSelector", local.not_selector.as_ref())?;
    let local_namespaces = selector(ctx, "namespaceSelector", local.namespace_selector.as_ref())?;
    if local_selector.is_some_and(|s| !s.matches(labels))
        || local_not.is_some_and(|s| s.matches(labels))
        || local_namespaces.is_some_and(|s| !s.matches(ns_labels))
    {
        return None;
    }
    let mut alts = entity_conditions(ctx, r, local, direction.local(), &Pods::Local(pod))?;
    let remote_selector = selector(ctx, "selector", remote.selector.as_ref())?;
    let remote_not = selector(ctx, "notSelector", remote.not_selector.as_ref())?;
    let remote_namespaces = selector(ctx, "namespaceSelector", remote.namespace_selector.as_ref())?;
    let group = if remote_selector.is_some() || remote_namespaces.is_some() {
        let group = Group::Calico { pods: remote_selector, namespaces: remote_namespaces };
        alts = alts.and(&ctx.group_addresses(direction.remote(), &group));
        group
    } else {
        Group::All
    };
    if let Some(not) = remote_not {
        // Calico: notSelector is not limited by namespaceSelector.
        let excluded = Group::Calico { pods: Some(not), namespaces: None };
        alts = alts.and(&ctx.not_group_addresses(direction.remote(), &excluded));
    }
    alts = alts.and(&entity_conditions(ctx, r, remote, direction.remote(), &Pods::Remote(group))?);
    if let Some(p) = r.rule.protocol {
        alts = alts.and(&Alternatives::one(vec![Cond::Protocol(Protocol::from(p))]));
    }
    if let Some(p) = r.rule.not_protocol {
        alts = alts.and(&Alternatives::one(vec![Cond::NotProtocol(Protocol::from(p))]));
    }
    Some(alts)
}
