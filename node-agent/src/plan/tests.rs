//! Planner unit tests: one scenario per mode and per rule, on small hand-made clusters.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use trellis_api::EncapMode::{self, Always, CrossSubnet, Never};

use super::*;
use crate::model::{Encapsulation, FdbEntry, Neighbour, Phase, Route, RouteKind};
use crate::snapshot::{CniSettings, LocalNode, Peer, Pool, VxlanSettings};

const VX: &str = "vxlan.trellis";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, cidr: &str, ipip: EncapMode, vxlan: EncapMode) -> Pool {
    Pool {
        name: name.into(),
        cidr: net(cidr),
        ipip_mode: ipip,
        vxlan_mode: vxlan,
        nat_outgoing: false,
        disabled: false,
        block_size: None,
        allowed_uses: None,
        transition: None,
    }
}

fn peer(name: &str, addr: &str, blocks: &[&str]) -> Peer {
    Peer {
        name: name.into(),
        address: net(addr),
        vtep_mac: None,
        tunnel_address: None,
        blocks: blocks.iter().map(|b| net(b)).collect(),
    }
}

/// node1 at 10.0.1.11/24 with block 10.244.0.0/26; node2 in the same subnet, node3 in another.
fn cluster(pools: Vec<Pool>) -> Snapshot {
    Snapshot {
        node: LocalNode {
            name: "node1".into(),
            address: net("10.0.1.11/24"),
            uplink: "eth0".into(),
            uplink_mtu: Some(1500),
            blocks: vec![net("10.244.0.0/26")],
            vtep_mac: None,
            tunnel_address: None,
        },
        peers: vec![
            peer("node2", "10.0.1.12/24", &["10.244.0.64/26"]),
            peer("node3", "10.0.2.13/24", &["10.244.0.128/26"]),
        ],
        pools,
        mtu: None,
        vxlan: VxlanSettings::default(),
        cni: CniSettings::default(),
    }
}

fn one_pool(ipip: EncapMode, vxlan: EncapMode) -> Snapshot {
    cluster(vec![pool("default", "10.244.0.0/16", ipip, vxlan)])
}

fn route(d: &DesiredState, dst: &str) -> Option<RouteKind> {
    d.routes.get(&net(dst)).map(|r| r.kind.clone())
}

fn via(gateway: &str, dev: &str, onlink: bool) -> Option<RouteKind> {
    Some(RouteKind::Unicast { gateway: ip(gateway), dev: dev.into(), onlink })
}

fn plan_ok(s: &Snapshot) -> DesiredState {
    plan(s, Capabilities::default()).unwrap()
}

#[test]
fn vxlan_always_tunnels_to_every_peer() {
    let d = plan_ok(&one_pool(Never, Always));
    assert_eq!(route(&d, "10.244.0.0/26"), Some(RouteKind::Blackhole));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.244.0.64", VX, true));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.128", VX, true));
    assert_eq!(d.routes.len(), 3);
    let (m2, m3) = (MacAddr::for_node("node2"), MacAddr::for_node("node3"));
    assert_eq!(
        d.neighbours,
        vec![
            Neighbour { dev: VX.into(), ip: ip("10.244.0.64"), mac: m2 },
            Neighbour { dev: VX.into(), ip: ip("10.244.0.128"), mac: m3 },
        ]
    );
    let mut fdb = vec![
        FdbEntry { dev: VX.into(), mac: m2, dst: ip("10.0.1.12") },
        FdbEntry { dev: VX.into(), mac: m3, dst: ip("10.0.2.13") },
    ];
    fdb.sort();
    assert_eq!(d.fdb, fdb);
    let v = d.vxlan.as_ref().unwrap();
    assert_eq!((v.name.as_str(), v.vni, v.port, v.mtu), (VX, 4096, 4789, 1450));
    assert_eq!(v.mac, MacAddr::for_node("node1"));
    assert_eq!(v.local, ip("10.0.1.11"));
    assert_eq!(v.uplink, "eth0");
    assert_eq!(v.address, Some(ip("10.244.0.0")));
    assert!(d.ipip.is_none());
    assert_eq!(d.mtu, 1450);
    assert_eq!(d.cni.conflist["plugins"][0]["mtu"], 1450);
    assert_eq!(d.pools[0].encapsulation, Encapsulation::Vxlan(Always));
    assert_eq!(d.pools[0].error, None);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn vxlan_crosssubnet_goes_direct_inside_the_subnet() {
    let d = plan_ok(&one_pool(Never, CrossSubnet));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.128", VX, true));
    assert_eq!(d.neighbours.len(), 1, "only the tunnelled peer needs a neighbour");
    assert_eq!(d.neighbours[0].ip, ip("10.244.0.128"));
    assert_eq!(d.fdb.len(), 1);
    assert_eq!(d.fdb[0].dst, ip("10.0.2.13"));
    assert!(d.vxlan.is_some(), "the device exists to receive from other subnets");
    assert_eq!(d.mtu, 1450);
}

