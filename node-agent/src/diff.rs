//! TODO(diff)
