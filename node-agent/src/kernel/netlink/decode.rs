//! Kernel answers → the observed state ([`KernelState`]). Pure: these functions see only
//! netlink-packet-route messages already received, so they are tested with messages built in
//! memory, without root.
//!
//! What is ours is decided here, by the marks: `tunl0`'s owner alias and labelled address, the
//! VXLAN device by name, other VXLAN devices only with the owner alias, routes by protocol 84
//! (planner-shaped ones in table main as routes, every other shape as a stray route), and only
//! permanent neighbour/FDB entries on the VXLAN device. Foreign routes in table main are kept by
//! destination only.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType};

use super::error::nl_error;
use crate::kernel::KernelError;
use crate::model::{
    FdbEntry, IPIP_ADDRESS_LABEL, IPIP_DEVICE, IpipDevice, KernelState, MacAddr, Neighbour, OWNER_ALIAS,
    ROUTE_PROTOCOL, Route, RouteKind, StrayRoute, VxlanDevice,
};

/// Link names by index, to name the devices routes and VXLAN underlays point at.
pub type LinkNames = BTreeMap<u32, String>;

pub fn link_names(links: &[LinkMessage]) -> LinkNames {
    links.iter().filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_string()))).collect()
}

/// The index of the link called `name`.
pub fn link_index(links: &[LinkMessage], name: &str) -> Option<u32> {
    links.iter().find(|l| link_name(l) == Some(name)).map(|l| l.header.index)
}

pub fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

fn link_mac(m: &LinkMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => MacAddr::from_bytes(b),
        _ => None,
    })
}

fn link_info(m: &LinkMessage) -> (Option<&InfoKind>, Option<&InfoData>) {
    let infos = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let kind = infos.and_then(|i| {
        i.iter().find_map(|x| match x {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        })
    });
    let data = infos.and_then(|i| {
        i.iter().find_map(|x| match x {
            LinkInfo::Data(d) => Some(d),
            _ => None,
        })
    });
    (kind, data)
}

/// Whether the link carries Trellis' owner mark ([`OWNER_ALIAS`]).
pub fn owner_marked(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(x) if x == OWNER_ALIAS))
}

pub fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

fn vxlan_device(m: &LinkMessage, names: &LinkNames, addresses: Vec<IpNet>) -> Option<VxlanDevice> {
    let (kind, data) = link_info(m);
    if kind != Some(&InfoKind::Vxlan) {
        return None;
    }
    let mut dev = VxlanDevice {
        name: link_name(m)?.to_string(),
        vni: 0,
        port: 0,
        local: None,
        uplink: None,
        learning: false,
        mac: link_mac(m)?,
        mtu: link_mtu(m)?,
        up: is_up(m),
        addresses,
    };
    if let Some(InfoData::Vxlan(infos)) = data {
        for info in infos {
            match info {
                InfoVxlan::Id(v) => dev.vni = *v,
                InfoVxlan::Port(p) => dev.port = *p,
                InfoVxlan::Local(a) => dev.local = Some(IpAddr::V4(*a)),
                InfoVxlan::Local6(a) => dev.local = Some(IpAddr::V6(*a)),
                InfoVxlan::Link(i) => dev.uplink = names.get(i).cloned(),
                InfoVxlan::Learning(l) => dev.learning = *l,
                _ => {}
            }
        }
    }
    Some(dev)
}

/// (address, label) of link `index`, sorted; IPv6 link-local ones left out (the kernel adds
/// those).
fn addresses_of(addresses: &[AddressMessage], index: u32) -> Vec<(IpNet, Option<String>)> {
    let mut out: Vec<(IpNet, Option<String>)> = addresses
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            if let IpAddr::V6(v6) = ip
                && v6.is_unicast_link_local()
            {
                return None;
            }
            let label = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Label(l) => Some(l.clone()),
                _ => None,
            });
            Some((IpNet::new(ip, a.header.prefix_len).ok()?, label))
        })
        .collect();
    out.sort();
    out
}

