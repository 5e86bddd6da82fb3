//! Routes, neighbours and FDB entries: how this node reaches every other node's blocks.
//!
//! One route per destination block, chosen by the block's pool and where the peer sits:
//! * direct (no encapsulation, or CrossSubnet towards a peer inside this node's subnet):
//!   `<block> via <peer node IP> dev <uplink>`;
//! * no encapsulation towards a peer outside this node's subnet: no route — only BGP could
//!   carry it, and Trellis does not run BGP — plus a warning naming the pool and the peer;
//! * IPIP: `<block> via <peer node IP> dev tunl0 onlink` (the kernel encapsulates to the
//!   gateway, which need not be on-link on tunl0, hence `onlink`);
//! * VXLAN: `<block> via <peer tunnel IP> dev <vxlan> onlink`, resolved by a permanent
//!   neighbour (peer tunnel IP → peer VTEP MAC) and FDB entry (peer MAC → peer node IP). With
//!   learning off these two are the only way the device finds the peer, so they exist exactly
//!   when a route uses them (and the applier installs them first).
//!
//! The node's own blocks become blackholes so traffic to unallocated pod IPs stops here instead
//! of following the default route back out. A peer block that overlaps one of ours, or that
//! two peers claim (the same block, or one inside the other), is routed to one peer only: the
//! first claimant by name wins and the rest is reported.
//! Every decision is made in a fixed order (pools, peers and blocks sorted), so the output is
//! a function of the snapshot's content, not of its ordering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Encapsulation, FdbEntry, IPIP_DEVICE, MacAddr, Neighbour, Route, RouteKind};
use crate::snapshot::{LocalNode, Peer};
use crate::vtep::tunnel_address_for;

use super::pools::{PoolView, Pools};

/// What the routing part of the plan produces.
#[derive(Debug, Default)]
pub(super) struct Routing {
    pub routes: BTreeMap<IpNet, Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    pub warnings: Vec<String>,
}

/// This node's side of the VXLAN device, needed to spot identity clashes with peers.
pub(super) struct LocalVtep<'a> {
    pub device: &'a str,
    pub mac: MacAddr,
    pub tunnel_address: Option<IpAddr>,
}

/// Canonical, sorted, de-duplicated blocks.
pub(super) fn canonical(blocks: &[IpNet]) -> BTreeSet<IpNet> {
    blocks.iter().map(IpNet::trunc).collect()
}

fn same_family(net: &IpNet, addr: IpAddr) -> bool {
    matches!((net, addr), (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_)))
}

/// The tunnel IP a peer answers to for blocks of `block`'s family: its published tunnel
/// address when it has that family, else the convention of [`tunnel_address_for`] applied to
/// its blocks of that family (what the peer derives for itself).
pub(super) fn peer_tunnel_ip(peer: &Peer, block: &IpNet, pools: &Pools) -> Option<IpAddr> {
    match peer.tunnel_address {
        Some(addr) if same_family(block, addr) => Some(addr),
        _ => {
            let family: Vec<IpNet> = peer
                .blocks
                .iter()
                .filter(|b| same_family(block, b.network()))
                .filter(|b| pools.owner_of(&b.trunc()).is_some_and(|p| p.programmed() && p.tunnel))
                .copied()
                .collect();
            tunnel_address_for(&family)
        }
    }
}

/// Plans routes for own blocks (blackholes, when `blackholes`) and every peer block.
pub(super) fn plan(node: &LocalNode, peers: &[Peer], pools: &Pools, vtep: &LocalVtep, blackholes: bool) -> Routing {
    let mut out = Routing::default();
    let own = canonical(&node.blocks);
    for block in &own {
        match pools.owner_of(block) {
            None => out.warnings.push(format!("block {block} of this node is in no pool; ignored")),
            Some(pool) if pool.programmed() && blackholes => {
                out.routes.insert(*block, Route { dst: *block, kind: RouteKind::Blackhole });
            }
            Some(_) => {}
        }
    }

    let mut sorted: Vec<&Peer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut claims = Claims::new(vtep);
    for peer in sorted {
        plan_peer(node, peer, pools, vtep, &own, &mut claims, &mut out);
    }
    out
}

/// Who already uses which block, MAC and tunnel IP (first by peer name wins).
struct Claims {
    blocks: BTreeMap<IpNet, String>,
    /// The prefix lengths among `blocks` (usually one: the pools' block size).
    lengths: BTreeSet<u8>,
    macs: BTreeMap<MacAddr, String>,
    tunnel_ips: BTreeMap<IpAddr, String>,
}

const THIS_NODE: &str = "this node";

impl Claims {
    fn new(vtep: &LocalVtep) -> Self {
        let mut c = Self {
            blocks: BTreeMap::new(),
            lengths: BTreeSet::new(),
            macs: BTreeMap::new(),
            tunnel_ips: BTreeMap::new(),
        };
        c.macs.insert(vtep.mac, THIS_NODE.to_string());
        if let Some(addr) = vtep.tunnel_address {
            c.tunnel_ips.insert(addr, THIS_NODE.to_string());
        }
        c
    }

