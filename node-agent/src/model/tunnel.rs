//! Tunnel devices as Trellis wants them, and the marks that say which devices and addresses
//! are Trellis' own.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::MacAddr;

/// Name of the kernel's IPIP fallback device, created in every namespace by the `ipip` module.
pub const IPIP_DEVICE: &str = "tunl0";

/// Encapsulation overheads in bytes (IPv4 outer header; VXLAN adds UDP + VXLAN + inner Ethernet).
pub const IPIP_OVERHEAD: u32 = 20;
pub const VXLAN_OVERHEAD: u32 = 50;

/// Interface alias (`ip link set DEV alias trellis`) marking the VXLAN device Trellis created,
/// so a device left behind under an old name is recognised — also across restarts.
pub const OWNER_ALIAS: &str = "trellis";

/// Label (`ip addr add ... label tunl0:trellis`) marking the tunnel address Trellis put on
/// `tunl0`. `tunl0` is shared with the kernel and possibly other tools, so only addresses
/// carrying this label are ours; it survives agent restarts and iproute2 shows it.
pub const IPIP_ADDRESS_LABEL: &str = "tunl0:trellis";

/// The label Trellis gives its addresses on `dev`, if it labels them (only on the shared
/// `tunl0`; the VXLAN device is Trellis' own, so everything on it is).
pub fn address_label(dev: &str) -> Option<&'static str> {
    (dev == IPIP_DEVICE).then_some(IPIP_ADDRESS_LABEL)
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
