//! Pure encoding: the request messages for model values, built in memory, and decoded back to
//! the same values (what the kernel stores is what the decoder reads). No kernel needed.

use std::collections::BTreeMap;

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkFlags, LinkInfo};

use super::*;
use crate::kernel::netlink::decode::{self, LinkNames, route_metric, route_table};
use crate::model::{IPIP_ADDRESS_LABEL, IPIP_DEVICE, KernelState, VxlanDevice};

const UPLINK: u32 = 2;
const VX_INDEX: u32 = 7;

fn names() -> LinkNames {
    BTreeMap::from([(UPLINK, "eth0".to_string()), (VX_INDEX, "vxlan.trellis".to_string())])
}

#[test]
fn stray_route_delete_request_names_table_type_metric_and_no_next_hop() {
    let stray = StrayRoute {
        dst: "10.54.0.0/24".parse().unwrap(),
        src: None,
        table: 1000,
        route_type: 7,
        tos: 0,
        metric: Some(5),
    };
    let m = stray_route_message(&stray);
    assert_eq!(m.header.kind, RouteType::Unreachable);
    assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
    assert_eq!(route_table(&m), 1000);
    assert_eq!(route_metric(&m), Some(5));
    assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))));
}

/// What a route dump of `family` would return for the given requests.
fn dumped(family: AddressFamily, messages: Vec<RouteMessage>) -> KernelState {
    let mut state = KernelState::default();
    decode::decode_routes(family, Ok(messages), &names(), &mut state).unwrap();
    state
}

#[test]
fn our_routes_read_back_as_the_routes_that_were_requested() {
    let routes = [
        Route { dst: "10.244.1.0/26".parse().unwrap(), kind: RouteKind::Blackhole },
        Route {
            dst: "10.244.2.0/26".parse().unwrap(),
            kind: RouteKind::Unicast {
                gateway: "10.244.2.0".parse().unwrap(),
                dev: "vxlan.trellis".into(),
                onlink: true,
            },
        },
        Route {
            dst: "10.244.3.0/26".parse().unwrap(),
            kind: RouteKind::Unicast { gateway: "192.168.1.3".parse().unwrap(), dev: "eth0".into(), onlink: false },
        },
    ];
    let messages = vec![
        route_message(&routes[0], None),
        route_message(&routes[1], Some(VX_INDEX)),
        route_message(&routes[2], Some(UPLINK)),
    ];
    for m in &messages {
        assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL, "stamped as ours");
        assert_eq!(route_table(m), u32::from(RouteHeader::RT_TABLE_MAIN));
    }
    let state = dumped(AddressFamily::Inet, messages);
    assert_eq!(state.routes.values().cloned().collect::<Vec<_>>(), routes);
    assert!(state.stray_routes.is_empty());

    // IPv6: the kernel stores the route with its default metric 1024, which reads back as ours.
    let v6 = Route { dst: "fd00:10:244:1::/122".parse().unwrap(), kind: RouteKind::Blackhole };
    let mut m = route_message(&v6, None);
    assert_eq!(route_metric(&m), None, "no metric requested");
    m.attributes.push(RouteAttribute::Priority(1024));
    assert_eq!(dumped(AddressFamily::Inet6, vec![m]).routes.values().collect::<Vec<_>>(), [&v6]);
}

#[test]
fn a_stray_route_delete_request_identifies_the_route_it_came_from() {
    let stray = StrayRoute {
        dst: "fd00:53::/64".parse().unwrap(),
        src: Some("fd00:1::/64".parse().unwrap()),
        table: 100,
        route_type: 1,
        tos: 0x10,
        metric: Some(7),
    };
    let state = dumped(AddressFamily::Inet6, vec![stray_route_message(&stray)]);
    assert!(state.routes.is_empty());
    assert_eq!(state.stray_routes, [stray]);
}

fn vxlan() -> VxlanTunnel {
    VxlanTunnel {
        name: "vxlan.trellis".into(),
        vni: 4096,
        port: 4789,
        mac: "02:00:00:00:00:01".parse().unwrap(),
        local: "192.168.1.1".parse().unwrap(),
        uplink: "eth0".into(),
        mtu: 1450,
        address: None,
    }
}

#[test]
fn the_vxlan_request_creates_the_device_the_decoder_expects() {
    let t = vxlan();
    let mut link = vxlan_link(&t, UPLINK);
    assert!(link.header.flags.contains(LinkFlags::Up), "created up");
    // The kernel answers with the index it gave the device.
    link.header.index = VX_INDEX;
    let mut uplink = LinkMessage::default();
    uplink.header.index = UPLINK;
    uplink.attributes.push(LinkAttribute::IfName("eth0".into()));
    let routes = vec![(AddressFamily::Inet, Ok(vec![])), (AddressFamily::Inet6, Ok(vec![]))];
    let state = decode::observed(&t.name, &[uplink, link], &[], routes).unwrap();
    assert_eq!(
        state.vxlan,
        Some(VxlanDevice {
            name: t.name.clone(),
            vni: t.vni,
            port: t.port,
            local: Some(t.local),
            uplink: Some(t.uplink.clone()),
            learning: false,
            mac: t.mac,
            mtu: t.mtu,
            up: true,
            addresses: vec![],
        })
    );
}

