//! `Installation`: the cluster-wide configuration of Trellis (a singleton named `default`).
//!
//! Modelled on the Tigera operator's Installation: the initial pools (`ipPools[]` with
//! `encapsulation` and `natOutgoing` as Enabled/Disabled strings), the pod MTU and how nodes find
//! their own address. Trellis calls the network section `spec.network` and the autodetection
//! `nodeAddressAutodetection`; Tigera's names `spec.calicoNetwork` and
//! `nodeAddressAutodetectionV4` are accepted as well (one spelling at a time, enforced at
//! admission), so Tigera manifests apply with only the apiVersion changed. Code reads the
//! network through [`InstallationSpec::network`], which folds both spellings into one, so neither
//! is ever ignored. The operator writes the defaulted spec to `status.computed` (in Trellis'
//! spelling), so users see exactly what is in force.

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
#[x_kube(validation = Rule::new("!(has(self.network) && has(self.calicoNetwork))")
    .message("spec.network and spec.calicoNetwork are the same setting (calicoNetwork is the Tigera operator's name for it): set only one of them")
    .field_path(".calicoNetwork"))]
pub struct InstallationSpec {
    /// Pod network configuration (`calicoNetwork`, the Tigera operator's name, is accepted
    /// instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// The Tigera operator's name for `network`, accepted so that Tigera manifests apply
    /// unchanged; set at most one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_network: Option<NetworkSpec>,
    /// Where the CNI plugin binaries and configuration live on the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniSpec>,
    /// Container registry prefix for Trellis images (e.g. `registry.example.com/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub registry: Option<String>,
}

/// `spec.network` (or `spec.calicoNetwork`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.nodeAddressAutodetection) && has(self.nodeAddressAutodetectionV4))")
    .message("nodeAddressAutodetection and nodeAddressAutodetectionV4 are the same setting (V4 is the Tigera operator's name for it): set only one of them")
    .field_path(".nodeAddressAutodetectionV4"))]
pub struct NetworkSpec {
    /// Initial IP pools. Defaults to one IPv4 pool 192.168.0.0/16 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cidr".into()]))]
    pub ip_pools: Option<Vec<InstallationPool>>,
    /// Pod MTU. Computed from the uplink MTU and the encapsulation when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 576 && self <= 9216").message("mtu must be between 576 and 9216"))]
    pub mtu: Option<i32>,
    /// How each node picks the address other nodes reach it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address_autodetection: Option<NodeAddressAutodetection>,
    /// The Tigera operator's name for `nodeAddressAutodetection` (a node's IPv4 address); set at
    /// most one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address_autodetection_v4: Option<NodeAddressAutodetection>,
    /// The Tigera operator's IPv6 node address autodetection. Accepted and kept, but not used:
    /// a Trellis node publishes one address, found by `nodeAddressAutodetection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address_autodetection_v6: Option<NodeAddressAutodetection>,
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
    /// Which nodes get blocks from this pool (Calico selector syntax; default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(
        validation = crate::selector::cel::grammar("ipPools[].nodeSelector"),
        validation = crate::selector::cel::parentheses("ipPools[].nodeSelector"),
    )]
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

/// `nodeAddressAutodetection` (or Tigera's `nodeAddressAutodetectionV4` / `V6`): at most one method.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.firstFound) && self.firstFound ? 1 : 0) + (has(self.interface) ? 1 : 0) + (has(self.skipInterface) ? 1 : 0) + (has(self.canReach) ? 1 : 0) + (has(self.cidrs) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) <= 1"
).message("node address autodetection: set at most one of firstFound, interface, skipInterface, canReach, cidrs, kubernetes"))]
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
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("cidrs must all be valid CIDRs"))]
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

impl InstallationSpec {
    /// The network configuration in force, whichever way it is spelled: `network`, else
    /// `calicoNetwork` (admission allows only one of them), with `nodeAddressAutodetectionV4`
    /// moved into `nodeAddressAutodetection` (again one of them). Everything that reads the
    /// network configuration (defaults, operator, agent) goes through this.
    pub fn network(&self) -> NetworkSpec {
        let mut network = self.network.clone().or_else(|| self.calico_network.clone()).unwrap_or_default();
        if network.node_address_autodetection.is_none() {
            network.node_address_autodetection = network.node_address_autodetection_v4.take();
        }
        network
    }

