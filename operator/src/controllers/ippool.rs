//! The IPPool controller: what admission cannot check and what `kubectl get ippools` shows.
//!
//! For each pool: overlap with an older pool (`CIDROverlap`, the pool is not used, a Warning
//! Event), a nodeSelector that does not parse, exhaustion (`BlocksExhausted`, nodes left without
//! a block), and READY n/m: of the nodes the pool selects, how many report in their NodeNetwork
//! status that they applied the pool's current generation without error. The decisions are pure
//! ([`crate::ippool`]); this module reads the caches and writes `status` with a merge patch
//! under the field manager `trellis-operator`, touching only the fields it owns (never
//! `transition`). An Event goes out when a problem condition turns true.
//!
//! A kube-runtime `Controller` over IPPools; any change of Nodes, NodeNetworks or IPAMBlocks
//! re-checks every pool (a pool's status depends on all of them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use trellis_api::node_network::AppliedPool;
use trellis_api::{IPAMBlock, IPPool, NodeNetwork};

use crate::conditions::{self, Desired};
use crate::ippool::{
    BLOCKS_EXHAUSTED, CIDR_OVERLAP, PoolFacts, PoolStatusView, UNSUPPORTED_FIELDS, convergence, pool_status,
};
use crate::pool_view::{self, NodeLabels, PoolView};
use crate::{Context, Error, FIELD_MANAGER, Result, Stop, ipam};

/// Name of this controller in logs and metrics.
pub const CONTROLLER: &str = "ippool";
/// Periodic re-check even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// How long a reconcile waits for the caches of a fresh start.
const CACHE_WAIT: Duration = Duration::from_secs(30);

/// The reconcile's view of the cluster.
struct PoolContext {
    ctx: Arc<Context>,
    pools: Store<IPPool>,
    nodes: Store<PartialObjectMeta<Node>>,
    networks: Store<NodeNetwork>,
    blocks: Store<IPAMBlock>,
}

/// Runs the controller until `stop`.
pub async fn run(ctx: Arc<Context>, stop: Stop) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default;
    let (nodes, nodes_w) = reflector::store();
    let (networks, networks_w) = reflector::store();
    let (blocks, blocks_w) = reflector::store();
    let others = futures::stream::select_all([
        reflector::reflector(
            nodes_w,
            watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), wc()).default_backoff(),
        )
        .map(|_| ())
        .boxed(),
        reflector::reflector(networks_w, watcher(Api::<NodeNetwork>::all(client.clone()), wc()).default_backoff())
            .map(|_| ())
            .boxed(),
        reflector::reflector(blocks_w, watcher(Api::<IPAMBlock>::all(client.clone()), wc()).default_backoff())
            .map(|_| ())
            .boxed(),
    ]);
    let controller =
        Controller::new(Api::<IPPool>::all(client), wc()).reconcile_all_on(others).graceful_shutdown_on(stop);
    let pctx = Arc::new(PoolContext { ctx, pools: controller.store(), nodes, networks, blocks });
    super::drive(CONTROLLER, controller.run(reconcile, error_policy, pctx)).await;
}

async fn reconcile(pool: Arc<IPPool>, pctx: Arc<PoolContext>) -> Result<Action> {
    super::measured(CONTROLLER, &pctx.ctx.clone(), reconcile_pool(pool, pctx)).await
}

fn error_policy(pool: Arc<IPPool>, error: &Error, _pctx: Arc<PoolContext>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "reconcile failed");
    super::retry_after(error)
}

async fn reconcile_pool(pool: Arc<IPPool>, pctx: Arc<PoolContext>) -> Result<Action> {
    if !caches_ready(&pctx).await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let name = pool.name_any();
    let view = match PoolView::from_pool(&pool) {
        Ok(view) => view,
        Err(e) => {
            // Admission makes this impossible for admitted pools; say so rather than guess.
            tracing::warn!(pool = %name, error = %e, "unreadable pool");
            return Ok(Action::await_change());
        }
    };
    let facts = facts(&pctx, &view);
    let wanted = pool_status(&facts);
    let previous = pool.status.clone().unwrap_or_default();
    let merged =
        conditions::merge(&previous.conditions, &wanted.conditions, Some(wanted.observed_generation), Timestamp::now());
    if !changed(&previous, &wanted, &merged) {
        return Ok(Action::requeue(RESYNC));
    }
    pctx.ctx.ensure_leader()?;
    write_status(&pctx.ctx, &name, &wanted, &merged).await?;
    announce(&pctx.ctx, &pool, &previous.conditions, &wanted.conditions).await;
    Ok(Action::requeue(RESYNC))
}

