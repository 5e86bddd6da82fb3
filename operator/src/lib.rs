//! trellis-operator as a library: pure decisions (IPAM, pool status) and the controllers.

pub mod conditions;
pub mod ipam;
pub mod ippool;
pub mod pool_view;
pub mod selector_shim;
