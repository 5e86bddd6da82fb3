//! `GlobalNetworkPolicy`: cluster-wide, ordered network policy with Calico's shape.
//!
//! The fields are Calico's (`projectcalico.org/v3`), so the classic Calico manifests apply with
//! only the apiVersion changed, for the subset Trellis enforces: `order`, `selector`,
//! `namespaceSelector`, `types`, and `ingress`/`egress` rules with `action` (Allow, Deny, Log,
//! Pass), `protocol`, `notProtocol`, and `source`/`destination` with `selector`, `notSelector`,
//! `namespaceSelector`, `nets`, `notNets`, `ports` and `notPorts` (numbers, `from:to` ranges and
//! named ports). Calico's fields Trellis does not implement (`doNotTrack`, `preDNAT`,
//! `applyOnForward`, `serviceAccountSelector`, `http`, `icmp`, `notICMP`, `services`) are not
//! part of the schema, so strict field validation rejects them instead of silently ignoring them.
//!
//! Semantics (Calico's): a policy applies to the pods its `selector` (and `namespaceSelector`)
//! selects, in the directions of `types`. Policies are evaluated in ascending `order` (unset =
//! after every ordered one; ties by name) before Kubernetes NetworkPolicies; the first rule that
//! matches with Allow or Deny decides, Log logs and goes on, Pass hands the packet to the
//! Kubernetes NetworkPolicies. A pod selected by at least one global policy for a direction
//! whose rules all miss is denied (Calico's end-of-tier deny).
//!
//! Admission: the selectors are checked with the same RE2 rules as `IPPool.spec.nodeSelector`
//! ([`crate::selector::cel`]), nets must be CIDRs or addresses, numeric ports 1-65535, and
//! ports and notPorts need a protocol with ports (TCP, UDP, SCTP, UDPLite). A port string (a
//! range `"8000:8080"` or a name `"http"`) is checked by the agent ([`parse_port`]; a bad one
//! drops the rule, with a Warning Event on the policy): a string pattern per port was estimated
//! far over the API server's CEL cost budget.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a global network policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    singular = "globalnetworkpolicy",
    shortname = "gnp",
    category = "trellis",
    printcolumn(name = "ORDER", type_ = "number", json_path = ".spec.order"),
    printcolumn(name = "SELECTOR", type_ = "string", json_path = ".spec.selector"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "Cluster-wide network policy (Calico's GlobalNetworkPolicy), evaluated in order before Kubernetes NetworkPolicies."
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Evaluation order: lower first; unset = after every policy with an order. Ties by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,

    /// The pods the policy applies to (Calico selector over the pod's labels plus
    /// `projectcalico.org/namespace`); default `all()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(
        validation = crate::selector::cel::grammar("spec.selector"),
        validation = crate::selector::cel::parentheses("spec.selector"),
    )]
    pub selector: Option<String>,

    /// Only pods in namespaces whose labels this Calico selector matches; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(
        validation = crate::selector::cel::grammar("spec.namespaceSelector"),
        validation = crate::selector::cel::parentheses("spec.namespaceSelector"),
    )]
    pub namespace_selector: Option<String>,

    /// The directions the policy governs. Default (Calico's): Egress when there are egress
    /// rules and no ingress rules, both when there are both, otherwise Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub types: Option<Vec<PolicyType>>,

    /// Rules for traffic to the selected pods, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub ingress: Option<Vec<PolicyRule>>,

    /// Rules for traffic from the selected pods, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub egress: Option<Vec<PolicyRule>>,
}

/// A direction of traffic relative to the selected pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Accept; no later policy is consulted.
    Allow,
    /// Drop; no later policy is consulted.
    Deny,
    /// Log the packet (kernel log, prefix `trellis-policy`) and go on with the next rule.
    Log,
    /// Skip the remaining global policies: the Kubernetes NetworkPolicies decide.
    Pass,
}

/// An IP protocol by Calico's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    #[serde(rename = "UDPLite")]
    UdpLite,
    #[serde(rename = "ICMP")]
    Icmp,
    #[serde(rename = "ICMPv6")]
    IcmpV6,
}

impl Protocol {
    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp | Protocol::UdpLite)
    }
}

/// One rule: all given conditions must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "(!has(self.source) || !has(self.source.ports)) && (!has(self.destination) || !has(self.destination.ports)) || (has(self.protocol) && self.protocol in ['TCP', 'UDP', 'SCTP', 'UDPLite'])"
    ).message("ports need a protocol with ports: set protocol to TCP, UDP, SCTP or UDPLite").field_path(".protocol"),
    validation = Rule::new(
        "(!has(self.source) || !has(self.source.notPorts)) && (!has(self.destination) || !has(self.destination.notPorts)) || (has(self.protocol) && self.protocol in ['TCP', 'UDP', 'SCTP', 'UDPLite'])"
    ).message("notPorts need a protocol with ports: set protocol to TCP, UDP, SCTP or UDPLite").field_path(".protocol"),
)]
pub struct PolicyRule {
    pub action: Action,
    /// Only packets of this protocol; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Only packets not of this protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// Conditions on the packet's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// Conditions on the packet's destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
}

