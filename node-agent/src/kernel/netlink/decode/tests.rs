//! Pure decoding: which links, addresses, routes and neighbour entries are ours, in which shape,
//! and what a failed dump means. Messages are built in memory as the kernel answers; no kernel
//! needed.

use std::num::NonZeroI32;

use rtnetlink::packet_core::ErrorMessage;
use rtnetlink::packet_route::route::{RouteNextHop, RouteProtocol};

use super::*;
use crate::kernel::netlink::encode::family;

const VX_INDEX: u32 = 7;

fn names() -> LinkNames {
    BTreeMap::from([(2, "eth0".to_string()), (VX_INDEX, "vxlan.trellis".to_string())])
}

/// A route message as the kernel dumps it: `dst` in `table`, protocol `proto`, type `kind`.
fn message(dst: &str, table: u32, proto: u8, kind: RouteType) -> RouteMessage {
    let dst: IpNet = dst.parse().unwrap();
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst.addr());
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = u8::try_from(table).unwrap_or(252);
    m.header.protocol = RouteProtocol::from(proto);
    m.header.kind = kind;
    m.attributes.push(RouteAttribute::Table(table));
    m.attributes.push(RouteAttribute::Destination(dst.addr().into()));
    if dst.addr().is_ipv6() {
        m.attributes.push(RouteAttribute::Priority(1024));
    }
    m
}

fn via(mut m: RouteMessage, gateway: &str, oif: u32) -> RouteMessage {
    let gateway: IpAddr = gateway.parse().unwrap();
    m.attributes.push(RouteAttribute::Gateway(gateway.into()));
    m.attributes.push(RouteAttribute::Oif(oif));
    m.header.flags |= RouteFlags::Onlink;
    m
}

fn decode(family: AddressFamily, messages: Vec<RouteMessage>) -> KernelState {
    let mut state = KernelState::default();
    decode_routes(family, Ok(messages), &names(), &mut state).unwrap();
    state
}

const MAIN: u32 = 254;
const OURS: u8 = ROUTE_PROTOCOL;
const STATIC: u8 = 4;

#[test]
fn planner_shaped_routes_in_table_main_are_read_as_routes() {
    let state = decode(
        AddressFamily::Inet,
        vec![
            message("10.244.1.0/26", MAIN, OURS, RouteType::BlackHole),
            via(message("10.244.2.0/26", MAIN, OURS, RouteType::Unicast), "10.244.2.0", VX_INDEX),
        ],
    );
    assert_eq!(state.routes.len(), 2, "{state:#?}");
    assert_eq!(state.routes[&"10.244.1.0/26".parse().unwrap()].kind, RouteKind::Blackhole);
    assert_eq!(
        state.routes[&"10.244.2.0/26".parse().unwrap()].kind,
        RouteKind::Unicast { gateway: "10.244.2.0".parse().unwrap(), dev: "vxlan.trellis".into(), onlink: true }
    );
    assert!(state.stray_routes.is_empty());
}

#[test]
fn every_other_shape_with_our_protocol_is_a_stray_route() {
    let mut metric = via(message("10.244.3.0/26", MAIN, OURS, RouteType::Unicast), "10.244.3.0", VX_INDEX);
    metric.attributes.push(RouteAttribute::Priority(50));
    let mut dev_only = message("10.50.0.0/24", MAIN, OURS, RouteType::Unicast);
    dev_only.attributes.push(RouteAttribute::Oif(2));
    let mut multipath = message("10.53.0.0/24", MAIN, OURS, RouteType::Unicast);
    multipath.attributes.push(RouteAttribute::MultiPath(vec![RouteNextHop::default(), RouteNextHop::default()]));
    let mut tos = message("10.57.0.0/24", MAIN, OURS, RouteType::BlackHole);
    tos.header.tos = 0x10;
    let gone_device = via(message("10.58.0.0/24", MAIN, OURS, RouteType::Unicast), "192.168.1.9", 99);
    let state = decode(
        AddressFamily::Inet,
        vec![
            dev_only,
            message("10.51.0.0/24", MAIN, OURS, RouteType::Unreachable),
            message("10.52.0.0/24", MAIN, OURS, RouteType::Prohibit),
            multipath,
            via(message("10.54.0.0/24", 100, OURS, RouteType::Unicast), "192.168.1.2", 2),
            message("10.55.0.0/24", 1000, OURS, RouteType::BlackHole),
            metric,
            tos,
            gone_device,
        ],
    );
    assert!(state.routes.is_empty(), "{:#?}", state.routes);
    let strays: Vec<(String, u32, String, Option<u32>, u8)> =
        state.stray_routes.iter().map(|r| (r.dst.to_string(), r.table, r.type_name(), r.metric, r.tos)).collect();
    assert_eq!(
        strays,
        vec![
            ("10.50.0.0/24".into(), MAIN, "unicast".into(), None, 0),
            ("10.51.0.0/24".into(), MAIN, "unreachable".into(), None, 0),
            ("10.52.0.0/24".into(), MAIN, "prohibit".into(), None, 0),
            ("10.53.0.0/24".into(), MAIN, "unicast".into(), None, 0),
            ("10.54.0.0/24".into(), 100, "unicast".into(), None, 0),
            ("10.55.0.0/24".into(), 1000, "blackhole".into(), None, 0),
            ("10.244.3.0/26".into(), MAIN, "unicast".into(), Some(50), 0),
            ("10.57.0.0/24".into(), MAIN, "blackhole".into(), None, 0x10),
            ("10.58.0.0/24".into(), MAIN, "unicast".into(), None, 0),
        ]
    );
}

