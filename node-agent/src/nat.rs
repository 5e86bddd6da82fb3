//! TODO(nat)