/// Conditions on one end of a packet; all given ones must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// Pods whose labels (plus `projectcalico.org/namespace`) match this Calico selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(
        validation = crate::selector::cel::grammar("selector"),
        validation = crate::selector::cel::parentheses("selector"),
    )]
    pub selector: Option<String>,

    /// Not from/to pods whose labels (plus `projectcalico.org/namespace`) match this Calico
    /// selector, in any namespace; addresses that are no pod's match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(
        validation = crate::selector::cel::grammar("notSelector"),
        validation = crate::selector::cel::parentheses("notSelector"),
    )]
    pub not_selector: Option<String>,

    /// Pods in namespaces whose labels match this Calico selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(
        validation = crate::selector::cel::grammar("namespaceSelector"),
        validation = crate::selector::cel::parentheses("namespaceSelector"),
    )]
    pub namespace_selector: Option<String>,

    /// Addresses in any of these CIDRs (a plain address is a /32 or /128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n) || isIP(n))").message("nets must be CIDRs such as 10.0.0.0/8 or addresses"))]
    pub nets: Option<Vec<String>>,

    /// Addresses in none of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n) || isIP(n))").message("notNets must be CIDRs such as 10.0.0.0/8 or addresses"))]
    pub not_nets: Option<Vec<String>>,

    /// Ports: numbers, `from:to` ranges, or names of container ports (resolved in the pod at
    /// this end); needs the rule's protocol to be TCP, UDP, SCTP or UDPLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(
        "self.all(p, type(p) == int ? (p >= 1 && p <= 65535) : size(p) <= 15)"
    ).message("ports must be numbers 1-65535, ranges such as 8000:8080 or port names"))]
    pub ports: Option<Vec<IntOrString>>,

    /// Ports the packet must not use (same forms as `ports`); needs a protocol with ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(
        "self.all(p, type(p) == int ? (p >= 1 && p <= 65535) : size(p) <= 15)"
    ).message("notPorts must be numbers 1-65535, ranges such as 8000:8080 or port names"))]
    pub not_ports: Option<Vec<IntOrString>>,
}

impl GlobalNetworkPolicySpec {
    /// The directions the policy governs, with Calico's default.
    pub fn effective_types(&self) -> Vec<PolicyType> {
        if let Some(types) = &self.types
            && !types.is_empty()
        {
            let mut t = types.clone();
            t.sort();
            t.dedup();
            return t;
        }
        let ingress = self.ingress.as_ref().is_some_and(|r| !r.is_empty());
        let egress = self.egress.as_ref().is_some_and(|r| !r.is_empty());
        match (ingress, egress) {
            (true, true) => vec![PolicyType::Ingress, PolicyType::Egress],
            (false, true) => vec![PolicyType::Egress],
            _ => vec![PolicyType::Ingress],
        }
    }
}

/// A port condition: one port or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// A Calico port entry: numbers and ranges, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    Range(PortRange),
    Named(String),
}

/// A port entry that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("port {0:?} is neither a number 1-65535, a range from:to nor a port name (IANA_SVC_NAME)")]
pub struct PortError(pub String);

/// Whether `name` is a valid container port name (Kubernetes' IANA_SVC_NAME: at most 15
/// lowercase letters, digits and single inner dashes, with at least one letter).
pub fn is_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=15).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

/// Parses a Calico port entry (a number, `from:to`, or a port name).
pub fn parse_port(port: &IntOrString) -> Result<PortMatch, PortError> {
    let bad = || {
        PortError(match port {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s.clone(),
        })
    };
    let number = |s: &str| s.trim().parse::<u16>().ok().filter(|n| *n > 0);
    let range = |first, last| PortMatch::Range(PortRange { first, last });
    match port {
        IntOrString::Int(n) => {
            let n = u16::try_from(*n).ok().filter(|n| *n > 0).ok_or_else(bad)?;
            Ok(range(n, n))
        }
        IntOrString::String(s) => match s.split_once(':') {
            Some((a, b)) => match (number(a), number(b)) {
                (Some(first), Some(last)) if first <= last => Ok(range(first, last)),
                _ => Err(bad()),
            },
            None if is_port_name(s) => Ok(PortMatch::Named(s.clone())),
            None => number(s).map(|n| range(n, n)).ok_or_else(bad),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_default_like_calico() {
        let rule =
            PolicyRule { action: Action::Allow, protocol: None, not_protocol: None, source: None, destination: None };
        let mut spec = GlobalNetworkPolicySpec::default();
        assert_eq!(spec.effective_types(), [PolicyType::Ingress]);
        spec.egress = Some(vec![rule.clone()]);
        assert_eq!(spec.effective_types(), [PolicyType::Egress]);
        spec.ingress = Some(vec![rule]);
        assert_eq!(spec.effective_types(), [PolicyType::Ingress, PolicyType::Egress]);
        spec.types = Some(vec![PolicyType::Egress, PolicyType::Ingress, PolicyType::Egress]);
        assert_eq!(spec.effective_types(), [PolicyType::Ingress, PolicyType::Egress]);
    }

    #[test]
    fn ports_are_numbers_ranges_or_names() {
        let range = |first, last| Ok(PortMatch::Range(PortRange { first, last }));
        assert_eq!(parse_port(&IntOrString::Int(80)), range(80, 80));
        assert_eq!(parse_port(&IntOrString::String("53".into())), range(53, 53));
        assert_eq!(parse_port(&IntOrString::String("8000:8080".into())), range(8000, 8080));
        for name in ["http", "serve-80-tcp", "a1"] {
            assert_eq!(parse_port(&IntOrString::String(name.into())), Ok(PortMatch::Named(name.into())), "{name}");
        }
        for bad in ["0", "8080:8000", "HTTP", "-http", "http-", "a--b", "web_port", "sixteen-chars-xx", "1:70000", ""] {
            assert!(parse_port(&IntOrString::String(bad.into())).is_err(), "{bad}");
        }
        assert!(parse_port(&IntOrString::Int(0)).is_err());
        assert!(parse_port(&IntOrString::Int(65536)).is_err());
    }
}
