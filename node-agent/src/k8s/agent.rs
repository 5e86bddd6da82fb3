//! `trellis-agent run`: the node agent on the Kubernetes API.
//!
//! Wiring, in start order:
//! 1. the health server (`/healthz` answers from the first moment, `/readyz` only later);
//! 2. reflectors for IPPools, IPAMBlocks, NodeNetworks, the Installation and this Node
//!    ([`super::stores`]); nothing is planned until every one has listed once;
//! 3. the cluster side: on every store change (debounced) and every resync, detect the node
//!    address, rebuild the snapshot ([`super::cluster_snapshot`]), publish the NodeNetwork spec
//!    if it changed, and wake the loop if the snapshot changed;
//! 4. the existing reconcile loop ([`crate::reconcile::run`]) with a [`ClusterSource`], woken
//!    by kernel events and cluster changes on one channel;
//! 5. the status reporter: writes the NodeNetwork status after passes whose outcome changed;
//! 6. the drift reporter: an Event on the Node for drift a pass repaired ([`super::drift`]).
//!
//! A restart adopts the kernel as it is: the first pass plans from a complete snapshot, so it
//! changes only what differs (nothing, after a plain restart).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use trellis_api::NodeNetwork;

use super::autodetect::{self, Facts, Method};
use super::cluster_snapshot::{LocalIdentity, Settings, snapshot_from_cluster};
use super::drift;
use super::health;
use super::metrics::Metrics;
use super::node_network;
use super::source::{ClusterSource, Shared, lock};
use super::status::{self, PassOutcome};
use super::stores::{ClusterEvent, Stores};
use crate::kernel::KernelError;
use crate::kernel::netlink::{self, KernelEvent, NetlinkKernel};
use crate::reconcile::{self, LoopOptions, PassReport, ReconcileError, SystemHost, Trigger};
use crate::snapshot::{CniSettings, VxlanSettings};