#[test]
fn ipip_always_routes_onlink_via_tunl0() {
    let d = plan_ok(&one_pool(Always, Never));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "tunl0", true));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.0.2.13", "tunl0", true));
    let t = d.ipip.as_ref().unwrap();
    assert_eq!(t.mtu, 1480);
    assert_eq!(t.address, Some("10.244.0.0".parse().unwrap()));
    assert!(d.vxlan.is_none());
    assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    assert_eq!(d.mtu, 1480);
}

#[test]
fn ipip_crosssubnet_tunnels_only_across_subnets() {
    let d = plan_ok(&one_pool(CrossSubnet, Never));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.0.2.13", "tunl0", true));
    assert!(d.ipip.is_some());
}

#[test]
fn no_encapsulation_cannot_cross_subnets() {
    let d = plan_ok(&one_pool(Never, Never));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.0.128/26"), None);
    assert!(d.ipip.is_none() && d.vxlan.is_none());
    assert_eq!(d.mtu, 1500);
    assert_eq!(d.warnings.len(), 1);
    let w = &d.warnings[0];
    assert!(w.contains("pool default") && w.contains("node3") && w.contains("10.244.0.128/26"), "{w}");
}

#[test]
fn disabled_pool_stays_routed_and_natted_but_allocates_nothing() {
    let mut s = one_pool(Never, Always);
    s.pools[0].disabled = true;
    s.pools[0].nat_outgoing = true;
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.0/26"), Some(RouteKind::Blackhole));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.244.0.64", VX, true));
    assert_eq!(d.nat.nat_sources, vec![net("10.244.0.0/16")]);
    assert!(d.pools[0].disabled);
    assert!(d.cni.conflist.is_null(), "no enabled block, no conflist");
    let why = d.cni.unavailable.as_deref().expect("a reason for the missing conflist");
    assert!(why.contains("10.244.0.0/26: pool default is disabled") && why.contains("removed"), "{why}");

    // With a second, enabled pool only the enabled pool's block is allocatable.
    s.pools.push(pool("new", "10.245.0.0/16", Never, Always));
    s.node.blocks.push(net("10.245.0.0/26"));
    let d = plan_ok(&s);
    let ranges = &d.cni.conflist["plugins"][0]["ipam"]["ranges"];
    assert_eq!(
        ranges,
        &serde_json::json!([[{
            "subnet": "10.245.0.0/26", "rangeStart": "10.245.0.2", "rangeEnd": "10.245.0.62", "gateway": "10.245.0.1"
        }]])
    );
    assert_eq!(d.cni.unavailable, None);
}

#[test]
fn a_node_without_blocks_has_no_conflist_and_says_why() {
    let mut s = one_pool(Never, Always);
    s.node.blocks.clear();
    let d = plan_ok(&s);
    assert!(d.cni.conflist.is_null());
    assert!(d.cni.unavailable.as_deref().unwrap().contains("it has no blocks"), "{:?}", d.cni.unavailable);
}

#[test]
fn explicit_tunnel_address_is_never_handed_to_a_pod() {
    let mut s = one_pool(Never, Always);
    s.node.tunnel_address = Some(ip("10.244.0.10"));
    let d = plan_ok(&s);
    assert_eq!(d.vxlan.as_ref().unwrap().address, Some(ip("10.244.0.10")));
    let set = &d.cni.conflist["plugins"][0]["ipam"]["ranges"][0];
    let spans: Vec<(&str, &str)> = set
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rangeStart"].as_str().unwrap(), r["rangeEnd"].as_str().unwrap()))
        .collect();
    assert_eq!(spans, [("10.244.0.2", "10.244.0.9"), ("10.244.0.11", "10.244.0.62")]);
}

#[test]
fn host_sized_blocks_are_warnings_not_panics() {
    let mut s = cluster(vec![pool("all4", "0.0.0.0/0", Never, Always), pool("all6", "::/0", Never, Always)]);
    s.node.blocks = vec![net("0.0.0.0/32"), net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), net("10.244.0.0/32")];
    s.peers = vec![peer("node2", "10.0.1.12/24", &["10.244.0.64/32"])];
    let d = plan_ok(&s);
    assert!(d.cni.conflist.is_null());
    assert_eq!(
        d.warnings.iter().filter(|w| w.contains("no room for a gateway and a pod")).count(),
        3,
        "{:#?}",
        d.warnings
    );
    assert!(d.cni.unavailable.as_deref().unwrap().contains("no room for pods"), "{:?}", d.cni.unavailable);
    assert_eq!(route(&d, "10.244.0.64/32"), via("10.244.0.64", VX, true));
}

