//! The agent's vocabulary: observed state, desired state and the changes between them, as data.
//!
//! This module is a leaf: it imports nothing else of the crate (only std, ipnet, serde and the
//! API crate's value types), so the planner, the diff, the kernel layer, the reconcile loop and
//! any other consumer (the operator, a `plan` printer) share these types without depending on
//! one another. `leaf.rs` fails the build's tests when a model file reaches out of the module.
//!
//! * [`DesiredState`] (`desired.rs`): what the planner wants; element types in `tunnel.rs`
//!   (devices and ownership marks), `route.rs`, `neighbour.rs` (neighbour + FDB), `host.rs`
//!   (nftables, CNI conflist, sysctls) and `pool.rs` (per-pool outcome).
//! * [`KernelState`] (`observed.rs`): what the kernel has now, in the same element types.
//! * [`Change`] (`change.rs`): one kernel operation, and [`RouteConflict`], a desired route
//!   held back because a foreign route has its destination.

mod capabilities;
mod change;
mod desired;
mod host;
mod mac;
mod neighbour;
mod observed;
mod pool;
mod route;
mod tunnel;

#[cfg(test)]
mod leaf;

pub use capabilities::Capabilities;
pub use change::{Change, RouteConflict};
pub use desired::DesiredState;
pub use host::{CniConfig, NatPlan, Sysctl};
pub use mac::{MacAddr, MacParseError};
pub use neighbour::{FdbEntry, Neighbour};
pub use observed::{IpipDevice, KernelState, VxlanDevice};
pub use pool::{Encapsulation, EncapsulationParseError, Phase, PoolPlan};
pub use route::{ROUTE_PROTOCOL, Route, RouteKind, StrayRoute};
pub use tunnel::{
    IPIP_ADDRESS_LABEL, IPIP_DEVICE, IPIP_OVERHEAD, IpipTunnel, OWNER_ALIAS, VXLAN_OVERHEAD, VxlanTunnel, address_label,
};
