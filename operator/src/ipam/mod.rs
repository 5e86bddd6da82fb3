//! IP address management, pure: which blocks to claim for which node and which to release.
//!
//! No Kubernetes types here; the IPAM controller (`controllers/ipam.rs`) turns cluster objects
//! into this model, runs [`plan`] and carries the result out (create = claim, delete = release).

mod address_set;
mod block;
mod plan;

pub use block::{Block, overlaps};
pub use plan::{Plan, Pool, Release, ReleaseReason, plan};
