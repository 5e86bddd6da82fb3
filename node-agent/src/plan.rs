//! Placeholder: the planner lands with the `plan` helper's work (contract below is fixed).

use crate::desired::{Capabilities, DesiredState};
use crate::snapshot::Snapshot;

/// A snapshot the planner cannot turn into a desired state at all.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("planner not implemented yet")]
    NotImplemented,
}

/// Pure: what this node's kernel and files should look like. `snapshot.node.uplink_mtu` must be
/// filled in by the caller (from the kernel) unless `snapshot.mtu` overrides it.
pub fn plan(_snapshot: &Snapshot, _caps: Capabilities) -> Result<DesiredState, PlanError> {
    Err(PlanError::NotImplemented)
}
