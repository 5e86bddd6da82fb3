//! Node address autodetection: which of this host's addresses the other nodes reach it on.
//!
//! Calico's methods (the Installation's `spec.network.nodeAddressAutodetection`), as a pure
//! choice over the host's interfaces; the I/O (netlink dump, the kernel's route choice for
//! `canReach`, the Node's addresses) happens in [`crate::k8s::host`] and the caller. The chosen
//! interface is the uplink: encapsulated traffic leaves through it and its MTU bounds the pods'.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use trellis_api::installation::NodeAddressAutodetection;

/// Interfaces `firstFound` never picks (Calico's list plus Trellis' own VXLAN device): loopback,
/// container bridges and veths, tunnels and other CNIs' devices.
pub const SKIPPED_BY_FIRST_FOUND: &[&str] = &[
    "lo",
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "tunl",
    "flannel",
    "kube-ipvs",
    "cni",
    "vxlan",
    "wireguard",
    "nodelocaldns",
    "podman",
    "cilium",
    "weave",
    "kube-bridge",
];

/// An interface of this host with its addresses (with prefix), in kernel index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<IpNet>,
}

/// How to pick the node address (parsed from the Installation).
#[derive(Clone, Debug)]
pub enum Method {
    FirstFound,
    /// First address of the first interface whose name matches.
    Interface(Regex),
    /// First address of the first interface whose name does not match (nor is loopback).
    SkipInterface(Regex),
    /// The address the kernel uses as source towards this destination (IP or host name).
    CanReach(String),
    /// First address inside one of these CIDRs.
    Cidrs(Vec<IpNet>),
    /// The Node's `InternalIP` from `status.addresses`.
    Kubernetes,
}

/// The chosen node address and the interface that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// Address with the prefix of its subnet (decides CrossSubnet).
    pub address: IpNet,
    pub uplink: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutodetectError {
    #[error("nodeAddressAutodetection.{field}: {pattern:?} is not a valid regular expression: {reason}")]
    BadRegex { field: &'static str, pattern: String, reason: String },
    #[error("nodeAddressAutodetection.cidrs: {0:?} is not a valid CIDR")]
    BadCidr(String),
    #[error("nodeAddressAutodetection.{method}: no IPv4 address found ({detail})")]
    NotFound { method: &'static str, detail: String },
    #[error("nodeAddressAutodetection.canReach: no route to {0}")]
    Unreachable(String),
}

impl Method {
    /// The method an Installation asks for (`firstFound` when none is set).
    pub fn from_spec(spec: Option<&NodeAddressAutodetection>) -> Result<Method, AutodetectError> {
        let regex = |field: &'static str, pattern: &str| {
            Regex::new(pattern).map_err(|e| AutodetectError::BadRegex {
                field,
                pattern: pattern.to_string(),
                reason: e.to_string(),
            })
        };
        let Some(spec) = spec else { return Ok(Method::FirstFound) };
        if let Some(pattern) = &spec.interface {
            return Ok(Method::Interface(regex("interface", pattern)?));
        }
        if let Some(pattern) = &spec.skip_interface {
            return Ok(Method::SkipInterface(regex("skipInterface", pattern)?));
        }
        if let Some(destination) = &spec.can_reach {
            return Ok(Method::CanReach(destination.clone()));
        }
        if let Some(cidrs) = &spec.cidrs {
            let cidrs = cidrs
                .iter()
                .map(|c| c.0.parse::<IpNet>().map_err(|_| AutodetectError::BadCidr(c.0.clone())))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Method::Cidrs(cidrs));
        }
        if spec.kubernetes.is_some() {
            return Ok(Method::Kubernetes);
        }
        Ok(Method::FirstFound)
    }

    fn name(&self) -> &'static str {
        match self {
            Method::FirstFound => "firstFound",
            Method::Interface(_) => "interface",
            Method::SkipInterface(_) => "skipInterface",
            Method::CanReach(_) => "canReach",
            Method::Cidrs(_) => "cidrs",
            Method::Kubernetes => "kubernetes",
        }
    }
}

