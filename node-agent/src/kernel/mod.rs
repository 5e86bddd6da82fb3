//! The kernel layer: the part of the host's network stack Trellis owns, behind one trait.
//!
//! Design: [`Kernel::read`] returns the observed state ([`KernelState`], in [`crate::model`]):
//! what Trellis owns *now*, in the same shapes the planner produces, found by its marks, plus the
//! destinations of foreign routes in table main so that no desired route replaces one of them;
//! nothing else is read or touched, so foreign routes, links, addresses and neighbours are safe
//! by construction. The pure [`crate::diff`] turns (current, desired) into ordered
//! [`Change`]s; [`Kernel::apply_one`] executes one of them and [`apply`] runs a batch the
//! netavark way (independent changes keep going, failures are aggregated) and rolls back a half-added peer (neighbour/FDB added but its route refused)
//! as far as nothing in the kernel still needs it.
//!
//! The only implementation, [`netlink::NetlinkKernel`], wraps rtnetlink (pinned) in one module so a
//! bump touches nothing else. It acts on the network namespace of the thread that created it.

pub mod caps;
pub mod netlink;
pub mod nft_events;
pub mod nft_table;
pub mod privilege;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Capabilities, Change, FdbEntry, KernelState, MacAddr, Neighbour, Route, RouteKind};
pub use netlink::NetlinkKernel;

/// A kernel operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused a netlink request. `errno` is positive (e.g. 17 = EEXIST).
    #[error("{op}: {message}")]
    Netlink { op: String, errno: Option<i32>, message: String },
    #[error("no such device {0:?}")]
    NoSuchDevice(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A desired route whose destination already has a route in table main that is not ours.
    #[error(
        "a route to {dst} with proto {protocol} (not Trellis' proto 84) is in table main; Trellis does not take it \
         over: remove it, or move the pool/block"
    )]
    ForeignRoute { dst: IpNet, protocol: String },
}

impl KernelError {
    /// The errno of a refused request, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// The host's network stack as Trellis sees it. All methods act on the namespace the
/// implementation is bound to. Used through generics (not `dyn`), always on one thread.
#[allow(async_fn_in_trait)]
pub trait Kernel {
    /// Reads the owned state; `vxlan_device` names the VXLAN device to look at.
    async fn read(&self, vxlan_device: &str) -> Result<KernelState, KernelError>;
    /// Executes one change (idempotently where the kernel allows: replace, ENOENT on delete is
    /// success).
    async fn apply_one(&self, change: &Change) -> Result<(), KernelError>;
    /// Executes `changes` in order, one result per change, as [`Kernel::apply_one`] would one
    /// after the other (a refused change does not stop the rest). An implementation may keep
    /// many requests in flight as long as the kernel sees them in this order.
    async fn apply_many(&self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            results.push(self.apply_one(change).await);
        }
        results
    }
    /// What this kernel can do. Never fails: a probe that errors means "no".
    async fn capabilities(&self) -> Capabilities;
    /// Whether this kernel can do one tunnel kind (probes only that kind; see
    /// [`caps::CapabilityCache`] for when it is asked).
    async fn supports(&self, kind: caps::TunnelKind) -> bool {
        let all = self.capabilities().await;
        match kind {
            caps::TunnelKind::Ipip => all.ipip,
            caps::TunnelKind::Vxlan => all.vxlan,
        }
    }
    /// MTU of a link (the uplink), to compute the tunnel MTU.
    async fn link_mtu(&self, name: &str) -> Result<u32, KernelError>;
    /// Reads a sysctl (`net.ipv4.ip_forward`) of this namespace.
    fn sysctl_get(&self, key: &str) -> Result<String, KernelError>;
    /// Writes a sysctl unless it already has `value`. Returns whether it changed.
    fn sysctl_set(&self, key: &str, value: &str) -> Result<bool, KernelError>;
}

/// One change the kernel refused.
#[derive(Debug)]
pub struct ChangeFailure {
    pub change: Change,
    pub error: KernelError,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Changes the kernel accepted, in order.
    pub applied: Vec<Change>,
    /// Changes the kernel refused (the batch kept going).
    pub failed: Vec<ChangeFailure>,
    /// Neighbour/FDB entries removed again because their peer's route was refused.
    pub rolled_back: Vec<Change>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Applied changes counted per kind ("route+", "neighbour-", ...), for summaries.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for change in &self.applied {
            *counts.entry(change.kind()).or_insert(0) += 1;
        }
        counts
    }
}

