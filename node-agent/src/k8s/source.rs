//! The desired-state source of Kubernetes mode: the latest good cluster snapshot.
//!
//! The cluster side (see [`crate::k8s::agent`]) replaces the snapshot whenever the stores
//! change; a pass plans from whatever is newest. Nothing here ever produces an empty snapshot:
//! the first pass runs only after every store has synced and a snapshot was built, and a
//! snapshot is only replaced by a newer good one, so an API server outage leaves the data
//! plane exactly as it is. What a pass was planned from is recorded for the status report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::cluster_snapshot::ClusterSnapshot;
use crate::kernel::Kernel;
use crate::kernel::caps::{CapabilityCache, Needs};
use crate::model::{Capabilities, DesiredState, PoolPlan};
use crate::plan::PlanMemo;
use crate::reconcile::{BoxError, DesiredSource, SnapshotPlanError, uplink_mtu};

/// What the last pass was planned from (for the NodeNetwork status).
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub started: Option<Instant>,
    pub generations: BTreeMap<String, i64>,
    pub pools: Vec<PoolPlan>,
    pub mtu: Option<u32>,
}

/// State shared by the cluster side, the source and the status reporter.
#[derive(Debug, Default)]
pub struct Shared {
    /// The newest snapshot that could be built (shared with the pass planning from it).
    pub latest: Option<Arc<ClusterSnapshot>>,
    /// Why the newest rebuild failed (the previous snapshot stays in force).
    pub build_error: Option<String>,
    pub served: Served,
    /// Tunnel kinds probed so far (lazily, when a pool needs one); the NodeNetwork publishes
    /// what is known.
    pub capabilities: CapabilityCache,
}

/// Locks `shared`, surviving a poisoned lock (the data is plain values).
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
#[error("no cluster snapshot yet (the stores have not synced)")]
pub struct NoSnapshot;

pub struct ClusterSource {
    shared: Arc<Mutex<Shared>>,
    /// Fixed capabilities (tests); `None`: probe lazily, only the kinds a pool needs, and
    /// probe a "no" again on the next pass that needs it (see [`CapabilityCache`]).
    fixed_caps: Option<Capabilities>,
    vxlan_device: String,
    memo: PlanMemo,
}

impl ClusterSource {
    pub fn new(shared: Arc<Mutex<Shared>>, fixed_caps: Option<Capabilities>, vxlan_device: String) -> Self {
        Self { shared, fixed_caps, vxlan_device, memo: PlanMemo::default() }
    }
}

impl<K: Kernel> DesiredSource<K> for ClusterSource {
    async fn desired(&mut self, kernel: &K) -> Result<Arc<DesiredState>, BoxError> {
        let started = Instant::now();
        let latest = lock(&self.shared).latest.clone().ok_or(NoSnapshot)?;
        self.vxlan_device = latest.snapshot.vxlan.device.clone();
        let caps = match self.fixed_caps {
            Some(caps) => caps,
            None => {
                // Probing may load a module or create a throw-away device: not under the lock.
                let mut cache = lock(&self.shared).capabilities.clone();
                let caps = cache.detect(kernel, Needs::of(&latest.snapshot.pools)).await;
                lock(&self.shared).capabilities = cache;
                caps
            }
        };
        let result = match uplink_mtu(kernel, &latest.snapshot).await {
            Ok(uplink_mtu) => self.memo.plan(&latest.snapshot, uplink_mtu, caps).map_err(SnapshotPlanError::from),
            Err(e) => Err(e),
        };
        let generations = latest.generations.clone();
        let served = match &result {
            Ok(desired) => {
                Served { started: Some(started), generations, pools: desired.pools.clone(), mtu: Some(desired.mtu) }
            }
            Err(_) => Served { started: Some(started), generations, ..Default::default() },
        };
        lock(&self.shared).served = served;
        Ok(result?)
    }

