use proptest::prelude::*;

use super::*;
use crate::model::{IpipDevice, IpipTunnel, MacAddr, Route, StrayRoute};

const VX: &str = "vxlan.trellis";

fn vxlan(vni: u32) -> VxlanTunnel {
    VxlanTunnel {
        name: VX.into(),
        vni,
        port: 4789,
        mac: "02:00:00:00:00:01".parse().unwrap(),
        local: "192.168.1.1".parse().unwrap(),
        uplink: "eth0".into(),
        mtu: 1450,
        address: Some("10.244.1.0".parse().unwrap()),
    }
}

/// Peer `n`: tunnel IP 10.244.n.0, node 192.168.1.n, MAC 02:..:n (+ `mac_salt`), block n.
fn add_peer(d: &mut DesiredState, n: u8, mac_salt: u8, block: &str) {
    let ip: IpAddr = format!("10.244.{n}.0").parse().unwrap();
    let mac = MacAddr([2, 0, 0, 0, mac_salt, n]);
    d.neighbours.push(Neighbour { dev: VX.into(), ip, mac });
    d.fdb.push(FdbEntry { dev: VX.into(), mac, dst: format!("192.168.1.{n}").parse().unwrap() });
    let dst: IpNet = block.parse().unwrap();
    d.routes.insert(dst, Route { dst, kind: RouteKind::Unicast { gateway: ip, dev: VX.into(), onlink: true } });
}

fn blackhole(d: &mut DesiredState, block: &str) {
    let dst: IpNet = block.parse().unwrap();
    d.routes.insert(dst, Route { dst, kind: RouteKind::Blackhole });
}

fn two_peers() -> DesiredState {
    let mut d = DesiredState { mtu: 1450, vxlan: Some(vxlan(4096)), ..Default::default() };
    blackhole(&mut d, "10.244.1.0/26");
    add_peer(&mut d, 2, 0, "10.244.2.0/26");
    add_peer(&mut d, 3, 0, "10.244.3.0/26");
    d
}

/// The kernel state after applying `changes` to `state` (the test model of the kernel).
fn run(state: &KernelState, changes: &[Change]) -> KernelState {
    let mut state = state.clone();
    for c in changes {
        state.apply(c);
    }
    state
}

fn converged(desired: &DesiredState) -> KernelState {
    run(&KernelState::default(), &diff(&KernelState::default(), desired))
}

fn pos(changes: &[Change], pred: impl Fn(&Change) -> bool) -> usize {
    changes.iter().position(pred).unwrap_or_else(|| panic!("no such change in {changes:#?}"))
}

#[test]
fn equal_states_give_no_changes() {
    assert!(diff(&KernelState::default(), &DesiredState::default()).is_empty());
    let d = two_peers();
    let k = converged(&d);
    assert!(diff(&k, &d).is_empty());
}

#[test]
fn fresh_vxlan_is_built_in_safe_order() {
    let d = two_peers();
    let changes = diff(&KernelState::default(), &d);
    let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
    assert_eq!(kinds, ["link+", "address+", "neighbour+", "neighbour+", "fdb+", "fdb+", "route+", "route+", "route+"]);
    assert_eq!(changes[0], Change::CreateVxlan(vxlan(4096)));
    assert_eq!(changes[1], Change::AddAddress { dev: VX.into(), address: "10.244.1.0/32".parse().unwrap() });
    for n in [2u8, 3] {
        let gw: IpAddr = format!("10.244.{n}.0").parse().unwrap();
        let neigh = pos(&changes, |c| matches!(c, Change::AddNeighbour(x) if x.ip == gw));
        let fdb = pos(&changes, |c| matches!(c, Change::AddFdb(x) if x.mac.0[5] == n));
        let route = pos(
            &changes,
            |c| matches!(c, Change::AddRoute(r) if r.kind != RouteKind::Blackhole && r.dst.network().to_string() == gw.to_string()),
        );
        assert!(neigh < route && fdb < route, "peer {n}: {changes:#?}");
    }
    assert_eq!(converged(&d).routes.len(), 3);
}