/// Applies `changes` in order. A failure does not stop the batch (independent changes still
/// converge; dependent ones fail on their own and are reported). A *new* peer whose route was
/// refused leaves no half state behind: the neighbour and FDB entries this batch added for it
/// are removed again — unless a route in the kernel (added now or before) still goes through
/// that neighbour, or another neighbour still resolves to that FDB entry's MAC.
pub async fn apply<K: Kernel>(kernel: &K, changes: &[Change]) -> ApplyReport {
    apply_refusing(kernel, changes, Vec::new()).await
}

/// [`apply`], with `refused`: changes that never reach the kernel (a route that would take over
/// a foreign one, see [`crate::model::RouteConflict`]). They are reported as failures and count
/// as refused routes for the rollback of a half-added peer.
pub async fn apply_refusing<K: Kernel>(kernel: &K, changes: &[Change], refused: Vec<ChangeFailure>) -> ApplyReport {
    let mut report = ApplyReport::default();
    for failure in refused {
        tracing::error!(change = %failure.change, error = %failure.error, "change refused before the kernel");
        report.failed.push(failure);
    }
    for change in changes.iter().filter(|c| c.is_disruptive()) {
        tracing::warn!(%change, "disruptive change: traffic through this device stops until it is rebuilt");
    }
    for (change, result) in changes.iter().zip(kernel.apply_many(changes).await) {
        match result {
            Ok(()) => {
                tracing::info!(%change, "applied");
                report.applied.push(change.clone());
            }
            Err(error) => {
                tracing::error!(%change, %error, "kernel refused change");
                report.failed.push(ChangeFailure { change: change.clone(), error });
            }
        }
    }
    rollback_half_added_peers(kernel, &mut report).await;
    report
}

/// (device, gateway) of a unicast route.
fn via(route: &Route) -> Option<(&str, IpAddr)> {
    match &route.kind {
        RouteKind::Unicast { gateway, dev, .. } => Some((dev.as_str(), *gateway)),
        RouteKind::Blackhole => None,
    }
}

