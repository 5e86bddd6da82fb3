//! The Snapshot of this node, assembled from the cluster's objects (pure).
//!
//! Inputs are what the reflectors hold (IPPools, IPAMBlocks, NodeNetworks, the Installation)
//! plus this node's detected identity and the agent's settings; the output is the same
//! [`Snapshot`] a standalone agent reads from a file, so the planner cannot tell the two apart.
//! Problems confined to one peer (no NodeNetwork yet, an unparsable field) leave that peer out
//! with a warning; a malformed object that decides this node's own plan (a pool, an own block)
//! is an error, so nothing is applied from a half-understood cluster.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use trellis_api::{IPAMBlock, IPPool, Installation, NodeNetwork};

use crate::model::MacAddr;
use crate::snapshot::{CniSettings, LocalNode, Peer, Pool, Snapshot, VxlanSettings};

/// This node as detected locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    pub name: String,
    /// Node address with its subnet prefix.
    pub address: IpNet,
    pub uplink: String,
}

/// The agent's own settings (flags), not from the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub cni: CniSettings,
    pub vxlan: VxlanSettings,
}

/// A snapshot plus what the status report needs to say which objects it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSnapshot {
    pub snapshot: Snapshot,
    /// IPPool name → `metadata.generation` the snapshot was built from.
    pub generations: BTreeMap<String, i64>,
    /// Things left out and why.
    pub warnings: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterSnapshotError {
    #[error("IPPool {pool}: spec.cidr {cidr:?} is not a CIDR")]
    PoolCidr { pool: String, cidr: String },
    #[error("IPPool {pool}: spec.blockSize {size} is not a prefix length")]
    BlockSize { pool: String, size: i32 },
    #[error("IPAMBlock {block} of this node: spec.cidr {cidr:?} is not a CIDR")]
    OwnBlockCidr { block: String, cidr: String },
    #[error("Installation default: spec.network.mtu {0} is not a valid MTU")]
    Mtu(i32),
}

fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

fn pool_of(pool: &IPPool) -> Result<Pool, ClusterSnapshotError> {
    let name = name_of(pool);
    let spec = &pool.spec;
    let cidr = spec
        .cidr
        .parse::<IpNet>()
        .map_err(|_| ClusterSnapshotError::PoolCidr { pool: name.clone(), cidr: spec.cidr.clone() })?;
    let block_size = spec
        .block_size
        .map(|size| u8::try_from(size).map_err(|_| ClusterSnapshotError::BlockSize { pool: name.clone(), size }))
        .transpose()?;
    Ok(Pool {
        name,
        cidr,
        ipip_mode: spec.ipip(),
        vxlan_mode: spec.vxlan(),
        nat_outgoing: spec.nat_outgoing.unwrap_or(false),
        disabled: spec.disabled.unwrap_or(false),
        block_size,
    })
}

/// A peer from its NodeNetwork, or why it is left out.
fn peer_of(nn: &NodeNetwork, blocks: Vec<IpNet>) -> Result<Peer, String> {
    let name = name_of(nn);
    let address =
        nn.spec.address.parse::<IpNet>().map_err(|_| {
            format!("peer {name}: NodeNetwork spec.address {:?} is not an address/prefix", nn.spec.address)
        })?;
    let vtep_mac = match nn.spec.vtep_mac.as_deref().map(str::parse::<MacAddr>) {
        Some(Ok(mac)) => Some(mac),
        Some(Err(e)) => return Err(format!("peer {name}: NodeNetwork spec.vtepMAC: {e}")),
        None => None,
    };
    let tunnel_address = match nn.spec.tunnel_address.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => return Err(format!("peer {name}: NodeNetwork spec.tunnelAddress is not an IP address")),
        None => None,
    };
    Ok(Peer { name, address, vtep_mac, tunnel_address, blocks })
}

/// Pure: the snapshot of `node` from the cluster's objects (see the module comment).
pub fn snapshot_from_cluster(
    node: &LocalIdentity,
    pools: &[Arc<IPPool>],
    blocks: &[Arc<IPAMBlock>],
    node_networks: &[Arc<NodeNetwork>],
    installation: Option<&Installation>,
    settings: &Settings,
) -> Result<ClusterSnapshot, ClusterSnapshotError> {
    let mut warnings = Vec::new();

    let mut snapshot_pools = pools.iter().map(|p| pool_of(p)).collect::<Result<Vec<_>, _>>()?;
    snapshot_pools.sort_by(|a, b| a.name.cmp(&b.name));
    let generations = pools.iter().map(|p| (name_of(p.as_ref()), p.metadata.generation.unwrap_or_default())).collect();

    // Blocks per node; a peer's unparsable block is left out, an own one is an error.
    let mut own_blocks = Vec::new();
    let mut peer_blocks: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
    for block in blocks {
        let parsed = block.spec.cidr.parse::<IpNet>();
        if block.spec.node == node.name {
            own_blocks.push(parsed.map_err(|_| ClusterSnapshotError::OwnBlockCidr {
                block: name_of(block.as_ref()),
                cidr: block.spec.cidr.clone(),
            })?);
        } else {
            match parsed {
                Ok(cidr) => peer_blocks.entry(block.spec.node.as_str()).or_default().push(cidr),
                Err(_) => warnings.push(format!(
                    "IPAMBlock {} of node {}: spec.cidr {:?} is not a CIDR; not routed",
                    name_of(block.as_ref()),
                    block.spec.node,
                    block.spec.cidr
                )),
            }
        }
    }
    own_blocks.sort();

    let published: BTreeMap<String, &NodeNetwork> =
        node_networks.iter().map(|nn| (name_of(nn.as_ref()), nn.as_ref())).collect();
    let mut peers = Vec::new();
    for (peer, mut cidrs) in peer_blocks {
        cidrs.sort();
        let Some(nn) = published.get(peer) else {
            warnings.push(format!(
                "node {peer} has blocks but no NodeNetwork yet (its agent has not published an address); \
                 its blocks are not routed"
            ));
            continue;
        };
        match peer_of(nn, cidrs) {
            Ok(p) => peers.push(p),
            Err(w) => warnings.push(format!("{w}; its blocks are not routed")),
        }
    }

    // `network()`: `spec.network` or Tigera's `spec.calicoNetwork`, whichever is set.
    let mtu = installation
        .and_then(|i| i.spec.network().mtu)
        .map(|mtu| u32::try_from(mtu).map_err(|_| ClusterSnapshotError::Mtu(mtu)))
        .transpose()?;

    let snapshot = Snapshot {
        node: LocalNode {
            name: node.name.clone(),
            address: node.address,
            uplink: node.uplink.clone(),
            uplink_mtu: None,
            blocks: own_blocks,
            vtep_mac: None,
            tunnel_address: None,
        },
        peers,
        pools: snapshot_pools,
        mtu,
        vxlan: settings.vxlan.clone(),
        cni: settings.cni.clone(),
    };
    Ok(ClusterSnapshot { snapshot, generations, warnings })
}

#[cfg(test)]
mod tests;
