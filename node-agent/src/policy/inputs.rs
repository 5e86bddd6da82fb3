//! What the policy compiler reads: the cluster's pods, namespaces and policies, and which pods
//! run on this node behind which host-side interface. Plain data, built by the Kubernetes
//! side ([`crate::policy::cluster`]) or by tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use trellis_api::GlobalNetworkPolicy;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A transport protocol a port belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    UdpLite,
    Icmp,
    IcmpV6,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); `None` for anything else.
    pub fn from_kubernetes(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nft's name (`meta l4proto NAME`, `inet_proto` elements).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::UdpLite => "udplite",
            Protocol::Icmp => "icmp",
            Protocol::IcmpV6 => "ipv6-icmp",
        }
    }
}

impl From<trellis_api::global_network_policy::Protocol> for Protocol {
    fn from(p: trellis_api::global_network_policy::Protocol) -> Self {
        use trellis_api::global_network_policy::Protocol as P;
        match p {
            P::Tcp => Protocol::Tcp,
            P::Udp => Protocol::Udp,
            P::Sctp => Protocol::Sctp,
            P::UdpLite => Protocol::UdpLite,
            P::Icmp => Protocol::Icmp,
            P::IcmpV6 => Protocol::IcmpV6,
        }
    }
}

/// A named container port (`containers[].ports[].name`), what named ports in policies resolve to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod somewhere in the cluster, as far as policy cares. Host-network pods are left out by
/// whoever builds the inputs: policy neither selects nor protects them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

/// A pod of this node and the host side of its interface (where its policy is enforced).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub interface: String,
}

/// Everything the compiler needs; pure data.
#[derive(Clone, Debug, Default)]
pub struct PolicyInputs {
    /// Every (pod-network) pod of the cluster, this node's included.
    pub pods: Vec<Pod>,
    /// Namespace name → labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// This node's pods with their host-side interface.
    pub local: Vec<LocalPod>,
    pub network_policies: Vec<NetworkPolicy>,
    pub global_policies: Vec<GlobalNetworkPolicy>,
}