fn nets(list: Vec<(IpNet, Option<String>)>) -> Vec<IpNet> {
    list.into_iter().map(|(net, _)| net).collect()
}

/// `tunl0`: only the address with our label is ours.
fn ipip_device(link: &LinkMessage, addresses: &[AddressMessage]) -> Option<IpipDevice> {
    let (ours, foreign): (Vec<_>, Vec<_>) = addresses_of(addresses, link.header.index)
        .into_iter()
        .partition(|(_, label)| label.as_deref() == Some(IPIP_ADDRESS_LABEL));
    Some(IpipDevice {
        mtu: link_mtu(link)?,
        up: is_up(link),
        owned: owner_marked(link),
        addresses: nets(ours),
        foreign_addresses: nets(foreign),
    })
}

/// The observed state from the link, address and route dumps (`routes`: the answer of each
/// family's dump, IPv4 first). Neighbours and FDB entries are added by [`peers`]. A failed
/// route dump is an error: an empty list would make every route of that family look gone.
pub fn observed(
    vxlan_name: &str,
    links: &[LinkMessage],
    addresses: &[AddressMessage],
    routes: Vec<(AddressFamily, Result<Vec<RouteMessage>, rtnetlink::Error>)>,
) -> Result<KernelState, KernelError> {
    let names = link_names(links);
    let named = |name: &str| links.iter().find(|l| link_name(l) == Some(name));
    let stale_vxlan = links
        .iter()
        .filter(|l| link_name(l).is_some_and(|n| n != vxlan_name))
        .filter(|l| link_info(l).0 == Some(&InfoKind::Vxlan))
        .filter(|l| owner_marked(l))
        .filter_map(|l| link_name(l).map(str::to_string))
        .collect();
    let mut state = KernelState {
        stale_vxlan,
        ipip: named(IPIP_DEVICE).and_then(|l| ipip_device(l, addresses)),
        vxlan: named(vxlan_name).and_then(|l| vxlan_device(l, &names, nets(addresses_of(addresses, l.header.index)))),
        ..Default::default()
    };
    // Every table: the protocol number is the mark, wherever the route is.
    for (family, dump) in routes {
        decode_routes(family, dump, &names, &mut state)?;
    }
    state.stray_routes.sort();
    Ok(state)
}

/// Adds the permanent neighbour (`neighbours`: the neighbour table's dump) and FDB entries
/// (`fdb`: the bridge family's dump) on link `index`, the VXLAN device `dev`. Both are
/// neighbour messages; everything not permanent or on another link is not ours.
pub fn peers(
    state: &mut KernelState,
    dev: &str,
    index: u32,
    neighbours: &[NeighbourMessage],
    fdb: &[NeighbourMessage],
) {
    for (ip, mac) in permanent_entries(neighbours, index) {
        state.neighbours.push(Neighbour { dev: dev.to_string(), ip, mac });
    }
    for (dst, mac) in permanent_entries(fdb, index) {
        state.fdb.push(FdbEntry { dev: dev.to_string(), mac, dst });
    }
    state.neighbours.sort();
    state.fdb.sort();
}

/// (IP, MAC) of the permanent entries on link `index`.
fn permanent_entries(messages: &[NeighbourMessage], index: u32) -> Vec<(IpAddr, MacAddr)> {
    messages
        .iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| Some((neighbour_ip(m)?, neighbour_mac(m)?)))
        .collect()
}

fn neighbour_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        // FDB entries (family AF_BRIDGE) carry the remote as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_mac(m: &NeighbourMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_bytes(b),
        _ => None,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Host routes (a /32 or /128, unicast, table main; the local table lists the node's own
/// addresses) by destination → the name of the interface they leave through: how the CNI
/// plugin's `<pod IP> dev veth…` route names a pod's host-side interface. The first route to a
/// destination wins.
pub fn host_route_interfaces(routes: &[RouteMessage], names: &LinkNames) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for r in routes {
        let full = if r.header.address_family == AddressFamily::Inet { 32 } else { 128 };
        if r.header.destination_prefix_length != full
            || route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN)
            || r.header.kind != RouteType::Unicast
        {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => route_ip(d),
            _ => None,
        });
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => names.get(i).cloned(),
            _ => None,
        });
        if let (Some(dst), Some(oif)) = (dst, oif) {
            out.entry(dst).or_insert(oif);
        }
    }
    out
}