    fn vxlan_device(&self) -> &str {
        &self.vxlan_device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::cluster_snapshot::{LocalIdentity, Settings, snapshot_from_cluster};
    use crate::kernel::fake::FakeKernel;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn snapshot_with_peer() -> ClusterSnapshot {
        use kube::api::ObjectMeta;
        use trellis_api::{IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, NodeNetwork, NodeNetworkSpec};
        let meta = |name: &str| ObjectMeta { name: Some(name.into()), generation: Some(3), ..Default::default() };
        let pool = IPPool {
            metadata: meta("p"),
            spec: IPPoolSpec { cidr: "10.244.0.0/16".into(), ..Default::default() },
            status: None,
        };
        let block = |cidr: &str, node: &str| IPAMBlock {
            metadata: meta(cidr),
            spec: IPAMBlockSpec { cidr: cidr.into(), pool: "p".into(), node: node.into() },
            status: None,
        };
        let peer = NodeNetwork {
            metadata: meta("node2"),
            spec: NodeNetworkSpec { address: "10.0.1.12/24".into(), ..Default::default() },
            status: None,
        };
        let me =
            LocalIdentity { name: "node1".into(), address: "10.0.1.11/24".parse().unwrap(), uplink: "eth0".into() };
        snapshot_from_cluster(
            &me,
            &[Arc::new(pool)],
            &[Arc::new(block("10.244.1.0/26", "node1")), Arc::new(block("10.244.2.0/26", "node2"))],
            &[Arc::new(peer)],
            None,
            &Settings::default(),
        )
        .unwrap()
    }

    #[test]
    fn without_a_snapshot_there_is_no_desired_state_not_an_empty_one() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut source = ClusterSource::new(shared, Some(Capabilities::default()), "vxlan.trellis".into());
        let kernel = FakeKernel::default();
        let err = rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap_err();
        assert!(err.to_string().contains("no cluster snapshot"), "{err}");
    }

    #[test]
    fn a_failed_rebuild_keeps_serving_the_last_good_snapshot_and_records_what_was_served() {
        let shared =
            Arc::new(Mutex::new(Shared { latest: Some(Arc::new(snapshot_with_peer())), ..Default::default() }));
        let mut source = ClusterSource::new(shared.clone(), Some(Capabilities::default()), "vxlan.trellis".into());
        let kernel = FakeKernel::default();
        let first = rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap();
        assert!(first.routes.contains_key(&"10.244.2.0/26".parse().unwrap()), "{:?}", first.routes);
        lock(&shared).build_error = Some("API server gone".into());
        let second = rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap();
        assert_eq!(first, second);
        let served = lock(&shared).served.clone();
        assert_eq!(served.generations.get("p"), Some(&3));
        assert_eq!(served.pools.len(), 1);
        assert_eq!(served.mtu, Some(1500));
    }

    #[test]
    fn cluster_source_probes_only_the_tunnel_kinds_a_pool_needs_and_shares_what_it_learnt() {
        use crate::kernel::caps::TunnelKind::Vxlan;
        use trellis_api::EncapMode;
        // The pool in `snapshot_with_peer` is unencapsulated: nothing is probed (no modprobe).
        let shared =
            Arc::new(Mutex::new(Shared { latest: Some(Arc::new(snapshot_with_peer())), ..Default::default() }));
        let mut source = ClusterSource::new(shared.clone(), None, "vxlan.trellis".into());
        let kernel = FakeKernel::default();
        rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap();
        assert!(kernel.probes.borrow().is_empty(), "probed {:?}", kernel.probes.borrow());
        assert_eq!(lock(&shared).capabilities, CapabilityCache::default());

        // A VXLAN pool: VXLAN is probed once, never ipip, and the NodeNetwork side sees it.
        let mut vxlan = snapshot_with_peer();
        vxlan.snapshot.pools[0].vxlan_mode = EncapMode::Always;
        lock(&shared).latest = Some(Arc::new(vxlan));
        let desired = rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap();
        rt().block_on(DesiredSource::desired(&mut source, &kernel)).unwrap();
        assert_eq!(desired.pools[0].error, None);
        assert_eq!(*kernel.probes.borrow(), vec![Vxlan]);
        assert_eq!(lock(&shared).capabilities.capabilities(), Capabilities { ipip: false, vxlan: true });
    }
}