#[test]
fn overlapping_pools_are_warned_about_and_the_most_specific_wins() {
    let mut s = cluster(vec![
        pool("wide", "10.0.0.0/8", Never, Never),
        pool("b-same", "10.244.0.0/16", Never, Always),
        pool("a-same", "10.244.0.0/16", Never, CrossSubnet),
    ]);
    s.pools[1].disabled = true;
    let d = plan_ok(&s);
    // a-same wins the tie by name: CrossSubnet, and it is enabled, so the block is allocatable.
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.128", VX, true));
    assert!(!d.cni.conflist.is_null());
    let overlap: Vec<&String> =
        d.warnings.iter().filter(|w| w.contains("overlaps") || w.contains("same CIDR")).collect();
    assert_eq!(overlap.len(), 3, "{:#?}", d.warnings);
    assert!(
        overlap
            .iter()
            .any(|w| w.contains("a-same and b-same have the same CIDR 10.244.0.0/16; its blocks belong to a-same"))
    );
}

#[test]
fn several_pools_each_use_their_own_mode() {
    let mut s = cluster(vec![
        pool("a-ipip", "10.244.0.0/16", Always, Never),
        pool("b-vxlan", "10.245.0.0/16", Never, CrossSubnet),
        pool("c-none", "10.246.0.0/16", Never, Never),
    ]);
    s.node.blocks = vec![net("10.244.0.0/26"), net("10.245.0.0/26"), net("10.246.0.0/26")];
    s.peers = vec![
        peer("node2", "10.0.1.12/24", &["10.244.0.64/26", "10.245.0.64/26", "10.246.0.64/26"]),
        peer("node3", "10.0.2.13/24", &["10.244.0.128/26", "10.245.0.128/26", "10.246.0.128/26"]),
    ];
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "tunl0", true));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.0.2.13", "tunl0", true));
    assert_eq!(route(&d, "10.245.0.64/26"), via("10.0.1.12", "eth0", false));
    // node3's tunnel address is the network of its lowest block, in the IPIP pool.
    assert_eq!(route(&d, "10.245.0.128/26"), via("10.244.0.128", VX, true));
    assert_eq!(route(&d, "10.246.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.246.0.128/26"), None);
    for own in ["10.244.0.0/26", "10.245.0.0/26", "10.246.0.0/26"] {
        assert_eq!(route(&d, own), Some(RouteKind::Blackhole), "{own}");
    }
    assert!(d.ipip.is_some() && d.vxlan.is_some());
    assert_eq!(d.mtu, 1450, "largest overhead wins");
    assert_eq!(d.ipip.as_ref().unwrap().mtu, 1480);
    assert_eq!(d.vxlan.as_ref().unwrap().mtu, 1450);
    let names: Vec<_> = d.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a-ipip", "b-vxlan", "c-none"]);
    assert_eq!(d.cni.conflist["plugins"][0]["ipam"]["ranges"][0].as_array().unwrap().len(), 3);
}

#[test]
fn nat_outgoing_is_per_pool() {
    let mut s = cluster(vec![
        pool("b", "10.245.0.0/16", Never, Always),
        pool("a", "10.244.0.0/16", Never, Always),
        pool("c", "fd00:246::/48", Never, Always),
    ]);
    s.pools[0].nat_outgoing = true;
    s.pools[2].nat_outgoing = true;
    let d = plan_ok(&s);
    assert_eq!(d.nat.nat_sources, vec![net("10.245.0.0/16"), net("fd00:246::/48")]);
    assert_eq!(d.nat.all_pools, vec![net("10.244.0.0/16"), net("10.245.0.0/16"), net("fd00:246::/48")]);
    s.pools.iter_mut().for_each(|p| p.nat_outgoing = false);
    assert!(plan_ok(&s).nat.nat_sources.is_empty());
}

#[test]
fn mtu_override_wins_and_missing_uplink_mtu_fails() {
    let mut s = one_pool(Always, Never);
    s.mtu = Some(1400);
    s.node.uplink_mtu = None;
    let d = plan_ok(&s);
    assert_eq!(d.mtu, 1400);
    assert_eq!(d.ipip.as_ref().unwrap().mtu, 1400);
    assert_eq!(d.cni.conflist["plugins"][0]["mtu"], 1400);
    s.mtu = None;
    assert_eq!(plan(&s, Capabilities::default()), Err(PlanError::MissingUplinkMtu { uplink: "eth0".into() }));
    s.node.uplink_mtu = Some(9000);
    assert_eq!(plan_ok(&s).mtu, 8980);
}

#[test]
fn missing_ipip_support_is_a_pool_error_not_a_failure() {
    let caps = Capabilities { ipip: false, vxlan: true };
    let d = plan(&one_pool(Always, Never), caps).unwrap();
    assert!(d.ipip.is_none());
    assert_eq!(d.routes.len(), 1, "only the blackhole: {:?}", d.routes);
    assert_eq!(route(&d, "10.244.0.0/26"), Some(RouteKind::Blackhole));
    let err = d.pools[0].error.as_deref().unwrap();
    assert!(err.contains("default") && err.contains("ipip"), "{err}");
    assert!(!d.cni.conflist.is_null(), "local pods still work");

    let d = plan(&one_pool(CrossSubnet, Never), caps).unwrap();
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false), "direct routes survive");
    assert_eq!(route(&d, "10.244.0.128/26"), None);
    assert!(d.pools[0].error.is_some());

    // Other pools are not affected.
    let mut s = cluster(vec![pool("a", "10.244.0.0/16", Always, Never), pool("b", "10.245.0.0/16", Never, Always)]);
    s.peers[1].blocks.push(net("10.245.0.128/26"));
    let d = plan(&s, caps).unwrap();
    assert!(d.vxlan.is_some());
    assert!(route(&d, "10.245.0.128/26").is_some());
    assert!(d.pools[0].error.is_some() && d.pools[1].error.is_none());
}

