//! The observed state: what Trellis owns in the kernel *now*, read back in the shapes the
//! planner produces, plus what it must know about everything else to leave it alone.
//!
//! Ownership is by mark: `tunl0` with [`super::OWNER_ALIAS`] and only its
//! [`super::IPIP_ADDRESS_LABEL`]led address, the one VXLAN device (by name), every route
//! carrying [`super::ROUTE_PROTOCOL`] in any table (planner-shaped ones in table main as
//! routes, all others as stray routes to sweep), and the permanent neighbour/FDB entries on the
//! VXLAN device. Of everything else only the destinations of foreign routes in table main are
//! kept, so that no desired route replaces one of them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::{FdbEntry, MacAddr, Neighbour, Route, StrayRoute};

/// The kernel state Trellis owns, as read back from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelState {
    /// `tunl0`, when the kernel has it (the `ipip` module is loaded).
    pub ipip: Option<IpipDevice>,
    /// The VXLAN device with the name asked for, when it exists.
    pub vxlan: Option<VxlanDevice>,
    /// Routes in table main with [`super::ROUTE_PROTOCOL`] in a shape the planner produces
    /// ([`Route`]), by destination.
    pub routes: BTreeMap<IpNet, Route>,
    /// Every other route carrying [`super::ROUTE_PROTOCOL`], in any table: shapes Trellis
    /// never installs (dev-only, unreachable/prohibit, multipath, a metric, TOS or source
    /// prefix, another table, a second route to one destination). Stamped as ours, never
    /// desired: always swept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stray_routes: Vec<StrayRoute>,
    /// Destinations of routes in table main *without* our protocol, with that protocol's
    /// name. Not ours: read only so that a desired route never replaces one of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub foreign_routes: BTreeMap<IpNet, String>,
    /// Permanent neighbour entries on the VXLAN device (sorted).
    pub neighbours: Vec<Neighbour>,
    /// Permanent FDB entries with a remote on the VXLAN device (sorted).
    pub fdb: Vec<FdbEntry>,
    /// Other VXLAN devices marked as Trellis' ([`super::OWNER_ALIAS`]): left over after the
    /// device name setting changed. Unmarked (foreign) devices never appear here.
    pub stale_vxlan: Vec<String>,
}

/// `tunl0` as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpipDevice {
    pub mtu: u32,
    pub up: bool,
    /// Trellis adopted it ([`super::OWNER_ALIAS`]): only then does Trellis set it down again.
    pub owned: bool,
    /// Our addresses: those labelled [`super::IPIP_ADDRESS_LABEL`].
    pub addresses: Vec<IpNet>,
    /// Everybody else's addresses (IPv6 link-local ones left out): never touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_addresses: Vec<IpNet>,
}

/// The VXLAN device as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// Name of the underlay link (`dev` of `ip link add ... type vxlan`).
    pub uplink: Option<String>,
    pub learning: bool,
    pub mac: MacAddr,
    pub mtu: u32,
    pub up: bool,
    /// Addresses except IPv6 link-local ones.
    pub addresses: Vec<IpNet>,
}
