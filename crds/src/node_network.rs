//! `NodeNetwork`: one per node (same name as the Node), written by that node's agent.
//!
//! `spec` is the node's identity on the pod network, which peers read to build their routes,
//! neighbours and FDB entries; `status` is what the agent applied, so convergence of every pool
//! change is visible per node (`kubectl get nodenetworks`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a node publishes about itself.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "NodeNetwork",
    plural = "nodenetworks",
    singular = "nodenetwork",
    shortname = "nn",
    category = "trellis",
    status = "NodeNetworkStatus",
    printcolumn(name = "ADDRESS", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "VTEP-MAC", type_ = "string", json_path = ".spec.vtepMAC"),
    printcolumn(name = "MTU", type_ = "integer", json_path = ".status.mtu"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A node's identity on the pod network (published by its agent) and what it applied."
)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkSpec {
    /// Node address with the prefix of its subnet (e.g. 10.0.1.11/24); the prefix decides CrossSubnet.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("spec.address must be an address with its subnet prefix, such as 10.0.1.11/24"))]
    #[schemars(length(max = 64))]
    pub address: String,
    /// The interface carrying `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub uplink: Option<String>,
    /// VXLAN tunnel endpoint MAC: deterministic per node, so it survives restarts.
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"))]
    pub vtep_mac: Option<String>,
    /// Tunnel address (IPIP and VXLAN devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.tunnelAddress must be an IP address"))]
    #[schemars(length(max = 64))]
    pub tunnel_address: Option<String>,
    /// What this node's kernel can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<KernelCapabilities>,
}

/// Kernel features relevant to encapsulation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelCapabilities {
    pub ipip: bool,
    pub vxlan: bool,
}

/// What the agent applied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStatus {
    /// Per pool: the generation and mode this node has in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<AppliedPool>,
    /// Effective pod MTU on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Ready, Degraded (with the kernel error), ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One pool as applied on a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPool {
    pub name: String,
    /// IPPool metadata.generation applied.
    pub generation: i64,
    /// E.g. `VXLAN/Always`, `IPIP/CrossSubnet`, `None`.
    pub encapsulation: String,
    /// Phase of a live change on this node (Receive, Switch, Cleanup) or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why this pool is not fully programmed on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
