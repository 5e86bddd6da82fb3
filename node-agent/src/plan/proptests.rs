//! Property tests: random clusters checked against rules stated independently of the
//! planner's code.
//!
//! The generator is deliberately unkind: pools that overlap or share a CIDR, IPv4 and IPv6
//! pools, blocks of several sizes (/26, /27 inside a /26, host-sized /32 and /128) that repeat
//! on one node or on several peers, strays in no pool, peers in and out of this node's subnet
//! and with IPv6 addresses, explicit VTEP MACs and tunnel addresses that may clash, both CNI
//! plugins and every capability combination. Exact expectations are checked where the input
//! is unambiguous; where it is not (two claimants, clashing identities) the plan must still be
//! sound: only routes some claimant justifies, consistent neighbours and FDB entries, valid
//! CNI ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use serde_json::Value;
use trellis_api::EncapMode;

use super::*;
use crate::model::RouteKind;
use crate::snapshot::{CniSettings, LocalNode, Peer, Pool, VxlanSettings};

const MODES: [EncapMode; 3] = [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet];
const VX: &str = "vxlan.trellis";

/// Pool CIDRs to pick from: two disjoint IPv4 pools, one nested in the first, a duplicate of
/// the first, two IPv6 pools and one that contains every IPv4 pool (and the node addresses).
const POOL_CIDRS: [&str; 7] = [
    "10.244.0.0/16",
    "10.245.0.0/16",
    "10.244.0.0/20",
    "10.244.0.0/16",
    "fd00:244::/48",
    "fd00:245::/48",
    "10.0.0.0/8",
];

/// Block `index` of `region` at `size` (0: /26 or /122, 1: /27 or /123 — inside the first —,
/// 2: host-sized /32 or /128). Regions 0..=2 are IPv4 (10.244, 10.245, 10.246 — the last is
/// in no pool unless 10.0.0.0/8 is), 3 and 4 are IPv6 (fd00:244::, fd00:245::).
fn block(region: u8, index: u8, size: u8) -> IpNet {
    if region < 3 {
        let base = Ipv4Addr::new(10, 244 + region, index / 4, (index % 4) * 64);
        IpNet::V4(Ipv4Net::new(base, [26, 27, 32][usize::from(size)]).unwrap())
    } else {
        let base = Ipv6Addr::new(0xfd00, 0x244 + u16::from(region - 3), 0, 0, 0, 0, 0, u16::from(index) * 64);
        IpNet::V6(Ipv6Net::new(base, [122, 123, 128][usize::from(size)]).unwrap())
    }
}

/// Explicit VTEP MACs to pick from (index 0 = none); the last one is this node's derived MAC.
fn mac_choice(i: usize) -> Option<MacAddr> {
    match i {
        0 => None,
        1 => Some(MacAddr([2, 0, 0, 0, 0, 1])),
        2 => Some(MacAddr([2, 0, 0, 0, 0, 2])),
        _ => Some(MacAddr::for_node("me")),
    }
}

/// Explicit tunnel addresses to pick from (index 0 = none).
fn tunnel_choice(i: usize) -> Option<IpAddr> {
    ["", "10.244.0.1", "10.244.0.10", "10.245.1.0", "fd00:244::1"].get(i).and_then(|s| s.parse().ok())
}

#[derive(Clone, Debug)]
struct PoolSpec {
    cidr: usize,
    ipip: usize,
    vxlan: usize,
    nat: bool,
    disabled: bool,
}

#[derive(Clone, Debug)]
struct PeerSpec {
    in_subnet: bool,
    ipv6: bool,
    host: u8,
    mac: usize,
    tunnel: usize,
}

