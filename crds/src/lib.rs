//! The Trellis API: group `trellis.dev`, version `v1`.
//!
//! Field names follow Calico's on purpose so that users' manifests and muscle memory carry
//! over (`ipipMode`, `vxlanMode`, `natOutgoing`, `blockSize`, `spec.network.ipPools`).
//! Rules that need only the object are enforced at admission (OpenAPI + CEL, see each type);
//! defaults ([`defaults`]) and cross-object checks ([`overlap`]) are pure functions the operator
//! applies.

// kube's `printcolumn(...)` attributes repeat `type_ = "string"`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod crdgen;
pub mod defaults;
pub mod encap;
pub mod global_network_policy;
pub mod installation;
pub mod ip_pool;
pub mod ipam_block;
pub mod node_network;
pub mod overlap;
pub mod selector;
pub mod watch_backoff;

pub use encap::EncapMode;
pub use global_network_policy::{GlobalNetworkPolicy, GlobalNetworkPolicySpec};
pub use installation::{Installation, InstallationSpec, InstallationStatus};
pub use ip_pool::{IPPool, IPPoolSpec, IPPoolStatus};
pub use ipam_block::{IPAMBlock, IPAMBlockSpec};
pub use node_network::{NodeNetwork, NodeNetworkSpec, NodeNetworkStatus};
pub use selector::{Selector, SelectorError};

/// API group of every Trellis kind.
pub const GROUP: &str = "trellis.dev";
/// The only served (and stored) version.
pub const VERSION: &str = "v1";