#[test]
fn missing_vxlan_support_is_a_pool_error() {
    let d = plan(&one_pool(Never, Always), Capabilities { ipip: true, vxlan: false }).unwrap();
    assert!(d.vxlan.is_none());
    assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    assert!(d.pools[0].error.as_deref().unwrap().contains("VXLAN"));
}

fn v6_cluster(ipip: EncapMode, vxlan: EncapMode) -> Snapshot {
    let mut s = cluster(vec![pool("v6", "fd00:244::/48", ipip, vxlan)]);
    s.node.blocks = vec![net("fd00:244::/122")];
    s.peers = vec![peer("node2", "10.0.1.12/24", &["fd00:244::40/122"])];
    s
}

#[test]
fn ipv6_pool_over_vxlan_works() {
    let d = plan_ok(&v6_cluster(Never, Always));
    assert_eq!(route(&d, "fd00:244::/122"), Some(RouteKind::Blackhole));
    assert_eq!(route(&d, "fd00:244::40/122"), via("fd00:244::40", VX, true));
    assert_eq!(
        d.neighbours,
        vec![Neighbour { dev: VX.into(), ip: ip("fd00:244::40"), mac: MacAddr::for_node("node2") }]
    );
    assert_eq!(d.fdb[0].dst, ip("10.0.1.12"), "IPv4 underlay");
    assert!(d.sysctls.iter().any(|s| s.key == "net.ipv6.conf.all.forwarding" && s.value == "1"));
    assert_eq!(d.cni.conflist["plugins"][0]["ipam"]["routes"], serde_json::json!([{"dst": "::/0"}]));
}

#[test]
fn ipv6_pool_with_ipip_is_rejected_alone() {
    let mut s = v6_cluster(Always, Never);
    s.pools.push(pool("v4", "10.244.0.0/16", Never, Always));
    s.node.blocks.push(net("10.244.0.0/26"));
    let d = plan_ok(&s);
    let v6 = d.pools.iter().find(|p| p.name == "v6").unwrap();
    assert!(v6.error.as_deref().unwrap().contains("IPv6"));
    assert!(d.routes.keys().all(|k| k.addr().is_ipv4()), "nothing of the invalid pool: {:?}", d.routes);
    assert!(d.ipip.is_none());
    assert_eq!(route(&d, "10.244.0.0/26"), Some(RouteKind::Blackhole));
}

#[test]
fn both_modes_enabled_is_a_pool_error() {
    let mut s = one_pool(Always, Always);
    s.pools[0].nat_outgoing = true;
    let d = plan_ok(&s);
    assert!(d.pools[0].error.as_deref().unwrap().contains("both"));
    assert!(d.routes.is_empty());
    assert!(d.ipip.is_none() && d.vxlan.is_none());
    assert!(d.nat.nat_sources.is_empty());
    assert_eq!(d.nat.all_pools, vec![net("10.244.0.0/16")]);
    assert!(d.cni.conflist.is_null());
}

#[test]
fn strays_and_conflicts_are_warnings() {
    let mut s = one_pool(Never, Always);
    s.node.blocks.push(net("192.168.0.0/26"));
    s.peers[0].blocks.push(net("10.244.0.0/27")); // inside my block
    s.peers[1].blocks.push(net("10.244.0.64/26")); // node2's block
    s.peers[1].blocks.push(net("172.16.0.0/26")); // no pool
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.0/26"), Some(RouteKind::Blackhole));
    assert_eq!(route(&d, "10.244.0.0/27"), None);
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.244.0.64", VX, true), "first claimant by name");
    assert_eq!(route(&d, "192.168.0.0/26"), None);
    assert_eq!(route(&d, "172.16.0.0/26"), None);
    assert_eq!(d.warnings.len(), 4, "{:#?}", d.warnings);
}

#[test]
fn nested_blocks_of_two_peers_are_routed_to_the_first_only() {
    let mut s = one_pool(Never, Always);
    s.peers[1].blocks.push(net("10.244.0.64/27")); // inside node2's 10.244.0.64/26
    s.peers[0].blocks.push(net("10.244.0.128/27")); // inside node3's 10.244.0.128/26
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.244.0.64", VX, true));
    assert_eq!(route(&d, "10.244.0.64/27"), None, "would steal half of node2's block");
    // node2 comes first by name, so its /27 wins over node3's whole /26.
    assert_eq!(route(&d, "10.244.0.128/27"), via("10.244.0.64", VX, true));
    assert_eq!(route(&d, "10.244.0.128/26"), None);
    let overlap: Vec<&String> = d.warnings.iter().filter(|w| w.contains("overlaps block")).collect();
    assert_eq!(overlap.len(), 2, "{:#?}", d.warnings);
}

