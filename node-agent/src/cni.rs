//! Placeholder: CNI conflist rendering/writing lands with the `plan` helper's work.

use crate::desired::CniConfig;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cni not implemented yet")]
    NotImplemented,
}

/// Writes the conflist atomically (temp file + rename) unless identical. Returns whether it changed.
pub fn write(_config: &CniConfig) -> Result<bool, CniError> {
    Err(CniError::NotImplemented)
}
