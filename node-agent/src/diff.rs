//! The diff: what to do to turn the kernel's current state into the desired one. Pure.
//!
//! Design: one function, [`diff`], compares two values of the same shape and returns typed
//! [`Change`]s in an order that never breaks traffic that should keep flowing:
//!
//! 1. devices (create, MTU/MAC/up), 2. addresses, 3. neighbours + FDB, 4. routes (replace,
//!    never delete-then-add), then removals in reverse: 5. stale and stray routes (everything
//!    stamped proto 84 that is not desired, in any table and shape), 6. stale neighbours/FDB,
//!    7. stale addresses, 8. devices.
//!
//! So a peer's neighbour and FDB entries always exist before its route points at them, and its
//! route goes before them on removal. VXLAN parameters the kernel cannot change in place (VNI,
//! port, local address, underlay link, learning) mean delete + recreate, flagged disruptive;
//! everything that was on the old device (its neighbours, FDB, addresses, routes) is planned
//! again on the new one. A marked VXLAN device under another name (the name setting changed)
//! is deleted first: the kernel refuses two devices with one VNI and port.
//!
//! Ownership: nothing that is not marked as ours is changed. `tunl0` is the kernel's fallback
//! device, shared and undeletable: Trellis marks it (alias) when an IPIP pool needs it and
//! sets it down again only if marked; its own address carries a label
//! ([`crate::kernel::IPIP_ADDRESS_LABEL`]) and is the only one ever removed. A desired route
//! whose destination has a foreign route in table main is not applied but returned as a
//! [`RouteConflict`] (a replace would take the foreign route over). Equal states give an empty
//! diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::desired::{DesiredState, FdbEntry, IPIP_DEVICE, Neighbour, Route, RouteKind, VxlanTunnel};
use crate::kernel::{KernelState, OWNER_ALIAS, StrayRoute, VxlanDevice, address_label};
use crate::vtep::MacAddr;

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
    /// Mark a shared device as adopted by Trellis (alias [`crate::kernel::OWNER_ALIAS`]) or
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

/// A tunnel address as the device carries it: a host prefix.
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Why an existing VXLAN device cannot be kept, if it cannot.
fn recreate_reason(current: &VxlanDevice, desired: &VxlanTunnel) -> Option<String> {
    let mut reasons = Vec::new();
    if current.vni != desired.vni {
        reasons.push(format!("vni {} -> {}", current.vni, desired.vni));
    }
    if current.port != desired.port {
        reasons.push(format!("port {} -> {}", current.port, desired.port));
    }
    if current.local != Some(desired.local) {
        reasons.push(format!("local {:?} -> {}", current.local, desired.local));
    }
    if current.uplink.as_deref() != Some(desired.uplink.as_str()) {
        reasons.push(format!("dev {:?} -> {}", current.uplink, desired.uplink));
    }
    if current.learning {
        reasons.push("learning on -> off".to_string());
    }
    (!reasons.is_empty()).then(|| format!("recreate: {}", reasons.join(", ")))
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

/// The diff's whole answer: the ordered changes and the routes held back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub conflicts: Vec<RouteConflict>,
}

/// The ordered changes that turn `current` into `desired` (see the module comment); routes
/// that conflict with foreign ones are left out (see [`diff_with_conflicts`]).
pub fn diff(current: &KernelState, desired: &DesiredState) -> Vec<Change> {
    diff_with_conflicts(current, desired).changes
}

