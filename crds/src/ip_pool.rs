//! `IPPool`: a range of pod addresses and how traffic between its blocks is carried.
//!
//! Calico's field names and semantics: `ipipMode` / `vxlanMode` (Never | Always | CrossSubnet, at
//! most one enabled), `natOutgoing`, `blockSize` (per-node allocation unit), `nodeSelector`,
//! `disabled` (no new allocations; existing blocks keep working). Everything that can be decided
//! from the object alone is a schema or CEL rule, so `kubectl apply` fails at admission with a
//! message naming the field; checks that need other objects (overlaps) are the operator's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EncapMode;

/// Spec of an IP pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "trellis",
    status = "IPPoolStatus",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "IPIP", type_ = "string", json_path = ".spec.ipipMode"),
    printcolumn(name = "VXLAN", type_ = "string", json_path = ".spec.vxlanMode"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "BLOCK", type_ = "integer", json_path = ".spec.blockSize"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.ready",
        description = "nodes converged / nodes selected"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A pool of pod IP addresses, carved into per-node blocks, with its encapsulation and NAT policy."
)]
// Unknown fields: the API server rejects them under strict field validation (kubectl's
// default); `additionalProperties: false` is not allowed in a structural schema.
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))"
    ).message("spec.blockSize must be between 20 and 32 for an IPv4 pool, and between 116 and 128 for an IPv6 pool").field_path(".blockSize"),
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()"
    ).message("spec.blockSize must not be larger than the pool: the block prefix length must be at least the prefix length of spec.cidr").field_path(".blockSize"),
    validation = Rule::new(
        "!(has(self.ipipMode) && self.ipipMode != 'Never' && has(self.vxlanMode) && self.vxlanMode != 'Never')"
    ).message("spec.ipipMode and spec.vxlanMode cannot both be enabled: set one of them to Never (switch by setting the old one to Never in the same patch)").field_path(".vxlanMode"),
    validation = Rule::new(
        "!has(self.ipipMode) || self.ipipMode == 'Never' || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4"
    ).message("spec.ipipMode can only be enabled on an IPv4 pool: IP-in-IP carries IPv4 only; use vxlanMode for IPv6").field_path(".ipipMode"),
    validation = Rule::new(
        "!has(oldSelf.blockSize) || (has(self.blockSize) && self.blockSize == oldSelf.blockSize)"
    ).message("spec.blockSize is immutable: blocks are already carved out of the pool; create a new pool to change it").field_path(".blockSize").reason(Reason::FieldValueForbidden),
)]
pub struct IPPoolSpec {
    /// The pool's range in CIDR notation (IPv4 or IPv6), canonical (no host bits). Immutable.
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.cidr must be a valid CIDR such as 10.244.0.0/16 or fd00:10:244::/56"),
        validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("spec.cidr must be in canonical form with no host bits set (for example 10.244.0.0/16, not 10.244.1.0/16)"),
        validation = Rule::new("self == oldSelf").message("spec.cidr is immutable: create a new IPPool and migrate workloads to it").reason(Reason::FieldValueForbidden),
    )]
    #[schemars(length(max = 64))]
    pub cidr: String,

    /// Prefix length of the blocks handed to nodes (default 26 for IPv4, 122 for IPv6). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,

    /// When to encapsulate in IP-in-IP (IPv4 only). Default Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<EncapMode>,

    /// When to encapsulate in VXLAN. Default Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<EncapMode>,

    /// Masquerade traffic from this pool to destinations outside all pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,

    /// Which nodes get blocks from this pool (Calico selector syntax; default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub node_selector: Option<String>,

    /// No new allocations from this pool; existing blocks stay routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// Observed state of an IP pool, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes selected by the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_selected: Option<i32>,
    /// Nodes that applied the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_converged: Option<i32>,
    /// `converged/selected`, for `kubectl get ippools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// A live encapsulation change in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
    /// Ready, Progressing, Degraded, CIDROverlap ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A live encapsulation change (see docs/architecture.md, "Live mode change").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// Encapsulation being left, e.g. `IPIP/CrossSubnet`.
    pub from: String,
    /// Encapsulation being entered, e.g. `VXLAN/Always`.
    pub to: String,
    /// Receive (every node can receive the new one), Switch (senders switch), Cleanup (old one removed).
    pub phase: String,
}

impl IPPoolSpec {
    /// The effective IP-in-IP mode.
    pub fn ipip(&self) -> EncapMode {
        self.ipip_mode.unwrap_or_default()
    }
    /// The effective VXLAN mode.
    pub fn vxlan(&self) -> EncapMode {
        self.vxlan_mode.unwrap_or_default()
    }
}