#[test]
fn vtep_clashes_are_warnings() {
    let mut s = one_pool(Never, Always);
    s.peers[1].vtep_mac = Some(MacAddr::for_node("node2"));
    let d = plan_ok(&s);
    assert!(route(&d, "10.244.0.64/26").is_some());
    assert_eq!(route(&d, "10.244.0.128/26"), None);
    assert!(d.warnings.iter().any(|w| w.contains("MAC")), "{:?}", d.warnings);
    assert_eq!(d.fdb.len(), 1);
}

#[test]
fn explicit_identities_are_used() {
    let mut s = one_pool(Never, Always);
    let mac: MacAddr = "02:00:00:00:00:03".parse().unwrap();
    s.peers[1].vtep_mac = Some(mac);
    s.peers[1].tunnel_address = Some(ip("10.244.0.129"));
    s.node.tunnel_address = Some(ip("10.244.0.1"));
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.129", VX, true));
    assert!(d.neighbours.contains(&Neighbour { dev: VX.into(), ip: ip("10.244.0.129"), mac }));
    assert!(d.fdb.contains(&FdbEntry { dev: VX.into(), mac, dst: ip("10.0.2.13") }));
    assert_eq!(d.vxlan.unwrap().address, Some(ip("10.244.0.1")));
}

#[test]
fn incoherent_snapshots_fail() {
    let mut s = one_pool(Never, Always);
    s.peers.push(s.peers[0].clone());
    assert_eq!(plan(&s, Capabilities::default()), Err(PlanError::DuplicatePeer("node2".into())));
    let mut s = one_pool(Never, Always);
    s.peers[0].name = "node1".into();
    assert_eq!(plan(&s, Capabilities::default()), Err(PlanError::PeerIsSelf("node1".into())));
    let mut s = one_pool(Never, Always);
    s.pools.push(s.pools[0].clone());
    assert_eq!(plan(&s, Capabilities::default()), Err(PlanError::DuplicatePool("default".into())));
    let mut s = one_pool(Never, Always);
    s.node.uplink.clear();
    assert_eq!(plan(&s, Capabilities::default()), Err(PlanError::MissingUplink));
}

#[test]
fn bridge_plugin_gets_no_blackholes() {
    let mut s = one_pool(Never, Always);
    s.cni.plugin = CniPlugin::Bridge;
    let d = plan_ok(&s);
    assert_eq!(route(&d, "10.244.0.0/26"), None);
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.cni.conflist["plugins"][0]["type"], "bridge");
}

#[test]
fn sysctls_forward_and_loosen_tunnels() {
    let mut s = cluster(vec![pool("a", "10.244.0.0/16", Always, Never), pool("b", "10.245.0.0/16", Never, Always)]);
    s.vxlan.device = "vxlan.trellis".into();
    let d = plan_ok(&s);
    let keys: Vec<(&str, &str)> = d.sysctls.iter().map(|s| (s.key.as_str(), s.value.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("net.ipv4.conf.tunl0.rp_filter", "2"),
            ("net.ipv4.conf.vxlan.trellis.rp_filter", "2"),
            ("net.ipv4.ip_forward", "1")
        ]
    );
    assert_eq!(
        crate::kernel::sysctl::path(&d.sysctls[1].key).unwrap(),
        PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.trellis/rp_filter")
    );
    let d = plan_ok(&one_pool(Never, Never));
    assert_eq!(d.sysctls.len(), 1);
}

#[test]
fn list_order_does_not_matter() {
    let mut s =
        cluster(vec![pool("a", "10.244.0.0/16", CrossSubnet, Never), pool("b", "10.245.0.0/16", Never, Always)]);
    s.node.blocks = vec![net("10.245.0.0/26"), net("10.244.0.0/26")];
    s.peers[0].blocks.push(net("10.245.0.64/26"));
    s.peers[1].blocks.insert(0, net("10.245.0.128/26"));
    let d = plan_ok(&s);
    let mut r = s.clone();
    r.pools.reverse();
    r.peers.reverse();
    r.node.blocks.reverse();
    r.peers.iter_mut().for_each(|p| p.blocks.reverse());
    assert_eq!(plan_ok(&r), d);
    assert_eq!(serde_json::to_string(&plan_ok(&r)).unwrap(), serde_json::to_string(&d).unwrap());
}

#[test]
fn every_example_in_the_docs_plans() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let s = Snapshot::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let d = plan(&s, Capabilities::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(d.pools.iter().all(|p| p.error.is_none()), "{}: {:?}", path.display(), d.pools);
            assert!(!d.routes.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "examples missing in {}", dir.display());
}

