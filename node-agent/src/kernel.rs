//! TODO(kernel)
