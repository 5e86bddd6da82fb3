//! The diff: what to do to turn the kernel's current state into the desired one. Pure.
//!
//! Design: one function, [`diff`], compares two values of the same shape (the model's
//! [`KernelState`] and [`DesiredState`]) and returns typed [`Change`]s in an order that never breaks traffic that should keep flowing:
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
//! ([`crate::model::IPIP_ADDRESS_LABEL`]) and is the only one ever removed. A desired route
//! whose destination has a foreign route in table main is not applied but returned as a
//! [`RouteConflict`] (a replace would take the foreign route over). Equal states give an empty
//! diff.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    Change, DesiredState, FdbEntry, IPIP_DEVICE, KernelState, Neighbour, RouteConflict, RouteKind, VxlanDevice,
    VxlanTunnel,
};

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
    // Copied only when a device goes and takes its objects with it (rare): a copy of thousands
    // of peers' objects costs more than the rest of a diff that changes nothing.
    let mut current = Cow::Borrowed(current);
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
            current.to_mut().routes.retain(|_, r| !matches!(&r.kind, RouteKind::Unicast { dev, .. } if *dev == name));
        }
    }
    // A recreated VXLAN device loses everything on it: forget it from `current` so the phases
    // below plan it again.
    match (current.vxlan.clone(), &desired.vxlan) {
        (Some(cur), Some(want)) => {
            if let Some(reason) = recreate_reason(&cur, want) {
                devices.push(Change::DeleteVxlan { name: cur.name.clone(), reason });
                devices.push(Change::CreateVxlan(want.clone()));
                forget_device(current.to_mut(), &cur.name);
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