#[test]
fn changed_peer_updates_exactly_that_peer() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = DesiredState { mtu: 1450, vxlan: Some(vxlan(4096)), ..Default::default() };
    blackhole(&mut after, "10.244.1.0/26");
    add_peer(&mut after, 2, 0, "10.244.2.0/26");
    add_peer(&mut after, 3, 9, "10.244.3.64/26"); // new MAC, new block
    let changes = diff(&k, &after);
    let old_mac = MacAddr([2, 0, 0, 0, 0, 3]);
    let new_mac = MacAddr([2, 0, 0, 0, 9, 3]);
    let gw: IpAddr = "10.244.3.0".parse().unwrap();
    let node: IpAddr = "192.168.1.3".parse().unwrap();
    assert_eq!(
        changes,
        vec![
            Change::UpdateNeighbour(Neighbour { dev: VX.into(), ip: gw, mac: new_mac }),
            Change::AddFdb(FdbEntry { dev: VX.into(), mac: new_mac, dst: node }),
            Change::AddRoute(after.routes[&"10.244.3.64/26".parse().unwrap()].clone()),
            Change::DelRoute(before.routes[&"10.244.3.0/26".parse().unwrap()].clone()),
            Change::DelFdb(FdbEntry { dev: VX.into(), mac: old_mac, dst: node }),
        ]
    );
    assert!(diff(&run(&k, &changes), &after).is_empty());
}

#[test]
fn moved_peer_node_address_replaces_fdb_in_place() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = before.clone();
    after.fdb[0].dst = "192.168.1.200".parse().unwrap();
    assert_eq!(diff(&k, &after), vec![Change::UpdateFdb(after.fdb[0].clone()), Change::DelFdb(before.fdb[0].clone())]);
}

#[test]
fn removed_peer_goes_route_first_and_nothing_else_moves() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = DesiredState { mtu: 1450, vxlan: Some(vxlan(4096)), ..Default::default() };
    blackhole(&mut after, "10.244.1.0/26");
    add_peer(&mut after, 2, 0, "10.244.2.0/26");
    let changes = diff(&k, &after);
    assert_eq!(
        changes,
        vec![
            Change::DelRoute(before.routes[&"10.244.3.0/26".parse().unwrap()].clone()),
            Change::DelNeighbour(before.neighbours[1].clone()),
            Change::DelFdb(before.fdb[1].clone()),
        ]
    );
}

#[test]
fn route_change_is_a_replace_not_delete_and_add() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = before.clone();
    let dst: IpNet = "10.244.2.0/26".parse().unwrap();
    // e.g. CrossSubnet: the peer became direct.
    after.routes.insert(
        dst,
        Route {
            dst,
            kind: RouteKind::Unicast { gateway: "192.168.1.2".parse().unwrap(), dev: "eth0".into(), onlink: false },
        },
    );
    assert_eq!(diff(&k, &after), vec![Change::UpdateRoute(after.routes[&dst].clone())]);
}

#[test]
fn vni_change_recreates_device_and_everything_on_it() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = before.clone();
    after.vxlan = Some(vxlan(4097));
    let changes = diff(&k, &after);
    assert!(
        matches!(&changes[0], Change::DeleteVxlan { name, reason } if name == VX && reason.contains("vni 4096 -> 4097"))
    );
    assert!(changes[0].is_disruptive());
    assert_eq!(changes[1], Change::CreateVxlan(vxlan(4097)));
    let kinds: Vec<&str> = changes[2..].iter().map(Change::kind).collect();
    // The blackhole is not on the device: it stays.
    assert_eq!(kinds, ["address+", "neighbour+", "neighbour+", "fdb+", "fdb+", "route+", "route+"]);
    assert!(diff(&run(&k, &changes), &after).is_empty());
}

#[test]
fn in_place_parameters_do_not_recreate() {
    let before = two_peers();
    let mut k = converged(&before);
    let mut after = before.clone();
    let t = after.vxlan.as_mut().unwrap();
    t.mtu = 1400;
    t.mac = "02:00:00:00:00:aa".parse().unwrap();
    let mac = t.mac;
    k.vxlan.as_mut().unwrap().up = false;
    assert_eq!(
        diff(&k, &after),
        vec![Change::SetLink { dev: VX.into(), mtu: Some(1400), mac: Some(mac), up: Some(true) }]
    );
}