/// Facts gathered by I/O that some methods need.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// `canReach`: the source address the kernel picked towards the destination.
    pub can_reach_source: Option<IpAddr>,
    /// `kubernetes`: the Node's InternalIP addresses.
    pub node_internal_ips: Vec<IpAddr>,
}

/// A usable node address: IPv4, not loopback, not link-local.
fn usable(address: &IpNet) -> bool {
    match address {
        IpNet::V4(v4) => !v4.addr().is_loopback() && !v4.addr().is_link_local() && !v4.addr().is_unspecified(),
        IpNet::V6(_) => false,
    }
}

fn skipped_by_first_found(name: &str) -> bool {
    SKIPPED_BY_FIRST_FOUND.iter().any(|prefix| if *prefix == "lo" { name == "lo" } else { name.starts_with(prefix) })
}

fn first_on<'a>(interfaces: impl Iterator<Item = &'a Interface>) -> Option<NodeAddress> {
    interfaces
        .flat_map(|i| i.addresses.iter().map(move |a| (i, a)))
        .find(|(_, a)| usable(a))
        .map(|(i, a)| NodeAddress { address: *a, uplink: i.name.clone() })
}

/// The interface (and prefix) that carries `ip`.
fn carrying(interfaces: &[Interface], ip: IpAddr) -> Option<NodeAddress> {
    interfaces.iter().find_map(|i| {
        i.addresses.iter().find(|a| a.addr() == ip).map(|a| NodeAddress { address: *a, uplink: i.name.clone() })
    })
}

