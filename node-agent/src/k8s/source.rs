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
use crate::desired::{Capabilities, DesiredState, PoolPlan};
use crate::kernel::Kernel;
use crate::reconcile::{BoxError, DesiredSource, desired_from_snapshot};

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
    /// The newest snapshot that could be built.
    pub latest: Option<ClusterSnapshot>,
    /// Why the newest rebuild failed (the previous snapshot stays in force).
    pub build_error: Option<String>,
    pub served: Served,
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
    caps: Capabilities,
    vxlan_device: String,
}

impl ClusterSource {
    pub fn new(shared: Arc<Mutex<Shared>>, caps: Capabilities, vxlan_device: String) -> Self {
        Self { shared, caps, vxlan_device }
    }
}

impl<K: Kernel> DesiredSource<K> for ClusterSource {
    async fn desired(&mut self, kernel: &K) -> Result<DesiredState, BoxError> {
        let started = Instant::now();
        let latest = lock(&self.shared).latest.clone().ok_or(NoSnapshot)?;
        self.vxlan_device = latest.snapshot.vxlan.device.clone();
        let result = desired_from_snapshot(kernel, latest.snapshot, self.caps).await;
        let served = match &result {
            Ok(desired) => Served {
                started: Some(started),
                generations: latest.generations,
                pools: desired.pools.clone(),
                mtu: Some(desired.mtu),
            },
            Err(_) => Served { started: Some(started), generations: latest.generations, ..Default::default() },
        };
        lock(&self.shared).served = served;
        Ok(result?)
    }

    fn vxlan_device(&self) -> &str {
        &self.vxlan_device
    }
}
