//! The planner: a pure function from a [`Snapshot`] (plus the kernel's capabilities) to the
//! [`DesiredState`] of this node.
//!
//! It never touches the kernel or the disk, so every decision is unit- and property-tested and
//! `trellis-agent plan --snapshot FILE` shows exactly what `apply` would do. The work is split
//! by concept:
//! * [`pools`]: each pool's effective encapsulation and whether this node can honour it;
//! * [`routes`]: one route per peer block, neighbours/FDB for VXLAN, blackholes for own blocks;
//! * [`mtu`]: the pod MTU and the tunnel devices' MTUs;
//! * here: devices, sysctls, the NAT plan and the CNI conflist (rendered by [`crate::cni`]).
//!
//! Calico semantics where nothing else is said. Problems confined to one pool, peer or block
//! (a pool needing a tunnel this kernel lacks, a peer that cannot be reached, a block in no
//! pool) never fail the plan: they become the pool's `error` or a `warning`, and everything
//! else is still planned. Only snapshots that make no sense as a whole are a [`PlanError`].
//! Output is sorted everywhere, so identical snapshots give identical plans whatever the
//! order of their lists.

mod memo;
mod mtu;
mod pools;
mod routes;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Capabilities, DesiredState, IPIP_DEVICE, IpipTunnel, MacAddr, NatPlan, Phase, Sysctl, VxlanTunnel};
use crate::snapshot::{CniPlugin, Snapshot};
use crate::vtep::tunnel_address_for;

pub use memo::PlanMemo;
use pools::{PoolView, Pools, is_ipip, is_vxlan};

/// A node's tunnel address by convention (Calico's `allowedUses` Tunnel, flannel's choice of
/// address): the network address of its lowest block in a programmed pool that allows Tunnel
/// use. The pool is the block's most specific pool.
fn tunnel_address(blocks: &[IpNet], pools: &Pools) -> Option<IpAddr> {
    let eligible: Vec<IpNet> = blocks
        .iter()
        .copied()
        .filter(|b| pools.owner_of(&b.trunc()).is_some_and(|p| p.programmed() && p.tunnel))
        .collect();
    tunnel_address_for(&eligible)
}

/// The tunnel address a node derives for itself from its blocks and the pools (what the
/// planner uses when the snapshot gives none; the NodeNetwork publishes it).
pub fn derived_tunnel_address(snapshot: &Snapshot, caps: Capabilities) -> Option<IpAddr> {
    tunnel_address(&snapshot.node.blocks, &Pools::new(&snapshot.pools, &snapshot.node, caps))
}

/// A snapshot the planner cannot turn into a desired state at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the MTU of uplink {uplink:?} is unknown and no MTU is configured (set the Installation's \
         spec.network.mtu, or let the agent read the uplink's MTU)"
    )]
    MissingUplinkMtu { uplink: String },
    #[error("MTU {mtu} is below the minimum of {min}")]
    MtuTooSmall { mtu: u32, min: u32 },
    #[error("the node has no uplink interface name")]
    MissingUplink,
    #[error("pool {0:?} appears more than once in the snapshot")]
    DuplicatePool(String),
    #[error("peer {0:?} appears more than once in the snapshot")]
    DuplicatePeer(String),
    #[error("peer {0:?} has this node's own name")]
    PeerIsSelf(String),
}

