//! Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics for one pod and direction.
//!
//! * A policy selects the pods of its namespace matching `spec.podSelector` (empty = all).
//! * `policyTypes` unset: Ingress, plus Egress when the policy has egress rules.
//! * A pod selected by at least one policy of a direction is isolated in it: only what some
//!   rule of some such policy allows passes (union); no rules = nothing.
//! * A rule allows traffic matching any peer (`from`/`to`; none = anyone) on any port
//!   (`ports`; none = every port and protocol).
//! * Peers: `podSelector` alone = pods of the policy's namespace; `namespaceSelector` alone =
//!   every pod of the matching namespaces; both = matching pods in matching namespaces;
//!   `ipBlock` = addresses in `cidr` but not in `except` (pods included).
//! * Ports: protocol (default TCP), a number or a container port name, `endPort` for ranges.
//!   A named port resolves in the pod the traffic goes to: the policed pod for ingress, each
//!   destination pod for egress (a named set of (address, protocol, port)).

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::compile::{Ctx, Direction, Group, Namespaces};
use super::inputs::{Pod, Protocol};
use super::label_selector::LabelSel;
use super::problem::PolicyRef;
use super::rule::{self, Alternatives, Cond, Line, Ports, Verdict};

fn warn(ctx: &mut Ctx, policy: &NetworkPolicy, message: String) {
    ctx.warn(&PolicyRef::kubernetes(policy), message);
}

/// The directions a policy governs (explicit or implied `policyTypes`).
pub fn directions(policy: &NetworkPolicy) -> Vec<Direction> {
    let spec = policy.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()).filter(|t| !t.is_empty()) {
        Some(types) => [("Ingress", Direction::Ingress), ("Egress", Direction::Egress)]
            .into_iter()
            .filter(|(name, _)| types.iter().any(|t| t == name))
            .map(|(_, d)| d)
            .collect(),
        None => {
            let egress = spec.and_then(|s| s.egress.as_ref()).is_some_and(|e| !e.is_empty());
            if egress { vec![Direction::Ingress, Direction::Egress] } else { vec![Direction::Ingress] }
        }
    }
}

/// The allow rules of every policy isolating `pod` in `direction`; `None` when none does.
pub fn lines(ctx: &mut Ctx, pod: &Pod, direction: Direction) -> Option<Vec<Line>> {
    let mut isolated = false;
    let mut out = Vec::new();
    for policy in &ctx.inputs().network_policies {
        if policy.metadata.namespace.as_deref() != Some(pod.namespace.as_str()) {
            continue;
        }
        let Some(spec) = &policy.spec else { continue };
        let selector = match LabelSel::parse(&spec.pod_selector.clone().unwrap_or_default()) {
            Ok(s) => s,
            Err(e) => {
                warn(ctx, policy, format!("spec.podSelector: {e}; policy ignored"));
                continue;
            }
        };
        if !selector.matches(&pod.labels) || !directions(policy).contains(&direction) {
            continue;
        }
        isolated = true;
        let namespace = pod.namespace.clone();
        let rules: Vec<RuleParts> = match direction {
            Direction::Ingress => spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect(),
            Direction::Egress => spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect(),
        };
        for (peers, ports) in rules {
            let allowed = rule_alternatives(ctx, policy, &namespace, pod, direction, peers, ports);
            out.extend(allowed.lines(&Verdict::Allow));
        }
    }
    isolated.then_some(out)
}

/// A rule's peers (`from`/`to`) and ports.
type RuleParts<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

/// A peer as a group of pods, or an ipBlock, or anyone.
enum Peer {
    Anyone,
    Pods(Group),
    Block(Alternatives),
}

fn selector(ctx: &mut Ctx, policy: &NetworkPolicy, field: &str, s: &LabelSelector) -> Option<LabelSel> {
    LabelSel::parse(s).map_err(|e| warn(ctx, policy, format!("{field}: {e}; peer ignored"))).ok()
}

