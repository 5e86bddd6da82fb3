//! The [`Kernel`] implementation over rtnetlink (the only file that knows rtnetlink: the crate
//! is pinned and moves fast, so a bump touches nothing else).
//!
//! A [`NetlinkKernel`] owns a netlink socket opened in the network namespace of the thread that
//! created it; tests put that thread in a fresh namespace with `setns()`, the CLI runs under
//! `ip netns exec`. Every write is idempotent where the kernel allows it: routes, neighbours,
//! FDB entries and addresses use `NLM_F_CREATE|NLM_F_REPLACE`; deleting something already gone
//! (ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL) counts as success.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkIpIp, LinkUnspec, LinkVxlan, MulticastGroup};
use tokio::sync::mpsc;

use super::caps::{self, LinkProbe, ProbeOutcome, TunnelKind};
use super::{Kernel, KernelError, sysctl};
use crate::model::{
    Capabilities, Change, FdbEntry, IPIP_ADDRESS_LABEL, IPIP_DEVICE, IpipDevice, KernelState, MacAddr, Neighbour,
    OWNER_ALIAS, ROUTE_PROTOCOL, Route, RouteKind, StrayRoute, VxlanDevice, VxlanTunnel, address_label,
};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EBUSY: i32 = 16;
const EADDRNOTAVAIL: i32 = 99;

/// The kernel of the creating thread's network namespace, over rtnetlink.
pub struct NetlinkKernel {
    handle: Handle,
    /// Name used for capability detection when no VXLAN device name is known.
    vxlan_device: String,
}

fn nl_error(op: impl Into<String>, error: rtnetlink::Error) -> KernelError {
    let op = op.into();
    match error {
        rtnetlink::Error::NetlinkError(msg) => {
            let errno = msg.code.map(|c| -c.get());
            let message = match errno {
                Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
                None => msg.to_string(),
            };
            KernelError::Netlink { op, errno, message }
        }
        other => KernelError::Netlink { op, errno: None, message: other.to_string() },
    }
}

/// Treats "already gone" as success for deletions.
fn gone_ok(result: Result<(), KernelError>) -> Result<(), KernelError> {
    match result {
        Err(e) if matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) => Ok(()),
        other => other,
    }
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mtu(m: &LinkMessage) -> Option<u32> {
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
fn owner_marked(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(x) if x == OWNER_ALIAS))
}

fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

fn vxlan_device(m: &LinkMessage, names: &BTreeMap<u32, String>, addresses: Vec<IpNet>) -> Option<VxlanDevice> {
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

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn route_metric(m: &RouteMessage) -> Option<u32> {
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
                AddressFamily::Inet => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                AddressFamily::Inet6 => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
                _ => None,
            })?;
        (m.header.destination_prefix_length, ip)
    };
    IpNet::new(ip, len).ok()
}