#[test]
fn the_ipv6_vxlan_request_sets_an_ipv6_local_address() {
    let t = VxlanTunnel { local: "fd00::1".parse().unwrap(), ..vxlan() };
    let link = vxlan_link(&t, UPLINK);
    let data = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data.clone()),
            _ => None,
        }),
        _ => None,
    });
    let data = data.expect("vxlan data");
    assert!(data.contains(&InfoVxlan::Local6("fd00::1".parse().unwrap())), "{data:?}");
    assert!(!data.iter().any(|i| matches!(i, InfoVxlan::Local(_))), "{data:?}");
    assert!(
        link.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Kind(InfoKind::Vxlan))))
    );
}

#[test]
fn the_owner_mark_is_an_alias_and_clearing_it_sends_an_empty_one() {
    let alias = |m: &LinkMessage| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfAlias(x) => Some(x.clone()),
            _ => None,
        })
    };
    let mark = owner_mark(VX_INDEX, true);
    assert_eq!(mark.header.index, VX_INDEX);
    assert_eq!(alias(&mark).as_deref(), Some(OWNER_ALIAS));
    assert!(decode::owner_marked(&mark));
    let clear = owner_mark(VX_INDEX, false);
    assert_eq!(alias(&clear).as_deref(), Some(""));
    assert!(!decode::owner_marked(&clear));
}

#[test]
fn link_state_changes_only_what_is_asked() {
    let mtu = |m: &LinkMessage| decode::link_mtu(m);
    let m = link_state(VX_INDEX, Some(1400), None);
    assert_eq!(mtu(&m), Some(1400));
    assert!(!m.header.change_mask.contains(LinkFlags::Up), "up state left alone");
    let m = link_state(VX_INDEX, None, Some(false));
    assert_eq!(mtu(&m), None);
    assert!(m.header.change_mask.contains(LinkFlags::Up) && !m.header.flags.contains(LinkFlags::Up));
    let m = link_state(VX_INDEX, None, Some(true));
    assert!(m.header.change_mask.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::Up));
}

#[test]
fn only_an_ipv4_address_on_tunl0_carries_our_label() {
    let label = |m: &AddressMessage| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        })
    };
    let ours = address_add(IPIP_DEVICE, 3, "10.244.1.0/32".parse().unwrap());
    assert_eq!(label(&ours).as_deref(), Some(IPIP_ADDRESS_LABEL));
    assert_eq!((ours.header.index, ours.header.prefix_len, ours.header.family), (3, 32, AddressFamily::Inet));
    assert_eq!(label(&address_add(IPIP_DEVICE, 3, "fd00::1/128".parse().unwrap())), None);
    assert_eq!(label(&address_add("vxlan.trellis", VX_INDEX, "10.244.1.0/32".parse().unwrap())), None);
    let del = address_del(3, "10.244.1.0/32".parse().unwrap());
    assert!(del.attributes.contains(&AddressAttribute::Local("10.244.1.0".parse().unwrap())));
}

#[test]
fn neighbour_and_fdb_requests_read_back_as_permanent_peers() {
    let n = Neighbour {
        dev: "vxlan.trellis".into(),
        ip: "10.244.2.0".parse().unwrap(),
        mac: "02:00:00:00:00:02".parse().unwrap(),
    };
    let f = FdbEntry { dev: "vxlan.trellis".into(), mac: n.mac, dst: "192.168.1.2".parse().unwrap() };
    let neighbour = neighbour_add(VX_INDEX, &n);
    let fdb = fdb_add(VX_INDEX, &f);
    assert_eq!(neighbour.header.state, NeighbourState::Permanent);
    assert_eq!(fdb.header.family, AddressFamily::Bridge);
    assert_eq!(fdb.header.flags, NeighbourFlags::Own, "`self`: the VXLAN device's own FDB");
    let mut state = KernelState::default();
    decode::peers(&mut state, "vxlan.trellis", VX_INDEX, &[neighbour], &[fdb]);
    assert_eq!(state.neighbours, std::slice::from_ref(&n));
    assert_eq!(state.fdb, std::slice::from_ref(&f));
    // Deletes name the same entry, without state.
    let del = neighbour_del(VX_INDEX, &n);
    assert_eq!((del.header.ifindex, del.header.family), (VX_INDEX, AddressFamily::Inet));
    assert!(
        del.attributes
            .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet("10.244.2.0".parse().unwrap())))
    );
    let del = fdb_del(VX_INDEX, &f);
    assert_eq!((del.header.family, del.header.flags), (AddressFamily::Bridge, NeighbourFlags::Own));
    assert!(del.attributes.contains(&NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec())));
}