#[test]
fn vxlan_3node_example_is_what_the_docs_say() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/vxlan-3node.yaml");
    let d = plan(&Snapshot::from_file(&path).unwrap(), Capabilities::default()).unwrap();
    assert_eq!(d.mtu, 1450);
    let routes: Vec<Route> = d.routes.values().cloned().collect();
    assert_eq!(
        routes,
        [
            Route { dst: net("10.244.0.0/26"), kind: RouteKind::Blackhole },
            Route { dst: net("10.244.0.64/26"), kind: via("10.244.0.64", VX, true).unwrap() },
            Route { dst: net("10.244.0.128/26"), kind: via("10.244.0.128", VX, true).unwrap() },
        ]
    );
    let fdb_dsts: Vec<IpAddr> = d.fdb.iter().map(|f| f.dst).collect();
    assert!(fdb_dsts.contains(&ip("10.0.1.12")) && fdb_dsts.contains(&ip("10.0.2.13")));
    assert_eq!(d.neighbours.len(), 2);
    assert_eq!(d.nat.nat_sources, vec![net("10.244.0.0/16")]);
    assert_eq!(d.vxlan.unwrap().address, Some(ip("10.244.0.0")));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn ipip_crosssubnet_example_is_what_the_docs_say() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/ipip-crosssubnet.yaml");
    let d = plan(&Snapshot::from_file(&path).unwrap(), Capabilities::default()).unwrap();
    assert_eq!(route(&d, "10.244.1.0/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.2.0/26"), via("10.0.2.13", "tunl0", true));
    assert_eq!(d.ipip.unwrap().address, Some("10.244.0.0".parse().unwrap()));
    assert_eq!(d.mtu, 1480);
}

#[test]
fn documented_plan_output_matches_the_planner() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/snapshot.md")).unwrap();
    let section =
        doc.split("## `plan` output for the 3-node VXLAN example").nth(1).expect("section in docs/snapshot.md");
    let yaml = section.split("```yaml\n").nth(1).and_then(|s| s.split("```").next()).expect("yaml block");
    let printed: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let documented: DesiredState = serde_yaml::from_value(printed["desired"].clone()).unwrap();
    let documented_changes: Vec<String> = serde_yaml::from_value(printed["changes"].clone()).unwrap();

    let snapshot = Snapshot::from_file(&root.join("docs/examples/vxlan-3node.yaml")).unwrap();
    let caps = Capabilities { ipip: false, vxlan: true };
    let desired = plan(&snapshot, caps).unwrap();
    assert_eq!(desired, documented, "docs/snapshot.md shows a stale plan: regenerate it");
    // The documented host is a fresh namespace: nothing of Trellis' in the kernel yet.
    let changes: Vec<String> =
        crate::diff::diff(&crate::model::KernelState::default(), &desired).iter().map(ToString::to_string).collect();
    assert_eq!(changes, documented_changes, "docs/snapshot.md shows stale changes: regenerate them");
}

#[test]
fn mixed_pools_example_is_what_the_docs_say() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/mixed-pools.yaml");
    let s = Snapshot::from_file(&path).unwrap();
    let d = plan(&s, Capabilities::default()).unwrap();
    // Explicit MTU 8900 wins over uplink 9000 minus any overhead, for pods and both tunnels.
    assert_eq!(s.mtu, Some(8900));
    assert_eq!(d.mtu, 8900);
    assert_eq!(d.cni.conflist["plugins"][0]["mtu"], 8900);
    assert_eq!(d.ipip.as_ref().unwrap().mtu, 8900);
    assert_eq!(d.vxlan.as_ref().unwrap().mtu, 8900);
    // Each pool in its own mode; none has an error.
    let modes: Vec<(&str, String, bool)> =
        d.pools.iter().map(|p| (p.name.as_str(), p.encapsulation.to_string(), p.disabled)).collect();
    assert_eq!(
        modes,
        [
            ("ipip-pool", "IPIP/Always".to_string(), false),
            ("ipv6-pool", "VXLAN/Always".to_string(), false),
            ("old-pool", "None".to_string(), true),
            ("vxlan-pool", "VXLAN/CrossSubnet".to_string(), false),
        ]
    );
    assert!(d.pools.iter().all(|p| p.error.is_none()), "{:?}", d.pools);
    // IPIP to both peers; VXLAN CrossSubnet direct to node2, tunnelled to node3.
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "tunl0", true));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.0.2.13", "tunl0", true));
    assert_eq!(route(&d, "10.245.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.245.0.128/26"), via("10.244.0.128", VX, true));
    // IPv6 over VXLAN on the IPv4 underlay: next hops are the peers' IPv6 tunnel addresses,
    // the neighbours carry their MACs (node2's explicit one), the FDB points at IPv4 nodes.
    assert_eq!(route(&d, "fd00:10:244::40/122"), via("fd00:10:244::40", VX, true));
    assert_eq!(route(&d, "fd00:10:244::80/122"), via("fd00:10:244::80", VX, true));
    let node2_mac: MacAddr = "02:00:0a:00:01:0c".parse().unwrap();
    assert!(d.neighbours.contains(&Neighbour { dev: VX.into(), ip: ip("fd00:10:244::40"), mac: node2_mac }));
    assert!(d.fdb.contains(&FdbEntry { dev: VX.into(), mac: node2_mac, dst: ip("10.0.1.12") }));
    assert_eq!(d.vxlan.as_ref().unwrap().mac, "02:00:0a:00:01:0b".parse::<MacAddr>().unwrap());
    assert!(d.sysctls.iter().any(|s| s.key == "net.ipv6.conf.all.forwarding" && s.value == "1"));
    // The disabled pool: still routed (node2 directly; node3 is across subnets with no
    // encapsulation, so not at all), blackholed and NATed, but no new pod gets its addresses.
    assert!(d.pools.iter().any(|p| p.name == "old-pool" && p.disabled));
    assert_eq!(route(&d, "10.246.0.0/26"), Some(RouteKind::Blackhole));
    assert_eq!(route(&d, "10.246.0.64/26"), via("10.0.1.12", "eth0", false));
    assert!(d.nat.nat_sources.contains(&net("10.246.0.0/16")));
    assert_eq!(d.nat.nat_sources, vec![net("10.244.0.0/16"), net("10.246.0.0/16")]);
    let subnets: Vec<Vec<&str>> = d.cni.conflist["plugins"][0]["ipam"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|set| set.as_array().unwrap().iter().map(|r| r["subnet"].as_str().unwrap()).collect())
        .collect();
    assert_eq!(subnets, [vec!["10.244.0.0/26", "10.245.0.0/26"], vec!["fd00:10:244::/122"]]);
    assert_eq!(
        d.cni.conflist["plugins"][0]["ipam"]["routes"],
        serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    );
}