/// One of our routes as the planner would have written it (table main, default metric, no
/// TOS or source, blackhole or one gateway), or None for any other shape.
fn parse_route(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Route> {
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
fn decode_routes(
    family: AddressFamily,
    dump: Result<Vec<RouteMessage>, rtnetlink::Error>,
    names: &BTreeMap<u32, String>,
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

/// The delete request for a stray route: type, destination, source, table, protocol, TOS and
/// metric, no next hop (the kernel then deletes the route whatever its next hops).
fn stray_route_message(r: &StrayRoute) -> RouteMessage {
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

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The netlink message for one of our routes (used for replace and delete alike).
fn route_message(route: &Route, oif: Option<u32>) -> RouteMessage {
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

impl NetlinkKernel {
    /// Opens a netlink socket in the calling thread's network namespace. Must be called inside
    /// a tokio runtime (the connection task is spawned on it).
    pub fn new() -> Result<Self, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle, vxlan_device: "vxlan.trellis".to_string() })
    }

    /// Sets the VXLAN device name used by [`Kernel::capabilities`].
    pub fn with_vxlan_device(mut self, name: &str) -> Self {
        self.vxlan_device = name.to_string();
        self
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) => match nl_error(format!("get link {name}"), e) {
                e if e.errno() == Some(ENODEV) => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn index(&self, name: &str) -> Result<u32, KernelError> {
        match self.link(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(KernelError::NoSuchDevice(name.to_string())),
        }
    }

    async fn set_link(&self, message: LinkMessage, op: &str) -> Result<(), KernelError> {
        self.handle.link().set(message).execute().await.map_err(|e| nl_error(op, e))
    }

    async fn create_vxlan(&self, t: &VxlanTunnel) -> Result<(), KernelError> {
        let uplink = self.index(&t.uplink).await?;
        let mut builder = LinkVxlan::new(&t.name, t.vni).dev(uplink).port(t.port).learning(false);
        builder = match t.local {
            IpAddr::V4(v4) => builder.local(v4),
            IpAddr::V6(v6) => builder.local6(v6),
        };
        let message = builder.mtu(t.mtu).address(t.mac.0.to_vec()).up().build();
        self.handle.link().add(message).execute().await.map_err(|e| nl_error(format!("create vxlan {}", t.name), e))?;
        // The owner mark (an alias is not taken at creation by every kernel: set it after).
        self.set_owner(&t.name, true).await
    }

    /// Sets or clears the owner mark (an empty alias removes it).
    async fn set_owner(&self, dev: &str, owned: bool) -> Result<(), KernelError> {
        let index = self.index(dev).await?;
        let alias = if owned { OWNER_ALIAS } else { "" };
        let mark =
            LinkUnspec::new_with_index(index).append_extra_attribute(LinkAttribute::IfAlias(alias.to_string())).build();
        self.set_link(mark, &format!("set {dev} alias {alias:?}")).await
    }

    async fn ensure_tunl0(&self) -> Result<(), KernelError> {
        if self.link(IPIP_DEVICE).await?.is_some() {
            return Ok(());
        }
        if caps::modprobe("ipip") && self.link(IPIP_DEVICE).await?.is_some() {
            return Ok(());
        }
        // Loading the module through rtnetlink also creates the fallback device; then our
        // create is refused with EEXIST, which is what we want.
        match self.handle.link().add(LinkIpIp::new(IPIP_DEVICE).build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) => match nl_error("create tunl0", e) {
                e if e.errno() == Some(EEXIST) => Ok(()),
                e => Err(KernelError::Unsupported(format!("no ipip support in this kernel ({e})"))),
            },
        }
    }

    async fn set_link_attrs(
        &self,
        dev: &str,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        up: Option<bool>,
    ) -> Result<(), KernelError> {
        let link = self.link(dev).await?.ok_or_else(|| KernelError::NoSuchDevice(dev.to_string()))?;
        let index = link.header.index;
        if let Some(mac) = mac {
            let set = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
            if let Err(e) = self.set_link(set, &format!("set {dev} address")).await {
                // Devices without live MAC change want to be down for it.
                if e.errno() != Some(EBUSY) {
                    return Err(e);
                }
                self.set_link(LinkUnspec::new_with_index(index).down().build(), &format!("set {dev} down")).await?;
                let set = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
                let result = self.set_link(set, &format!("set {dev} address")).await;
                if is_up(&link) && up.is_none() {
                    self.set_link(LinkUnspec::new_with_index(index).up().build(), &format!("set {dev} up")).await?;
                }
                result?;
            }
        }
        if mtu.is_some() || up.is_some() {
            let mut builder = LinkUnspec::new_with_index(index);
            if let Some(mtu) = mtu {
                builder = builder.mtu(mtu);
            }
            builder = match up {
                Some(true) => builder.up(),
                Some(false) => builder.down(),
                None => builder,
            };
            self.set_link(builder.build(), &format!("set {dev}")).await?;
        }
        Ok(())
    }

    async fn address(&self, dev: &str, address: IpNet, add: bool) -> Result<(), KernelError> {
        let index = self.index(dev).await?;
        if add {
            let mut request = self.handle.address().add(index, address.addr(), address.prefix_len()).replace();
            if let Some(label) = address_label(dev)
                && address.addr().is_ipv4()
            {
                request.message_mut().attributes.push(AddressAttribute::Label(label.to_string()));
            }
            return request.execute().await.map_err(|e| nl_error(format!("add address {address} dev {dev}"), e));
        }
        let mut m = AddressMessage::default();
        m.header.family = family(address.addr());
        m.header.prefix_len = address.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(address.addr()));
        m.attributes.push(AddressAttribute::Address(address.addr()));
        gone_ok(
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(|e| nl_error(format!("del address {address} dev {dev}"), e)),
        )
    }

    async fn neighbour(&self, n: &Neighbour, add: bool) -> Result<(), KernelError> {
        let index = self.index(&n.dev).await?;
        if add {
            return self
                .handle
                .neighbours()
                .add(index, n.ip)
                .link_layer_address(&n.mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error(format!("replace neighbour {} dev {}", n.ip, n.dev), e));
        }
        let mut m = NeighbourMessage::default();
        m.header.family = family(n.ip);
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
        self.del_neighbour_message(m, format!("del neighbour {} dev {}", n.ip, n.dev)).await
    }

    async fn fdb(&self, f: &FdbEntry, add: bool) -> Result<(), KernelError> {
        let index = self.index(&f.dev).await?;
        if add {
            return self
                .handle
                .neighbours()
                .add_bridge(index, &f.mac.0)
                .destination(f.dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error(format!("replace fdb {} dev {} dst {}", f.mac, f.dev, f.dst), e));
        }
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
        self.del_neighbour_message(m, format!("del fdb {} dev {} dst {}", f.mac, f.dev, f.dst)).await
    }

    /// Deletes a neighbour or FDB entry; one that is already gone counts as deleted.
    async fn del_neighbour_message(&self, m: NeighbourMessage, op: String) -> Result<(), KernelError> {
        gone_ok(self.handle.neighbours().del(m).execute().await.map_err(|e| nl_error(op, e)))
    }

    async fn route(&self, route: &Route, add: bool) -> Result<(), KernelError> {
        let oif = match &route.kind {
            RouteKind::Unicast { dev, .. } => Some(self.index(dev).await?),
            RouteKind::Blackhole => None,
        };
        let message = route_message(route, oif);
        if add {
            // NLM_F_CREATE|NLM_F_REPLACE: atomic, never delete-then-add.
            return self
                .handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error(format!("replace route {}", route.dst), e));
        }
        gone_ok(
            self.handle
                .route()
                .del(message)
                .execute()
                .await
                .map_err(|e| nl_error(format!("del route {}", route.dst), e)),
        )
    }

    /// (IP, MAC) of the permanent neighbour messages on link `index`: the neighbour table
    /// (`family` None) or the FDB (`AddressFamily::Bridge`).
    async fn permanent_entries(
        &self,
        index: u32,
        family: Option<AddressFamily>,
        op: &str,
    ) -> Result<Vec<(IpAddr, MacAddr)>, KernelError> {
        let mut request = self.handle.neighbours().get();
        if let Some(family) = family {
            request = request.set_address_family(family);
        }
        let messages: Vec<NeighbourMessage> = request.execute().try_collect().await.map_err(|e| nl_error(op, e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| Some((neighbour_ip(m)?, neighbour_mac(m)?)))
            .collect())
    }

    async fn dump_links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        self.handle.link().get().execute().try_collect().await.map_err(|e| nl_error("dump links", e))
    }
}

