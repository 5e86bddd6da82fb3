//! Property tests: random clusters (peers in and out of this node's subnet, pools with random
//! modes, blocks scattered over nodes) checked against the routing rules stated independently
//! of the planner's code.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use trellis_api::EncapMode;

use super::*;
use crate::desired::RouteKind;
use crate::snapshot::{CniSettings, LocalNode, Peer, Pool, VxlanSettings};

const MODES: [EncapMode; 3] = [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet];

/// Pool `pool`'s CIDR: 10.(244+pool).0.0/16, or fd00:(244+pool)::/48 for an IPv6 pool.
fn pool_cidr(pool: u8, v6: bool) -> IpNet {
    if v6 {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfd00, 244 + u16::from(pool), 0, 0, 0, 0, 0, 0), 48).unwrap())
    } else {
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 244 + pool, 0, 0), 16).unwrap())
    }
}

/// Block `index` of pool `pool`: a /26 (IPv4) or /122 (IPv6).
fn block(pool: u8, v6: bool, index: u8) -> IpNet {
    if v6 {
        let base = Ipv6Addr::new(0xfd00, 244 + u16::from(pool), 0, 0, 0, 0, 0, u16::from(index) * 64);
        IpNet::V6(Ipv6Net::new(base, 122).unwrap())
    } else {
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 244 + pool, index / 4, (index % 4) * 64), 26).unwrap())
    }
}

/// (ipip mode, vxlan mode, natOutgoing, disabled, IPv6) for up to three pools.
fn pools_strategy() -> impl Strategy<Value = Vec<(usize, usize, bool, bool, bool)>> {
    prop::collection::vec((0..3usize, 0..3usize, any::<bool>(), any::<bool>(), prop::bool::weighted(0.25)), 1..=3)
}

/// Peers: (in my subnet?, host byte).
fn peers_strategy() -> impl Strategy<Value = Vec<(bool, u8)>> {
    prop::collection::vec((any::<bool>(), 20..250u8), 0..6)
}

/// Block slots: (pool index, block index, owner: 0 = this node, k = peer k-1, beyond = stray).
fn blocks_strategy() -> impl Strategy<Value = Vec<(u8, u8, usize)>> {
    prop::collection::vec((0..4u8, 0..32u8, 0..8usize), 0..24)
}

fn build(pools: &[(usize, usize, bool, bool, bool)], peers: &[(bool, u8)], blocks: &[(u8, u8, usize)]) -> Snapshot {
    let mut snap = Snapshot {
        node: LocalNode {
            name: "me".into(),
            address: "10.0.1.11/24".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_mtu: Some(1500),
            blocks: vec![],
            vtep_mac: None,
            tunnel_address: None,
        },
        peers: peers
            .iter()
            .enumerate()
            .map(|(i, (inside, host))| Peer {
                name: format!("peer{i}"),
                address: format!("10.0.{}.{host}/24", if *inside { 1 } else { 2 }).parse().unwrap(),
                vtep_mac: None,
                tunnel_address: None,
                blocks: vec![],
            })
            .collect(),
        pools: pools
            .iter()
            .enumerate()
            .map(|(i, (ipip, vxlan, nat, disabled, v6))| Pool {
                name: format!("pool{i}"),
                cidr: pool_cidr(i as u8, *v6),
                ipip_mode: MODES[*ipip],
                vxlan_mode: MODES[*vxlan],
                nat_outgoing: *nat,
                disabled: *disabled,
                block_size: Some(26),
            })
            .collect(),
        mtu: None,
        vxlan: VxlanSettings::default(),
        cni: CniSettings::default(),
    };
    // Pool index 3 never exists: those blocks are strays. Each slot has one owner at most.
    let mut taken = BTreeSet::new();
    for (pool, index, owner) in blocks {
        if !taken.insert((*pool, *index)) {
            continue;
        }
        let v6 = pools.get(usize::from(*pool)).is_some_and(|p| p.4);
        let b = block(*pool, v6, *index);
        match owner {
            0 => snap.node.blocks.push(b),
            k if k - 1 < snap.peers.len() => snap.peers[k - 1].blocks.push(b),
            _ => {}
        }
    }
    snap
}