fn peer(ctx: &mut Ctx, policy: &NetworkPolicy, namespace: &str, p: &NetworkPolicyPeer, end: rule::End) -> Option<Peer> {
    if let Some(block) = &p.ip_block {
        let Ok(cidr) = block.cidr.parse::<ipnet::IpNet>() else {
            warn(ctx, policy, format!("ipBlock.cidr {:?} is not a CIDR; peer ignored", block.cidr));
            return None;
        };
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            match e.parse::<ipnet::IpNet>() {
                Ok(n) => except.push(n),
                Err(_) => {
                    warn(ctx, policy, format!("ipBlock.except {e:?} is not a CIDR; peer ignored"));
                    return None;
                }
            }
        }
        let inside = rule::nets(end, &[cidr], false);
        let alts = if except.is_empty() { inside } else { inside.and(&rule::nets(end, &except, true)) };
        return Some(Peer::Block(alts));
    }
    let namespaces = match &p.namespace_selector {
        Some(s) => Namespaces::Selected(selector(ctx, policy, "namespaceSelector", s)?),
        None => Namespaces::Named(namespace.to_string()),
    };
    let pods = match &p.pod_selector {
        Some(s) => selector(ctx, policy, "podSelector", s)?,
        None if p.namespace_selector.is_some() => LabelSel::default(),
        // A peer with no field at all is invalid (the API server refuses it): match nothing.
        None => return None,
    };
    Some(Peer::Pods(Group::Kubernetes { namespaces, pods }))
}

/// What one port entry allows, for traffic to `peer` (egress) or to `pod` (ingress).
fn port_alternatives(
    ctx: &mut Ctx,
    policy: &NetworkPolicy,
    pod: &Pod,
    direction: Direction,
    peer: &Peer,
    port: &NetworkPolicyPort,
) -> Alternatives {
    let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = Protocol::from_kubernetes(protocol_name) else {
        warn(ctx, policy, format!("unknown protocol {protocol_name:?}; port ignored"));
        return Alternatives::none();
    };
    let number = |ctx: &mut Ctx, n: i32| {
        let n = u16::try_from(n).ok().filter(|n| *n > 0);
        if n.is_none() {
            warn(ctx, policy, "port out of range; port ignored".to_string());
        }
        n
    };
    let proto = Cond::Protocol(protocol);
    let dport = |first: u16, last: u16| Cond::Ports {
        end: rule::End::Destination,
        ranges: vec![Ports { first, last }],
        negated: false,
    };
    let addresses = match peer {
        Peer::Anyone => Alternatives::any(),
        Peer::Pods(group) => ctx.group_addresses(direction.remote(), group),
        Peer::Block(alts) => alts.clone(),
    };
    match &port.port {
        None => addresses.and(&Alternatives::one(vec![proto])),
        Some(IntOrString::Int(n)) => {
            let Some(first) = number(ctx, *n) else { return Alternatives::none() };
            let last = match port.end_port {
                None => first,
                Some(e) => match number(ctx, e) {
                    Some(last) if last >= first => last,
                    _ => {
                        warn(ctx, policy, "endPort below port; port ignored".to_string());
                        return Alternatives::none();
                    }
                },
            };
            addresses.and(&Alternatives::one(vec![proto, dport(first, last)]))
        }
        Some(IntOrString::String(name)) => match direction {
            Direction::Ingress => match pod.ports.iter().find(|p| p.name == *name && p.protocol == protocol) {
                Some(np) => addresses.and(&Alternatives::one(vec![proto, dport(np.port, np.port)])),
                // The pod has no such port: the entry allows nothing.
                None => Alternatives::none(),
            },
            Direction::Egress => {
                let group = match peer {
                    Peer::Pods(group) => group.clone(),
                    Peer::Anyone | Peer::Block(_) => Group::All,
                };
                let named = ctx.group_named_port(rule::End::Destination, &group, name, protocol, false);
                match peer {
                    Peer::Block(alts) => alts.and(&named),
                    _ => named,
                }
            }
        },
    }
}

fn rule_alternatives(
    ctx: &mut Ctx,
    policy: &NetworkPolicy,
    namespace: &str,
    pod: &Pod,
    direction: Direction,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> Alternatives {
    let peers: Vec<Peer> = match peers.filter(|p| !p.is_empty()) {
        None => vec![Peer::Anyone],
        Some(list) => list.iter().filter_map(|p| peer(ctx, policy, namespace, p, direction.remote())).collect(),
    };
    let mut out = Alternatives::none();
    for peer in &peers {
        match ports.filter(|p| !p.is_empty()) {
            None => {
                out = out.or(match peer {
                    Peer::Anyone => Alternatives::any(),
                    Peer::Pods(group) => ctx.group_addresses(direction.remote(), group),
                    Peer::Block(alts) => alts.clone(),
                })
            }
            Some(ports) => {
                for port in ports {
                    let alts = port_alternatives(ctx, policy, pod, direction, peer, port);
                    out = out.or(alts);
                }
            }
        }
    }
    out
}