async fn caches_ready(pctx: &PoolContext) -> bool {
    let ready = async {
        pctx.pools.wait_until_ready().await?;
        pctx.nodes.wait_until_ready().await?;
        pctx.networks.wait_until_ready().await?;
        pctx.blocks.wait_until_ready().await
    };
    matches!(tokio::time::timeout(CACHE_WAIT, ready).await, Ok(Ok(())))
}

/// Everything the pool's status depends on, from the caches.
fn facts(pctx: &PoolContext, view: &PoolView) -> PoolFacts {
    let nodes: NodeLabels =
        pctx.nodes.state().iter().map(|n| (n.name_any(), n.labels().clone().into_iter().collect())).collect();
    let mut views = Vec::new();
    let mut unreadable = BTreeSet::new();
    for p in pctx.pools.state() {
        match PoolView::from_pool(&p) {
            Ok(v) => views.push(v),
            Err(e) => {
                unreadable.insert(e.pool);
            }
        }
    }
    let overlaps = pool_view::overlaps(&views);
    let blocks: Vec<IPAMBlock> = pctx.blocks.state().iter().map(|b| (**b).clone()).collect();
    // Exhaustion is what IPAM would decide from the same view: selected nodes it cannot serve.
    let (ipam_pools, ipam_blocks) = pool_view::ipam_input(&views, &unreadable, &nodes, &blocks);
    let node_names: BTreeSet<String> = nodes.keys().cloned().collect();
    let mut plan = ipam::plan(&ipam_pools, &node_names, &ipam_blocks);
    let applied: BTreeMap<String, Vec<AppliedPool>> = pctx
        .networks
        .state()
        .iter()
        .map(|n| (n.name_any(), n.status.as_ref().map(|s| s.pools.clone()).unwrap_or_default()))
        .collect();
    let selected = view.selected(&nodes);
    PoolFacts {
        generation: view.generation,
        cidr: view.cidr.to_string(),
        block_prefix: view.block_prefix,
        overlaps: overlaps.get(&view.name).cloned(),
        selector_error: view.selector.as_ref().err().cloned(),
        starved: plan.starved.remove(&view.name).unwrap_or_default(),
        unsupported: view.unsupported.clone(),
        convergence: convergence(&view.name, view.generation, &selected, &applied),
    }
}

/// Whether the status differs from what is stored (transition times aside).
fn changed(
    previous: &trellis_api::IPPoolStatus,
    wanted: &PoolStatusView,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> bool {
    previous.observed_generation != Some(wanted.observed_generation)
        || previous.nodes_selected != Some(wanted.nodes_selected)
        || previous.nodes_converged != Some(wanted.nodes_converged)
        || previous.ready.as_deref() != Some(wanted.ready.as_str())
        || previous.conditions != merged
}

async fn write_status(
    ctx: &Context,
    name: &str,
    wanted: &PoolStatusView,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Result<()> {
    // A merge patch of only these fields: `transition` belongs to the live-change driver.
    let patch = json!({"status": {
        "observedGeneration": wanted.observed_generation,
        "nodesSelected": wanted.nodes_selected,
        "nodesConverged": wanted.nodes_converged,
        "ready": wanted.ready,
        "conditions": merged,
    }});
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    Api::<IPPool>::all(ctx.client.clone())
        .patch_status(name, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing the status of IPPool {name}"), e))?;
    Ok(())
}

/// A Warning Event for each problem condition that just turned true, a Normal one when it
/// cleared.
async fn announce(
    ctx: &Context,
    pool: &IPPool,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    wanted: &[Desired],
) {
    // Degraded repeats CIDROverlap and BlocksExhausted, which have Events of their own.
    let worth = |w: &&Desired| {
        [CIDR_OVERLAP, BLOCKS_EXHAUSTED, UNSUPPORTED_FIELDS].contains(&w.type_)
            || (w.type_ == conditions::DEGRADED && w.reason != CIDR_OVERLAP && w.reason != BLOCKS_EXHAUSTED)
    };
    for w in wanted.iter().filter(worth) {
        let was = previous.iter().find(|c| c.type_ == w.type_).is_some_and(|c| c.status == "True");
        let event = match (was, w.status) {
            (false, true) => Event {
                type_: EventType::Warning,
                reason: if w.type_ == conditions::DEGRADED { w.reason.clone() } else { w.type_.to_string() },
                note: Some(w.message.clone()),
                action: "CheckPool".into(),
                secondary: None,
            },
            (true, false) if w.type_ != conditions::DEGRADED => Event {
                type_: EventType::Normal,
                reason: format!("{}Resolved", w.type_),
                note: Some(w.message.clone()),
                action: "CheckPool".into(),
                secondary: None,
            },
            _ => continue,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
            tracing::warn!(pool = %pool.name_any(), reason = %event.reason, error = %e, "publishing an Event");
        }
    }
}