impl Kernel for NetlinkKernel {
    async fn read(&self, vxlan_name: &str) -> Result<KernelState, KernelError> {
        let links = self.dump_links().await?;
        let names: BTreeMap<u32, String> =
            links.iter().filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_string()))).collect();
        let tunl0 = links.iter().find(|l| link_name(l) == Some(IPIP_DEVICE));
        let vxlan = links.iter().find(|l| link_name(l) == Some(vxlan_name));

        let addresses: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await.map_err(|e| nl_error("dump addresses", e))?;
        // (address, label) of a link, IPv6 link-local ones left out (the kernel adds those).
        let addresses_of = |index: u32| -> Vec<(IpNet, Option<String>)> {
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
        };
        let nets = |list: Vec<(IpNet, Option<String>)>| list.into_iter().map(|(net, _)| net).collect::<Vec<_>>();

        let stale_vxlan = links
            .iter()
            .filter(|l| link_name(l).is_some_and(|n| n != vxlan_name))
            .filter(|l| link_info(l).0 == Some(&InfoKind::Vxlan))
            .filter(|l| owner_marked(l))
            .filter_map(|l| link_name(l).map(str::to_string))
            .collect();
        let mut state = KernelState {
            stale_vxlan,
            ipip: tunl0.and_then(|l| {
                let (ours, foreign): (Vec<_>, Vec<_>) = addresses_of(l.header.index)
                    .into_iter()
                    .partition(|(_, label)| label.as_deref() == Some(IPIP_ADDRESS_LABEL));
                Some(IpipDevice {
                    mtu: link_mtu(l)?,
                    up: is_up(l),
                    owned: owner_marked(l),
                    addresses: nets(ours),
                    foreign_addresses: nets(foreign),
                })
            }),
            vxlan: vxlan.and_then(|l| vxlan_device(l, &names, nets(addresses_of(l.header.index)))),
            ..Default::default()
        };

        // Every table: the protocol number is the mark, wherever the route is.
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let dump = self.handle.route().get(query).execute().try_collect().await;
            decode_routes(family, dump, &names, &mut state)?;
        }
        state.stray_routes.sort();

        if let Some(vx) = vxlan {
            let index = vx.header.index;
            // Neighbours (IP -> MAC) and FDB entries (MAC -> remote IP) are both neighbour
            // messages; only the permanent ones on our device are ours.
            for (ip, mac) in self.permanent_entries(index, None, "dump neighbours").await? {
                state.neighbours.push(Neighbour { dev: vxlan_name.to_string(), ip, mac });
            }
            for (dst, mac) in self.permanent_entries(index, Some(AddressFamily::Bridge), "dump fdb").await? {
                state.fdb.push(FdbEntry { dev: vxlan_name.to_string(), mac, dst });
            }
            state.neighbours.sort();
            state.fdb.sort();
        }
        Ok(state)
    }

    async fn apply_one(&self, change: &Change) -> Result<(), KernelError> {
        match change {
            Change::CreateVxlan(t) => self.create_vxlan(t).await,
            Change::DeleteVxlan { name, .. } => match self.link(name).await? {
                Some(link) => gone_ok(
                    self.handle
                        .link()
                        .del(link.header.index)
                        .execute()
                        .await
                        .map_err(|e| nl_error(format!("delete {name}"), e)),
                ),
                None => Ok(()),
            },
            Change::EnsureTunl0 => self.ensure_tunl0().await,
            Change::SetOwner { dev, owned } => self.set_owner(dev, *owned).await,
            Change::SetLink { dev, mtu, mac, up } => self.set_link_attrs(dev, *mtu, *mac, *up).await,
            Change::AddAddress { dev, address } => self.address(dev, *address, true).await,
            Change::DelAddress { dev, address } => self.address(dev, *address, false).await,
            Change::AddNeighbour(n) | Change::UpdateNeighbour(n) => self.neighbour(n, true).await,
            Change::DelNeighbour(n) => self.neighbour(n, false).await,
            Change::AddFdb(f) | Change::UpdateFdb(f) => self.fdb(f, true).await,
            Change::DelFdb(f) => self.fdb(f, false).await,
            Change::AddRoute(r) | Change::UpdateRoute(r) => self.route(r, true).await,
            Change::DelRoute(r) => self.route(r, false).await,
            Change::DelStrayRoute(r) => gone_ok(
                self.handle
                    .route()
                    .del(stray_route_message(r))
                    .execute()
                    .await
                    .map_err(|e| nl_error(format!("del route {} table {}", r.dst, r.table), e)),
            ),
        }
    }

    async fn capabilities(&self) -> Capabilities {
        caps::detect(self, &self.vxlan_device).await
    }

    async fn supports(&self, kind: TunnelKind) -> bool {
        let existing = match kind {
            TunnelKind::Ipip => IPIP_DEVICE,
            TunnelKind::Vxlan => self.vxlan_device.as_str(),
        };
        caps::supports(self, kind, &[existing]).await
    }

    async fn link_mtu(&self, name: &str) -> Result<u32, KernelError> {
        let link = self.link(name).await?.ok_or_else(|| KernelError::NoSuchDevice(name.to_string()))?;
        link_mtu(&link).ok_or_else(|| KernelError::NoSuchDevice(name.to_string()))
    }

    fn sysctl_get(&self, key: &str) -> Result<String, KernelError> {
        Ok(sysctl::get(key)?)
    }

    fn sysctl_set(&self, key: &str, value: &str) -> Result<bool, KernelError> {
        Ok(sysctl::set(key, value)?)
    }
}

