//! A change: one kernel operation, as data. The diff produces them in a safe order, the kernel
//! layer executes them one by one, and they print as iproute2 commands (logs, `plan`).

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::{
    FdbEntry, IPIP_DEVICE, MacAddr, Neighbour, OWNER_ALIAS, Route, RouteKind, StrayRoute, VxlanTunnel, address_label,
};

/// One kernel operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum Change {
    /// Create the VXLAN device (learning off, MTU, MAC) and set it up.
    CreateVxlan(VxlanTunnel),
    /// Delete the VXLAN device (and with it everything on it).
    DeleteVxlan {
        name: String,
        reason: String,
    },
    /// Make sure `tunl0` exists (loads `ipip` / adopts the fallback device).
    EnsureTunl0,
    /// Mark a shared device as adopted by Trellis (alias [`OWNER_ALIAS`]) or
    /// drop the mark; only a marked `tunl0` is ever set down.
    SetOwner {
        dev: String,
        owned: bool,
    },
    /// Change attributes of an existing link; `None` leaves one alone.
    SetLink {
        dev: String,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        up: Option<bool>,
    },
    AddAddress {
        dev: String,
        address: IpNet,
    },
    DelAddress {
        dev: String,
        address: IpNet,
    },
    /// A neighbour for an IP that has none (a new peer); rolled back if its route fails.
    AddNeighbour(Neighbour),
    /// A neighbour whose MAC changes.
    UpdateNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    AddFdb(FdbEntry),
    UpdateFdb(FdbEntry),
    DelFdb(FdbEntry),
    /// A route to a destination we have no route to.
    AddRoute(Route),
    /// A route to the same destination that changes (atomic replace).
    UpdateRoute(Route),
    DelRoute(Route),
    /// A route stamped with our protocol in a shape we never install (always swept).
    DelStrayRoute(StrayRoute),
}

impl Change {
    /// Short kind for counting: object and `+` (add), `~` (change) or `-` (remove).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::CreateVxlan(_) | Change::EnsureTunl0 => "link+",
            Change::SetLink { .. } | Change::SetOwner { .. } => "link~",
            Change::DeleteVxlan { .. } => "link-",
            Change::AddAddress { .. } => "address+",
            Change::DelAddress { .. } => "address-",
            Change::AddNeighbour(_) => "neighbour+",
            Change::UpdateNeighbour(_) => "neighbour~",
            Change::DelNeighbour(_) => "neighbour-",
            Change::AddFdb(_) => "fdb+",
            Change::UpdateFdb(_) => "fdb~",
            Change::DelFdb(_) => "fdb-",
            Change::AddRoute(_) => "route+",
            Change::UpdateRoute(_) => "route~",
            Change::DelRoute(_) | Change::DelStrayRoute(_) => "route-",
        }
    }

    /// Whether the change interrupts traffic (a device is deleted).
    pub fn is_disruptive(&self) -> bool {
        matches!(self, Change::DeleteVxlan { .. })
    }
}

impl fmt::Display for Change {
    /// iproute2-like rendering, for logs and the `plan` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateVxlan(t) => write!(
                f,
                "link add {} type vxlan id {} dstport {} local {} dev {} nolearning address {} mtu {} up",
                t.name, t.vni, t.port, t.local, t.uplink, t.mac, t.mtu
            ),
            Change::DeleteVxlan { name, reason } => write!(f, "link del {name} ({reason})"),
            Change::EnsureTunl0 => write!(f, "link adopt {IPIP_DEVICE} (modprobe ipip)"),
            Change::SetOwner { dev, owned: true } => write!(f, "link set {dev} alias {OWNER_ALIAS}"),
            Change::SetOwner { dev, owned: false } => write!(f, "link set {dev} alias \"\""),
            Change::SetLink { dev, mtu, mac, up } => {
                write!(f, "link set {dev}")?;
                if let Some(mtu) = mtu {
                    write!(f, " mtu {mtu}")?;
                }
                if let Some(mac) = mac {
                    write!(f, " address {mac}")?;
                }
                match up {
                    Some(true) => write!(f, " up"),
                    Some(false) => write!(f, " down"),
                    None => Ok(()),
                }
            }
            Change::AddAddress { dev, address } => match address_label(dev) {
                Some(label) => write!(f, "addr add {address} dev {dev} label {label}"),
                None => write!(f, "addr add {address} dev {dev}"),
            },
            Change::DelAddress { dev, address } => write!(f, "addr del {address} dev {dev}"),
            Change::AddNeighbour(n) | Change::UpdateNeighbour(n) => {
                write!(f, "neigh replace {} lladdr {} dev {} nud permanent", n.ip, n.mac, n.dev)
            }
            Change::DelNeighbour(n) => write!(f, "neigh del {} dev {}", n.ip, n.dev),
            Change::AddFdb(e) | Change::UpdateFdb(e) => {
                write!(f, "fdb replace {} dev {} dst {} self permanent", e.mac, e.dev, e.dst)
            }
            Change::DelFdb(e) => write!(f, "fdb del {} dev {} dst {} self", e.mac, e.dev, e.dst),
            Change::AddRoute(r) | Change::UpdateRoute(r) => write!(f, "route replace {}", RouteDisplay(r)),
            Change::DelRoute(r) => write!(f, "route del {}", RouteDisplay(r)),
            Change::DelStrayRoute(r) => {
                write!(f, "route del {} {}", r.type_name(), r.dst)?;
                if let Some(src) = r.src {
                    write!(f, " from {src}")?;
                }
                write!(f, " table {} proto 84", r.table)?;
                if r.tos != 0 {
                    write!(f, " tos {:#x}", r.tos)?;
                }
                if let Some(metric) = r.metric {
                    write!(f, " metric {metric}")?;
                }
                Ok(())
            }
        }
    }
}

struct RouteDisplay<'a>(&'a Route);

impl fmt::Display for RouteDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            RouteKind::Blackhole => write!(f, "blackhole {} proto 84", self.0.dst),
            RouteKind::Unicast { gateway, dev, onlink } => {
                write!(f, "{} via {gateway} dev {dev}{} proto 84", self.0.dst, if *onlink { " onlink" } else { "" })
            }
        }
    }
}

/// A desired route Trellis does not install because its destination already has a foreign
/// route (without our protocol) in table main: replacing it would silently take it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConflict {
    /// The desired route.
    pub route: Route,
    /// Whether a route of ours to the destination exists (an update was held back, not an add).
    pub update: bool,
    /// Protocol of the foreign route (`static`, `boot`, ...).
    pub protocol: String,
}

impl RouteConflict {
    /// The add or update the diff would otherwise have made.
    pub fn change(&self) -> Change {
        if self.update { Change::UpdateRoute(self.route.clone()) } else { Change::AddRoute(self.route.clone()) }
    }
}