#[derive(Clone, Debug)]
struct Cluster {
    pools: Vec<PoolSpec>,
    peers: Vec<PeerSpec>,
    /// (region, index, size, owner: 0 = this node, k = peer k-1, beyond = nobody).
    blocks: Vec<(u8, u8, u8, usize)>,
    node_mac: usize,
    node_tunnel: usize,
    bridge: bool,
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    let pool = (
        prop::sample::select(vec![0usize, 0, 1, 1, 2, 3, 4, 4, 5, 6]),
        0..3usize,
        0..3usize,
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(cidr, ipip, vxlan, nat, disabled)| PoolSpec { cidr, ipip, vxlan, nat, disabled });
    let peer = (any::<bool>(), prop::bool::weighted(0.15), 20..40u8, 0..4usize, 0..5usize).prop_map(
        |(in_subnet, ipv6, host, mac, tunnel)| PeerSpec {
            in_subnet,
            ipv6,
            host,
            mac: if mac == 0 || host % 3 != 0 { 0 } else { mac },
            tunnel: if host % 4 != 0 { 0 } else { tunnel },
        },
    );
    let block = (0..5u8, 0..8u8, prop::sample::select(vec![0u8, 0, 0, 0, 1, 2]), 0..8usize);
    (
        prop::collection::vec(pool, 1..=4),
        prop::collection::vec(peer, 0..6),
        prop::collection::vec(block, 0..24),
        prop::sample::select(vec![0usize, 0, 0, 1]),
        prop::sample::select(vec![0usize, 0, 0, 1, 2, 4]),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(pools, peers, blocks, node_mac, node_tunnel, bridge)| Cluster {
            pools,
            peers,
            blocks,
            node_mac,
            node_tunnel,
            bridge,
        })
}

fn build(c: &Cluster) -> Snapshot {
    let mut snap = Snapshot {
        node: LocalNode {
            name: "me".into(),
            address: "10.0.1.11/24".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_mtu: Some(1500),
            blocks: vec![],
            vtep_mac: mac_choice(c.node_mac),
            tunnel_address: tunnel_choice(c.node_tunnel),
        },
        peers: c
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| Peer {
                name: format!("peer{i}"),
                address: if p.ipv6 {
                    format!("fd00:1::{}/64", p.host).parse().unwrap()
                } else {
                    format!("10.0.{}.{}/24", if p.in_subnet { 1 } else { 2 }, p.host).parse().unwrap()
                },
                vtep_mac: mac_choice(p.mac),
                tunnel_address: tunnel_choice(p.tunnel),
                blocks: vec![],
            })
            .collect(),
        pools: c
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| Pool {
                name: format!("pool{i}"),
                cidr: POOL_CIDRS[p.cidr].parse().unwrap(),
                ipip_mode: MODES[p.ipip],
                vxlan_mode: MODES[p.vxlan],
                nat_outgoing: p.nat,
                disabled: p.disabled,
                block_size: None,
                allowed_uses: None,
                transition: None,
            })
            .collect(),
        mtu: None,
        vxlan: VxlanSettings::default(),
        cni: CniSettings { plugin: if c.bridge { CniPlugin::Bridge } else { CniPlugin::Ptp }, ..Default::default() },
    };
    for (region, index, size, owner) in &c.blocks {
        let b = block(*region, *index, *size);
        match owner {
            0 => snap.node.blocks.push(b),
            k if k - 1 < snap.peers.len() => snap.peers[k - 1].blocks.push(b),
            _ => {}
        }
    }
    snap
}

/// The rules, restated from docs/snapshot.md without the planner's code.
struct Rules<'a> {
    snap: &'a Snapshot,
    caps: Capabilities,
}