/// Pure: what this node's kernel and files should look like. `snapshot.node.uplink_mtu` must be
/// filled in by the caller (from the kernel) unless `snapshot.mtu` overrides it.
pub fn plan(snapshot: &Snapshot, caps: Capabilities) -> Result<DesiredState, PlanError> {
    validate(snapshot)?;
    let node = &snapshot.node;
    let pools = Pools::new(&snapshot.pools, node, caps);
    let mut warnings: Vec<String> = snapshot
        .pools
        .iter()
        .filter(|p| p.cidr != p.cidr.trunc())
        .map(|p| format!("pool {} has host bits set in its cidr {}; using {}", p.name, p.cidr, p.cidr.trunc()))
        .collect();

    let programmed = || pools.iter().filter(|p| p.programmed());
    // During a live change both the old and the new settings count: the pod MTU must fit
    // whichever path a packet takes until the old one is gone (lowered in Receive, raised
    // only after Cleanup).
    let in_force = || pools.iter().flat_map(PoolView::receiving).filter(|p| p.programmed());
    let mtus = mtu::compute(
        snapshot.mtu,
        &node.uplink,
        node.uplink_mtu,
        mtu::Overheads::for_underlay(node.address.addr()),
        in_force().any(|p| is_ipip(p.encap)),
        in_force().any(|p| is_vxlan(p.encap)),
    )?;

    // Devices exist when some pool can use them: receiving works before any peer exists,
    // which is what phase 1 of a live mode change relies on.
    let tunnel_address = node.tunnel_address.or_else(|| tunnel_address(&node.blocks, &pools));
    let mac = node.vtep_mac.unwrap_or_else(|| MacAddr::for_node(&node.name));
    let usable = || pools.iter().flat_map(PoolView::receiving).filter(|p| p.tunnel_usable());
    let ipip = usable().any(|p| is_ipip(p.encap)).then_some(IpipTunnel {
        mtu: mtus.ipip_device,
        address: match tunnel_address {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
    });
    let vxlan = usable().any(|p| is_vxlan(p.encap)).then(|| VxlanTunnel {
        name: snapshot.vxlan.device.clone(),
        vni: snapshot.vxlan.vni,
        port: snapshot.vxlan.port,
        mac,
        local: node.address.addr(),
        uplink: node.uplink.clone(),
        mtu: mtus.vxlan_device,
        address: tunnel_address,
    });

    // With the bridge plugin the bridge's connected route covers the node's blocks; a
    // blackhole with the same destination would replace it and cut the pods off.
    let blackholes = snapshot.cni.plugin == CniPlugin::Ptp;
    let vtep = routes::LocalVtep { device: &snapshot.vxlan.device, mac, tunnel_address };
    let routing = routes::plan(node, &snapshot.peers, &pools, &vtep, blackholes);
    warnings.extend(routing.warnings);

    let own_blocks = routes::canonical(&node.blocks);
    let cni_blocks: Vec<IpNet> = own_blocks
        .iter()
        .copied()
        .filter(|b| pools.owner_of(b).is_some_and(|p| p.programmed() && !p.disabled && p.workload))
        .collect();
    let reserved: Vec<IpAddr> = tunnel_address.into_iter().collect();
    let (mut cni, cni_warnings) = crate::cni::render(&snapshot.cni, mtus.pod, &cni_blocks, &reserved);
    warnings.extend(cni_warnings);
    if cni.conflist.is_null() {
        cni.unavailable = Some(no_allocatable_block(&own_blocks, &pools, &cni.path));
    }
    warnings.extend(pools.overlaps());

    // While a live change runs, a packet may arrive on the uplink from a peer that still (or
    // already) sends directly while this node's route back goes through a tunnel: loose
    // reverse-path filtering on the uplink too, so it is not dropped.
    let changing = pools.iter().any(|p| p.phase().is_some_and(|phase| phase != Phase::Cleanup));
    let sysctls = sysctls(
        programmed().any(|p| p.cidr.addr().is_ipv6()),
        [ipip.as_ref().map(|_| IPIP_DEVICE), vxlan.as_ref().map(|v| v.name.as_str())]
            .into_iter()
            .flatten()
            .chain(changing.then_some(node.uplink.as_str())),
    );

    Ok(DesiredState {
        mtu: mtus.pod,
        ipip,
        vxlan,
        routes: routing.routes,
        neighbours: routing.neighbours.into_iter().collect(),
        fdb: routing.fdb.into_iter().collect(),
        nat: nat_plan(&pools),
        cni,
        sysctls,
        pools: pools.iter().map(|p| p.outcome()).collect(),
        warnings,
    })
}

/// Why no block of this node is left for the CNI ranges, block by block.
fn no_allocatable_block(own: &BTreeSet<IpNet>, pools: &Pools, path: &std::path::Path) -> String {
    let why: Vec<String> = own
        .iter()
        .map(|b| match pools.owner_of(b) {
            None => format!("{b}: in no pool"),
            Some(p) if !p.programmed() => format!("{b}: pool {} is not programmed", p.name),
            Some(p) if p.disabled => format!("{b}: pool {} is disabled", p.name),
            Some(p) if !p.workload => format!("{b}: pool {} does not allow Workload use (allowedUses)", p.name),
            Some(_) => format!("{b}: no room for pods (see the warnings)"),
        })
        .collect();
    let blocks = if why.is_empty() { "it has no blocks".to_string() } else { why.join("; ") };
    format!(
        "no block of this node can give pods addresses ({blocks}); the CNI config {} is removed, so no new pod \
         starts on this node until it gets a block of an enabled pool (running pods keep their addresses)",
        path.display()
    )
}

fn validate(snapshot: &Snapshot) -> Result<(), PlanError> {
    if snapshot.node.uplink.is_empty() {
        return Err(PlanError::MissingUplink);
    }
    let mut seen = BTreeSet::new();
    for pool in &snapshot.pools {
        if !seen.insert(pool.name.as_str()) {
            return Err(PlanError::DuplicatePool(pool.name.clone()));
        }
    }
    let mut seen = BTreeSet::new();
    for peer in &snapshot.peers {
        if peer.name == snapshot.node.name {
            return Err(PlanError::PeerIsSelf(peer.name.clone()));
        }
        if !seen.insert(peer.name.as_str()) {
            return Err(PlanError::DuplicatePeer(peer.name.clone()));
        }
    }
    Ok(())
}

/// Masquerade from NAT-enabled pools to anywhere outside all pools. Disabled pools keep their
/// NAT (their running pods keep egress); pools that are not programmed at all do not get NAT
/// but still count as pool destinations, so traffic into them is never masqueraded.
fn nat_plan(pools: &Pools) -> NatPlan {
    // During a live change the old natOutgoing holds until senders switch. Conntrack keeps
    // the translation of every flow that started before, so flipping it loses no packet of a
    // running flow either way.
    let nat_sources: BTreeSet<IpNet> =
        pools.iter().map(PoolView::sending).filter(|p| p.programmed() && p.nat_outgoing).map(|p| p.cidr).collect();
    let all_pools: BTreeSet<IpNet> = pools.iter().map(|p| p.cidr).collect();
    NatPlan { nat_sources: nat_sources.into_iter().collect(), all_pools: all_pools.into_iter().collect() }
}

/// Key of a per-device setting; the device name stays as it is, dots included (the kernel
/// layer splits `net.ipv4.conf.<dev>.<setting>` around the device).
fn device_sysctl(family: &str, dev: &str, leaf: &str) -> String {
    format!("net.{family}.conf.{dev}.{leaf}")
}

/// Forwarding for the pod families in use, and loose reverse-path filtering on the tunnels.
///
/// Why loose (2) on the tunnels: a packet may arrive on a tunnel while this node's route back
/// to its source goes elsewhere — during a live mode change peers switch encapsulation at
/// different moments, and CrossSubnet decides per side from each node's own subnet prefix.
/// Strict mode would drop those packets. The kernel uses max(conf.all, conf.<dev>), so 2 on the
/// device means loose whatever `all` says, while sources with no route at all are still dropped.
fn sysctls<'a>(ipv6: bool, tunnels: impl Iterator<Item = &'a str>) -> Vec<Sysctl> {
    let mut out = vec![Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() }];
    if ipv6 {
        out.push(Sysctl { key: "net.ipv6.conf.all.forwarding".into(), value: "1".into() });
    }
    out.extend(tunnels.map(|dev| Sysctl { key: device_sysctl("ipv4", dev, "rp_filter"), value: "2".into() }));
    out.sort();
    out
}
