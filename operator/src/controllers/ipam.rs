//! The IPAM controller: a block per node per selected pool as soon as the Node object appears,
//! released by the operator itself when the Node (or the pool) is gone, and the NodeNetwork of a
//! deleted Node removed with it.
//!
//! It runs as one *pass* over the whole cluster rather than one reconcile per node (like Calico's
//! kube-controllers IPAM sync): a pass reads every IPAMBlock fresh from the API server (a
//! consistent LIST, not a cache that may lag its own creates), decides with the pure
//! [`ipam::plan`], then creates and deletes. Passes never overlap, so a node never gets two
//! blocks and two nodes never get the same one; a block is *claimed by creating* an IPAMBlock
//! named after its CIDR, so even another writer (a previous leader that has not noticed it lost
//! the Lease) cannot hold the same CIDR: the API server answers 409 to the second create, and
//! the next pass picks another block. Passes run on every change of Nodes, IPPools, IPAMBlocks
//! and NodeNetworks (coalesced) and every [`RESYNC`].
//!
//! Release is confirmed against the API server (the Node or IPPool must answer 404), so a cache
//! that has not seen a new Node yet cannot release that Node's blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PartialObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use trellis_api::ipam_block::block_name;
use trellis_api::{IPAMBlock, IPAMBlockSpec, IPPool, NodeNetwork};

use super::watch_all;
use crate::ipam::{self, ReleaseReason};
use crate::pool_view::{self, NodeLabels, PoolView};
use crate::{Context, Error, FIELD_MANAGER, Result, Stop};

/// Name of this controller in logs and metrics.
pub const CONTROLLER: &str = "ipam";
/// A pass even without events: repairs anything a missed event left behind.
const RESYNC: Duration = Duration::from_secs(30);
/// Events arriving within this time after the first one are handled by one pass.
const COALESCE: Duration = Duration::from_millis(200);
/// Retry after a failed pass.
const RETRY: Duration = Duration::from_secs(2);
/// Passes in a row while creates keep losing races (another writer took the block).
const MAX_CONFLICT_PASSES: usize = 10;
/// Concurrent API writes within a pass.
const WRITES_IN_FLIGHT: usize = 16;

/// The caches a pass reads (Nodes and NodeNetworks by metadata only).
pub struct Caches {
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub pools: Store<IPPool>,
    pub networks: Store<PartialObjectMeta<NodeNetwork>>,
}

/// What one pass did.
#[derive(Debug, Default)]
struct Outcome {
    claimed: usize,
    released: usize,
    networks_deleted: usize,
    /// Creates that lost to another writer.
    conflicts: usize,
}

/// Runs the controller until `stop`.
pub async fn run(ctx: Arc<Context>, stop: Stop) {
    let client = ctx.client.clone();
    let (nodes, nodes_w) = reflector::store();
    let (pools, pools_w) = reflector::store();
    let (networks, networks_w) = reflector::store();
    let changed = Arc::new(Notify::new());

    // The reflectors keep the caches and wake the pass loop; they run in their own task so the
    // caches stay current while a pass awaits the API server.
    let events = futures::stream::select_all([
        reflector::reflector(nodes_w, watch_all::<PartialObjectMeta<Node>>(&client)).map_ok(|_| ()).boxed(),
        reflector::reflector(pools_w, watch_all::<IPPool>(&client)).map_ok(|_| ()).boxed(),
        reflector::reflector(networks_w, watch_all::<PartialObjectMeta<NodeNetwork>>(&client)).map_ok(|_| ()).boxed(),
        watch_all::<PartialObjectMeta<IPAMBlock>>(&client).map_ok(|_| ()).boxed(),
    ]);
    let notify = changed.clone();
    let watch_task = tokio::spawn(events.for_each(move |event| {
        if let Err(e) = event {
            tracing::warn!(controller = CONTROLLER, error = %e, "watch");
        }
        notify.notify_one();
        futures::future::ready(())
    }));

    let caches = Caches { nodes, pools, networks };
    let stopped = stop.clone();
    let passes = async {
        // Nothing is decided from a cache that has not listed yet: an empty Node cache would
        // look like every node was deleted (releases are confirmed anyway, but claims would wait).
        if caches_ready(&caches).await.is_err() {
            return;
        }
        tracing::info!(controller = CONTROLLER, "caches ready");
        loop {
            let started = Instant::now();
            let result = pass_until_settled(&ctx, &caches).await;
            ctx.metrics.reconciled(CONTROLLER, started.elapsed());
            let wait = match result {
                Ok(outcome) => {
                    if outcome.claimed + outcome.released + outcome.networks_deleted > 0 {
                        tracing::info!(controller = CONTROLLER, ?outcome, "pass");
                    }
                    RESYNC
                }
                Err(Error::NotLeader) => return,
                Err(e) => {
                    ctx.metrics.failed(CONTROLLER, &e);
                    tracing::warn!(controller = CONTROLLER, error = %e, "pass failed; retrying");
                    RETRY
                }
            };
            let _ = tokio::time::timeout(wait, changed.notified()).await;
            tokio::time::sleep(COALESCE).await;
        }
    };
    futures::future::select(passes.boxed(), stopped).await;
    watch_task.abort();
    tracing::info!(controller = CONTROLLER, "controller stopped");
}

