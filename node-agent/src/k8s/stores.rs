//! The cluster as the agent sees it: one kube-runtime reflector per kind, kept in memory.
//!
//! Watched: IPPools, IPAMBlocks, NodeNetworks (cluster-wide), the Installation `default` and
//! this node's Node object. Each reflector re-lists and re-watches with kube-runtime's default
//! backoff when the API server goes away; errors are logged, never fatal, and the stores keep
//! their last content meanwhile (a re-list swaps in atomically), so the data plane keeps what
//! it has. Every change is signalled on a channel; the caller debounces.

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use trellis_api::{IPAMBlock, IPPool, Installation, NodeNetwork};

/// Readers of every store.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<IPPool>,
    pub blocks: Store<IPAMBlock>,
    pub node_networks: Store<NodeNetwork>,
    pub installations: Store<Installation>,
    pub nodes: Store<Node>,
}

/// The Installation the agent reads (the cluster singleton).
pub const INSTALLATION_NAME: &str = "default";

/// A change in the cluster (which kind, for the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterEvent(pub &'static str);

pub(crate) fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    tx: UnboundedSender<ClusterEvent>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).backoff(trellis_api::watch_backoff::WatchBackoff::default()).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        tracing::info!(kind, "watch is back");
                        failing = false;
                    }
                    // Init/InitApply only fill the re-list buffer; the store changes at InitDone.
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_))
                        && tx.send(ClusterEvent(kind)).is_err()
                    {
                        break;
                    }
                }
                Err(error) => {
                    // Logged once per outage at warn, then at debug; the watcher backs off.
                    if failing {
                        tracing::debug!(kind, %error, "watch still failing; retrying with backoff");
                    } else {
                        tracing::warn!(kind, %error, "watch failed; keeping the last known state, retrying with backoff");
                        failing = true;
                    }
                }
            }
        }
    });
    reader
}

impl Stores {
    /// Starts every reflector; `tx` gets an event for each change.
    pub fn start(client: Client, node_name: &str, tx: UnboundedSender<ClusterEvent>) -> Stores {
        let all = watcher::Config::default;
        let named = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        Stores {
            pools: spawn_reflector(Api::all(client.clone()), all(), "IPPool", tx.clone()),
            blocks: spawn_reflector(Api::all(client.clone()), all(), "IPAMBlock", tx.clone()),
            node_networks: spawn_reflector(Api::all(client.clone()), all(), "NodeNetwork", tx.clone()),
            installations: spawn_reflector(
                Api::all(client.clone()),
                named(INSTALLATION_NAME),
                "Installation",
                tx.clone(),
            ),
            nodes: spawn_reflector(Api::all(client), named(node_name), "Node", tx),
        }
    }

    /// Resolves once every store has been filled by a complete list.
    pub async fn synced(&self) {
        // An Err means the reflector task ended, which happens only with the runtime.
        let _ = self.pools.wait_until_ready().await;
        let _ = self.blocks.wait_until_ready().await;
        let _ = self.node_networks.wait_until_ready().await;
        let _ = self.installations.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// The Installation `default`, if it exists.
    pub fn installation(&self) -> Option<std::sync::Arc<Installation>> {
        self.installations.state().into_iter().find(|i| i.metadata.name.as_deref() == Some(INSTALLATION_NAME))
    }

    /// This node's Node object, if it exists.
    pub fn node(&self, name: &str) -> Option<std::sync::Arc<Node>> {
        self.nodes.state().into_iter().find(|n| n.metadata.name.as_deref() == Some(name))
    }
}