impl LinkProbe for NetlinkKernel {
    async fn link_exists(&self, name: &str) -> bool {
        matches!(self.link(name).await, Ok(Some(_)))
    }

    async fn try_create(&self, kind: TunnelKind, name: &str) -> ProbeOutcome {
        let message = match kind {
            TunnelKind::Ipip => LinkIpIp::new(name).build(),
            // A VXLAN device needs only a VNI; no underlay is touched.
            TunnelKind::Vxlan => LinkVxlan::new(name, 1).port(4789).build(),
        };
        match self.handle.link().add(message).execute().await {
            Ok(()) => {
                if let Ok(Some(link)) = self.link(name).await
                    && let Err(e) = self.handle.link().del(link.header.index).execute().await
                {
                    tracing::warn!(name, error = %e, "cannot delete probe device");
                }
                ProbeOutcome::Created
            }
            Err(e) => match nl_error("probe", e) {
                e if e.errno() == Some(EEXIST) => ProbeOutcome::Exists,
                e => ProbeOutcome::Refused(e.to_string()),
            },
        }
    }

    fn load_module(&self, module: &str) -> bool {
        caps::modprobe(module)
    }
}

/// Something changed that may need a pass: in the kernel (a link, one of our routes, a
/// neighbour, FDB entry or address on one of our devices, our nftables table) or, from
/// [`watch_file`], in the snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEvent;

