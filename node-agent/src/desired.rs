//! The planner's output: the kernel and host state Trellis owns on one node.
//!
//! The same types describe what the kernel has now ([`crate::kernel::KernelState`] is read
//! back into them), so the diff is a comparison of two values of one shape.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use trellis_api::EncapMode;

use crate::vtep::MacAddr;

/// Routing protocol number stamped on every route Trellis installs (`ip route ... proto 0x54`,
/// shown by iproute2 as `proto 84`). Anything carrying it that is not desired is swept;
/// nothing without it is ever touched.
pub const ROUTE_PROTOCOL: u8 = 0x54;

/// Name of the kernel's IPIP fallback device, created in every namespace by the `ipip` module.
pub const IPIP_DEVICE: &str = "tunl0";

/// Encapsulation overheads in bytes (IPv4 outer header; VXLAN adds UDP + VXLAN + inner Ethernet).
pub const IPIP_OVERHEAD: u32 = 20;
pub const VXLAN_OVERHEAD: u32 = 50;

/// What Trellis wants this node to look like.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// Effective pod MTU (goes into the CNI conflist; the tunnel devices carry their own).
    pub mtu: u32,
    /// `tunl0` configuration when any IPIP pool is in use on this node.
    pub ipip: Option<IpipTunnel>,
    /// The VXLAN device when any VXLAN pool is in use on this node.
    pub vxlan: Option<VxlanTunnel>,
    /// Routes to install (all with [`ROUTE_PROTOCOL`], table main), keyed by destination:
    /// one route per destination.
    pub routes: BTreeMap<IpNet, Route>,
    /// Permanent neighbour entries on the VXLAN device (peer tunnel IP -> peer VTEP MAC).
    pub neighbours: Vec<Neighbour>,
    /// Permanent FDB entries on the VXLAN device (peer VTEP MAC -> peer node IP).
    pub fdb: Vec<FdbEntry>,
    /// NAT-outgoing rules (the nftables table's content).
    pub nat: NatPlan,
    /// The CNI conflist to write.
    pub cni: CniConfig,
    /// Sysctls the data plane needs (forwarding, rp_filter on tunnels).
    pub sysctls: Vec<Sysctl>,
    /// Per-pool outcome: what the pool does on this node, or why it cannot.
    pub pools: Vec<PoolPlan>,
    /// Things the planner left out and why (a block in no pool, a peer that cannot be reached,
    /// ...), in words a human understands. Not kernel state: empty in a kernel read-back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `tunl0`: the kernel's fallback IPIP device, adopted rather than created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpipTunnel {
    pub mtu: u32,
    /// /32 tunnel address (source of host-originated traffic to remote pods).
    pub address: Option<Ipv4Addr>,
}

/// The single VXLAN device (learning off; neighbours and FDB are programmed per peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanTunnel {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub mac: MacAddr,
    /// Outer source address (the node address).
    pub local: IpAddr,
    /// Underlay device the outer packets leave through.
    pub uplink: String,
    pub mtu: u32,
    /// Tunnel address, installed as a host route (/32 or /128).
    pub address: Option<IpAddr>,
}

/// One route Trellis owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RouteKind {
    /// `<dst> via <gateway> dev <dev> [onlink]`.
    Unicast { gateway: IpAddr, dev: String, onlink: bool },
    /// `blackhole <dst>`: the node's own blocks, so traffic to unallocated pod IPs dies here
    /// instead of bouncing back to the default route.
    Blackhole,
}

/// A permanent neighbour entry: `ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Neighbour {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent FDB entry: `bridge fdb replace <mac> dev <dev> dst <dst> self permanent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbEntry {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// Content of Trellis' nftables table. Empty `nat_sources` means no table at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatPlan {
    /// CIDRs of pools with natOutgoing (disabled ones too: their running pods keep egress):
    /// their traffic leaving the pools is masqueraded.
    pub nat_sources: Vec<IpNet>,
    /// CIDRs of all pools (enabled or not): destinations that are never masqueraded.
    pub all_pools: Vec<IpNet>,
}

