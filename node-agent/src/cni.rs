//! TODO(cni)