    /// Records `block` as `peer`'s.
    fn claim_block(&mut self, block: IpNet, peer: &str) {
        self.lengths.insert(block.prefix_len());
        self.blocks.insert(block, peer.to_string());
    }

    /// The first claimed block (in block order) of a peer other than `peer` that contains
    /// `block` or lies inside it. Canonical blocks nest or are disjoint, so the candidates are
    /// `block`'s supernets (one per prefix length some claim has) and the claimed blocks whose
    /// network address lies inside `block`: a few tree lookups instead of a scan of every
    /// claim, which made planning quadratic in the number of peers.
    fn nested(&self, block: &IpNet, peer: &str) -> Option<(&IpNet, &String)> {
        let outer = (self.lengths.range(..=block.prefix_len()))
            .filter_map(|&len| IpNet::new(block.network(), len).ok())
            .filter_map(|net| self.blocks.get_key_value(&net.trunc()));
        let first = IpNet::new(block.network(), 0).ok()?;
        let last = IpNet::new(block.broadcast(), block.max_prefix_len()).ok()?;
        let inner = self.blocks.range(first..=last);
        outer.chain(inner).filter(|(_, owner)| owner.as_str() != peer).min_by_key(|(b, _)| **b)
    }

    /// Claims `key` for `peer`; returns the other owner when it is taken.
    fn claim<K: Ord>(map: &mut BTreeMap<K, String>, key: K, peer: &str) -> Result<(), String> {
        match map.get(&key) {
            Some(owner) if owner != peer => Err(owner.clone()),
            Some(_) => Ok(()),
            None => {
                map.insert(key, peer.to_string());
                Ok(())
            }
        }
    }
}

fn plan_peer(
    node: &LocalNode,
    peer: &Peer,
    pools: &Pools,
    vtep: &LocalVtep,
    own: &BTreeSet<IpNet>,
    claims: &mut Claims,
    out: &mut Routing,
) {
    let my_subnet = node.address.trunc();
    let peer_ip = peer.address.addr();
    let in_subnet = my_subnet.contains(&peer_ip);
    let peer_mac = peer.vtep_mac.unwrap_or_else(|| MacAddr::for_node(&peer.name));
    // Blocks of a pool without encapsulation that no direct route can reach, per pool.
    let mut unreachable: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();

    for block in canonical(&peer.blocks) {
        let Some(pool) = pools.owner_of(&block) else {
            out.warnings.push(format!("block {block} of peer {} is in no pool; ignored", peer.name));
            continue;
        };
        if !pool.programmed() {
            continue; // the pool's own error says why
        }
        if let Some(mine) = own.iter().find(|o| o.contains(&block) || block.contains(*o)) {
            out.warnings
                .push(format!("block {block} of peer {} overlaps this node's block {mine}; not routed", peer.name));
            continue;
        }
        if let Some(owner) = claims.blocks.get(&block) {
            out.warnings
                .push(format!("block {block} is claimed by peers {owner} and {}; routed to {owner} only", peer.name));
            continue;
        }
        // Nested blocks of two peers would split traffic by prefix length between them.
        if let Some((other, owner)) = claims.nested(&block, &peer.name) {
            out.warnings.push(format!(
                "block {block} of peer {} overlaps block {other} of peer {owner}; not routed",
                peer.name
            ));
            continue;
        }
        // During a live change the route follows the sending settings; the neighbour and FDB
        // entries of the other settings' VXLAN are kept too (in place before senders switch
        // to VXLAN, still there while peers switch away from it).
        let sending = pool.sending();
        let route = match sending.encapsulate_to(in_subnet) {
            Encapsulation::None if !in_subnet => {
                unreachable.entry(pool.name.as_str()).or_default().push(block);
                None
            }
            Encapsulation::None => direct(node, peer, &block, out),
            Encapsulation::Ipip(_) => ipip(peer, sending, &block, out),
            Encapsulation::Vxlan(_) => vxlan(node, peer, sending, &block, pools, vtep, peer_mac, claims, out),
        };
        if let Some(other) = pool.also_receiving()
            && matches!(other.encapsulate_to(in_subnet), Encapsulation::Vxlan(_))
        {
            let mut quiet = Routing::default();
            vxlan(node, peer, other, &block, pools, vtep, peer_mac, claims, &mut quiet);
            out.neighbours.extend(quiet.neighbours);
            out.fdb.extend(quiet.fdb);
            if route.is_none() {
                out.warnings.extend(quiet.warnings);
            }
        }
        if let Some(kind) = route {
            claims.claim_block(block, &peer.name);
            out.routes.insert(block, Route { dst: block, kind });
        }
    }

    for (pool, blocks) in unreachable {
        let list: Vec<String> = blocks.iter().map(ToString::to_string).collect();
        out.warnings.push(format!(
            "pool {pool}: peer {} ({peer_ip}) is outside this node's subnet {my_subnet} and the pool has no \
             encapsulation, so its blocks {} are not routed (crossing subnets without encapsulation needs BGP, \
             which Trellis does not run; use ipipMode or vxlanMode CrossSubnet)",
            peer.name,
            list.join(", ")
        ));
    }
}