#[test]
fn learning_or_uplink_or_port_or_local_change_recreates() {
    let d = two_peers();
    let base = converged(&d);
    let mutations: [fn(&mut VxlanDevice); 4] = [
        |v| v.learning = true,
        |v| v.uplink = Some("eth1".into()),
        |v| v.port = 8472,
        |v| v.local = Some("192.168.1.99".parse().unwrap()),
    ];
    for mutate in mutations {
        let mut k = base.clone();
        mutate(k.vxlan.as_mut().unwrap());
        let changes = diff(&k, &d);
        assert!(matches!(changes[0], Change::DeleteVxlan { .. }), "{changes:#?}");
        assert!(diff(&run(&k, &changes), &d).is_empty());
    }
}

#[test]
fn vxlan_removed_deletes_its_routes_then_the_device_only() {
    let before = two_peers();
    let k = converged(&before);
    let mut after = DesiredState::default();
    blackhole(&mut after, "10.244.1.0/26");
    let changes = diff(&k, &after);
    let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
    assert_eq!(kinds, ["route-", "route-", "link-"]);
    assert!(diff(&run(&k, &changes), &after).is_empty());
}

#[test]
fn ipip_adopts_tunl0_and_removal_only_downs_it() {
    let mut d = DesiredState {
        mtu: 1480,
        ipip: Some(IpipTunnel { mtu: 1480, address: Some("10.244.1.0".parse().unwrap()) }),
        ..Default::default()
    };
    let dst: IpNet = "10.244.2.0/26".parse().unwrap();
    d.routes.insert(
        dst,
        Route {
            dst,
            kind: RouteKind::Unicast { gateway: "192.168.1.2".parse().unwrap(), dev: IPIP_DEVICE.into(), onlink: true },
        },
    );
    let changes = diff(&KernelState::default(), &d);
    assert_eq!(
        changes,
        vec![
            Change::EnsureTunl0,
            Change::SetOwner { dev: IPIP_DEVICE.into(), owned: true },
            Change::SetLink { dev: IPIP_DEVICE.into(), mtu: Some(1480), mac: None, up: Some(true) },
            Change::AddAddress { dev: IPIP_DEVICE.into(), address: "10.244.1.0/32".parse().unwrap() },
            Change::AddRoute(d.routes[&dst].clone()),
        ]
    );
    let k = run(&KernelState::default(), &changes);
    assert!(diff(&k, &d).is_empty());

    // Already loaded but down: adopt (mark, up), do not create.
    let loaded = KernelState { ipip: Some(IpipDevice { mtu: 1480, ..Default::default() }), ..Default::default() };
    assert_eq!(
        diff(&loaded, &d)[..2],
        [
            Change::SetOwner { dev: IPIP_DEVICE.into(), owned: true },
            Change::SetLink { dev: IPIP_DEVICE.into(), mtu: None, mac: None, up: Some(true) }
        ]
    );

    let changes = diff(&k, &DesiredState::default());
    assert_eq!(
        changes,
        vec![
            Change::DelRoute(d.routes[&dst].clone()),
            Change::DelAddress { dev: IPIP_DEVICE.into(), address: "10.244.1.0/32".parse().unwrap() },
            Change::SetLink { dev: IPIP_DEVICE.into(), mtu: None, mac: None, up: Some(false) },
            Change::SetOwner { dev: IPIP_DEVICE.into(), owned: false },
        ]
    );
    let k = run(&k, &changes);
    assert!(k.ipip.is_some(), "tunl0 is never deleted");
    assert!(diff(&k, &DesiredState::default()).is_empty());
}

/// A `tunl0` somebody else brought up, with their addresses.
fn foreign_tunl0() -> KernelState {
    KernelState {
        ipip: Some(IpipDevice {
            mtu: 1480,
            up: true,
            owned: false,
            addresses: vec![],
            foreign_addresses: vec!["10.99.0.1/32".parse().unwrap(), "10.244.1.0/32".parse().unwrap()],
        }),
        ..Default::default()
    }
}