/// Indexes of the links carrying Trellis' owner mark, kept up to date from link notifications,
/// so that neighbour and address notifications can be narrowed to our devices (ARP/ND churn
/// on the uplink and pod veths is constant and none of our business).
#[derive(Debug, Default)]
pub struct OwnedLinks(std::collections::BTreeSet<u32>);

impl OwnedLinks {
    /// Learns from a link message (a dump entry or a notification).
    pub fn observe(&mut self, message: &RouteNetlinkMessage) {
        match message {
            RouteNetlinkMessage::NewLink(l) if owner_marked(l) => {
                self.0.insert(l.header.index);
            }
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                self.0.remove(&l.header.index);
            }
            _ => {}
        }
    }

    /// Whether a notification may mean drift of what Trellis owns.
    pub fn relevant(&self, message: &RouteNetlinkMessage) -> bool {
        match message {
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => true,
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                u8::from(r.header.protocol) == ROUTE_PROTOCOL
            }
            // Neighbours and FDB entries (family AF_BRIDGE) alike; a deletion does not carry
            // the entry's old state, so the device decides.
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                self.0.contains(&n.header.ifindex)
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => self.0.contains(&a.header.index),
            _ => false,
        }
    }
}

/// Subscribes to link, IPv4/IPv6 route, neighbour and address notifications of the calling
/// thread's network namespace and to changes of the nftables table `inet trellis` (call inside
/// a tokio runtime). Each relevant notification becomes one [`KernelEvent`]; the reconcile
/// loop debounces them.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<KernelEvent>, KernelError> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).map_err(KernelError::Socket)?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    super::nft_events::subscribe(crate::nat::TABLE, tx.clone())?;
    tokio::spawn(async move {
        // The devices that exist already; notifications keep the set current from here on
        // (the subscription came first, so nothing in between is missed).
        let mut owned = OwnedLinks::default();
        match handle.link().get().execute().try_collect::<Vec<LinkMessage>>().await {
            Ok(links) => links.into_iter().for_each(|l| owned.observe(&RouteNetlinkMessage::NewLink(l))),
            Err(error) => tracing::warn!(%error, "cannot list links; our devices are learnt from notifications"),
        }
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(inner) = &message.payload {
                owned.observe(inner);
                if owned.relevant(inner) && tx.send(KernelEvent).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Sends a [`KernelEvent`] whenever `path`'s modification time or size changes (polled every
/// `interval`), so editing a standalone snapshot is applied within a second, not at the next
/// resync. Call inside a tokio runtime; stops when the receiver is gone.
pub fn watch_file(path: std::path::PathBuf, interval: std::time::Duration, tx: mpsc::UnboundedSender<KernelEvent>) {
    let stamp = move || std::fs::metadata(&path).ok().map(|m| (m.modified().ok(), m.len()));
    tokio::spawn(async move {
        let mut last = stamp();
        loop {
            tokio::time::sleep(interval).await;
            let now = stamp();
            if now != last {
                last = now;
                if tx.send(KernelEvent).is_err() {
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests;
