//! TODO(reconcile)