#[test]
fn a_second_route_to_one_destination_is_stray_and_foreign_routes_are_not_ours() {
    let state = decode(
        AddressFamily::Inet6,
        vec![
            message("fd00:10:244:1::/122", MAIN, OURS, RouteType::BlackHole),
            message("fd00:10:244:1::/122", MAIN, OURS, RouteType::Unreachable),
            message("fd00:99::/64", MAIN, STATIC, RouteType::Unreachable),
            // A kernel without IPv6 answers the IPv6 dump with IPv4 routes too.
            message("10.244.1.0/26", MAIN, OURS, RouteType::BlackHole),
        ],
    );
    assert_eq!(state.routes.keys().map(ToString::to_string).collect::<Vec<_>>(), ["fd00:10:244:1::/122"]);
    assert_eq!(state.stray_routes.len(), 1, "{:#?}", state.stray_routes);
    assert_eq!(state.stray_routes[0].type_name(), "unreachable");
    assert_eq!(state.stray_routes[0].metric, Some(1024));
}

#[test]
fn a_failed_ipv6_route_dump_is_an_error_not_an_empty_table() {
    let mut refusal = ErrorMessage::default();
    refusal.code = NonZeroI32::new(-97);
    let mut state = KernelState::default();
    let error = decode_routes(AddressFamily::Inet6, Err(rtnetlink::Error::NetlinkError(refusal)), &names(), &mut state)
        .unwrap_err();
    assert_eq!(error.errno(), Some(97), "{error}");
    assert!(error.to_string().contains("dump Inet6 routes"), "{error}");
}

fn named_link(index: u32, name: &str, alias: Option<&str>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::Mtu(1480));
    if let Some(alias) = alias {
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    }
    m
}

fn vxlan_link(index: u32, name: &str, alias: Option<&str>) -> LinkMessage {
    let mut m = named_link(index, name, alias);
    m.attributes.push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(4096),
            InfoVxlan::Port(4789),
            InfoVxlan::Link(2),
            InfoVxlan::Local("192.168.1.1".parse().unwrap()),
            InfoVxlan::Learning(true),
        ])),
    ]));
    m
}

fn address(index: u32, net: &str, label: Option<&str>) -> AddressMessage {
    let net: IpNet = net.parse().unwrap();
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = net.prefix_len();
    m.attributes.push(AddressAttribute::Local(net.addr()));
    if let Some(label) = label {
        m.attributes.push(AddressAttribute::Label(label.to_string()));
    }
    m
}

fn observe(vxlan_name: &str, links: &[LinkMessage], addresses: &[AddressMessage]) -> KernelState {
    let routes = vec![(AddressFamily::Inet, Ok(vec![])), (AddressFamily::Inet6, Ok(vec![]))];
    observed(vxlan_name, links, addresses, routes).unwrap()
}

#[test]
fn the_vxlan_device_is_read_with_its_parameters_and_addresses() {
    let links = [named_link(2, "eth0", None), vxlan_link(VX_INDEX, "vxlan.trellis", Some(OWNER_ALIAS))];
    let addresses = [
        address(VX_INDEX, "10.244.1.0/32", None),
        address(VX_INDEX, "fe80::1/64", None),
        address(2, "192.168.1.1/24", None),
    ];
    let state = observe("vxlan.trellis", &links, &addresses);
    assert_eq!(
        state.vxlan,
        Some(VxlanDevice {
            name: "vxlan.trellis".into(),
            vni: 4096,
            port: 4789,
            local: Some("192.168.1.1".parse().unwrap()),
            uplink: Some("eth0".into()),
            learning: true,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1480,
            up: false,
            addresses: vec!["10.244.1.0/32".parse().unwrap()],
        })
    );
    assert!(state.stale_vxlan.is_empty());
    assert_eq!(state.ipip, None, "no tunl0 in this kernel");
}

#[test]
fn only_marked_vxlan_devices_under_another_name_are_stale() {
    let links = [
        vxlan_link(VX_INDEX, "vxlan.trellis", Some(OWNER_ALIAS)),
        vxlan_link(8, "vxlan.old", Some(OWNER_ALIAS)),
        vxlan_link(9, "flannel.1", None),
        named_link(10, "veth0", Some(OWNER_ALIAS)),
    ];
    let state = observe("vxlan.trellis", &links, &[]);
    assert_eq!(state.stale_vxlan, ["vxlan.old"]);
    // Asked for a name that does not exist: no device, and the marked ones are all stale.
    let state = observe("vxlan.new", &links, &[]);
    assert_eq!(state.vxlan, None);
    assert_eq!(state.stale_vxlan, ["vxlan.trellis", "vxlan.old"]);
}

