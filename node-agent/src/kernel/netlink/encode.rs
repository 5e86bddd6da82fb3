//! Model values → the request messages that make them so. Pure: link indexes are looked up by
//! the caller, so every message is built and tested in memory, without root.
//!
//! Routes, neighbours, FDB entries and addresses are sent with `NLM_F_CREATE|NLM_F_REPLACE`
//! (the I/O side sets the flags); a route's delete request is its add request, and a stray
//! route's names everything that identifies it but no next hop, so the kernel deletes it
//! whatever its next hops are.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::{RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{AddressMessageBuilder, LinkIpIp, LinkUnspec, LinkVxlan};

use crate::model::MacAddr;
use crate::model::{
    FdbEntry, Neighbour, OWNER_ALIAS, ROUTE_PROTOCOL, Route, RouteKind, StrayRoute, VxlanTunnel, address_label,
};

pub fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The VXLAN device, learning off, up, on the underlay link `uplink` (its index). The owner
/// mark is set apart ([`owner_mark`]): not every kernel takes an alias at creation.
pub fn vxlan_link(t: &VxlanTunnel, uplink: u32) -> LinkMessage {
    let mut builder = LinkVxlan::new(&t.name, t.vni).dev(uplink).port(t.port).learning(false);
    builder = match t.local {
        IpAddr::V4(v4) => builder.local(v4),
        IpAddr::V6(v6) => builder.local6(v6),
    };
    builder.mtu(t.mtu).address(t.mac.0.to_vec()).up().build()
}

/// An IPIP device called `name` (creating `tunl0` adopts the fallback device, or loads `ipip`).
pub fn ipip_link(name: &str) -> LinkMessage {
    LinkIpIp::new(name).build()
}

/// A throw-away VXLAN device for the capability probe: it needs only a VNI; no underlay.
pub fn probe_vxlan_link(name: &str) -> LinkMessage {
    LinkVxlan::new(name, 1).port(4789).build()
}

/// Sets Trellis' owner mark on link `index`, or clears it (an empty alias removes it).
pub fn owner_mark(index: u32, owned: bool) -> LinkMessage {
    let alias = if owned { OWNER_ALIAS } else { "" };
    LinkUnspec::new_with_index(index).append_extra_attribute(LinkAttribute::IfAlias(alias.to_string())).build()
}

/// Sets the MAC of link `index`.
pub fn link_mac(index: u32, mac: MacAddr) -> LinkMessage {
    LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build()
}

/// Sets the MTU and/or the up state of link `index`; `None` leaves one alone.
pub fn link_state(index: u32, mtu: Option<u32>, up: Option<bool>) -> LinkMessage {
    let mut builder = LinkUnspec::new_with_index(index);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    match up {
        Some(true) => builder.up(),
        Some(false) => builder.down(),
        None => builder,
    }
    .build()
}

/// An address on link `index`; on `tunl0` an IPv4 one carries our label (the mark that makes
/// it ours on a shared device).
pub fn address_add(dev: &str, index: u32, address: IpNet) -> AddressMessage {
    let mut m = match address.addr() {
        IpAddr::V4(v4) => {
            AddressMessageBuilder::<std::net::Ipv4Addr>::new().index(index).address(v4, address.prefix_len()).build()
        }
        IpAddr::V6(v6) => {
            AddressMessageBuilder::<std::net::Ipv6Addr>::new().index(index).address(v6, address.prefix_len()).build()
        }
    };
    if let Some(label) = address_label(dev)
        && address.addr().is_ipv4()
    {
        m.attributes.push(AddressAttribute::Label(label.to_string()));
    }
    m
}

pub fn address_del(index: u32, address: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(address.addr());
    m.header.prefix_len = address.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(address.addr()));
    m.attributes.push(AddressAttribute::Address(address.addr()));
    m
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
pub fn neighbour_add(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.ip);
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
    m
}

pub fn neighbour_del(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.ip);
    m.header.ifindex = index;
    m.attributes.push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
    m
}

/// `bridge fdb replace <mac> dev <index> dst <dst> self permanent`.
pub fn fdb_add(index: u32, f: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.header.flags = NeighbourFlags::Own;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    m.attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
    m
}

pub fn fdb_del(index: u32, f: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.flags = NeighbourFlags::Own;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    m.attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
    m
}

/// The netlink message for one of our routes (used for replace and delete alike); `oif` is the
/// index of a unicast route's device.
pub fn route_message(route: &Route, oif: Option<u32>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(route.dst.addr());
    m.header.destination_prefix_length = route.dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = RouteScope::Universe;
    m.attributes.push(RouteAttribute::Destination(route.dst.network().into()));
    match &route.kind {
        RouteKind::Blackhole => m.header.kind = RouteType::BlackHole,
        RouteKind::Unicast { gateway, onlink, .. } => {
            m.header.kind = RouteType::Unicast;
            m.attributes.push(RouteAttribute::Gateway((*gateway).into()));
            if let Some(oif) = oif {
                m.attributes.push(RouteAttribute::Oif(oif));
            }
            if *onlink {
                m.header.flags |= RouteFlags::Onlink;
            }
        }
    }
    m
}

/// The delete request for a stray route: type, destination, source, table, protocol, TOS and
/// metric, no next hop (the kernel then deletes the route whatever its next hops).
pub fn stray_route_message(r: &StrayRoute) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.dst.addr());
    m.header.destination_prefix_length = r.dst.prefix_len();
    m.header.table = u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = RouteType::from(r.route_type);
    m.header.tos = r.tos;
    m.attributes.push(RouteAttribute::Table(r.table));
    m.attributes.push(RouteAttribute::Destination(r.dst.network().into()));
    if let Some(src) = r.src {
        m.header.source_prefix_length = src.prefix_len();
        m.attributes.push(RouteAttribute::Source(src.network().into()));
    }
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

#[cfg(test)]
mod tests;
