//! Placeholder: NAT-outgoing lands with the `plan` helper's work (contract below is fixed).

use crate::desired::NatPlan;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nat not implemented yet")]
    NotImplemented,
}

/// Name of the one nftables table Trellis owns.
pub const TABLE: &str = "trellis";

/// Makes the host's `inet trellis` table match `plan` (atomically replaced, deleted when the plan
/// is empty), in the calling thread's network namespace. Returns whether anything changed.
pub fn sync(_plan: &NatPlan) -> Result<bool, NatError> {
    Err(NatError::NotImplemented)
}