fn uses(mut p: Pool, uses: &[trellis_api::ip_pool::AllowedUse]) -> Pool {
    p.allowed_uses = Some(uses.to_vec());
    p
}

#[test]
fn only_workload_pools_give_pod_ranges_and_only_tunnel_pools_the_tunnel_address() {
    use trellis_api::ip_pool::AllowedUse::{Tunnel, Workload};
    let mut s = cluster(vec![
        uses(pool("pods", "10.244.0.0/16", Never, Always), &[Workload]),
        uses(pool("tunnels", "10.250.0.0/16", Never, Always), &[Tunnel]),
    ]);
    // The lowest block is a pod block; the tunnel address must still come from the Tunnel pool.
    s.node.blocks = vec![net("10.244.0.0/26"), net("10.250.0.0/26")];
    s.peers = vec![peer("node2", "10.0.1.12/24", &["10.244.0.64/26", "10.250.0.64/26"])];
    let d = plan_ok(&s);
    assert_eq!(d.vxlan.as_ref().unwrap().address, Some(ip("10.250.0.0")));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.250.0.64", VX, true), "peer's tunnel IP from its Tunnel block");
    let ranges = d.cni.conflist["plugins"][0]["ipam"]["ranges"].to_string();
    assert!(ranges.contains("10.244.0.0/26") && !ranges.contains("10.250.0.0/26"), "{ranges}");
    assert_eq!(derived_tunnel_address(&s, Capabilities::default()), Some(ip("10.250.0.0")));
}

#[test]
fn without_a_tunnel_pool_there_is_no_tunnel_address_and_without_a_workload_pool_no_conflist() {
    use trellis_api::ip_pool::AllowedUse::{Tunnel, Workload};
    let d = plan_ok(&cluster(vec![uses(pool("pods", "10.244.0.0/16", Never, Always), &[Workload])]));
    assert_eq!(d.vxlan.as_ref().unwrap().address, None);
    assert!(d.cni.conflist["plugins"][0]["ipam"]["ranges"].to_string().contains("10.244.0.0/26"));
    let d = plan_ok(&cluster(vec![uses(pool("tun", "10.244.0.0/16", Never, Always), &[Tunnel])]));
    assert_eq!(d.vxlan.as_ref().unwrap().address, Some(ip("10.244.0.0")));
    assert!(d.cni.conflist.is_null());
    assert!(d.cni.unavailable.as_deref().unwrap().contains("does not allow Workload"), "{:?}", d.cni.unavailable);
}

#[test]
fn an_ipv6_pool_that_routes_directly_is_refused_on_an_ipv4_node() {
    for (ipip, vxlan) in [(Never, Never), (Never, CrossSubnet)] {
        let d = plan_ok(&v6_cluster(ipip, vxlan));
        let error = d.pools[0].error.as_deref().unwrap();
        assert!(error.contains("only vxlanMode Always carries this pool"), "{error}");
        assert!(d.routes.is_empty(), "nothing half-applied: {:?}", d.routes);
        assert!(d.cni.conflist.is_null(), "no pod gets an address of it");
    }
}

/// One VXLAN-capable pool changing from `from` to `to` (encapsulation and NAT), in `phase`.
fn changing(from: (EncapMode, EncapMode, bool), to: (EncapMode, EncapMode, bool), phase: Phase) -> Snapshot {
    let mut p = pool("default", "10.244.0.0/16", to.0, to.1);
    p.nat_outgoing = to.2;
    let from_encap = match (from.0, from.1) {
        (Never, Never) => Encapsulation::None,
        (Never, m) => Encapsulation::Vxlan(m),
        (m, _) => Encapsulation::Ipip(m),
    };
    p.transition = Some(crate::snapshot::PoolTransition { from: from_encap, from_nat_outgoing: from.2, phase });
    cluster(vec![p])
}