/// [`diff`] plus the desired routes held back because a foreign route has their destination.
pub fn diff_with_conflicts(current: &KernelState, desired: &DesiredState) -> Diff {
    let mut current = current.clone();
    let mut devices = Vec::new();
    let mut device_removals = Vec::new();

    // 1. Devices. A marked VXLAN device under another name goes first: the kernel refuses a
    // second device with the same VNI and port, and the routes through it go with it.
    for name in current.stale_vxlan.clone() {
        if desired.vxlan.as_ref().is_none_or(|t| t.name != name) {
            devices.push(Change::DeleteVxlan {
                name: name.clone(),
                reason: "not the configured VXLAN device".to_string(),
            });
            current.routes.retain(|_, r| !matches!(&r.kind, RouteKind::Unicast { dev, .. } if *dev == name));
        }
    }
    // A recreated VXLAN device loses everything on it: forget it from `current` so the phases
    // below plan it again.
    match (current.vxlan.clone(), &desired.vxlan) {
        (Some(cur), Some(want)) => {
            if let Some(reason) = recreate_reason(&cur, want) {
                devices.push(Change::DeleteVxlan { name: cur.name.clone(), reason });
                devices.push(Change::CreateVxlan(want.clone()));
                forget_device(&mut current, &cur.name);
            } else {
                let set = Change::SetLink {
                    dev: cur.name.clone(),
                    mtu: (cur.mtu != want.mtu).then_some(want.mtu),
                    mac: (cur.mac != want.mac).then_some(want.mac),
                    up: (!cur.up).then_some(true),
                };
                if set != (Change::SetLink { dev: cur.name.clone(), mtu: None, mac: None, up: None }) {
                    devices.push(set);
                }
            }
        }
        (None, Some(want)) => devices.push(Change::CreateVxlan(want.clone())),
        (Some(cur), None) => {
            device_removals.push(Change::DeleteVxlan { name: cur.name.clone(), reason: "no VXLAN pool".to_string() });
        }
        (None, None) => {}
    }
    // tunl0 is shared: adopted (marked) when an IPIP pool needs it, set down again only when
    // the mark says Trellis adopted it; its MTU stays as the last IPIP pool left it.
    let mark = |owned: bool| Change::SetOwner { dev: IPIP_DEVICE.to_string(), owned };
    match (&current.ipip, &desired.ipip) {
        (Some(cur), Some(want)) => {
            if !cur.owned {
                devices.push(mark(true));
            }
            if cur.mtu != want.mtu || !cur.up {
                devices.push(Change::SetLink {
                    dev: IPIP_DEVICE.to_string(),
                    mtu: (cur.mtu != want.mtu).then_some(want.mtu),
                    mac: None,
                    up: (!cur.up).then_some(true),
                });
            }
        }
        (None, Some(want)) => {
            devices.push(Change::EnsureTunl0);
            devices.push(mark(true));
            devices.push(Change::SetLink {
                dev: IPIP_DEVICE.to_string(),
                mtu: Some(want.mtu),
                mac: None,
                up: Some(true),
            });
        }
        (Some(cur), None) if cur.owned => {
            if cur.up {
                device_removals.push(Change::SetLink {
                    dev: IPIP_DEVICE.to_string(),
                    mtu: None,
                    mac: None,
                    up: Some(false),
                });
            }
            device_removals.push(mark(false));
        }
        _ => {}
    }
    let deleted_vxlan: Option<String> = match (&current.vxlan, &desired.vxlan) {
        (Some(cur), None) => Some(cur.name.clone()),
        _ => None,
    };

    // 2./7. Addresses of the devices we own.
    let mut addresses = Vec::new();
    let mut address_removals = Vec::new();
    let want_vxlan: BTreeSet<IpNet> = desired.vxlan.iter().filter_map(|t| t.address).map(host_net).collect();
    let have_vxlan: BTreeSet<IpNet> = current.vxlan.iter().flat_map(|v| v.addresses.iter().copied()).collect();
    if let Some(want) = &desired.vxlan {
        for address in want_vxlan.difference(&have_vxlan) {
            addresses.push(Change::AddAddress { dev: want.name.clone(), address: *address });
        }
        if current.vxlan.is_some() {
            for address in have_vxlan.difference(&want_vxlan) {
                address_removals.push(Change::DelAddress { dev: want.name.clone(), address: *address });
            }
        }
    }
    let want_ipip: BTreeSet<IpNet> =
        desired.ipip.iter().filter_map(|t| t.address).map(|a| host_net(a.into())).collect();
    // Only labelled addresses are ours; an equal foreign one already does the job.
    let have_ipip: BTreeSet<IpNet> = current.ipip.iter().flat_map(|t| t.addresses.iter().copied()).collect();
    let foreign_ipip: BTreeSet<IpNet> = current.ipip.iter().flat_map(|t| t.foreign_addresses.iter().copied()).collect();
    if desired.ipip.is_some() {
        for address in want_ipip.difference(&have_ipip).filter(|a| !foreign_ipip.contains(a)) {
            addresses.push(Change::AddAddress { dev: IPIP_DEVICE.to_string(), address: *address });
        }
    }
    for address in have_ipip.difference(&want_ipip) {
        address_removals.push(Change::DelAddress { dev: IPIP_DEVICE.to_string(), address: *address });
    }

    // 3./6. Neighbours (keyed by device + IP) and FDB entries (device + MAC; a MAC may have
    // several remotes in the kernel, we want exactly one).
    let mut peers = Vec::new();
    let mut peer_removals = Vec::new();
    let have_neigh: BTreeMap<(&str, IpAddr), &Neighbour> =
        current.neighbours.iter().map(|n| ((n.dev.as_str(), n.ip), n)).collect();
    let want_neigh: BTreeMap<(&str, IpAddr), &Neighbour> =
        desired.neighbours.iter().map(|n| ((n.dev.as_str(), n.ip), n)).collect();
    for (key, want) in &want_neigh {
        match have_neigh.get(key) {
            None => peers.push(Change::AddNeighbour((*want).clone())),
            Some(have) if have.mac != want.mac => peers.push(Change::UpdateNeighbour((*want).clone())),
            Some(_) => {}
        }
    }
    for (key, have) in &have_neigh {
        if !want_neigh.contains_key(key) && deleted_vxlan.as_deref() != Some(key.0) {
            peer_removals.push(Change::DelNeighbour((*have).clone()));
        }
    }
    let want_fdb: BTreeSet<&FdbEntry> = desired.fdb.iter().collect();
    let have_fdb: BTreeSet<&FdbEntry> = current.fdb.iter().collect();
    for want in &want_fdb {
        if have_fdb.contains(want) {
            continue;
        }
        let mac_known = current.fdb.iter().any(|h| h.dev == want.dev && h.mac == want.mac);
        peers.push(if mac_known { Change::UpdateFdb((*want).clone()) } else { Change::AddFdb((*want).clone()) });
    }
    for have in &have_fdb {
        if !want_fdb.contains(have) && deleted_vxlan.as_deref() != Some(have.dev.as_str()) {
            peer_removals.push(Change::DelFdb((*have).clone()));
        }
    }

    // 4./5. Routes: one per destination, replaced in place — unless a foreign route has the
    // destination: a replace would take it over.
    let mut routes = Vec::new();
    let mut route_removals = Vec::new();
    let mut conflicts = Vec::new();
    for (dst, want) in &desired.routes {
        let update = match current.routes.get(dst) {
            None => false,
            Some(have) if have != want => true,
            Some(_) => continue,
        };
        match current.foreign_routes.get(dst) {
            Some(protocol) => conflicts.push(RouteConflict { route: want.clone(), update, protocol: protocol.clone() }),
            None if update => routes.push(Change::UpdateRoute(want.clone())),
            None => routes.push(Change::AddRoute(want.clone())),
        }
    }
    for (dst, have) in &current.routes {
        if !desired.routes.contains_key(dst) {
            route_removals.push(Change::DelRoute(have.clone()));
        }
    }
    route_removals.extend(current.stray_routes.iter().cloned().map(Change::DelStrayRoute));

    let mut changes = devices;
    changes.extend(addresses);
    changes.extend(peers);
    changes.extend(routes);
    changes.extend(route_removals);
    changes.extend(peer_removals);
    changes.extend(address_removals.into_iter().filter(|c| match c {
        Change::DelAddress { dev, .. } => deleted_vxlan.as_deref() != Some(dev.as_str()),
        _ => true,
    }));
    changes.extend(device_removals);
    Diff { changes, conflicts }
}

/// Drops everything the kernel removes together with a device.
fn forget_device(state: &mut KernelState, dev: &str) {
    state.vxlan = None;
    state.neighbours.retain(|n| n.dev != dev);
    state.fdb.retain(|f| f.dev != dev);
    state.routes.retain(|_, r| !matches!(&r.kind, RouteKind::Unicast { dev: d, .. } if d == dev));
}

#[cfg(test)]
mod tests;