fn direct(node: &LocalNode, peer: &Peer, block: &IpNet, out: &mut Routing) -> Option<RouteKind> {
    let gateway = peer.address.addr();
    if !same_family(block, gateway) {
        out.warnings.push(format!(
            "block {block} of peer {} cannot be routed directly via its address {gateway} (other address family); \
             not routed",
            peer.name
        ));
        return None;
    }
    Some(RouteKind::Unicast { gateway, dev: node.uplink.clone(), onlink: false })
}

fn ipip(peer: &Peer, pool: &PoolView, block: &IpNet, out: &mut Routing) -> Option<RouteKind> {
    if !pool.tunnel_usable() {
        return None; // the pool's error says why
    }
    let gateway = peer.address.addr();
    if !gateway.is_ipv4() {
        out.warnings.push(format!(
            "block {block} of peer {} needs IPIP but the peer's address {gateway} is not IPv4; not routed",
            peer.name
        ));
        return None;
    }
    Some(RouteKind::Unicast { gateway, dev: IPIP_DEVICE.to_string(), onlink: true })
}

#[allow(clippy::too_many_arguments)]
fn vxlan(
    node: &LocalNode,
    peer: &Peer,
    pool: &PoolView,
    block: &IpNet,
    pools: &Pools,
    vtep: &LocalVtep,
    peer_mac: MacAddr,
    claims: &mut Claims,
    out: &mut Routing,
) -> Option<RouteKind> {
    if !pool.tunnel_usable() {
        return None; // the pool's error says why
    }
    let peer_ip = peer.address.addr();
    if peer_ip.is_ipv6() != node.address.addr().is_ipv6() {
        out.warnings.push(format!(
            "block {block} of peer {} needs VXLAN but the peer's address {peer_ip} is of another family than this \
             node's {} (one VXLAN device has one underlay family); not routed",
            peer.name,
            node.address.addr()
        ));
        return None;
    }
    let Some(tunnel_ip) = peer_tunnel_ip(peer, block, pools) else {
        out.warnings.push(format!("peer {} has no tunnel address for block {block}; not routed", peer.name));
        return None;
    };
    if let Err(owner) = Claims::claim(&mut claims.macs, peer_mac, &peer.name) {
        out.warnings.push(format!(
            "peer {} has VTEP MAC {peer_mac}, already used by {owner}; block {block} not routed",
            peer.name
        ));
        return None;
    }
    if let Err(owner) = Claims::claim(&mut claims.tunnel_ips, tunnel_ip, &peer.name) {
        out.warnings.push(format!(
            "peer {} has tunnel address {tunnel_ip}, already used by {owner}; block {block} not routed",
            peer.name
        ));
        return None;
    }
    out.neighbours.insert(Neighbour { dev: vtep.device.to_string(), ip: tunnel_ip, mac: peer_mac });
    out.fdb.insert(FdbEntry { dev: vtep.device.to_string(), mac: peer_mac, dst: peer_ip });
    Some(RouteKind::Unicast { gateway: tunnel_ip, dev: vtep.device.to_string(), onlink: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan `nested` replaces: every claim, in block order.
    fn scan<'a>(claims: &'a Claims, block: &IpNet, peer: &str) -> Option<(&'a IpNet, &'a String)> {
        claims.blocks.iter().find(|(b, owner)| owner.as_str() != peer && (b.contains(block) || block.contains(*b)))
    }

    #[test]
    fn nested_claims_are_found_like_a_scan_of_every_claim() {
        let vtep = LocalVtep { device: "vx", mac: MacAddr([2, 0, 0, 0, 0, 1]), tunnel_address: None };
        let mut claims = Claims::new(&vtep);
        let claimed = [
            ("a", "10.0.0.0/16"),
            ("b", "10.0.4.0/24"),
            ("c", "10.0.4.64/26"),
            ("a", "10.1.0.0/26"),
            ("d", "10.1.0.128/25"),
            ("e", "192.168.0.0/24"),
            ("f", "fd00::/64"),
            ("g", "fd00::40/122"),
        ];
        for (peer, net) in claimed {
            claims.claim_block(net.parse().unwrap(), peer);
        }
        let probes = [
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.4.0/24",
            "10.0.4.64/26",
            "10.0.4.128/26",
            "10.0.5.0/26",
            "10.1.0.0/24",
            "10.1.0.0/26",
            "10.1.0.192/26",
            "10.2.0.0/26",
            "0.0.0.0/0",
            "192.168.0.0/16",
            "192.168.1.0/24",
            "fd00::/56",
            "fd00::/122",
            "fd00::40/122",
            "fd01::/64",
            "::/0",
        ];
        for probe in probes {
            let block: IpNet = probe.parse().unwrap();
            for peer in ["a", "b", "c", "d", "e", "f", "g", "z"] {
                assert_eq!(claims.nested(&block, peer), scan(&claims, &block, peer), "{probe} for peer {peer}");
            }
        }
    }
}