    /// Settings Trellis accepts but does not act on, as messages for a status condition (empty
    /// when there are none). The two "both set" cases only pass when admission was bypassed.
    pub fn unsupported_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.network.is_some() && self.calico_network.is_some() {
            out.push(
                "spec.calicoNetwork is ignored because spec.network is set: they are the same setting".to_string(),
            );
        }
        let (name, network) = match (&self.network, &self.calico_network) {
            (Some(n), _) => ("spec.network", n),
            (None, Some(n)) => ("spec.calicoNetwork", n),
            (None, None) => return out,
        };
        if network.node_address_autodetection.is_some() && network.node_address_autodetection_v4.is_some() {
            out.push(format!(
                "{name}.nodeAddressAutodetectionV4 is ignored because {name}.nodeAddressAutodetection is set: they are the same setting"
            ));
        }
        if network.node_address_autodetection_v6.is_some() {
            out.push(format!(
                "{name}.nodeAddressAutodetectionV6 is not used: a Trellis node publishes one address, found by nodeAddressAutodetection (or nodeAddressAutodetectionV4)"
            ));
        }
        out
    }
}

/// Observed state of the Installation, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The spec with every default filled in: what is in force, in Trellis' spelling
    /// (`network`, `nodeAddressAutodetection`) whichever spelling the spec used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed: Option<InstallationSpec>,
    /// Effective pod MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(interface: &str) -> NodeAddressAutodetection {
        NodeAddressAutodetection { interface: Some(interface.into()), ..Default::default() }
    }

    fn mtu(mtu: i32) -> NetworkSpec {
        NetworkSpec { mtu: Some(mtu), ..Default::default() }
    }

    #[test]
    fn network_reads_either_spelling() {
        let trellis = InstallationSpec { network: Some(mtu(1400)), ..Default::default() };
        let tigera = InstallationSpec { calico_network: Some(mtu(1400)), ..Default::default() };
        assert_eq!(trellis.network(), mtu(1400));
        assert_eq!(tigera.network(), mtu(1400));
        assert_eq!(InstallationSpec::default().network(), NetworkSpec::default());
        // Only reachable when admission was bypassed: `network` wins, and it is reported.
        let both = InstallationSpec { network: Some(mtu(1400)), calico_network: Some(mtu(9000)), ..Default::default() };
        assert_eq!(both.network(), mtu(1400));
        assert_eq!(
            both.unsupported_fields(),
            ["spec.calicoNetwork is ignored because spec.network is set: they are the same setting"]
        );
    }

    #[test]
    fn v4_autodetection_is_the_autodetection() {
        let v4 = NetworkSpec { node_address_autodetection_v4: Some(method("eth1")), ..Default::default() };
        let spec = InstallationSpec { calico_network: Some(v4), ..Default::default() };
        let network = spec.network();
        assert_eq!(network.node_address_autodetection, Some(method("eth1")));
        assert_eq!(network.node_address_autodetection_v4, None, "moved, not copied");
        assert!(spec.unsupported_fields().is_empty());

        let both = NetworkSpec {
            node_address_autodetection: Some(method("eth0")),
            node_address_autodetection_v4: Some(method("eth1")),
            ..Default::default()
        };
        let spec = InstallationSpec { network: Some(both), ..Default::default() };
        assert_eq!(spec.network().node_address_autodetection, Some(method("eth0")));
        assert_eq!(
            spec.unsupported_fields(),
            [
                "spec.network.nodeAddressAutodetectionV4 is ignored because spec.network.nodeAddressAutodetection is set: they are the same setting"
            ]
        );
    }

    #[test]
    fn v6_autodetection_is_kept_and_reported() {
        let v6 = NetworkSpec { node_address_autodetection_v6: Some(method("eth2")), ..Default::default() };
        let spec = InstallationSpec { calico_network: Some(v6), ..Default::default() };
        assert_eq!(spec.network().node_address_autodetection_v6, Some(method("eth2")));
        assert_eq!(spec.network().node_address_autodetection, None);
        let warnings = spec.unsupported_fields();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("spec.calicoNetwork.nodeAddressAutodetectionV6 is not used"), "{warnings:?}");
    }
}
