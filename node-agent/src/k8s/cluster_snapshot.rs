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
use trellis_api::{EncapMode, IPAMBlock, IPPool, Installation, NodeNetwork};

use crate::model::{Encapsulation, MacAddr, Phase};
use crate::snapshot::{CniSettings, LocalNode, Peer, Pool, PoolTransition, Snapshot, VxlanSettings};

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
    #[error("IPPool {pool}: {problem}")]
    Status { pool: String, problem: String },
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
    let in_force = settings_in_force(pool)?;
    let (ipip_mode, vxlan_mode) = modes(in_force.encapsulation);
    Ok(Pool {
        name,
        cidr,
        ipip_mode,
        vxlan_mode,
        nat_outgoing: in_force.nat_outgoing,
        disabled: spec.disabled.unwrap_or(false),
        block_size,
        allowed_uses: spec.allowed_uses.clone(),
        transition: in_force.transition,
    })
}

fn modes(encapsulation: Encapsulation) -> (EncapMode, EncapMode) {
    match encapsulation {
        Encapsulation::None => (EncapMode::Never, EncapMode::Never),
        Encapsulation::Ipip(mode) => (mode, EncapMode::Never),
        Encapsulation::Vxlan(mode) => (EncapMode::Never, mode),
    }
}

/// The encapsulation and NAT a pool's blocks get on this node now, and the live change this
/// node takes part in.
#[derive(Debug, PartialEq)]
struct InForce {
    encapsulation: Encapsulation,
    nat_outgoing: bool,
    transition: Option<PoolTransition>,
}

/// Pure: which settings of `pool` this node runs (docs/live-changes.md):
/// * `trellis.dev/live-change: direct`, or no `status.active` yet (no operator has looked at
///   the pool): the spec, at once;
/// * a `status.transition`: its target settings, with the settings being left and the phase;
/// * otherwise `status.active`: a newer spec waits there until the operator starts its change.
fn settings_in_force(pool: &IPPool) -> Result<InForce, ClusterSnapshotError> {
    let spec = &pool.spec;
    let parse = |field: &str, text: &str| {
        text.parse::<Encapsulation>()
            .map_err(|e| ClusterSnapshotError::Status { pool: name_of(pool), problem: format!("{field}: {e}") })
    };
    let from_spec = || -> Result<InForce, ClusterSnapshotError> {
        Ok(InForce {
            encapsulation: parse("spec", &spec.encapsulation())?,
            nat_outgoing: spec.nat_outgoing.unwrap_or(false),
            transition: None,
        })
    };
    let status = pool.status.as_ref();
    if !pool.phased() {
        return from_spec();
    }
    if let Some(t) = status.and_then(|s| s.transition.as_ref()) {
        let phase = Phase::parse(&t.phase).ok_or_else(|| ClusterSnapshotError::Status {
            pool: name_of(pool),
            problem: format!("status.transition.phase {:?} is not Receive, Switch or Cleanup", t.phase),
        })?;
        return Ok(InForce {
            encapsulation: parse("status.transition.to", &t.to)?,
            nat_outgoing: t.to_nat_outgoing,
            transition: Some(PoolTransition {
                from: parse("status.transition.from", &t.from)?,
                from_nat_outgoing: t.from_nat_outgoing,
                phase,
            }),
        });
    }
    match status.and_then(|s| s.active.as_ref()) {
        Some(active) => Ok(InForce {
            encapsulation: parse("status.active.encapsulation", &active.encapsulation)?,
            nat_outgoing: active.nat_outgoing,
            transition: None,
        }),
        None => from_spec(),
    }
}

/// Whether the operator marked `pool` as overlapping an older pool (then it is not used).
fn overlaps_older_pool(pool: &IPPool) -> bool {
    pool.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "CIDROverlap" && c.status == "True"))
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

    // A pool the operator found overlapping an older one is not used (as its condition says).
    let (overlapping, used): (Vec<&Arc<IPPool>>, Vec<&Arc<IPPool>>) =
        pools.iter().partition(|p| overlaps_older_pool(p));
    for pool in overlapping {
        warnings.push(format!(
            "IPPool {} overlaps an older pool (condition CIDROverlap); it is not used",
            name_of(pool.as_ref())
        ));
    }
    let mut snapshot_pools = used.iter().map(|p| pool_of(p)).collect::<Result<Vec<_>, _>>()?;
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
