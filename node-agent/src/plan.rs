//! TODO(plan)