/// The agent's settings (flags / environment of the DaemonSet).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub cni_conf_dir: PathBuf,
    pub ipam_data_dir: PathBuf,
    pub health_addr: SocketAddr,
    pub resync_interval: Duration,
    /// Run the network-policy loop ([`crate::policy::enforcer`]).
    pub network_policy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the node name is empty (set NODE_NAME from the downward API spec.nodeName, or --node-name)")]
    NoNodeName,
    #[error("cannot connect to the Kubernetes API (KUBECONFIG, then in-cluster config): {0}")]
    Client(#[source] kube::Error),
    #[error("netlink: {0}")]
    Kernel(#[source] KernelError),
    #[error(transparent)]
    Health(#[from] health::HealthError),
}

/// Quiet time after a cluster change before the snapshot is rebuilt (a burst of watch events,
/// e.g. a re-list, costs one rebuild).
const CLUSTER_DEBOUNCE: Duration = Duration::from_millis(200);
/// Drift Events: this many at once, then one per [`DRIFT_EVENT_EVERY`].
const DRIFT_EVENT_BURST: u32 = 10;
const DRIFT_EVENT_EVERY: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    if config.node_name.trim().is_empty() {
        return Err(AgentError::NoNodeName);
    }
    tokio::pin!(shutdown);
    let metrics = Arc::new(Metrics::default());
    let bound = health::serve(config.health_addr, metrics.clone()).await?;
    tracing::info!(node = %config.node_name, health = %bound, "starting in Kubernetes mode");

    let client = Client::try_default().await.map_err(AgentError::Client)?;
    let settings = Settings {
        cni: CniSettings {
            conf_dir: config.cni_conf_dir.clone(),
            ipam_data_dir: config.ipam_data_dir.clone(),
            ..Default::default()
        },
        vxlan: VxlanSettings::default(),
    };
    let kernel = NetlinkKernel::new().map_err(AgentError::Kernel)?.with_vxlan_device(&settings.vxlan.device);
    // Capabilities are probed lazily by the source: a tunnel kind only when a pool needs it
    // (no `modprobe ipip` on a VXLAN-only cluster), a "no" again on the next pass.

    let (cluster_tx, cluster_rx) = tokio::sync::mpsc::unbounded_channel();
    let stores = Stores::start(client.clone(), &config.node_name, cluster_tx);
    // No pass before every store has listed once: an empty store is not an empty cluster.
    {
        let synced = stores.synced();
        tokio::pin!(synced);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = &mut synced => break,
                () = tokio::time::sleep(Duration::from_secs(10)) => {
                    tracing::warn!("still waiting for the first list of IPPools, IPAMBlocks, NodeNetworks, the Installation and the Node")
                }
            }
        }
    }
    tracing::info!("cluster state listed");

    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut cluster = ClusterSide {
        node_name: config.node_name.clone(),
        stores: stores.clone(),
        settings,
        node_networks: Api::all(client.clone()),
        published: None,
        shared: shared.clone(),
    };
    // The first snapshot, retried until it can be built (e.g. no usable address yet).
    let mut wait = Duration::from_secs(1);
    loop {
        cluster.refresh().await;
        if lock(&shared).latest.is_some() {
            break;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(config.resync_interval);
    }

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    forward_kernel_events(events_tx.clone());
    let cluster_changed = Arc::new(AtomicBool::new(false));
    let (outcome_tx, outcome_rx) = tokio::sync::watch::channel(None::<PassOutcome>);
    let (drift_tx, drift_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();

    let mut source = ClusterSource::new(shared.clone(), None, cluster.settings.vxlan.device.clone());
    let options = LoopOptions { resync_interval: config.resync_interval, ..Default::default() };
    let on_pass = {
        let shared = shared.clone();
        let metrics = metrics.clone();
        let cluster_changed = cluster_changed.clone();
        move |trigger: Trigger, result: &Result<PassReport, ReconcileError>| {
            let label = match trigger {
                Trigger::Start => "start",
                Trigger::Resync => "resync",
                Trigger::Retry => "retry",
                Trigger::KernelEvent if cluster_changed.swap(false, Ordering::Relaxed) => "cluster",
                Trigger::KernelEvent => "kernel",
            };
            let state = lock(&shared);
            let outcome = outcome_of(result, &state);
            let took = state.served.started.map(|s| s.elapsed()).unwrap_or_default();
            drop(state);
            let (changes, errors) = match result {
                Ok(report) => {
                    (report.counts().values().sum::<usize>(), report.kernel.failed.len() + report.errors.len())
                }
                Err(_) => (0, 1),
            };
            metrics.record_pass(label, changes, errors, took, outcome.ready());
            outcome_tx.send_replace(Some(outcome));
            if let Ok(report) = result {
                let repairs = drift::repairs(matches!(label, "kernel" | "resync"), report);
                if !repairs.is_empty() {
                    tracing::warn!(?repairs, "kernel state changed outside Trellis: restored");
                    let _ = drift_tx.send(repairs);
                }
            }
        }
    };
    let cluster_loop = cluster.follow(cluster_rx, events_tx, cluster_changed, config.resync_interval);
    let drift_loop = report_drift(client.clone(), config.node_name.clone(), stores.clone(), drift_rx);
    let status_loop = report_status(Api::all(client.clone()), config.node_name.clone(), stores, outcome_rx, metrics);
    let policy_loop = async {
        if config.network_policy {
            crate::policy::enforcer::run(client, config.node_name.clone(), config.resync_interval).await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        () = reconcile::run(&kernel, &mut source, &SystemHost, options, Some(events_rx), shutdown, on_pass) => {}
        () = cluster_loop => {}
        () = status_loop => {}
        () = drift_loop => {}
        () = policy_loop => {}
    }
    Ok(())
}

/// The status-relevant outcome of a pass.
fn outcome_of(result: &Result<PassReport, ReconcileError>, state: &Shared) -> PassOutcome {
    let mut outcome = PassOutcome {
        pools: state.served.pools.clone(),
        generations: state.served.generations.clone(),
        mtu: state.served.mtu,
        ..Default::default()
    };
    match result {
        Ok(report) => {
            outcome.applied = report.ok();
            // A conflist removed on purpose (no allocatable block) is not "in place".
            outcome.cni_in_place = report.cni_changed.is_some() && report.cni_unavailable.is_none();
            outcome.cni_unavailable = report.cni_unavailable.clone();
            outcome.errors.extend(report.kernel.failed.iter().map(|f| format!("{}: {}", f.change, f.error)));
            outcome.errors.extend(report.errors.iter().cloned());
        }
        Err(e) => outcome.errors.push(e.to_string()),
    }
    if let Some(e) = &state.build_error {
        outcome.errors.push(e.clone());
    }
    outcome
}

/// Kernel notifications into the loop's wake-up channel.
fn forward_kernel_events(tx: UnboundedSender<KernelEvent>) {
    match netlink::subscribe() {
        Ok(mut kernel_events) => {
            tokio::spawn(async move {
                while let Some(event) = kernel_events.recv().await {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "no kernel event subscription; relying on resync and cluster changes"),
    }
}

/// The cluster side: node identity, snapshot and NodeNetwork spec from the stores.
struct ClusterSide {
    node_name: String,
    stores: Stores,
    settings: Settings,
    node_networks: Api<NodeNetwork>,
    /// The NodeNetwork last applied successfully (as JSON: the generated type has no `==`).
    published: Option<serde_json::Value>,
    shared: Arc<Mutex<Shared>>,
}

impl ClusterSide {
    /// Detects the identity, rebuilds the snapshot, publishes the spec. Returns whether what
    /// a pass would plan from (or the error to report) changed.
    async fn refresh(&mut self) -> bool {
        let node = self.stores.node(&self.node_name);
        let (snapshot, error) = match self.build(node.as_deref()).await {
            Ok(snapshot) => (Some(snapshot), None),
            Err(e) => (None, Some(e)),
        };
        if let Some(snapshot) = &snapshot {
            match node.as_deref() {
                Some(node) => self.publish(node, snapshot).await,
                None => {
                    tracing::warn!(node = %self.node_name, "no Node object with this name; NodeNetwork not published")
                }
            }
        }
        let mut shared = lock(&self.shared);
        let mut changed = shared.build_error != error;
        if let Some(e) = &error
            && changed
        {
            tracing::error!(error = %e, "cannot build the desired state from the cluster; keeping the last one");
        }
        shared.build_error = error;
        if let Some(snapshot) = snapshot
            && shared.latest.as_deref() != Some(&snapshot)
        {
            for warning in &snapshot.warnings {
                tracing::warn!(%warning, "cluster snapshot");
            }
            tracing::info!(
                peers = snapshot.snapshot.peers.len(),
                pools = snapshot.snapshot.pools.len(),
                blocks = snapshot.snapshot.node.blocks.len(),
                "cluster snapshot changed"
            );
            shared.latest = Some(Arc::new(snapshot));
            changed = true;
        }
        changed
    }

    async fn build(&self, node: Option<&Node>) -> Result<super::cluster_snapshot::ClusterSnapshot, String> {
        let installation = self.stores.installation();
        // Either spelling (`network` / Tigera's `calicoNetwork`, `nodeAddressAutodetection` /
        // `nodeAddressAutodetectionV4`).
        let network = installation.as_deref().map(|i| i.spec.network());
        let spec = network.as_ref().and_then(|n| n.node_address_autodetection.as_ref());
        let method = Method::from_spec(spec).map_err(|e| e.to_string())?;
        let interfaces = super::host::interfaces().await.map_err(|e| e.to_string())?;
        let mut facts = Facts::default();
        if let Method::CanReach(destination) = &method {
            facts.can_reach_source = super::host::source_towards(destination).await;
        }
        if let Method::Kubernetes = method {
            facts.node_internal_ips = node
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
        }
        let detected = autodetect::select(&method, &interfaces, &facts).map_err(|e| e.to_string())?;
        let identity =
            LocalIdentity { name: self.node_name.clone(), address: detected.address, uplink: detected.uplink };
        snapshot_from_cluster(
            &identity,
            &self.stores.pools.state(),
            &self.stores.blocks.state(),
            &self.stores.node_networks.state(),
            installation.as_deref(),
            &self.settings,
        )
        .map_err(|e| e.to_string())
    }

    async fn publish(&mut self, node: &Node, snapshot: &super::cluster_snapshot::ClusterSnapshot) {
        let s = &snapshot.snapshot.node;
        let identity = LocalIdentity { name: s.name.clone(), address: s.address, uplink: s.uplink.clone() };
        // What the passes have probed so far (a kind no pool needed reads as unsupported until
        // one does); published at the next cluster change or resync after a probe.
        let caps = lock(&self.shared).capabilities.capabilities();
        let tunnel_address = crate::plan::derived_tunnel_address(&snapshot.snapshot, caps);
        let object = match node_network::object_for(node, node_network::spec_for(&identity, tunnel_address, caps)) {
            Ok(object) => object,
            Err(e) => return tracing::warn!(error = %e, "NodeNetwork not published"),
        };
        let json = serde_json::to_value(&object).ok();
        // Re-published when it changed, and when it is gone from the cluster (deleted by hand
        // or by a garbage collector while the Node was briefly absent).
        let exists = self.stores.node_networks.state().iter().any(|nn| nn.metadata.name == object.metadata.name);
        if json.is_some() && self.published == json && exists {
            return;
        }
        match node_network::publish(&self.node_networks, &object).await {
            Ok(()) => {
                tracing::info!(address = %object.spec.address, uplink = ?object.spec.uplink, "NodeNetwork published");
                self.published = json;
            }
            Err(e) => tracing::warn!(error = %e, "NodeNetwork not published; retrying at the next change or resync"),
        }
    }

    /// Rebuilds on every (debounced) cluster change and every resync; wakes the loop when
    /// the snapshot changed. Runs until the channel closes.
    async fn follow(
        mut self,
        mut changes: UnboundedReceiver<ClusterEvent>,
        wake: UnboundedSender<KernelEvent>,
        cluster_changed: Arc<AtomicBool>,
        resync: Duration,
    ) {
        loop {
            tokio::select! {
                event = changes.recv() => {
                    let Some(ClusterEvent(kind)) = event else { return };
                    tracing::debug!(kind, "cluster change");
                    tokio::time::sleep(CLUSTER_DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(resync) => {}
            }
            if self.refresh().await {
                cluster_changed.store(true, Ordering::Relaxed);
                if wake.send(KernelEvent).is_err() {
                    return;
                }
            }
        }
    }
}

/// Publishes an Event on this node's Node object for every drift repair the budget allows
/// (see [`super::drift`]). Runs until the channel closes.
async fn report_drift(client: Client, node: String, stores: Stores, mut repairs: UnboundedReceiver<Vec<String>>) {
    let reporter = Reporter { controller: "trellis-agent".into(), instance: Some(node.clone()) };
    let mut budget = drift::EventBudget::new(DRIFT_EVENT_BURST, DRIFT_EVENT_EVERY, Instant::now());
    while let Some(found) = repairs.recv().await {
        let Some(unreported) = budget.admit(Instant::now()) else { continue };
        let Some(object) = stores.node(&node) else {
            tracing::warn!(%node, "no Node object: drift Event not published");
            continue;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: drift::REASON.into(),
            note: Some(drift::note(&found, unreported)),
            action: "Restore".into(),
            secondary: None,
        };
        // A recorder per Event: a shared one folds a second Event of the same reason into the
        // first and keeps the first note, and each repair names different state.
        let recorder = Recorder::new(client.clone(), reporter.clone());
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish the drift Event");
        }
    }
}

/// Writes the NodeNetwork status whenever a pass's outcome differs from what the API server
/// has; retries with backoff while it cannot.
async fn report_status(
    api: Api<NodeNetwork>,
    name: String,
    stores: Stores,
    mut outcomes: tokio::sync::watch::Receiver<Option<PassOutcome>>,
    metrics: Arc<Metrics>,
) {
    let mut written: Option<trellis_api::NodeNetworkStatus> = None;
    while outcomes.changed().await.is_ok() {
        let mut retry = Duration::from_millis(500);
        loop {
            let Some(outcome) = outcomes.borrow_and_update().clone() else { break };
            let current = stores
                .node_networks
                .state()
                .into_iter()
                .find(|nn| nn.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|nn| nn.status.clone());
            let previous = current.as_ref().or(written.as_ref());
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let next = status::status_for(&outcome, previous, now);
            if current.as_ref().is_some_and(|c| status::same(c, &next)) {
                break;
            }
            match status::write(&api, &name, &next).await {
                Ok(()) => {
                    tracing::debug!("NodeNetwork status written");
                    written = Some(next);
                    break;
                }
                Err(e) => {
                    metrics.record_error();
                    tracing::warn!(error = %e, ?retry, "cannot write the NodeNetwork status; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
