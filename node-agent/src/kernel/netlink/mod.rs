//! The [`Kernel`] implementation over rtnetlink (pinned: this directory is the only code that
//! knows rtnetlink, so a bump touches nothing else), in layers as netavark keeps its netlink:
//!
//! * [`decode`] — kernel answers → the observed state; [`encode`] — model values → request
//!   messages. Both pure, tested with messages built in memory.
//! * this file — the I/O: the socket, one small method per kernel operation (index lookups,
//!   requests, dumps); `error.rs` maps rtnetlink errors with their errno. A batch keeps going
//!   past a refused change and aggregates the failures ([`crate::kernel::apply`]).
//! * `events.rs` — notifications that trigger a pass ([`subscribe`]), narrowed by
//!   [`OwnedLinks`] (pure).
//!
//! A [`NetlinkKernel`] owns a netlink socket opened in the network namespace of the thread that
//! created it; tests put that thread in a fresh namespace with `setns()`, the CLI runs under
//! `ip netns exec`. Every write is idempotent where the kernel allows it: routes, neighbours,
//! FDB entries and addresses use `NLM_F_CREATE|NLM_F_REPLACE`; deleting something already gone
//! (ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL) counts as success.

pub mod decode;
pub mod encode;
mod error;
mod events;
mod owned_links;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::RouteMessage;

use super::caps::{self, LinkProbe, ProbeOutcome, TunnelKind};
use super::{Kernel, KernelError, sysctl};
use crate::model::{
    Capabilities, Change, FdbEntry, IPIP_DEVICE, KernelState, MacAddr, Neighbour, OWNER_ALIAS, Route, RouteKind,
    VxlanTunnel,
};
use error::{EBUSY, EEXIST, ENODEV, gone_ok, nl_error};
pub use events::{KernelEvent, subscribe, watch_file};
pub use owned_links::OwnedLinks;

/// The kernel of the creating thread's network namespace, over rtnetlink.
pub struct NetlinkKernel {
    handle: Handle,
    /// Name used for capability detection when no VXLAN device name is known.
    vxlan_device: String,
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
        self.handle
            .link()
            .add(encode::vxlan_link(t, uplink))
            .execute()
            .await
            .map_err(|e| nl_error(format!("create vxlan {}", t.name), e))?;
        // The owner mark (an alias is not taken at creation by every kernel: set it after).
        self.set_owner(&t.name, true).await
    }

    /// Sets or clears the owner mark (an empty alias removes it).
    async fn set_owner(&self, dev: &str, owned: bool) -> Result<(), KernelError> {
        let index = self.index(dev).await?;
        let alias = if owned { OWNER_ALIAS } else { "" };
        self.set_link(encode::owner_mark(index, owned), &format!("set {dev} alias {alias:?}")).await
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
        match self.handle.link().add(encode::ipip_link(IPIP_DEVICE)).execute().await {
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
        if let Some(mac) = mac
            && let Err(e) = self.set_link(encode::link_mac(index, mac), &format!("set {dev} address")).await
        {
            // Devices without live MAC change want to be down for it.
            if e.errno() != Some(EBUSY) {
                return Err(e);
            }
            self.set_link(encode::link_state(index, None, Some(false)), &format!("set {dev} down")).await?;
            let result = self.set_link(encode::link_mac(index, mac), &format!("set {dev} address")).await;
            if decode::is_up(&link) && up.is_none() {
                self.set_link(encode::link_state(index, None, Some(true)), &format!("set {dev} up")).await?;
            }
            result?;
        }
        if mtu.is_some() || up.is_some() {
            self.set_link(encode::link_state(index, mtu, up), &format!("set {dev}")).await?;
        }
        Ok(())
    }

    async fn address(&self, dev: &str, address: IpNet, add: bool) -> Result<(), KernelError> {
        let index = self.index(dev).await?;
        if add {
            let mut request = self.handle.address().add(index, address.addr(), address.prefix_len()).replace();
            *request.message_mut() = encode::address_add(dev, index, address);
            return request.execute().await.map_err(|e| nl_error(format!("add address {address} dev {dev}"), e));
        }
        gone_ok(
            self.handle
                .address()
                .del(encode::address_del(index, address))
                .execute()
                .await
                .map_err(|e| nl_error(format!("del address {address} dev {dev}"), e)),
        )
    }

    async fn neighbour(&self, n: &Neighbour, add: bool) -> Result<(), KernelError> {
        let index = self.index(&n.dev).await?;
        if add {
            let mut request = self.handle.neighbours().add(index, n.ip).replace();
            *request.message_mut() = encode::neighbour_add(index, n);
            return request
                .execute()
                .await
                .map_err(|e| nl_error(format!("replace neighbour {} dev {}", n.ip, n.dev), e));
        }
        self.del_neighbour_message(encode::neighbour_del(index, n), format!("del neighbour {} dev {}", n.ip, n.dev))
            .await
    }

    async fn fdb(&self, f: &FdbEntry, add: bool) -> Result<(), KernelError> {
        let index = self.index(&f.dev).await?;
        if add {
            let mut request = self.handle.neighbours().add_bridge(index, &f.mac.0).replace();
            *request.message_mut() = encode::fdb_add(index, f);
            return request
                .execute()
                .await
                .map_err(|e| nl_error(format!("replace fdb {} dev {} dst {}", f.mac, f.dev, f.dst), e));
        }
        self.del_neighbour_message(encode::fdb_del(index, f), format!("del fdb {} dev {} dst {}", f.mac, f.dev, f.dst))
            .await
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
        let message = encode::route_message(route, oif);
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

    /// The neighbour table (`family` None) or the FDB (`AddressFamily::Bridge`).
    async fn dump_neighbours(
        &self,
        family: Option<AddressFamily>,
        op: &str,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        let mut request = self.handle.neighbours().get();
        if let Some(family) = family {
            request = request.set_address_family(family);
        }
        request.execute().try_collect().await.map_err(|e| nl_error(op, e))
    }

    async fn dump_addresses(&self) -> Result<Vec<AddressMessage>, KernelError> {
        self.handle.address().get().execute().try_collect().await.map_err(|e| nl_error("dump addresses", e))
    }

    /// Routes of one family in every table; the answer as it came (decoding judges a failure).
    async fn dump_routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        self.handle.route().get(query).execute().try_collect().await
    }

    async fn dump_links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        self.handle.link().get().execute().try_collect().await.map_err(|e| nl_error("dump links", e))
    }
}

impl Kernel for NetlinkKernel {
    async fn read(&self, vxlan_name: &str) -> Result<KernelState, KernelError> {
        let links = self.dump_links().await?;
        let addresses = self.dump_addresses().await?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            routes.push((family, self.dump_routes(family).await));
        }
        let mut state = decode::observed(vxlan_name, &links, &addresses, routes)?;
        if let Some(index) = decode::link_index(&links, vxlan_name) {
            // Neighbours (IP -> MAC) and FDB entries (MAC -> remote IP) are both neighbour
            // messages; only the permanent ones on our device are ours.
            let neighbours = self.dump_neighbours(None, "dump neighbours").await?;
            let fdb = self.dump_neighbours(Some(AddressFamily::Bridge), "dump fdb").await?;
            decode::peers(&mut state, vxlan_name, index, &neighbours, &fdb);
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
                    .del(encode::stray_route_message(r))
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
        decode::link_mtu(&link).ok_or_else(|| KernelError::NoSuchDevice(name.to_string()))
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
            TunnelKind::Ipip => encode::ipip_link(name),
            TunnelKind::Vxlan => encode::probe_vxlan_link(name),
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
