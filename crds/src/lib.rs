//! The Trellis API: group `trellis.dev`, version `v1`.
//!
//! Field names follow Calico's on purpose so that users' manifests and muscle memory carry
//! over (`ipipMode`, `vxlanMode`, `natOutgoing`, `blockSize`, `spec.network.ipPools`).

pub mod encap;

pub use encap::EncapMode;

/// API group of every Trellis kind.
pub const GROUP: &str = "trellis.dev";
/// The only served (and stored) version.
pub const VERSION: &str = "v1";