/// The CNI configuration list, as JSON, and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniConfig {
    pub path: std::path::PathBuf,
    /// `null` when no block of this node can give pods addresses: the file is then removed,
    /// so no new pod starts here (see [`crate::cni`]).
    pub conflist: serde_json::Value,
    /// Why `conflist` is `null`, in words a human understands (for the pass report and, later,
    /// a NodeNetwork condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A sysctl the agent owns, e.g. `net.ipv4.ip_forward = 1`. Per-interface keys keep the
/// interface name as it is, dots included (`net.ipv4.conf.vxlan.trellis.rp_filter`); see
/// [`crate::kernel::sysctl::path`] for how that maps to `/proc/sys`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sysctl {
    pub key: String,
    pub value: String,
}

/// The outcome for one pool on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolPlan {
    pub name: String,
    /// The encapsulation senders use now (during a live change: the old one until Switch).
    pub encapsulation: Encapsulation,
    /// The phase of a live change this plan carries out, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Calico semantics: a disabled pool gets no new allocations (its blocks leave the CNI
    /// IPAM ranges) but existing blocks stay routed so running pods keep working.
    pub disabled: bool,
    /// Why this pool is not (fully) programmed, in words a human understands.
    pub error: Option<String>,
}

/// The phase of a live change on this node (see docs/live-changes.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Receive both the old and the new encapsulation; send with the old one.
    Receive,
    /// Receive both; send with the new one.
    Switch,
    /// Only the new one: the old receive side is removed.
    Cleanup,
}

impl Phase {
    /// The name used in the IPPool and NodeNetwork statuses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Receive => "Receive",
            Phase::Switch => "Switch",
            Phase::Cleanup => "Cleanup",
        }
    }

    /// Parses a status' phase name.
    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Receive, Phase::Switch, Phase::Cleanup].into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The effective encapsulation of a pool (ipipMode and vxlanMode folded into one value).
/// Written as `None`, `IPIP/Always`, `VXLAN/CrossSubnet` … (also in NodeNetwork status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulation {
    None,
    Ipip(EncapMode),
    Vxlan(EncapMode),
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encapsulation::None => f.write_str("None"),
            Encapsulation::Ipip(mode) => write!(f, "IPIP/{mode}"),
            Encapsulation::Vxlan(mode) => write!(f, "VXLAN/{mode}"),
        }
    }
}

impl Serialize for Encapsulation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Encapsulation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An encapsulation string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid encapsulation {0:?} (want None, IPIP/<mode> or VXLAN/<mode>, mode Always or CrossSubnet)")]
pub struct EncapsulationParseError(String);

impl std::str::FromStr for Encapsulation {
    type Err = EncapsulationParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EncapsulationParseError(s.to_string());
        if s == "None" {
            return Ok(Encapsulation::None);
        }
        let (kind, mode) = s.split_once('/').ok_or_else(err)?;
        let mode = match mode {
            "Always" => EncapMode::Always,
            "CrossSubnet" => EncapMode::CrossSubnet,
            _ => return Err(err()),
        };
        match kind {
            "IPIP" => Ok(Encapsulation::Ipip(mode)),
            "VXLAN" => Ok(Encapsulation::Vxlan(mode)),
            _ => Err(err()),
        }
    }
}

/// What the running kernel can do; the planner refuses pools that need what it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub ipip: bool,
    pub vxlan: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self { ipip: true, vxlan: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulation_reads_and_writes_as_words() {
        for (e, text) in [
            (Encapsulation::None, "None"),
            (Encapsulation::Ipip(EncapMode::Always), "IPIP/Always"),
            (Encapsulation::Vxlan(EncapMode::CrossSubnet), "VXLAN/CrossSubnet"),
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{text}\""));
            assert_eq!(text.parse::<Encapsulation>().unwrap(), e);
        }
        for bad in ["", "IPIP", "IPIP/Never", "GRE/Always", "VXLAN/always"] {
            assert!(bad.parse::<Encapsulation>().is_err(), "{bad}");
        }
    }
}
