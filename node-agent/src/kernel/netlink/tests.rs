//! Pure decoding of route dumps: which routes are ours, in which shape, and what a failed
//! dump means. No kernel needed.

use std::num::NonZeroI32;

use rtnetlink::packet_core::ErrorMessage;
use rtnetlink::packet_route::route::RouteNextHop;

use super::*;

const VX_INDEX: u32 = 7;

fn names() -> BTreeMap<u32, String> {
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

fn link(index: u32, alias: Option<&str>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(alias) = alias {
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    }
    m
}

fn neighbour_on(ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = ifindex;
    m
}

fn address_on(index: u32) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m
}

#[test]
fn neighbour_and_address_notifications_count_only_on_our_marked_devices() {
    let mut owned = OwnedLinks::default();
    owned.observe(&RouteNetlinkMessage::NewLink(link(VX_INDEX, Some(OWNER_ALIAS))));
    owned.observe(&RouteNetlinkMessage::NewLink(link(2, None)));
    // A deleted neighbour or FDB entry carries no "permanent" state: the device decides.
    assert!(owned.relevant(&RouteNetlinkMessage::DelNeighbour(neighbour_on(VX_INDEX))));
    assert!(owned.relevant(&RouteNetlinkMessage::NewNeighbour(neighbour_on(VX_INDEX))));
    assert!(owned.relevant(&RouteNetlinkMessage::DelAddress(address_on(VX_INDEX))));
    // ARP churn and address changes on the uplink are not ours.
    assert!(!owned.relevant(&RouteNetlinkMessage::DelNeighbour(neighbour_on(2))));
    assert!(!owned.relevant(&RouteNetlinkMessage::NewAddress(address_on(2))));
    // Routes count by protocol, links always.
    let mut ours = message("10.244.2.0/26", MAIN, OURS, RouteType::Unicast);
    assert!(owned.relevant(&RouteNetlinkMessage::DelRoute(ours.clone())));
    ours.header.protocol = RouteProtocol::from(STATIC);
    assert!(!owned.relevant(&RouteNetlinkMessage::DelRoute(ours)));
    assert!(owned.relevant(&RouteNetlinkMessage::NewLink(link(2, None))));
    // The mark removed (or the device gone): no longer ours.
    owned.observe(&RouteNetlinkMessage::NewLink(link(VX_INDEX, None)));
    assert!(!owned.relevant(&RouteNetlinkMessage::DelNeighbour(neighbour_on(VX_INDEX))));
}