#[test]
fn on_tunl0_only_the_labelled_address_is_ours() {
    let mut tunl0 = named_link(3, IPIP_DEVICE, Some(OWNER_ALIAS));
    tunl0.header.flags |= LinkFlags::Up;
    let addresses = [
        address(3, "10.244.1.0/32", Some(IPIP_ADDRESS_LABEL)),
        address(3, "172.16.0.1/32", Some("tunl0")),
        address(3, "172.16.0.2/32", None),
    ];
    let state = observe("vxlan.trellis", &[tunl0], &addresses);
    assert_eq!(
        state.ipip,
        Some(IpipDevice {
            mtu: 1480,
            up: true,
            owned: true,
            addresses: vec!["10.244.1.0/32".parse().unwrap()],
            foreign_addresses: vec!["172.16.0.1/32".parse().unwrap(), "172.16.0.2/32".parse().unwrap()],
        })
    );
}

fn neighbour_message(index: u32, state: NeighbourState, dst: NeighbourAddress, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = index;
    m.header.state = state;
    m.attributes.push(NeighbourAttribute::Destination(dst));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

#[test]
fn only_permanent_entries_on_the_vxlan_device_are_peers() {
    let peer = NeighbourAddress::Inet("10.244.2.0".parse().unwrap());
    let neighbours = [
        neighbour_message(VX_INDEX, NeighbourState::Permanent, peer.clone(), [2, 0, 0, 0, 0, 2]),
        neighbour_message(
            VX_INDEX,
            NeighbourState::Reachable,
            NeighbourAddress::Inet("10.244.3.0".parse().unwrap()),
            [2, 0, 0, 0, 0, 3],
        ),
        neighbour_message(
            2,
            NeighbourState::Permanent,
            NeighbourAddress::Inet("192.168.1.9".parse().unwrap()),
            [2, 0, 0, 0, 0, 9],
        ),
    ];
    // FDB entries carry the remote as raw bytes (family AF_BRIDGE).
    let fdb = [
        neighbour_message(
            VX_INDEX,
            NeighbourState::Permanent,
            NeighbourAddress::Other(vec![192, 168, 1, 2]),
            [2, 0, 0, 0, 0, 2],
        ),
        neighbour_message(
            VX_INDEX,
            NeighbourState::Permanent,
            NeighbourAddress::Other(vec![1, 2, 3]),
            [2, 0, 0, 0, 0, 4],
        ),
        neighbour_message(
            VX_INDEX,
            NeighbourState::Noarp,
            NeighbourAddress::Other(vec![192, 168, 1, 5]),
            [2, 0, 0, 0, 0, 5],
        ),
    ];
    let mut state = KernelState::default();
    peers(&mut state, "vxlan.trellis", VX_INDEX, &neighbours, &fdb);
    assert_eq!(
        state.neighbours,
        [Neighbour {
            dev: "vxlan.trellis".into(),
            ip: "10.244.2.0".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 2])
        }]
    );
    assert_eq!(
        state.fdb,
        [FdbEntry {
            dev: "vxlan.trellis".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst: "192.168.1.2".parse().unwrap()
        }]
    );
}

#[test]
fn a_failed_ipv4_route_dump_fails_the_whole_read() {
    let mut refusal = ErrorMessage::default();
    refusal.code = NonZeroI32::new(-16);
    let routes =
        vec![(AddressFamily::Inet, Err(rtnetlink::Error::NetlinkError(refusal))), (AddressFamily::Inet6, Ok(vec![]))];
    let error = observed("vxlan.trellis", &[], &[], routes).unwrap_err();
    assert_eq!(error.errno(), Some(16), "{error}");
}

#[test]
fn host_routes_in_table_main_name_the_interface_a_pod_address_leaves_through() {
    let dev = |mut m: RouteMessage, oif: u32| {
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    };
    let routes = vec![
        dev(message("10.244.1.5/32", 254, 3, RouteType::Unicast), 2),
        dev(message("fd00::5/128", 254, 3, RouteType::Unicast), VX_INDEX),
        // Not host routes of table main: a block, the local table, a blackhole, an unknown link.
        dev(message("10.244.1.0/26", 254, 3, RouteType::Unicast), 2),
        dev(message("10.244.1.6/32", 255, 3, RouteType::Unicast), 2),
        message("10.244.1.7/32", 254, 3, RouteType::BlackHole),
        dev(message("10.244.1.8/32", 254, 3, RouteType::Unicast), 99),
    ];
    let got = super::host_route_interfaces(&routes, &names());
    let want = BTreeMap::from([
        ("10.244.1.5".parse::<IpAddr>().unwrap(), "eth0".to_string()),
        ("fd00::5".parse::<IpAddr>().unwrap(), "vxlan.trellis".to_string()),
    ]);
    assert_eq!(got, want);
}