#[test]
fn a_foreign_tunl0_and_its_addresses_are_left_alone_without_ipip_pools() {
    let changes = diff(&foreign_tunl0(), &DesiredState::default());
    assert!(changes.is_empty(), "{changes:#?}");
}

#[test]
fn adopting_tunl0_marks_it_and_keeps_foreign_addresses() {
    let mut d = DesiredState {
        ipip: Some(IpipTunnel { mtu: 1480, address: Some("10.244.1.64".parse().unwrap()) }),
        ..Default::default()
    };
    let changes = diff(&foreign_tunl0(), &d);
    assert_eq!(
        changes,
        vec![
            Change::SetOwner { dev: IPIP_DEVICE.into(), owned: true },
            Change::AddAddress { dev: IPIP_DEVICE.into(), address: "10.244.1.64/32".parse().unwrap() },
        ]
    );
    // A foreign address equal to ours already does the job: not added again, never removed.
    d.ipip = Some(IpipTunnel { mtu: 1480, address: Some("10.244.1.0".parse().unwrap()) });
    let adopted = run(&foreign_tunl0(), &diff(&foreign_tunl0(), &d));
    assert!(diff(&adopted, &d).is_empty());
    let released = run(&adopted, &diff(&adopted, &DesiredState::default()));
    let tunl0 = released.ipip.unwrap();
    assert!(!tunl0.up && !tunl0.owned);
    assert_eq!(tunl0.foreign_addresses.len(), 2, "foreign addresses survive");
}

#[test]
fn a_route_that_would_take_over_a_foreign_one_is_held_back_as_a_conflict() {
    let d = two_peers();
    let mut current = converged(&d);
    let taken: IpNet = "10.244.3.0/26".parse().unwrap();
    current.routes.remove(&taken);
    current.foreign_routes.insert(taken, "static".into());
    // Our route to 10.244.2.0/26 differs and a foreign one appeared next to it.
    let changed: IpNet = "10.244.2.0/26".parse().unwrap();
    if let Some(Route { kind: RouteKind::Unicast { onlink, .. }, .. }) = current.routes.get_mut(&changed) {
        *onlink = false;
    }
    current.foreign_routes.insert(changed, "boot".into());
    let Diff { changes, conflicts } = diff_with_conflicts(&current, &d);
    assert!(changes.iter().all(|c| !matches!(c, Change::AddRoute(_) | Change::UpdateRoute(_))), "{changes:#?}");
    assert_eq!(
        conflicts,
        vec![
            RouteConflict { route: d.routes[&changed].clone(), update: true, protocol: "boot".into() },
            RouteConflict { route: d.routes[&taken].clone(), update: false, protocol: "static".into() },
        ]
    );
    assert_eq!(conflicts[1].change(), Change::AddRoute(d.routes[&taken].clone()));
    // The foreign route is never removed either.
    assert!(
        diff(&current, &DesiredState::default()).iter().all(|c| !matches!(c, Change::DelRoute(r) if r.dst == taken))
    );
}

#[test]
fn stray_routes_are_always_removed() {
    let d = two_peers();
    let mut current = converged(&d);
    let stray =
        StrayRoute { dst: "10.51.0.0/24".parse().unwrap(), src: None, table: 100, route_type: 7, tos: 0, metric: None };
    current.stray_routes.push(stray.clone());
    let changes = diff(&current, &d);
    assert_eq!(changes, vec![Change::DelStrayRoute(stray)]);
    assert_eq!(changes[0].to_string(), "route del unreachable 10.51.0.0/24 table 100 proto 84");
}