pub fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

pub fn route_metric(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

/// The metric the kernel gives a route added without one: none for IPv4, 1024 for IPv6.
fn default_metric(family: AddressFamily) -> Option<u32> {
    match family {
        AddressFamily::Inet6 => Some(1024),
        _ => None,
    }
}

fn route_prefix(m: &RouteMessage, source: bool) -> Option<IpNet> {
    let (len, ip) = if source {
        let ip = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Source(s) => route_ip(s),
            _ => None,
        });
        (m.header.source_prefix_length, ip?)
    } else {
        let ip = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(d) => route_ip(d),
                _ => None,
            })
            .or(match m.header.address_family {
                AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                _ => None,
            })?;
        (m.header.destination_prefix_length, ip)
    };
    IpNet::new(ip, len).ok()
}

/// One of our routes as the planner would have written it (table main, default metric, no
/// TOS or source, blackhole or one gateway), or None for any other shape.
fn parse_route(m: &RouteMessage, names: &LinkNames) -> Option<Route> {
    if route_table(m) != u32::from(RouteHeader::RT_TABLE_MAIN)
        || m.header.tos != 0
        || m.header.source_prefix_length != 0
        || route_metric(m).filter(|&p| p != 0) != default_metric(m.header.address_family)
    {
        return None;
    }
    let dst = route_prefix(m, false)?;
    let kind = match m.header.kind {
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unicast => {
            if m.attributes.iter().any(|a| matches!(a, RouteAttribute::MultiPath(_))) {
                return None;
            }
            let gateway = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => route_ip(g),
                _ => None,
            })?;
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })?;
            RouteKind::Unicast {
                gateway,
                dev: names.get(&oif)?.clone(),
                onlink: m.header.flags.contains(RouteFlags::Onlink),
            }
        }
        _ => return None,
    };
    Some(Route { dst, kind })
}

/// What identifies a route of ours that is not in a planner shape, for deleting it.
fn stray_route(m: &RouteMessage) -> Option<StrayRoute> {
    Some(StrayRoute {
        dst: route_prefix(m, false)?,
        src: if m.header.source_prefix_length == 0 { None } else { route_prefix(m, true) },
        table: route_table(m),
        route_type: u8::from(m.header.kind),
        tos: m.header.tos,
        metric: route_metric(m),
    })
}

/// Our routes of one family as the kernel listed them. A failed dump is an error (an empty
/// list would make every route of that family look gone). Messages of another family are
/// skipped: a kernel without IPv6 answers an IPv6 dump with every family's routes.
pub fn decode_routes(
    family: AddressFamily,
    dump: Result<Vec<RouteMessage>, rtnetlink::Error>,
    names: &LinkNames,
    state: &mut KernelState,
) -> Result<(), KernelError> {
    let messages = dump.map_err(|e| nl_error(format!("dump {family:?} routes"), e))?;
    for m in messages {
        if m.header.address_family != family {
            continue;
        }
        if u8::from(m.header.protocol) != ROUTE_PROTOCOL {
            // Where our routes go: remembered so that none of ours replaces it.
            if route_table(&m) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && let Some(dst) = route_prefix(&m, false)
            {
                state.foreign_routes.insert(dst, m.header.protocol.to_string());
            }
            continue;
        }
        match parse_route(&m, names) {
            Some(route) if !state.routes.contains_key(&route.dst) => {
                state.routes.insert(route.dst, route);
            }
            _ => match stray_route(&m) {
                Some(stray) => state.stray_routes.push(stray),
                None => tracing::warn!(?m, "route with our protocol and no destination; cannot sweep it"),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
