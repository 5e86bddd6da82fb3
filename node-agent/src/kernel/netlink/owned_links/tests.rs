//! Which notifications count: built in memory, no kernel needed.

use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};

use super::*;
use crate::model::OWNER_ALIAS;

const VX_INDEX: u32 = 7;
const STATIC: u8 = 4;

fn route(protocol: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.protocol = RouteProtocol::from(protocol);
    m
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
    assert!(owned.relevant(&RouteNetlinkMessage::DelRoute(route(ROUTE_PROTOCOL))));
    assert!(!owned.relevant(&RouteNetlinkMessage::DelRoute(route(STATIC))));
    assert!(owned.relevant(&RouteNetlinkMessage::NewLink(link(2, None))));
    // The mark removed (or the device gone): no longer ours.
    owned.observe(&RouteNetlinkMessage::NewLink(link(VX_INDEX, None)));
    assert!(!owned.relevant(&RouteNetlinkMessage::DelNeighbour(neighbour_on(VX_INDEX))));
}
