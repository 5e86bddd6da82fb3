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
//! * [`host`] — one-shot reads outside the loop (interfaces for autodetection, host routes
//!   for the policy enforcer) and route notifications.
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
pub mod host;
mod owned_links;
mod pipeline;

use std::collections::HashMap;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::RouteMessage;

use super::caps::{self, LinkProbe, ProbeOutcome, TunnelKind};
use super::{Kernel, KernelError, sysctl};
use crate::model::{Capabilities, Change, IPIP_DEVICE, KernelState, MacAddr, OWNER_ALIAS, RouteKind, VxlanTunnel};
use error::{EBUSY, EEXIST, ENODEV, gone_ok, nl_error};
pub use events::{KernelEvent, subscribe, watch_file};
pub use owned_links::OwnedLinks;

/// Changes that are one request each on an existing device (neighbours, FDB entries,
/// routes): the kind a pass makes by the thousand, sent through [`pipeline`].
fn per_peer(change: &Change) -> bool {
    matches!(
        change,
        Change::AddNeighbour(_)
            | Change::UpdateNeighbour(_)
            | Change::DelNeighbour(_)
            | Change::AddFdb(_)
            | Change::UpdateFdb(_)
            | Change::DelFdb(_)
            | Change::AddRoute(_)
            | Change::UpdateRoute(_)
            | Change::DelRoute(_)
            | Change::DelStrayRoute(_)
    )
}

/// How a refused per-peer change is named in its error (built only on failure: a batch has
/// thousands of successes).
fn per_peer_op(change: &Change) -> String {
    match change {
        Change::AddNeighbour(n) | Change::UpdateNeighbour(n) => format!("replace neighbour {} dev {}", n.ip, n.dev),
        Change::DelNeighbour(n) => format!("del neighbour {} dev {}", n.ip, n.dev),
        Change::AddFdb(f) | Change::UpdateFdb(f) => format!("replace fdb {} dev {} dst {}", f.mac, f.dev, f.dst),
        Change::DelFdb(f) => format!("del fdb {} dev {} dst {}", f.mac, f.dev, f.dst),
        Change::AddRoute(r) | Change::UpdateRoute(r) => format!("replace route {}", r.dst),
        Change::DelRoute(r) => format!("del route {}", r.dst),
        Change::DelStrayRoute(r) => format!("del route {} table {}", r.dst, r.table),
        other => other.to_string(),
    }
}

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

    /// The request for a per-peer change (neighbour, FDB entry, route; see [`per_peer`]) and
    /// whether it deletes; device indexes come from `indexes` (looked up on first use).
    async fn per_peer_request(
        &self,
        change: &Change,
        indexes: &mut HashMap<String, u32>,
    ) -> Result<(pipeline::Request, bool), KernelError> {
        let replace = NLM_F_CREATE | NLM_F_REPLACE;
        Ok(match change {
            Change::AddNeighbour(n) | Change::UpdateNeighbour(n) => {
                let index = self.cached_index(&n.dev, indexes).await?;
                let message = RouteNetlinkMessage::NewNeighbour(encode::neighbour_add(index, n));
                (pipeline::Request { message, flags: replace }, false)
            }
            Change::DelNeighbour(n) => {
                let index = self.cached_index(&n.dev, indexes).await?;
                let message = RouteNetlinkMessage::DelNeighbour(encode::neighbour_del(index, n));
                (pipeline::Request { message, flags: 0 }, true)
            }
            Change::AddFdb(f) | Change::UpdateFdb(f) => {
                let index = self.cached_index(&f.dev, indexes).await?;
                let message = RouteNetlinkMessage::NewNeighbour(encode::fdb_add(index, f));
                (pipeline::Request { message, flags: replace }, false)
            }
            Change::DelFdb(f) => {
                let index = self.cached_index(&f.dev, indexes).await?;
                let message = RouteNetlinkMessage::DelNeighbour(encode::fdb_del(index, f));
                (pipeline::Request { message, flags: 0 }, true)
            }
            Change::AddRoute(r) | Change::UpdateRoute(r) | Change::DelRoute(r) => {
                let oif = match &r.kind {
                    RouteKind::Unicast { dev, .. } => Some(self.cached_index(dev, indexes).await?),
                    RouteKind::Blackhole => None,
                };
                let message = encode::route_message(r, oif);
                if matches!(change, Change::DelRoute(_)) {
                    let message = RouteNetlinkMessage::DelRoute(message);
                    (pipeline::Request { message, flags: 0 }, true)
                } else {
                    // NLM_F_CREATE|NLM_F_REPLACE: atomic, never delete-then-add.
                    let message = RouteNetlinkMessage::NewRoute(message);
                    (pipeline::Request { message, flags: replace }, false)
                }
            }
            Change::DelStrayRoute(r) => {
                let message = RouteNetlinkMessage::DelRoute(encode::stray_route_message(r));
                (pipeline::Request { message, flags: 0 }, true)
            }
            other => return Err(KernelError::Unsupported(format!("not a per-peer change: {other}"))),
        })
    }

    /// A device's index, looked up once per batch: within a run of per-peer changes no link
    /// changes. A failed lookup is not remembered (every change gets its own error).
    async fn cached_index(&self, dev: &str, indexes: &mut HashMap<String, u32>) -> Result<u32, KernelError> {
        if let Some(index) = indexes.get(dev) {
            return Ok(*index);
        }
        let index = self.index(dev).await?;
        indexes.insert(dev.to_string(), index);
        Ok(index)
    }

    /// Per-peer changes with many requests in flight ([`pipeline`]): the messages, flags and
    /// errors of one-at-a-time requests, in order, one result per change.
    async fn apply_per_peer(&self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        let mut indexes = HashMap::new();
        let mut results: Vec<Option<Result<(), KernelError>>> = Vec::with_capacity(changes.len());
        let mut requests = Vec::with_capacity(changes.len());
        // (result slot, deletion) of each request sent.
        let mut sent = Vec::with_capacity(changes.len());
        for change in changes {
            match self.per_peer_request(change, &mut indexes).await {
                Ok((request, deletion)) => {
                    sent.push((results.len(), deletion));
                    requests.push(request);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let (answers, socket_error) = pipeline::execute(&requests).await;
        for ((slot, deletion), answer) in sent.into_iter().zip(answers) {
            let result = match answer {
                Some(0) => Ok(()),
                Some(errno) => Err(KernelError::Netlink {
                    op: per_peer_op(&changes[slot]),
                    errno: Some(errno),
                    message: std::io::Error::from_raw_os_error(errno).to_string(),
                }),
                None => Err(KernelError::Netlink {
                    op: per_peer_op(&changes[slot]),
                    errno: None,
                    message: socket_error.as_ref().map_or("no answer".to_string(), ToString::to_string),
                }),
            };
            results[slot] = Some(if deletion { gone_ok(result) } else { result });
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
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
            per_peer_change => self.apply_per_peer(std::slice::from_ref(per_peer_change)).await.pop().unwrap_or(Ok(())),
        }
    }

    /// Runs of per-peer changes go through [`pipeline`]; everything else one at a time.
    async fn apply_many(&self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        let mut results = Vec::with_capacity(changes.len());
        let mut rest = changes;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|c| per_peer(c)).count();
            if run == 0 {
                results.push(self.apply_one(first).await);
                rest = &rest[1..];
            } else {
                results.extend(self.apply_per_peer(&rest[..run]).await);
                rest = &rest[run..];
            }
        }
        results
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

    fn module_loaded(&self, module: &str) -> bool {
        caps::module_loaded(module)
    }
}