fn uplink_loose(d: &DesiredState) -> bool {
    d.sysctls.iter().any(|s| s.key == "net.ipv4.conf.eth0.rp_filter" && s.value == "2")
}

#[test]
fn receive_prepares_vxlan_while_senders_keep_the_old_route() {
    let d = plan_ok(&changing((Never, Never, false), (Never, Always, false), Phase::Receive));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false), "still direct");
    assert_eq!(route(&d, "10.244.0.128/26"), None, "None cannot cross subnets, before or during Receive");
    assert!(d.vxlan.is_some(), "the device receives VXLAN already");
    let neighbours: Vec<IpAddr> = d.neighbours.iter().map(|n| n.ip).collect();
    assert_eq!(neighbours, vec![ip("10.244.0.64"), ip("10.244.0.128")], "in place before the switch");
    assert_eq!(d.fdb.len(), 2);
    assert_eq!(d.mtu, 1450, "pods created from now on fit the new path");
    assert!(uplink_loose(&d));
    assert_eq!((d.pools[0].encapsulation, d.pools[0].phase), (Encapsulation::None, Some(Phase::Receive)));
}

#[test]
fn switch_replaces_the_routes_and_keeps_the_old_receive_side() {
    let d = plan_ok(&changing((Never, Never, false), (Never, Always, false), Phase::Switch));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.244.0.64", VX, true));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.128", VX, true));
    assert!(uplink_loose(&d), "direct packets of peers that did not switch yet still arrive");
    assert_eq!(d.pools[0].encapsulation, Encapsulation::Vxlan(Always));

    // Leaving VXLAN: routes go direct, the device and its neighbours stay until Cleanup.
    let d = plan_ok(&changing((Never, Always, false), (Never, CrossSubnet, false), Phase::Switch));
    assert_eq!(route(&d, "10.244.0.64/26"), via("10.0.1.12", "eth0", false));
    assert_eq!(route(&d, "10.244.0.128/26"), via("10.244.0.128", VX, true));
    assert_eq!(d.neighbours.len(), 2, "node2's entries stay for its packets still in VXLAN");
    assert_eq!(d.mtu, 1450);
}

#[test]
fn cleanup_is_the_plain_plan_of_the_new_settings() {
    for (from, to) in [
        ((Never, Never, false), (Never, Always, true)),
        ((Never, Always, false), (Never, Never, false)),
        ((Always, Never, false), (Never, CrossSubnet, false)),
    ] {
        let d = plan_ok(&changing(from, to, Phase::Cleanup));
        let mut plain = plan_ok(&changing(from, to, Phase::Cleanup));
        plain.pools[0].phase = None;
        let mut settled = cluster(vec![pool("default", "10.244.0.0/16", to.0, to.1)]);
        settled.pools[0].nat_outgoing = to.2;
        assert_eq!(plain, plan_ok(&settled), "{from:?} -> {to:?}");
        assert_eq!(d.pools[0].phase, Some(Phase::Cleanup));
        assert!(!uplink_loose(&d));
    }
    let d = plan_ok(&changing((Never, Always, false), (Never, Never, false), Phase::Cleanup));
    assert!(d.vxlan.is_none() && d.neighbours.is_empty());
    assert_eq!(d.mtu, 1500, "the MTU goes up only once the tunnel is gone");
}

#[test]
fn ipip_to_vxlan_keeps_both_devices_until_cleanup() {
    for phase in [Phase::Receive, Phase::Switch] {
        let d = plan_ok(&changing((Always, Never, false), (Never, Always, false), phase));
        assert!(d.ipip.is_some() && d.vxlan.is_some(), "{phase}");
        let dev = if phase == Phase::Receive { "tunl0" } else { VX };
        let gw = if phase == Phase::Receive { "10.0.2.13" } else { "10.244.0.128" };
        assert_eq!(route(&d, "10.244.0.128/26"), via(gw, dev, true), "{phase}");
        assert_eq!(d.neighbours.len(), 2, "{phase}");
    }
    let d = plan_ok(&changing((Always, Never, false), (Never, Always, false), Phase::Cleanup));
    assert!(d.ipip.is_none() && d.vxlan.is_some());
}

#[test]
fn nat_outgoing_flips_when_senders_switch() {
    let on = |phase| plan_ok(&changing((Never, Always, false), (Never, Always, true), phase)).nat.nat_sources;
    assert!(on(Phase::Receive).is_empty());
    assert_eq!(on(Phase::Switch), vec![net("10.244.0.0/16")]);
    assert_eq!(on(Phase::Cleanup), vec![net("10.244.0.0/16")]);
    let off = |phase| plan_ok(&changing((Never, Always, true), (Never, Always, false), phase)).nat.nat_sources;
    assert_eq!(off(Phase::Receive), vec![net("10.244.0.0/16")]);
    assert!(off(Phase::Switch).is_empty());
}
