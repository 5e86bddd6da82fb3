//! The desired state: everything Trellis wants one node to look like. The planner produces it
//! from a snapshot; the diff compares it with the observed state ([`super::KernelState`]),
//! which uses the same element types, so the diff compares two values of one shape.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{CniConfig, FdbEntry, IpipTunnel, NatPlan, Neighbour, PoolPlan, Route, Sysctl, VxlanTunnel};

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
    /// Routes to install (all with [`super::ROUTE_PROTOCOL`], table main), keyed by
    /// destination: one route per destination.
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
    /// ...), in words a human understands. Not kernel state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
