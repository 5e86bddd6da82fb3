//! `IPAMBlock`: a block of a pool, affine to one node.
//!
//! Blocks are claimed by *create*: the object name is derived from the CIDR
//! ([`block_name`]), so two claimants of the same block race on one name and the API server lets
//! exactly one win. The spec never changes after creation.

use ipnet::IpNet;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A block and its owner.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    singular = "ipamblock",
    category = "trellis",
    status = "IPAMBlockStatus",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "POOL", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "NODE", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A block of pod addresses carved from an IPPool and affine to one node."
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("IPAMBlock spec is immutable: delete the block to release it"))]
pub struct IPAMBlockSpec {
    /// The block, canonical CIDR.
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.cidr must be a valid CIDR"),
        validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("spec.cidr must be in canonical form with no host bits set"),
    )]
    #[schemars(length(max = 64))]
    pub cidr: String,
    /// Name of the IPPool the block belongs to.
    #[schemars(length(max = 253))]
    pub pool: String,
    /// Name of the Node the block is affine to.
    #[schemars(length(max = 253))]
    pub node: String,
}

/// Observed state of a block.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockStatus {
    /// Addresses in use by pods on the node (reported by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<i32>,
}

/// Object name of the block for `cidr`: `10-244-1-64-26`, `fd00-10-244--40-122`.
pub fn block_name(cidr: &IpNet) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len()).replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_are_dns_safe_and_distinct() {
        let a: IpNet = "10.244.1.64/26".parse().unwrap();
        let b: IpNet = "10.244.1.0/26".parse().unwrap();
        let c: IpNet = "fd00:10:244::40/122".parse().unwrap();
        assert_eq!(block_name(&a), "10-244-1-64-26");
        assert_ne!(block_name(&a), block_name(&b));
        assert_eq!(block_name(&c), "fd00-10-244--40-122");
    }
}