fn names(interfaces: &[Interface]) -> String {
    interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Pure: picks the node address by `method` among `interfaces`.
pub fn select(method: &Method, interfaces: &[Interface], facts: &Facts) -> Result<NodeAddress, AutodetectError> {
    let not_found = |detail: String| AutodetectError::NotFound { method: method.name(), detail };
    match method {
        Method::FirstFound => first_on(interfaces.iter().filter(|i| !skipped_by_first_found(&i.name)))
            .ok_or_else(|| not_found(format!("interfaces: {}; virtual ones are skipped", names(interfaces)))),
        Method::Interface(re) => first_on(interfaces.iter().filter(|i| re.is_match(&i.name))).ok_or_else(|| {
            not_found(format!("no interface matching {:?} has one (interfaces: {})", re.as_str(), names(interfaces)))
        }),
        Method::SkipInterface(re) => first_on(interfaces.iter().filter(|i| i.name != "lo" && !re.is_match(&i.name)))
            .ok_or_else(|| {
                not_found(format!(
                    "every interface with one matches {:?} (interfaces: {})",
                    re.as_str(),
                    names(interfaces)
                ))
            }),
        Method::CanReach(destination) => {
            let source = facts.can_reach_source.ok_or_else(|| AutodetectError::Unreachable(destination.clone()))?;
            carrying(interfaces, source).ok_or_else(|| {
                not_found(format!("the route to {destination} uses {source}, which no interface carries"))
            })
        }
        Method::Cidrs(cidrs) => interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(move |a| (i, a)))
            .find(|(_, a)| usable(a) && cidrs.iter().any(|c| c.contains(&a.addr())))
            .map(|(i, a)| NodeAddress { address: *a, uplink: i.name.clone() })
            .ok_or_else(|| {
                let cidrs = cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                not_found(format!("no interface has an address in {cidrs}"))
            }),
        Method::Kubernetes => {
            let ip = facts
                .node_internal_ips
                .iter()
                .find(|ip| ip.is_ipv4())
                .ok_or_else(|| not_found("the Node has no IPv4 InternalIP in status.addresses".to_string()))?;
            carrying(interfaces, *ip).ok_or_else(|| not_found(format!("the Node's InternalIP {ip} is on no interface")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::installation::{AutodetectCidr, KubernetesAddress};

    fn iface(name: &str, addresses: &[&str]) -> Interface {
        Interface { name: name.to_string(), addresses: addresses.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn host() -> Vec<Interface> {
        vec![
            iface("lo", &["127.0.0.1/8", "::1/128"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface("vxlan.trellis", &["10.244.1.0/32"]),
            iface("veth12ab", &["169.254.1.1/32"]),
            iface("eth0", &["fd00::11/64", "10.0.1.11/24"]),
            iface("eth1", &["192.168.50.5/24"]),
        ]
    }

    fn na(address: &str, uplink: &str) -> NodeAddress {
        NodeAddress { address: address.parse().unwrap(), uplink: uplink.to_string() }
    }

    fn spec(f: impl FnOnce(&mut NodeAddressAutodetection)) -> Method {
        let mut s = NodeAddressAutodetection::default();
        f(&mut s);
        Method::from_spec(Some(&s)).unwrap()
    }

    #[test]
    fn first_found_skips_virtual_interfaces_and_takes_ipv4_with_prefix() {
        let got = select(&Method::FirstFound, &host(), &Facts::default()).unwrap();
        assert_eq!(got, na("10.0.1.11/24", "eth0"));
        assert!(matches!(Method::from_spec(None).unwrap(), Method::FirstFound));
    }

    #[test]
    fn first_found_without_a_real_interface_is_an_error_naming_them() {
        let only_virtual = vec![iface("lo", &["127.0.0.1/8"]), iface("cni0", &["10.88.0.1/16"])];
        let err = select(&Method::FirstFound, &only_virtual, &Facts::default()).unwrap_err();
        assert!(err.to_string().contains("lo, cni0"), "{err}");
    }

    #[test]
    fn interface_regex_picks_the_matching_interface() {
        let m = spec(|s| s.interface = Some("eth1".into()));
        assert_eq!(select(&m, &host(), &Facts::default()).unwrap(), na("192.168.50.5/24", "eth1"));
        let none = spec(|s| s.interface = Some("^ens".into()));
        assert!(select(&none, &host(), &Facts::default()).is_err());
    }

    #[test]
    fn skip_interface_regex_skips_matches_and_loopback() {
        let m = spec(|s| s.skip_interface = Some("^(docker|vxlan|veth|eth0)".into()));
        assert_eq!(select(&m, &host(), &Facts::default()).unwrap(), na("192.168.50.5/24", "eth1"));
    }

    #[test]
    fn bad_regex_is_a_clear_error() {
        let s = NodeAddressAutodetection { interface: Some("eth(".into()), ..Default::default() };
        let err = Method::from_spec(Some(&s)).unwrap_err();
        assert!(err.to_string().contains("nodeAddressAutodetection.interface"), "{err}");
    }

    #[test]
    fn can_reach_takes_the_interface_carrying_the_kernels_source_address() {
        let m = spec(|s| s.can_reach = Some("192.168.50.1".into()));
        let facts = Facts { can_reach_source: Some("192.168.50.5".parse().unwrap()), ..Default::default() };
        assert_eq!(select(&m, &host(), &facts).unwrap(), na("192.168.50.5/24", "eth1"));
        assert_eq!(select(&m, &host(), &Facts::default()), Err(AutodetectError::Unreachable("192.168.50.1".into())));
    }

    #[test]
    fn cidrs_take_the_first_address_inside_them() {
        let m = spec(|s| s.cidrs = Some(vec![AutodetectCidr("192.168.0.0/16".into())]));
        assert_eq!(select(&m, &host(), &Facts::default()).unwrap(), na("192.168.50.5/24", "eth1"));
        let bad = NodeAddressAutodetection { cidrs: Some(vec![AutodetectCidr("nope".into())]), ..Default::default() };
        assert_eq!(Method::from_spec(Some(&bad)).unwrap_err(), AutodetectError::BadCidr("nope".into()));
    }

    #[test]
    fn kubernetes_takes_the_node_internal_ip_with_its_local_prefix() {
        let m = spec(|s| s.kubernetes = Some(KubernetesAddress::NodeInternalIP));
        let facts = Facts { node_internal_ips: vec!["192.168.50.5".parse().unwrap()], ..Default::default() };
        assert_eq!(select(&m, &host(), &facts).unwrap(), na("192.168.50.5/24", "eth1"));
        let elsewhere = Facts { node_internal_ips: vec!["10.9.9.9".parse().unwrap()], ..Default::default() };
        assert!(select(&m, &host(), &elsewhere).unwrap_err().to_string().contains("10.9.9.9"));
        assert!(select(&m, &host(), &Facts::default()).is_err());
    }
}