#[test]
fn stale_marked_vxlan_device_is_deleted_before_the_new_one_is_created() {
    let d = two_peers();
    let mut old = converged(&d);
    // The device was called "vx.old": everything on it carried that name.
    old.vxlan = None;
    old.stale_vxlan = vec!["vx.old".into()];
    old.neighbours.clear();
    old.fdb.clear();
    for r in old.routes.values_mut() {
        if let RouteKind::Unicast { dev, .. } = &mut r.kind {
            *dev = "vx.old".into();
        }
    }
    let changes = diff(&old, &d);
    assert_eq!(
        changes[0],
        Change::DeleteVxlan { name: "vx.old".into(), reason: "not the configured VXLAN device".into() }
    );
    assert_eq!(changes[1], Change::CreateVxlan(vxlan(4096)));
    // Its routes went with it: they are added again, not updated.
    assert_eq!(changes.iter().filter(|c| c.kind() == "route+").count(), 2, "{changes:#?}");
    let after = run(&old, &changes);
    assert!(after.stale_vxlan.is_empty());
    assert!(diff(&after, &d).is_empty());
}

#[test]
fn extra_fdb_remote_for_a_desired_mac_is_removed() {
    let d = two_peers();
    let mut k = converged(&d);
    let extra = FdbEntry { dst: "192.168.1.77".parse().unwrap(), ..d.fdb[0].clone() };
    k.fdb.push(extra.clone());
    assert_eq!(diff(&k, &d), vec![Change::DelFdb(extra)]);
}

#[test]
fn display_is_iproute2_like() {
    let d = two_peers();
    let rendered: Vec<String> = diff(&KernelState::default(), &d).iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered[0],
        "link add vxlan.trellis type vxlan id 4096 dstport 4789 local 192.168.1.1 dev eth0 nolearning address 02:00:00:00:00:01 mtu 1450 up"
    );
    assert!(
        rendered.contains(&"route replace 10.244.2.0/26 via 10.244.2.0 dev vxlan.trellis onlink proto 84".to_string())
    );
    assert!(rendered.contains(&"route replace blackhole 10.244.1.0/26 proto 84".to_string()));
}

/// A random but well-formed desired state: VXLAN (one of two VNIs) or not, IPIP or not, a
/// subset of four peers with one of two MACs and one of two blocks each.
fn arb_desired() -> impl Strategy<Value = DesiredState> {
    (
        proptest::option::of(prop_oneof![Just(4096u32), Just(4097)]),
        proptest::option::of(prop_oneof![Just(1480u32), Just(1430)]),
        proptest::collection::vec((any::<bool>(), 0u8..2, 0u8..2), 4),
        1400u32..1451,
    )
        .prop_map(|(vni, ipip_mtu, peers, mtu)| {
            let mut d = DesiredState::default();
            blackhole(&mut d, "10.244.1.0/26");
            if let Some(mtu) = ipip_mtu {
                d.ipip = Some(IpipTunnel { mtu, address: Some("10.244.1.0".parse().unwrap()) });
            }
            if let Some(vni) = vni {
                d.vxlan = Some(VxlanTunnel { mtu, ..vxlan(vni) });
                for (i, (present, salt, block)) in peers.into_iter().enumerate() {
                    if present {
                        let n = i as u8 + 2;
                        add_peer(&mut d, n, salt, &format!("10.244.{n}.{}/26", block * 64));
                    }
                }
            }
            d
        })
}

proptest! {
    /// From any state Trellis could have left behind, applying the diff reaches the target
    /// exactly (the next diff is empty), and removals never precede additions of their kind.
    #[test]
    fn diff_converges_from_any_previous_state(a in arb_desired(), b in arb_desired()) {
        let k = converged(&a);
        let changes = diff(&k, &b);
        let after = run(&k, &changes);
        prop_assert!(diff(&after, &b).is_empty(), "{:#?}", diff(&after, &b));
        prop_assert!(diff(&k, &a).is_empty());
        // Per peer: a route via a gateway comes after that gateway's neighbour is set.
        for (i, c) in changes.iter().enumerate() {
            if let Change::AddRoute(Route { kind: RouteKind::Unicast { gateway, dev, .. }, .. }) = c
                && dev == VX
            {
                let needed = !k.neighbours.iter().any(|n| n.ip == *gateway && b.neighbours.contains(n));
                if needed {
                    let set = changes.iter().position(|c| matches!(c, Change::AddNeighbour(n) | Change::UpdateNeighbour(n) if n.ip == *gateway));
                    prop_assert!(set.is_some_and(|s| s < i));
                }
            }
        }
    }
}
