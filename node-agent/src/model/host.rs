//! The host state Trellis owns outside netlink: its nftables table, the CNI conflist and the
//! sysctls the data plane needs. Each is replaced as a whole, so it is planned as one value.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Content of Trellis' nftables table. Empty `nat_sources` means no table at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatPlan {
    /// CIDRs of pools with natOutgoing (disabled ones too: their running pods keep egress):
    /// their traffic leaving the pools is masqueraded.
    pub nat_sources: Vec<IpNet>,
    /// CIDRs of all pools (enabled or not): destinations that are never masqueraded.
    pub all_pools: Vec<IpNet>,
}

/// The CNI configuration list, as JSON, and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniConfig {
    pub path: PathBuf,
    /// `null` when no block of this node can give pods addresses: the file is then removed,
    /// so no new pod starts here.
    pub conflist: serde_json::Value,
    /// Why `conflist` is `null`, in words a human understands (for the pass report and the
    /// NodeNetwork's Ready condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A sysctl the agent owns, e.g. `net.ipv4.ip_forward = 1`. Per-interface keys keep the
/// interface name as it is, dots included (`net.ipv4.conf.vxlan.trellis.rp_filter`); the
/// kernel layer maps them to `/proc/sys` paths.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sysctl {
    pub key: String,
    pub value: String,
}