async fn rollback_half_added_peers<K: Kernel>(kernel: &K, report: &mut ApplyReport) {
    let refused: BTreeSet<(String, IpAddr)> = report
        .failed
        .iter()
        .filter_map(|f| match &f.change {
            Change::AddRoute(route) => via(route).map(|(d, g)| (d.to_string(), g)),
            _ => None,
        })
        .collect();
    // Neighbours this batch added for a gateway whose new route was refused.
    let added: Vec<Neighbour> = report
        .applied
        .iter()
        .filter_map(|c| match c {
            Change::AddNeighbour(n) if refused.contains(&(n.dev.clone(), n.ip)) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let devices: BTreeSet<&str> = added.iter().map(|n| n.dev.as_str()).collect();
    let mut undo = Vec::new();
    for dev in devices {
        // What still needs them is in the kernel now (routes from before this batch included).
        let after = match kernel.read(dev).await {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(dev, %error, "cannot read the kernel back; half-added peers stay until the next pass");
                continue;
            }
        };
        let fdb: Vec<FdbEntry> = report
            .applied
            .iter()
            .filter_map(|c| match c {
                Change::AddFdb(f) if f.dev == dev => Some(f.clone()),
                _ => None,
            })
            .collect();
        let neighbours: Vec<Neighbour> = added.iter().filter(|n| n.dev == dev).cloned().collect();
        undo.extend(rollback_plan(&after, &neighbours, &fdb));
    }
    for change in undo {
        match kernel.apply_one(&change).await {
            Ok(()) => {
                tracing::warn!(%change, "rolled back half-added peer");
                report.rolled_back.push(change);
            }
            Err(error) => {
                tracing::error!(%change, %error, "rollback failed");
                report.failed.push(ChangeFailure { change, error });
            }
        }
    }
}

/// What to remove again after a batch (pure): of the `neighbours` and `fdb` entries the batch
/// added, a neighbour that no route in `after` (the kernel once the batch ran) goes through,
/// and an FDB entry whose MAC no remaining neighbour on its device resolves to. Everything a
/// working route still needs stays — also routes that existed before the batch.
pub fn rollback_plan(after: &KernelState, neighbours: &[Neighbour], fdb: &[FdbEntry]) -> Vec<Change> {
    let used: BTreeSet<(&str, IpAddr)> = after.routes.values().filter_map(via).collect();
    let unused: Vec<&Neighbour> = neighbours.iter().filter(|n| !used.contains(&(n.dev.as_str(), n.ip))).collect();
    let kept_macs: BTreeSet<(&str, MacAddr)> = after
        .neighbours
        .iter()
        .filter(|n| !unused.iter().any(|u| u.dev == n.dev && u.ip == n.ip))
        .map(|n| (n.dev.as_str(), n.mac))
        .collect();
    let mut undo: Vec<Change> = unused.iter().map(|n| Change::DelNeighbour((*n).clone())).collect();
    for entry in fdb {
        let orphaned = unused.iter().any(|n| n.dev == entry.dev && n.mac == entry.mac);
        if orphaned && !kept_macs.contains(&(entry.dev.as_str(), entry.mac)) {
            undo.push(Change::DelFdb(entry.clone()));
        }
    }
    undo
}

/// A kernel that records changes and can be told to refuse some: for unit tests of the
/// orchestration above and of the reconcile loop.
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;

    use super::*;
    use crate::model::{IPIP_DEVICE, IpipDevice, VxlanDevice};

    pub type Refusal = Box<dyn Fn(&Change) -> bool>;

    #[derive(Default)]
    pub struct FakeKernel {
        pub state: RefCell<KernelState>,
        pub log: RefCell<Vec<Change>>,
        /// Changes matching this predicate fail with EINVAL.
        pub refuse: RefCell<Option<Refusal>>,
        /// Changes matching this predicate are accepted but not stored (they never read back).
        pub forget: RefCell<Option<Refusal>>,
        /// Called after every accepted change (e.g. to emit a kernel event).
        pub on_change: RefCell<Option<Box<dyn Fn()>>>,
        pub sysctls: RefCell<BTreeMap<String, String>>,
        /// VXLAN device names asked for by `read`.
        pub reads: RefCell<Vec<String>>,
        /// Tunnel kinds asked for by `supports`.
        pub probes: RefCell<Vec<caps::TunnelKind>>,
        /// Answer of `supports` for IPIP (VXLAN: always yes).
        pub ipip: std::cell::Cell<bool>,
    }

    impl Kernel for FakeKernel {
        async fn read(&self, vxlan_device: &str) -> Result<KernelState, KernelError> {
            self.reads.borrow_mut().push(vxlan_device.to_string());
            let mut state = self.state.borrow().clone();
            state.vxlan = state.vxlan.filter(|v| v.name == vxlan_device);
            Ok(state)
        }

        async fn apply_one(&self, change: &Change) -> Result<(), KernelError> {
            self.log.borrow_mut().push(change.clone());
            if let Some(refuse) = self.refuse.borrow().as_ref()
                && refuse(change)
            {
                return Err(KernelError::Netlink { op: change.to_string(), errno: Some(22), message: "EINVAL".into() });
            }
            if let Some(on_change) = self.on_change.borrow().as_ref() {
                on_change();
            }
            if self.forget.borrow().as_ref().is_some_and(|forget| forget(change)) {
                return Ok(());
            }
            self.state.borrow_mut().apply(change);
            Ok(())
        }

        async fn capabilities(&self) -> Capabilities {
            Capabilities { ipip: self.ipip.get(), vxlan: true }
        }

        async fn supports(&self, kind: caps::TunnelKind) -> bool {
            self.probes.borrow_mut().push(kind);
            kind == caps::TunnelKind::Vxlan || self.ipip.get()
        }

        async fn link_mtu(&self, _name: &str) -> Result<u32, KernelError> {
            Ok(1500)
        }

        fn sysctl_get(&self, key: &str) -> Result<String, KernelError> {
            Ok(self.sysctls.borrow().get(key).cloned().unwrap_or_default())
        }

        fn sysctl_set(&self, key: &str, value: &str) -> Result<bool, KernelError> {
            let old = self.sysctls.borrow_mut().insert(key.to_string(), value.to_string());
            Ok(old.as_deref() != Some(value))
        }
    }

    impl KernelState {
        /// What the kernel would do with `change` (the model the fake runs on).
        pub fn apply(&mut self, change: &Change) {
            match change {
                Change::CreateVxlan(t) => {
                    self.vxlan = Some(VxlanDevice {
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
                }
                Change::DeleteVxlan { name, .. } if self.stale_vxlan.contains(name) => {
                    self.stale_vxlan.retain(|n| n != name);
                }
                Change::DeleteVxlan { name, .. } => {
                    self.vxlan = None;
                    self.neighbours.retain(|n| n.dev != *name);
                    self.fdb.retain(|f| f.dev != *name);
                    self.routes.retain(|_, r| via(r).is_none_or(|(d, _)| d != name));
                }
                Change::EnsureTunl0 => {
                    self.ipip.get_or_insert(IpipDevice { mtu: 1480, ..Default::default() });
                }
                Change::SetLink { dev, mtu, mac, up } => {
                    if let Some(v) = self.vxlan.as_mut().filter(|v| v.name == *dev) {
                        v.mtu = mtu.unwrap_or(v.mtu);
                        v.mac = mac.unwrap_or(v.mac);
                        v.up = up.unwrap_or(v.up);
                    } else if let Some(t) = self.ipip.as_mut().filter(|_| dev == IPIP_DEVICE) {
                        t.mtu = mtu.unwrap_or(t.mtu);
                        t.up = up.unwrap_or(t.up);
                    }
                }
                Change::SetOwner { dev, owned } => {
                    if let Some(t) = self.ipip.as_mut().filter(|_| dev == IPIP_DEVICE) {
                        t.owned = *owned;
                    }
                }
                Change::AddAddress { dev, address } | Change::DelAddress { dev, address } => {
                    let add = matches!(change, Change::AddAddress { .. });
                    let list = if dev == IPIP_DEVICE {
                        self.ipip.as_mut().map(|t| &mut t.addresses)
                    } else {
                        self.vxlan.as_mut().map(|v| &mut v.addresses)
                    };
                    if let Some(list) = list {
                        list.retain(|a| a != address);
                        if add {
                            list.push(*address);
                            list.sort();
                        }
                    }
                }
                Change::AddNeighbour(n) | Change::UpdateNeighbour(n) => {
                    self.neighbours.retain(|o| (o.dev.as_str(), o.ip) != (n.dev.as_str(), n.ip));
                    self.neighbours.push(n.clone());
                    self.neighbours.sort();
                }
                Change::DelNeighbour(n) => self.neighbours.retain(|o| o != n),
                Change::AddFdb(f) | Change::UpdateFdb(f) => {
                    self.fdb.retain(|o| (o.dev.as_str(), o.mac) != (f.dev.as_str(), f.mac));
                    self.fdb.push(f.clone());
                    self.fdb.sort();
                }
                Change::DelFdb(f) => self.fdb.retain(|o| o != f),
                Change::AddRoute(r) | Change::UpdateRoute(r) => {
                    self.routes.insert(r.dst, r.clone());
                }
                Change::DelRoute(r) => {
                    self.routes.remove(&r.dst);
                }
                Change::DelStrayRoute(r) => self.stray_routes.retain(|o| o != r),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeKernel;
    use super::*;

    fn neighbour(ip: &str, mac: &str) -> Neighbour {
        Neighbour { dev: "vx".into(), ip: ip.parse().unwrap(), mac: mac.parse().unwrap() }
    }
    fn fdb(mac: &str, dst: &str) -> FdbEntry {
        FdbEntry { dev: "vx".into(), mac: mac.parse().unwrap(), dst: dst.parse().unwrap() }
    }
    fn route(dst: &str, gw: &str) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            kind: RouteKind::Unicast { gateway: gw.parse().unwrap(), dev: "vx".into(), onlink: true },
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn failed_route_of_new_peer_rolls_back_its_neighbour_and_fdb() {
        let kernel = FakeKernel::default();
        *kernel.refuse.borrow_mut() =
            Some(Box::new(|c| matches!(c, Change::AddRoute(r) if r.dst.to_string() == "10.244.2.0/26")));
        let changes = vec![
            Change::AddNeighbour(neighbour("10.244.2.0", "02:00:00:00:00:02")),
            Change::AddFdb(fdb("02:00:00:00:00:02", "192.168.1.2")),
            Change::AddNeighbour(neighbour("10.244.3.0", "02:00:00:00:00:03")),
            Change::AddFdb(fdb("02:00:00:00:00:03", "192.168.1.3")),
            Change::AddRoute(route("10.244.2.0/26", "10.244.2.0")),
            Change::AddRoute(route("10.244.3.0/26", "10.244.3.0")),
        ];
        let report = block_on(apply(&kernel, &changes));
        assert_eq!(report.applied.len(), 5);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            report.rolled_back,
            vec![
                Change::DelNeighbour(neighbour("10.244.2.0", "02:00:00:00:00:02")),
                Change::DelFdb(fdb("02:00:00:00:00:02", "192.168.1.2")),
            ]
        );
        let state = kernel.state.borrow();
        assert_eq!(state.neighbours, vec![neighbour("10.244.3.0", "02:00:00:00:00:03")]);
        assert_eq!(state.fdb, vec![fdb("02:00:00:00:00:03", "192.168.1.3")]);
        assert_eq!(state.routes.len(), 1);
    }

    #[test]
    fn failed_route_keeps_neighbour_used_by_another_route_or_updated() {
        let kernel = FakeKernel::default();
        let changes = vec![
            Change::AddNeighbour(neighbour("10.244.2.0", "02:00:00:00:00:02")),
            Change::AddFdb(fdb("02:00:00:00:00:02", "192.168.1.2")),
            Change::UpdateNeighbour(neighbour("10.244.3.0", "02:00:00:00:00:33")),
            Change::AddRoute(route("10.244.2.0/26", "10.244.2.0")),
            Change::AddRoute(route("10.244.2.64/26", "10.244.2.0")),
            Change::AddRoute(route("10.244.3.64/26", "10.244.3.0")),
        ];
        *kernel.refuse.borrow_mut() = Some(Box::new(
            |c| matches!(c, Change::AddRoute(r) if ["10.244.2.64/26", "10.244.3.64/26"].contains(&r.dst.to_string().as_str())),
        ));
        let report = block_on(apply(&kernel, &changes));
        assert_eq!(report.failed.len(), 2);
        assert!(report.rolled_back.is_empty(), "{:?}", report.rolled_back);
        assert_eq!(kernel.state.borrow().neighbours.len(), 2);
    }

    #[test]
    fn rollback_keeps_what_an_existing_route_or_neighbour_still_needs() {
        let peer2 = neighbour("10.244.2.0", "02:00:00:00:00:02");
        let peer2_fdb = fdb("02:00:00:00:00:02", "192.168.1.2");
        // Peer 2's first block was routed before the batch; peer 4's MAC is also peer 5's.
        let mut after = KernelState::default();
        after.routes.insert("10.244.2.0/26".parse().unwrap(), route("10.244.2.0/26", "10.244.2.0"));
        let peer4 = neighbour("10.244.4.0", "02:00:00:00:00:44");
        let peer5 = neighbour("10.244.5.0", "02:00:00:00:00:44");
        let shared_fdb = fdb("02:00:00:00:00:44", "192.168.1.4");
        after.neighbours = vec![peer2.clone(), peer4.clone(), peer5];
        let undo = rollback_plan(&after, &[peer2, peer4.clone()], &[peer2_fdb, shared_fdb]);
        assert_eq!(undo, vec![Change::DelNeighbour(peer4)]);

        // Nothing else needs peer 6: neighbour and FDB go.
        let peer6 = neighbour("10.244.6.0", "02:00:00:00:00:06");
        let peer6_fdb = fdb("02:00:00:00:00:06", "192.168.1.6");
        after.neighbours.push(peer6.clone());
        let undo = rollback_plan(&after, std::slice::from_ref(&peer6), std::slice::from_ref(&peer6_fdb));
        assert_eq!(undo, vec![Change::DelNeighbour(peer6), Change::DelFdb(peer6_fdb)]);
    }

    #[test]
    fn a_failure_does_not_stop_independent_changes() {
        let kernel = FakeKernel::default();
        *kernel.refuse.borrow_mut() = Some(Box::new(|c| matches!(c, Change::AddFdb(_))));
        let changes = vec![
            Change::AddFdb(fdb("02:00:00:00:00:02", "192.168.1.2")),
            Change::AddRoute(Route { dst: "10.244.1.0/26".parse().unwrap(), kind: RouteKind::Blackhole }),
        ];
        let report = block_on(apply(&kernel, &changes));
        assert!(!report.ok());
        assert_eq!(report.applied.len(), 1);
        assert_eq!(report.counts().get("route+"), Some(&1));
    }
}