fn is_direct(kind: &RouteKind, peer: &Peer) -> bool {
    matches!(kind, RouteKind::Unicast { gateway, dev, onlink: false } if dev == "eth0" && *gateway == peer.address.addr())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn routing_rules_hold(
        pools in pools_strategy(),
        peers in peers_strategy(),
        blocks in blocks_strategy(),
        ipip in any::<bool>(),
        vxlan in any::<bool>(),
    ) {
        let snap = build(&pools, &peers, &blocks);
        let caps = Capabilities { ipip, vxlan };
        let d = plan(&snap, caps).unwrap();
        let subnet = snap.node.address.trunc();
        let own: BTreeSet<IpNet> = snap.node.blocks.iter().copied().collect();

        let mut expected_routes = 0;
        for b in &own {
            let pool = snap.pools.iter().find(|p| p.cidr.contains(b));
            let programmed = pool.is_some_and(|p| {
                !(p.ipip_mode.is_enabled() && (p.vxlan_mode.is_enabled() || p.cidr.addr().is_ipv6()))
            });
            // Own blocks: a blackhole, and nothing else ever targets them.
            prop_assert_eq!(d.routes.get(b).map(|r| &r.kind), programmed.then_some(&RouteKind::Blackhole));
            expected_routes += usize::from(programmed);
        }
        for (dst, r) in &d.routes {
            if r.kind != RouteKind::Blackhole {
                prop_assert!(!own.iter().any(|o| o.contains(dst) || dst.contains(o)), "route into own block {}", dst);
            }
        }

        let mut vxlan_gateways = BTreeSet::new();
        let mut vxlan_peers = BTreeSet::new();
        for peer in &snap.peers {
            let in_subnet = subnet.contains(&peer.address.addr());
            for b in &peer.blocks {
                let Some(pool) = snap.pools.iter().find(|p| p.cidr.contains(b)) else {
                    prop_assert!(!d.routes.contains_key(b));
                    continue;
                };
                let (ip_mode, vx_mode) = (pool.ipip_mode, pool.vxlan_mode);
                let route = d.routes.get(b).map(|r| &r.kind);
                let v6 = b.addr().is_ipv6();
                if ip_mode.is_enabled() && (vx_mode.is_enabled() || v6) {
                    prop_assert!(route.is_none(), "invalid pool programmed");
                    continue;
                }
                let mode = if ip_mode.is_enabled() { ip_mode } else { vx_mode };
                let tunnel = ip_mode.is_enabled() || vx_mode.is_enabled();
                let direct = !tunnel || (mode == EncapMode::CrossSubnet && in_subnet);
                let tunnel_ok = if ip_mode.is_enabled() { ipip } else { vxlan };
                // Direct routes need a gateway of the block's family (the peers are IPv4 nodes);
                // VXLAN carries IPv6 pools over the IPv4 underlay.
                let reachable = if direct { in_subnet && !v6 } else { tunnel_ok };
                // Every reachable peer block has exactly one route (routes are keyed by block).
                prop_assert_eq!(route.is_some(), reachable, "block {} of {}", b, &peer.name);
                expected_routes += usize::from(reachable);
                let Some(kind) = route else { continue };
                // CrossSubnet: direct iff the peer is in my subnet.
                if mode == EncapMode::CrossSubnet {
                    prop_assert_eq!(is_direct(kind, peer), in_subnet);
                }
                if direct {
                    prop_assert!(is_direct(kind, peer));
                } else if ip_mode.is_enabled() {
                    prop_assert_eq!(kind, &RouteKind::Unicast { gateway: peer.address.addr(), dev: "tunl0".into(), onlink: true });
                } else {
                    let RouteKind::Unicast { gateway, dev, onlink } = kind else { panic!("{kind:?}") };
                    prop_assert!(*onlink && dev == "vxlan.trellis");
                    vxlan_gateways.insert(*gateway);
                    vxlan_peers.insert(peer.address.addr());
                }
            }
        }
        prop_assert_eq!(d.routes.len(), expected_routes);
        // Neighbours and FDB entries exist iff a VXLAN route uses them.
        let neigh: BTreeSet<IpAddr> = d.neighbours.iter().map(|n| n.ip).collect();
        prop_assert_eq!(neigh, vxlan_gateways);
        let fdb: BTreeSet<IpAddr> = d.fdb.iter().map(|f| f.dst).collect();
        prop_assert_eq!(fdb, vxlan_peers);
        // The CNI ranges are exactly the own blocks of enabled, programmed pools.
        let allocatable: BTreeSet<String> = own
            .iter()
            .filter(|b| {
                snap.pools.iter().find(|p| p.cidr.contains(*b)).is_some_and(|p| {
                    !p.disabled && !(p.ipip_mode.is_enabled() && (p.vxlan_mode.is_enabled() || p.cidr.addr().is_ipv6()))
                })
            })
            .map(ToString::to_string)
            .collect();
        let ranges: BTreeSet<String> = d.cni.conflist["plugins"][0]["ipam"]["ranges"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|set| set.as_array().unwrap().iter().map(|r| r["subnet"].as_str().unwrap().to_string()))
            .collect();
        prop_assert_eq!(ranges, allocatable);
        // The NAT plan is sorted and covers exactly the NAT-enabled programmed pools.
        prop_assert!(d.nat.nat_sources.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(d.nat.nat_sources.iter().all(|c| d.nat.all_pools.contains(c)));
    }

    #[test]
    fn planning_is_deterministic(
        pools in pools_strategy(),
        peers in peers_strategy(),
        blocks in blocks_strategy(),
        seed in any::<u64>(),
    ) {
        let snap = build(&pools, &peers, &blocks);
        let d = plan(&snap, Capabilities::default()).unwrap();
        prop_assert_eq!(&plan(&snap, Capabilities::default()).unwrap(), &d);
        // Same content, lists in another order: same plan, byte for byte.
        let mut shuffled = snap.clone();
        let rot = |len: usize| if len == 0 { 0 } else { (seed as usize) % len };
        let n = rot(shuffled.peers.len());
        shuffled.peers.rotate_left(n);
        shuffled.pools.reverse();
        let n = rot(shuffled.node.blocks.len());
        shuffled.node.blocks.rotate_left(n);
        for p in &mut shuffled.peers {
            p.blocks.reverse();
        }
        let again = plan(&shuffled, Capabilities::default()).unwrap();
        prop_assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&d).unwrap());
    }
}