impl Rules<'_> {
    /// The node address is IPv4, so an IPv6 pool is only carried by VXLAN Always.
    fn programmed(p: &Pool) -> bool {
        !(p.ipip_mode.is_enabled() && (p.vxlan_mode.is_enabled() || p.cidr.addr().is_ipv6()))
            && (p.cidr.addr().is_ipv4() || (!p.ipip_mode.is_enabled() && p.vxlan_mode == EncapMode::Always))
    }

    /// A block a tunnel address may come from: its pool is programmed (and allows Tunnel).
    fn tunnel_block(&self, b: &IpNet) -> bool {
        self.owner(&b.trunc()).is_some_and(|p| Self::programmed(p) && p.allows_tunnel())
    }

    /// The most specific pool containing `b`; of equals the first by name.
    fn owner(&self, b: &IpNet) -> Option<&Pool> {
        let mut pools: Vec<&Pool> = self.snap.pools.iter().filter(|p| p.cidr.trunc().contains(b)).collect();
        pools.sort_by(|x, y| y.cidr.prefix_len().cmp(&x.cidr.prefix_len()).then(x.name.cmp(&y.name)));
        pools.first().copied()
    }

    fn peer_mac(p: &Peer) -> MacAddr {
        p.vtep_mac.unwrap_or_else(|| MacAddr::for_node(&p.name))
    }

    /// A peer's tunnel address for blocks of `b`'s family: explicit if of that family, else
    /// the network address of its lowest block of that family.
    fn peer_tunnel(&self, p: &Peer, b: &IpNet) -> Option<IpAddr> {
        let v6 = b.addr().is_ipv6();
        match p.tunnel_address {
            Some(a) if a.is_ipv6() == v6 => Some(a),
            _ => {
                p.blocks.iter().filter(|x| x.addr().is_ipv6() == v6 && self.tunnel_block(x)).min().map(|x| x.network())
            }
        }
    }

    fn node_mac(&self) -> MacAddr {
        self.snap.node.vtep_mac.unwrap_or_else(|| MacAddr::for_node(&self.snap.node.name))
    }

    fn node_tunnel(&self) -> Option<IpAddr> {
        self.snap
            .node
            .tunnel_address
            .or_else(|| self.snap.node.blocks.iter().filter(|b| self.tunnel_block(b)).min().map(|b| b.network()))
    }

    /// No two nodes share a VTEP MAC or (per family) a tunnel address.
    fn identities_distinct(&self) -> bool {
        let mut macs = vec![self.node_mac()];
        macs.extend(self.snap.peers.iter().map(Self::peer_mac));
        let mut tunnels: Vec<IpAddr> = self.node_tunnel().into_iter().collect();
        for p in &self.snap.peers {
            for family in ["0.0.0.0/0", "::/0"] {
                tunnels.extend(self.peer_tunnel(p, &family.parse().unwrap()));
            }
        }
        fn distinct<T: Ord>(v: &[T]) -> bool {
            v.iter().collect::<BTreeSet<_>>().len() == v.len()
        }
        distinct(&macs) && distinct(&tunnels)
    }

    /// The route a lone claimant `peer` should get for its block `b`, ignoring identity clashes.
    fn expected(&self, peer: &Peer, b: &IpNet) -> Option<RouteKind> {
        let pool = self.owner(b)?;
        if !Self::programmed(pool) {
            return None;
        }
        let node = &self.snap.node;
        let peer_ip = peer.address.addr();
        let in_subnet = node.address.trunc().contains(&peer_ip);
        let (ipip, vxlan) = (pool.ipip_mode, pool.vxlan_mode);
        let mode = if ipip.is_enabled() { ipip } else { vxlan };
        let direct = mode == EncapMode::Never || (mode == EncapMode::CrossSubnet && in_subnet);
        if direct {
            // Needs a gateway of the block's family inside this node's subnet.
            return (in_subnet && peer_ip.is_ipv6() == b.addr().is_ipv6()).then(|| RouteKind::Unicast {
                gateway: peer_ip,
                dev: "eth0".into(),
                onlink: false,
            });
        }
        if ipip.is_enabled() {
            return (self.caps.ipip && peer_ip.is_ipv4()).then(|| RouteKind::Unicast {
                gateway: peer_ip,
                dev: "tunl0".into(),
                onlink: true,
            });
        }
        if !self.caps.vxlan || peer_ip.is_ipv6() != node.address.addr().is_ipv6() {
            return None;
        }
        Some(RouteKind::Unicast { gateway: self.peer_tunnel(peer, b)?, dev: VX.into(), onlink: true })
    }
}

