//! The agent's network-policy loop (`trellis-agent run`): reflectors for Pods, Namespaces,
//! NetworkPolicies and GlobalNetworkPolicies; on every (debounced) change, every route change
//! (a pod's host route), every nftables notification about the policy table (drift) and every
//! resync it rebuilds the inputs, compiles them and syncs the table.
//!
//! What the compiler cannot enforce is logged when it changes and reported as Warning Events
//! on the policies ([`super::events`]).
//!
//! It runs beside the routing loop and shares nothing with it: a cluster without the
//! NetworkPolicy API or the GlobalNetworkPolicy CRD delays policy (logged) and nothing else.
//! Nothing is enforced before every store has listed once, so a start never compiles an empty
//! cluster (which would open every isolated pod).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::mpsc;
use trellis_api::GlobalNetworkPolicy;

use super::apply::{Outcome, PolicyTable};
use super::cluster::inputs_from_cluster;
use super::compile::compile;
use super::events::Reporter;
use super::problem::Problem;
use super::ruleset::TABLE;
use crate::k8s::stores::{ClusterEvent, spawn_reflector};
use crate::kernel::netlink::host::{host_route_interfaces, subscribe_routes};

/// Quiet time after a change before the next pass (a burst of events costs one pass).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Wait before retrying a failed pass.
const RETRY: Duration = Duration::from_secs(2);

/// Runs the policy loop for node `node_name` until the runtime ends.
pub async fn run(client: Client, node_name: String, resync: Duration) {
    let (tx, mut changes) = mpsc::unbounded_channel::<ClusterEvent>();
    let all = watcher::Config::default;
    let pods = spawn_reflector(Api::<Pod>::all(client.clone()), all(), "Pod", tx.clone());
    let namespaces = spawn_reflector(Api::<Namespace>::all(client.clone()), all(), "Namespace", tx.clone());
    let policies = spawn_reflector(Api::<NetworkPolicy>::all(client.clone()), all(), "NetworkPolicy", tx.clone());
    let globals = spawn_reflector(Api::<GlobalNetworkPolicy>::all(client.clone()), all(), "GlobalNetworkPolicy", tx);
    let mut reporter = Reporter::new(client, node_name.clone());
    {
        let synced = async {
            let _ = pods.wait_until_ready().await;
            let _ = namespaces.wait_until_ready().await;
            let _ = policies.wait_until_ready().await;
            let _ = globals.wait_until_ready().await;
        };
        tokio::pin!(synced);
        loop {
            tokio::select! {
                () = &mut synced => break,
                () = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!(
                    "network policy: still waiting for the first list of Pods, Namespaces, NetworkPolicies and GlobalNetworkPolicies; nothing enforced yet"
                ),
            }
        }
    }
    tracing::info!("network policy: cluster state listed");

    let (wake_tx, mut wake) = mpsc::unbounded_channel::<()>();
    if let Err(e) = subscribe_routes(wake_tx.clone()) {
        tracing::warn!(error = %e, "network policy: no route notifications; new pods wait for the resync");
    }
    let (nft_tx, mut nft) = mpsc::unbounded_channel();
    if let Err(e) = crate::kernel::nft_events::subscribe(TABLE, nft_tx) {
        tracing::warn!(error = %e, "network policy: no nftables notifications; drift waits for the resync");
    }

    let mut table = Some(PolicyTable::new());
    let mut warnings: Vec<Problem> = Vec::new();
    loop {
        let mut failed = false;
        match host_route_interfaces().await {
            Ok(routes) => {
                let (pods, namespaces, policies, globals) =
                    (pods.state(), namespaces.state(), policies.state(), globals.state());
                let inputs = inputs_from_cluster(
                    &node_name,
                    pods.iter().map(AsRef::as_ref),
                    namespaces.iter().map(AsRef::as_ref),
                    policies.iter().map(AsRef::as_ref),
                    globals.iter().map(AsRef::as_ref),
                    &routes,
                );
                let compiled = compile(&inputs);
                if compiled.warnings != warnings {
                    for w in &compiled.warnings {
                        tracing::warn!(warning = %w, "network policy");
                    }
                    warnings = compiled.warnings;
                }
                reporter.report(&warnings).await;
                let ruleset = compiled.ruleset;
                let mut t = table.take().unwrap_or_default();
                let (t, result) = match tokio::task::spawn_blocking(move || {
                    let r = t.sync(&ruleset);
                    (t, r)
                })
                .await
                {
                    Ok(done) => done,
                    Err(e) => (PolicyTable::new(), Err(super::apply::ApplyError::Apply(e.to_string()))),
                };
                table = Some(t);
                match result {
                    Ok(Outcome::Unchanged) => {}
                    Ok(Outcome::Elements { added, deleted }) => {
                        tracing::info!(
                            added,
                            deleted,
                            local_pods = inputs.local.len(),
                            "network policy: set elements updated"
                        )
                    }
                    Ok(Outcome::Replaced(reason)) => {
                        tracing::info!(
                            ?reason,
                            local_pods = inputs.local.len(),
                            "network policy: table inet {TABLE} replaced"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "network policy: cannot apply; retrying");
                        failed = true;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "network policy: cannot read host routes; retrying");
                failed = true;
            }
        }
        let wait = if failed { RETRY } else { resync };
        tokio::select! {
            event = changes.recv() => {
                if event.is_none() { return; }
                tokio::time::sleep(DEBOUNCE).await;
            }
            Some(()) = wake.recv() => tokio::time::sleep(DEBOUNCE).await,
            Some(_) = nft.recv() => {}
            () = tokio::time::sleep(wait) => {}
        }
        while changes.try_recv().is_ok() || wake.try_recv().is_ok() || nft.try_recv().is_ok() {}
    }
}
