//! `Installation`: the cluster-wide configuration of Trellis (a singleton named `default`).
//!
//! Modelled on the Tigera operator's Installation (`spec.calicoNetwork` is `spec.network` here):
//! the initial pools (`ipPools[]` with `encapsulation` and `natOutgoing` as Enabled/Disabled
//! strings), the pod MTU and how nodes find their own address. The operator writes the defaulted
//! spec to `status.computed`, so users see exactly what is in force.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of the Installation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "Installation",
    plural = "installations",
    singular = "installation",
    category = "trellis",
    status = "InstallationStatus",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name must be 'default': the Installation is a cluster singleton"),
    printcolumn(name = "MTU", type_ = "integer", json_path = ".status.mtu"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "Cluster-wide Trellis configuration; the only accepted name is 'default'."
)]
#[serde(rename_all = "camelCase")]
pub struct InstallationSpec {
    /// Pod network configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Where the CNI plugin binaries and configuration live on the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniSpec>,
    /// Container registry prefix for Trellis images (e.g. `registry.example.com/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub registry: Option<String>,
}

/// `spec.network`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Initial IP pools. Defaults to one IPv4 pool 192.168.0.0/16 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cidr".into()]))]
    pub ip_pools: Option<Vec<InstallationPool>>,
    /// Pod MTU. Computed from the uplink MTU and the encapsulation when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 576 && self <= 9216").message("spec.network.mtu must be between 576 and 9216"))]
    pub mtu: Option<i32>,
    /// How each node picks the address other nodes reach it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address_autodetection: Option<NodeAddressAutodetection>,
}

/// One entry of `spec.network.ipPools`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))"
    ).message("ipPools[].blockSize must be between 20 and 32 for an IPv4 pool, and between 116 and 128 for an IPv6 pool").field_path(".blockSize"),
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()"
    ).message("ipPools[].blockSize must not be larger than the pool: the block prefix length must be at least the prefix length of cidr").field_path(".blockSize"),
    validation = Rule::new(
        "!has(self.encapsulation) || !(self.encapsulation in ['IPIP', 'IPIPCrossSubnet']) || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4"
    ).message("ipPools[].encapsulation IPIP and IPIPCrossSubnet are only valid for IPv4 pools; use VXLAN, VXLANCrossSubnet or None for IPv6").field_path(".encapsulation"),
)]
pub struct InstallationPool {
    /// The pool's CIDR, canonical (no host bits).
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("ipPools[].cidr must be a valid CIDR such as 10.244.0.0/16 or fd00:10:244::/56"),
        validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("ipPools[].cidr must be in canonical form with no host bits set (for example 10.244.0.0/16, not 10.244.1.0/16)"),
    )]
    #[schemars(length(max = 64))]
    pub cidr: String,
    /// Encapsulation between nodes (default IPIP for IPv4, None for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulation: Option<Encapsulation>,
    /// Enabled (default) or Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<NatOutgoing>,
    /// Block prefix length (default 26 for IPv4, 122 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,
    /// Which nodes get blocks from this pool (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub node_selector: Option<String>,
}

/// Encapsulation of an Installation pool (the Tigera operator's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Encapsulation {
    #[serde(rename = "IPIP")]
    Ipip,
    #[serde(rename = "IPIPCrossSubnet")]
    IpipCrossSubnet,
    #[serde(rename = "VXLAN")]
    Vxlan,
    #[serde(rename = "VXLANCrossSubnet")]
    VxlanCrossSubnet,
    None,
}

/// NAT-outgoing of an Installation pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NatOutgoing {
    Enabled,
    Disabled,
}

/// `spec.network.nodeAddressAutodetection`: at most one method.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.firstFound) && self.firstFound ? 1 : 0) + (has(self.interface) ? 1 : 0) + (has(self.skipInterface) ? 1 : 0) + (has(self.canReach) ? 1 : 0) + (has(self.cidrs) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) <= 1"
).message("spec.network.nodeAddressAutodetection: set at most one of firstFound, interface, skipInterface, canReach, cidrs, kubernetes"))]
pub struct NodeAddressAutodetection {
    /// Use the first valid address on the first interface found (the default method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_found: Option<bool>,
    /// Use the first address of interfaces matching this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub interface: Option<String>,
    /// Use the first address of interfaces NOT matching this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub skip_interface: Option<String>,
    /// Use the address of the interface that routes to this destination (IP or hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub can_reach: Option<String>,
    /// Use the first address inside one of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.network.nodeAddressAutodetection.cidrs must all be valid CIDRs"))]
    pub cidrs: Option<Vec<AutodetectCidr>>,
    /// Use the address Kubernetes reports for the Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAddress>,
}

/// A CIDR string with a bounded length (keeps CEL cost estimates small).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(transparent)]
pub struct AutodetectCidr(#[schemars(length(max = 64))] pub String);

/// Which Node address to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KubernetesAddress {
    NodeInternalIP,
}

/// `spec.cni`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CniSpec {
    /// Directory of the CNI plugin binaries on the nodes (default /opt/cni/bin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub bin_dir: Option<String>,
    /// Directory of the CNI configuration on the nodes (default /etc/cni/net.d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub conf_dir: Option<String>,
}

/// Observed state of the Installation, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The spec with every default filled in: what is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed: Option<InstallationSpec>,
    /// Effective pod MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