/// host-local ranges of the conflist: (subnet, start, end, gateway) per set.
fn range_sets(conflist: &Value) -> Vec<Vec<(IpNet, IpAddr, IpAddr, IpAddr)>> {
    conflist["plugins"][0]["ipam"]["ranges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|set| {
            set.as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let f = |k: &str| r[k].as_str().unwrap().to_string();
                    (
                        f("subnet").parse().unwrap(),
                        f("rangeStart").parse().unwrap(),
                        f("rangeEnd").parse().unwrap(),
                        f("gateway").parse().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

fn num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// How many addresses of `b` a pod can get: all but the network address, the gateway, the
/// IPv4 broadcast address and the node's tunnel address.
fn pod_addresses(b: &IpNet, tunnel: Option<IpAddr>) -> u128 {
    let bits = u32::from(b.max_prefix_len() - b.prefix_len());
    if bits < 2 {
        return 0;
    }
    let size = if bits >= 128 { u128::MAX } else { 1u128 << bits };
    let not_pods = if b.addr().is_ipv4() { 3 } else { 2 };
    let tunnel_in_range = tunnel.is_some_and(|t| {
        b.contains(&t) && num(t) >= num(b.network()) + 2 && (b.addr().is_ipv6() || t != b.broadcast())
    });
    size - not_pods - u128::from(tunnel_in_range)
}

/// A deterministic Fisher-Yates shuffle driven by `seed` (splitmix64).
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn routing_rules_hold(c in cluster_strategy(), ipip in any::<bool>(), vxlan in any::<bool>()) {
        let snap = build(&c);
        let caps = Capabilities { ipip, vxlan };
        let rules = Rules { snap: &snap, caps };
        let d = plan(&snap, caps).unwrap();
        let ptp = snap.cni.plugin == CniPlugin::Ptp;
        let own: BTreeSet<IpNet> = snap.node.blocks.iter().map(IpNet::trunc).collect();

        // Own blocks: a blackhole (ptp only) when their pool is programmed, nothing else.
        for b in &own {
            let programmed = rules.owner(b).is_some_and(Rules::programmed);
            prop_assert_eq!(d.routes.get(b).map(|r| &r.kind), (programmed && ptp).then_some(&RouteKind::Blackhole), "own {}", b);
        }
        for (dst, r) in &d.routes {
            if r.kind != RouteKind::Blackhole {
                prop_assert!(!own.iter().any(|o| o.contains(dst) || dst.contains(o)), "route into own block {}", dst);
            }
        }

        // Peer blocks: who lists each one.
        let mut claimants: BTreeMap<IpNet, Vec<&Peer>> = BTreeMap::new();
        for p in &snap.peers {
            for b in p.blocks.iter().map(IpNet::trunc).collect::<BTreeSet<_>>() {
                claimants.entry(b).or_default().push(p);
            }
        }
        let clean = rules.identities_distinct();
        for (b, who) in &claimants {
            let route = d.routes.get(b).map(|r| r.kind.clone());
            if own.iter().any(|o| o.contains(b) || b.contains(o)) {
                continue; // checked above
            }
            let overlaps_other_peer = claimants.iter().any(|(x, xs)| x != b && (x.contains(b) || b.contains(x)) && xs.iter().any(|p| !who.iter().any(|w| w.name == p.name)));
            let options: Vec<Option<RouteKind>> = who.iter().map(|p| rules.expected(p, b)).collect();
            if clean && who.len() == 1 && !overlaps_other_peer {
                // Unambiguous: exactly the rule's route.
                prop_assert_eq!(&route, &options[0], "block {} of {}", b, &who[0].name);
            } else if let Some(kind) = &route {
                // Ambiguous: still only a route some claimant justifies.
                prop_assert!(options.contains(&Some(kind.clone())), "block {} routed as {:?}, claimants allow {:?}", b, kind, options);
            }
        }
        for dst in d.routes.keys() {
            prop_assert!(own.contains(dst) || claimants.contains_key(dst), "route to unknown block {}", dst);
        }

        // Neighbours and FDB entries: exactly what the VXLAN routes use, never ambiguous.
        let gateways: BTreeSet<IpAddr> = d.routes.values().filter_map(|r| match &r.kind {
            RouteKind::Unicast { gateway, dev, .. } if dev == VX => Some(*gateway),
            _ => None,
        }).collect();
        let neigh_ips: BTreeSet<IpAddr> = d.neighbours.iter().map(|n| n.ip).collect();
        prop_assert_eq!(&neigh_ips, &gateways);
        prop_assert_eq!(neigh_ips.len(), d.neighbours.len(), "one MAC per neighbour IP");
        let fdb_macs: BTreeSet<MacAddr> = d.fdb.iter().map(|f| f.mac).collect();
        prop_assert_eq!(fdb_macs.len(), d.fdb.len(), "one destination per MAC");
        prop_assert_eq!(&fdb_macs, &d.neighbours.iter().map(|n| n.mac).collect::<BTreeSet<_>>());
        prop_assert!(!fdb_macs.contains(&rules.node_mac()), "a peer entry with this node's MAC");
        if let Some(t) = rules.node_tunnel() {
            prop_assert!(!neigh_ips.contains(&t), "a neighbour with this node's tunnel address");
        }
        for f in &d.fdb {
            let peer = snap.peers.iter().find(|p| Rules::peer_mac(p) == f.mac && p.address.addr() == f.dst);
            prop_assert!(peer.is_some(), "FDB entry {:?} matches no peer", f);
        }

        // CNI: the ranges are the allocatable own blocks, valid for host-local.
        let allocatable: Vec<IpNet> = own
            .iter()
            .filter(|b| rules.owner(b).is_some_and(|p| Rules::programmed(p) && !p.disabled))
            .copied()
            .collect();
        let tunnel = rules.node_tunnel();
        let expected: BTreeSet<IpNet> = allocatable
            .iter()
            .filter(|b| !allocatable.iter().any(|o| o != *b && o.contains(*b)))
            .filter(|b| pod_addresses(b, tunnel) > 0)
            .copied()
            .collect();
        let sets = range_sets(&d.cni.conflist);
        let subnets: BTreeSet<IpNet> = sets.iter().flatten().map(|r| r.0).collect();
        prop_assert_eq!(&subnets, &expected);
        prop_assert_eq!(d.cni.conflist.is_null(), expected.is_empty());
        prop_assert_eq!(d.cni.unavailable.is_some(), expected.is_empty(), "{:?}", d.cni.unavailable);
        for set in &sets {
            prop_assert!(set.iter().all(|r| r.0.addr().is_ipv4() == set[0].0.addr().is_ipv4()), "one family per set");
            for (i, (subnet, start, end, gw)) in set.iter().enumerate() {
                prop_assert!(subnet.contains(start) && subnet.contains(end) && start <= end);
                prop_assert_eq!(num(*gw), num(subnet.network()) + 1);
                prop_assert!(*start > *gw && *start != subnet.network());
                if let Some(t) = tunnel {
                    prop_assert!(!(t >= *start && t <= *end), "tunnel address {} handed out by {:?}", t, (start, end));
                }
                for (_, s2, e2, _) in &set[i + 1..] {
                    prop_assert!(end < s2 || e2 < start, "overlapping ranges {:?}", set);
                }
            }
        }
        if !d.cni.conflist.is_null() {
            prop_assert_eq!(d.cni.conflist["plugins"][0]["type"].as_str(), Some(if ptp { "ptp" } else { "bridge" }));
        }

        // NAT: masquerade exactly the programmed NAT pools; every pool is a non-NAT destination.
        let nat: BTreeSet<IpNet> = snap.pools.iter().filter(|p| Rules::programmed(p) && p.nat_outgoing).map(|p| p.cidr.trunc()).collect();
        let all: BTreeSet<IpNet> = snap.pools.iter().map(|p| p.cidr.trunc()).collect();
        prop_assert_eq!(&d.nat.nat_sources, &nat.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(&d.nat.all_pools, &all.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn planning_ignores_the_order_of_every_list(c in cluster_strategy(), seed in any::<u64>(), ipip in any::<bool>()) {
        let snap = build(&c);
        let caps = Capabilities { ipip, vxlan: true };
        let d = plan(&snap, caps).unwrap();
        // Same content, every list shuffled: the same plan, byte for byte.
        let mut shuffled = snap.clone();
        let mut seed = seed;
        shuffle(&mut shuffled.peers, &mut seed);
        shuffle(&mut shuffled.pools, &mut seed);
        shuffle(&mut shuffled.node.blocks, &mut seed);
        for p in &mut shuffled.peers {
            shuffle(&mut p.blocks, &mut seed);
        }
        let again = plan(&shuffled, caps).unwrap();
        prop_assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&d).unwrap());
        prop_assert_eq!(again, d);
    }
}
