//! Simulated nodes in the real API server: what kubelet and a node's agent would have written
//! for a node without running one (Node, NodeNetwork, optionally its IPAMBlock).

use std::time::Instant;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use trellis_api::ipam_block::block_name;
use trellis_api::{IPAMBlock, IPAMBlockSpec, NodeNetwork, NodeNetworkSpec};

/// API writes in flight while populating.
const IN_FLIGHT: usize = 16;

pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), ..Default::default() }
}

/// One simulated node.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub name: String,
    /// Underlay address with prefix.
    pub address: String,
    /// Its block, when the test bed (not the operator) allocates it.
    pub block: Option<(Ipv4Net, String)>,
}

async fn create_one(client: Client, node: SimNode) -> Result<()> {
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &Node { metadata: meta(&node.name), ..Default::default() })
        .await?;
    let spec = NodeNetworkSpec { address: node.address.clone(), uplink: Some("eth0".into()), ..Default::default() };
    Api::<NodeNetwork>::all(client.clone())
        .create(&PostParams::default(), &NodeNetwork { metadata: meta(&node.name), spec, status: None })
        .await?;
    if let Some((cidr, pool)) = &node.block {
        let block = IPAMBlock {
            metadata: meta(&block_name(&(*cidr).into())),
            spec: IPAMBlockSpec { cidr: cidr.to_string(), pool: pool.clone(), node: node.name.clone() },
            status: None,
        };
        Api::<IPAMBlock>::all(client).create(&PostParams::default(), &block).await?;
    }
    Ok(())
}

/// Creates every node's objects, [`IN_FLIGHT`] at a time; returns how long it took.
pub async fn create(client: &Client, nodes: Vec<SimNode>) -> Result<std::time::Duration> {
    let start = Instant::now();
    futures::stream::iter(nodes.into_iter().map(|n| create_one(client.clone(), n)))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(start.elapsed())
}

/// The pid of the one process whose command line contains `needle` (not this process).
pub fn pid_of(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let raw = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&raw).replace('\0', " ").contains(needle).then_some(pid)
    })
}
