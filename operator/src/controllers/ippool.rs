//! The IPPool controller: what admission cannot check and what `kubectl get ippools` shows.
//!
//! For each pool: overlap with an older pool (`CIDROverlap`, the pool is not used, a Warning
//! Event), a nodeSelector that does not parse, exhaustion (`BlocksExhausted`, nodes left without
//! a block), and READY n/m: of the nodes the pool selects, how many report in their NodeNetwork
//! status that they applied the pool's current generation without error. The decisions are pure
//! ([`crate::ippool`]); this module reads the caches and writes `status` with a merge patch
//! under the field manager `trellis-operator`, touching only the fields it owns. It also drives
//! the pool's live encapsulation/NAT changes (`status.active`, `status.transition`; the step is
//! pure, [`crate::ippool::live_change`]). An Event goes out when a problem condition turns true
//! and at every step of a live change.
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
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use trellis_api::node_network::AppliedPool;
use trellis_api::{IPAMBlock, IPPool, IPPoolStatus, NodeNetwork};

use super::watch_all;
use crate::conditions::{self, Desired};
use crate::ippool::live_change::{self, LiveEvent, LiveFacts, LiveStep};
use crate::ippool::{
    BLOCKS_EXHAUSTED, CIDR_OVERLAP, LIVE_CHANGE_STALLED, LiveSummary, PoolFacts, PoolStatusView, UNSUPPORTED_FIELDS,
    convergence, pool_status,
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
    let (nodes, nodes_w) = reflector::store();
    let (networks, networks_w) = reflector::store();
    let (blocks, blocks_w) = reflector::store();
    let others = futures::stream::select_all([
        reflector::reflector(nodes_w, watch_all::<PartialObjectMeta<Node>>(&client)).map(|_| ()).boxed(),
        reflector::reflector(networks_w, watch_all::<NodeNetwork>(&client)).map(|_| ()).boxed(),
        reflector::reflector(blocks_w, watch_all::<IPAMBlock>(&client)).map(|_| ()).boxed(),
    ]);
    let controller = Controller::new(Api::<IPPool>::all(client), watcher::Config::default())
        .reconcile_all_on(others)
        .graceful_shutdown_on(stop);
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
    let previous = pool.status.clone().unwrap_or_default();
    let (facts, live) = facts(&pctx, &view, &pool, &previous);
    let wanted = pool_status(&facts);
    let merged =
        conditions::merge(&previous.conditions, &wanted.conditions, Some(wanted.observed_generation), Timestamp::now());
    // While a change runs, look again soon: the timeout is measured, not only reacted to.
    let next = if live.transition.is_some() { LIVE_RECHECK } else { RESYNC };
    if !changed(&previous, &wanted, &merged, &live) {
        return Ok(Action::requeue(next));
    }
    pctx.ctx.ensure_leader()?;
    let resource_version = pool.resource_version();
    write_status(&pctx.ctx, &name, resource_version.as_deref(), &wanted, &merged, &live).await?;
    announce(&pctx.ctx, &pool, &previous.conditions, &wanted.conditions).await;
    for event in &live.events {
        tracing::info!(pool = %name, reason = event.reason, message = %event.message, "live change");
        publish(&pctx.ctx, &pool, event).await;
    }
    Ok(Action::requeue(next))
}

/// Re-check interval while a live change runs.
const LIVE_RECHECK: Duration = Duration::from_secs(2);

async fn publish(ctx: &Context, pool: &IPPool, event: &LiveEvent) {
    let event = Event {
        type_: if event.warning { EventType::Warning } else { EventType::Normal },
        reason: event.reason.to_string(),
        note: Some(event.message.clone()),
        action: "LiveChange".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(pool = %pool.name_any(), reason = %event.reason, error = %e, "publishing an Event");
    }
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

/// Everything the pool's status depends on, from the caches, and the live change's step.
fn facts(pctx: &PoolContext, view: &PoolView, pool: &IPPool, previous: &IPPoolStatus) -> (PoolFacts, LiveStep) {
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
    let timeout = Duration::from_secs(pctx.ctx.config.live_change_timeout);
    let live = live_change::step(&LiveFacts {
        pool: &view.name,
        target: pool.spec.live_settings(view.generation),
        phased: pool.phased(),
        active: previous.active.clone(),
        transition: previous.transition.clone(),
        nodes: &node_names,
        reports: &applied,
        now: Timestamp::now(),
        timeout,
    });
    let mut convergence = convergence(&view.name, view.generation, &selected, &applied);
    let summary = live.transition.as_ref().map(|t| {
        // During a change READY counts the selected nodes that reached its phase.
        let waiting: BTreeSet<&String> = live.waiting.iter().map(|(n, _)| n).collect();
        convergence.lagging = selected.iter().filter(|n| waiting.contains(n)).cloned().collect();
        convergence.converged = selected.len() - convergence.lagging.len();
        convergence.errors.clear();
        LiveSummary {
            change: format!(
                "{} (natOutgoing {}) -> {} (natOutgoing {})",
                t.from, t.from_nat_outgoing, t.to, t.to_nat_outgoing
            ),
            phase: t.phase.clone(),
            stalled: live.stalled.clone(),
            timeout_secs: timeout.as_secs(),
        }
    });
    let facts = PoolFacts {
        generation: view.generation,
        cidr: view.cidr.to_string(),
        block_prefix: view.block_prefix,
        overlaps: overlaps.get(&view.name).cloned(),
        selector_error: view.selector.as_ref().err().cloned(),
        starved: plan.starved.remove(&view.name).unwrap_or_default(),
        unsupported: view.unsupported.clone(),
        convergence,
        live: summary,
    };
    (facts, live)
}

/// Whether the status differs from what is stored (transition times aside).
fn changed(
    previous: &IPPoolStatus,
    wanted: &PoolStatusView,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    live: &LiveStep,
) -> bool {
    previous.observed_generation != Some(wanted.observed_generation)
        || previous.nodes_selected != Some(wanted.nodes_selected)
        || previous.nodes_converged != Some(wanted.nodes_converged)
        || previous.ready.as_deref() != Some(wanted.ready.as_str())
        || previous.conditions != merged
        || previous.active != live.active
        || previous.transition != live.transition
}

async fn write_status(
    ctx: &Context,
    name: &str,
    resource_version: Option<&str>,
    wanted: &PoolStatusView,
    merged: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    live: &LiveStep,
) -> Result<()> {
    // A merge patch of only these fields, guarded by the resourceVersion the decision was
    // made from: a phase decided from a stale cache must not overwrite a newer one (409 →
    // retried from fresh state).
    let patch = json!({
        "metadata": { "resourceVersion": resource_version },
        "status": {
            "observedGeneration": wanted.observed_generation,
            "nodesSelected": wanted.nodes_selected,
            "nodesConverged": wanted.nodes_converged,
            "ready": wanted.ready,
            "conditions": merged,
            "active": live.active,
            "transition": live.transition,
        }
    });
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
        [CIDR_OVERLAP, BLOCKS_EXHAUSTED, UNSUPPORTED_FIELDS, LIVE_CHANGE_STALLED].contains(&w.type_)
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