async fn caches_ready(caches: &Caches) -> Result<(), reflector::store::WriterDropped> {
    caches.nodes.wait_until_ready().await?;
    caches.pools.wait_until_ready().await?;
    caches.networks.wait_until_ready().await
}

/// Passes until one has no lost race left (bounded: a writer that keeps taking blocks from
/// under us must not keep us from answering events).
async fn pass_until_settled(ctx: &Context, caches: &Caches) -> Result<Outcome> {
    let mut total = Outcome::default();
    for _ in 0..MAX_CONFLICT_PASSES {
        let outcome = pass(ctx, caches).await?;
        total.claimed += outcome.claimed;
        total.released += outcome.released;
        total.networks_deleted += outcome.networks_deleted;
        total.conflicts += outcome.conflicts;
        if outcome.conflicts == 0 {
            break;
        }
    }
    Ok(total)
}

/// One pass: read, decide (pure), write.
async fn pass(ctx: &Context, caches: &Caches) -> Result<Outcome> {
    ctx.ensure_leader()?;
    let client = &ctx.client;
    let blocks_api: Api<IPAMBlock> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pools_api: Api<IPPool> = Api::all(client.clone());

    let blocks = blocks_api.list(&ListParams::default()).await.map_err(|e| Error::kube("listing IPAMBlocks", e))?.items;
    let node_metas = caches.nodes.state();
    let nodes: NodeLabels =
        node_metas.iter().map(|n| (n.name_any(), n.labels().clone().into_iter().collect())).collect();
    let uids: BTreeMap<String, String> =
        node_metas.iter().filter_map(|n| Some((n.name_any(), n.metadata.uid.clone()?))).collect();
    let mut views = Vec::new();
    let mut unreadable = BTreeSet::new();
    for pool in caches.pools.state() {
        match PoolView::from_pool(&pool) {
            Ok(view) => views.push(view),
            Err(e) => {
                tracing::warn!(controller = CONTROLLER, error = %e, "pool left alone");
                unreadable.insert(e.pool);
            }
        }
    }
    let (ipam_pools, ipam_blocks) = pool_view::ipam_input(&views, &unreadable, &nodes, &blocks);
    let node_names: BTreeSet<String> = nodes.keys().cloned().collect();
    let plan = ipam::plan(&ipam_pools, &node_names, &ipam_blocks);
    for (pool, starved) in &plan.starved {
        tracing::debug!(controller = CONTROLLER, %pool, ?starved, "pool has no free block");
    }

    // Object names of the existing blocks (hand-made ones need not follow block_name).
    let names: BTreeMap<ipam::Block, String> = blocks
        .iter()
        .filter_map(|b| {
            let cidr = b.spec.cidr.parse().ok()?;
            Some((ipam::Block { cidr, pool: b.spec.pool.clone(), node: b.spec.node.clone() }, b.name_any()))
        })
        .collect();

    let mut outcome = Outcome::default();
    let mut gone = Gone::default();
    ctx.ensure_leader()?;
    for release in &plan.releases {
        let confirmed = match release.reason {
            ReleaseReason::NodeGone => gone.node(&nodes_api, &release.block.node).await?,
            ReleaseReason::PoolGone => gone.pool(&pools_api, &release.block.pool).await?,
            ReleaseReason::NotInPool => true,
        };
        let Some(name) = names.get(&release.block) else { continue };
        if !confirmed {
            continue;
        }
        if delete(&blocks_api, name).await? {
            tracing::info!(controller = CONTROLLER, block = %name, node = %release.block.node, pool = %release.block.pool, reason = ?release.reason, "released block");
            outcome.released += 1;
        }
    }

    // Owned futures collected first: a stream over a borrowing closure is not `Send` enough
    // for the spawned controller future.
    let creates: Vec<_> = plan
        .claims
        .iter()
        .cloned()
        .map(|claim| {
            let (api, uid) = (blocks_api.clone(), uids.get(&claim.node).cloned());
            async move { claim_block(&api, &claim, uid.as_deref()).await }
        })
        .collect();
    let results: Vec<Result<bool>> = futures::stream::iter(creates).buffer_unordered(WRITES_IN_FLIGHT).collect().await;
    for result in results {
        match result? {
            true => outcome.claimed += 1,
            false => outcome.conflicts += 1,
        }
    }

    // The NodeNetwork of a deleted Node: its agent is gone with it.
    let networks_api: Api<NodeNetwork> = Api::all(client.clone());
    for network in caches.networks.state() {
        let name = network.name_any();
        if node_names.contains(&name) || !gone.node(&nodes_api, &name).await? {
            continue;
        }
        if delete(&networks_api, &name).await? {
            tracing::info!(controller = CONTROLLER, nodenetwork = %name, "deleted the NodeNetwork of a deleted Node");
            outcome.networks_deleted += 1;
        }
    }
    Ok(outcome)
}

