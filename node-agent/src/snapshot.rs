//! The agent's input: what the cluster wants for this node, as one self-contained document.
//!
//! In Kubernetes mode (`trellis-agent run`) it is built from IPPools, IPAMBlocks and
//! NodeNetworks; standalone (`trellis-agent plan|apply --snapshot FILE`) it is read from YAML
//! or JSON. The
//! planner is a pure function of a snapshot (plus the kernel's capabilities and the uplink MTU),
//! so everything the data plane does can be reproduced from this file alone.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use trellis_api::EncapMode;
use trellis_api::ip_pool::{AllowedUse, DEFAULT_ALLOWED_USES};

use crate::model::{Encapsulation, MacAddr, Phase};

/// Everything the planner needs to know about the cluster, seen from one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// This node.
    pub node: LocalNode,
    /// Every other node that has blocks.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// All IP pools of the cluster, including disabled ones.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Explicit pod MTU (Installation `spec.network.mtu`); wins over the computed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// VXLAN device parameters (cluster-wide).
    #[serde(default)]
    pub vxlan: VxlanSettings,
    /// Where the CNI configuration goes and which plugins it chains.
    #[serde(default)]
    pub cni: CniSettings,
}

/// The node the agent runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalNode {
    pub name: String,
    /// Node address with the prefix of its subnet, e.g. `10.0.1.11/24`; the prefix decides
    /// CrossSubnet.
    pub address: IpNet,
    /// Interface that carries `address` (encapsulated traffic leaves through it).
    pub uplink: String,
    /// MTU of the uplink. Filled in from the kernel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_mtu: Option<u32>,
    /// Blocks allocated to this node (IPAMBlocks with this node's affinity).
    #[serde(default)]
    pub blocks: Vec<IpNet>,
    /// VTEP MAC; derived from the node name when absent (see [`crate::vtep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
    /// Tunnel address; derived from the blocks when absent (see [`crate::vtep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<IpAddr>,
}

/// Another node of the cluster, as published in its NodeNetwork.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// The peer's node address with its subnet prefix.
    pub address: IpNet,
    /// The peer's VTEP MAC; derived from its name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
    /// The peer's tunnel address; derived from its blocks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<IpAddr>,
    /// Blocks allocated to the peer.
    #[serde(default)]
    pub blocks: Vec<IpNet>,
}

/// An IP pool (the IPPool CRD's spec, flattened).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    pub cidr: IpNet,
    #[serde(default)]
    pub ipip_mode: EncapMode,
    #[serde(default)]
    pub vxlan_mode: EncapMode,
    #[serde(default)]
    pub nat_outgoing: bool,
    #[serde(default)]
    pub disabled: bool,
    /// Prefix length of the pool's blocks (26 for IPv4 unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Calico's `allowedUses`: Workload (the pool's blocks are CNI ranges), Tunnel (a node's
    /// tunnel address may come from its block in this pool). Unset or empty: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_uses: Option<Vec<AllowedUse>>,
    /// A live change of this pool's encapsulation or NAT in progress (driven by the operator
    /// through the IPPool status); the fields above are the settings being entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<PoolTransition>,
}

impl Pool {
    /// The effective uses: `allowed_uses`, or `[Workload, Tunnel]` when unset or empty.
    fn uses(&self) -> &[AllowedUse] {
        match self.allowed_uses.as_deref() {
            None | Some([]) => &DEFAULT_ALLOWED_USES,
            Some(uses) => uses,
        }
    }

    /// The pool's node blocks give pods addresses (CNI ranges).
    pub fn allows_workload(&self) -> bool {
        self.uses().contains(&AllowedUse::Workload)
    }

    /// A node's tunnel address may be taken from its block in this pool.
    pub fn allows_tunnel(&self) -> bool {
        self.uses().contains(&AllowedUse::Tunnel)
    }
}

/// The settings a pool is leaving during a live change, and the phase this node is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolTransition {
    /// The encapsulation being left (`None`, `VXLAN/Always`, `IPIP/CrossSubnet`, ...).
    pub from: Encapsulation,
    /// natOutgoing being left.
    #[serde(default)]
    pub from_nat_outgoing: bool,
    pub phase: Phase,
}

/// Cluster-wide VXLAN parameters (Calico's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanSettings {
    #[serde(default = "VxlanSettings::default_device")]
    pub device: String,
    #[serde(default = "VxlanSettings::default_vni")]
    pub vni: u32,
    #[serde(default = "VxlanSettings::default_port")]
    pub port: u16,
}

impl VxlanSettings {
    fn default_device() -> String {
        "vxlan.trellis".to_string()
    }
    fn default_vni() -> u32 {
        4096
    }
    fn default_port() -> u16 {
        4789
    }
}

impl Default for VxlanSettings {
    fn default() -> Self {
        Self { device: Self::default_device(), vni: Self::default_vni(), port: Self::default_port() }
    }
}

/// The pod-side plugin the conflist delegates to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniPlugin {
    /// One veth per pod with a /32 route on the host (Calico-like; no bridge).
    #[default]
    Ptp,
    /// A Linux bridge per node.
    Bridge,
}

/// Where the CNI configuration is written. Every path is settable because on the one-machine
/// test bed all "nodes" share one filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniSettings {
    #[serde(default = "CniSettings::default_conf_dir")]
    pub conf_dir: PathBuf,
    #[serde(default = "CniSettings::default_conf_name")]
    pub conf_name: String,
    /// host-local's `dataDir` (allocations on disk).
    #[serde(default = "CniSettings::default_ipam_data_dir")]
    pub ipam_data_dir: PathBuf,
    #[serde(default)]
    pub plugin: CniPlugin,
}

impl CniSettings {
    fn default_conf_dir() -> PathBuf {
        PathBuf::from("/etc/cni/net.d")
    }
    fn default_conf_name() -> String {
        "10-trellis.conflist".to_string()
    }
    fn default_ipam_data_dir() -> PathBuf {
        PathBuf::from("/var/lib/cni/networks")
    }
}

impl Default for CniSettings {
    fn default() -> Self {
        Self {
            conf_dir: Self::default_conf_dir(),
            conf_name: Self::default_conf_name(),
            ipam_data_dir: Self::default_ipam_data_dir(),
            plugin: CniPlugin::default(),
        }
    }
}

/// Errors reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
}

impl Snapshot {
    /// Reads a snapshot from a YAML or JSON file (JSON is YAML).
    pub fn from_file(path: &std::path::Path) -> Result<Self, SnapshotError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SnapshotError::Read { path: path.to_owned(), source })?;
        serde_yaml::from_str(&text).map_err(|source| SnapshotError::Parse { path: path.to_owned(), source })
    }
}