/// Creates the IPAMBlock for a claim. `Ok(false)`: another writer holds that CIDR already.
async fn claim_block(api: &Api<IPAMBlock>, claim: &ipam::Block, node_uid: Option<&str>) -> Result<bool> {
    let name = block_name(&claim.cidr);
    // The owner reference lets a real cluster's garbage collector clean up too; the operator
    // does not rely on it.
    let owner = node_uid.map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: claim.node.clone(),
        uid: uid.to_string(),
        ..Default::default()
    });
    let block = IPAMBlock {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: owner.map(|o| vec![o]),
            labels: Some([(crate::MANAGED_BY_LABEL.to_string(), crate::MANAGED_BY.to_string())].into()),
            ..Default::default()
        },
        spec: IPAMBlockSpec { cidr: claim.cidr.to_string(), pool: claim.pool.clone(), node: claim.node.clone() },
        status: None,
    };
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&pp, &block).await {
        Ok(_) => {
            tracing::info!(controller = CONTROLLER, block = %name, node = %claim.node, pool = %claim.pool, "claimed block");
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            tracing::info!(controller = CONTROLLER, block = %name, node = %claim.node, "block taken by another writer; choosing another");
            Ok(false)
        }
        Err(e) => Err(Error::kube(format!("creating IPAMBlock {name} for node {}", claim.node), e)),
    }
}

/// Deletes an object; `Ok(false)` when it was gone already.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(e) => Err(Error::kube(format!("deleting {} {name}", K::kind(&())), e)),
    }
}

/// Asks the API server whether Nodes and IPPools are really gone, once per name and pass.
#[derive(Default)]
struct Gone {
    nodes: BTreeMap<String, bool>,
    pools: BTreeMap<String, bool>,
}

impl Gone {
    async fn node(&mut self, api: &Api<Node>, name: &str) -> Result<bool> {
        if let Some(gone) = self.nodes.get(name) {
            return Ok(*gone);
        }
        let gone =
            api.get_metadata_opt(name).await.map_err(|e| Error::kube(format!("reading Node {name}"), e))?.is_none();
        self.nodes.insert(name.to_string(), gone);
        Ok(gone)
    }

    async fn pool(&mut self, api: &Api<IPPool>, name: &str) -> Result<bool> {
        if let Some(gone) = self.pools.get(name) {
            return Ok(*gone);
        }
        let gone =
            api.get_metadata_opt(name).await.map_err(|e| Error::kube(format!("reading IPPool {name}"), e))?.is_none();
        self.pools.insert(name.to_string(), gone);
        Ok(gone)
    }
}
