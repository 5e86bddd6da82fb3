//! IPPool semantics admission cannot check, pure: which pools are not used because they
//! overlap an older one, how many selected nodes applied a pool's generation, and the status
//! (READY n/m, conditions) that follows. The IPPool controller (`controllers/ippool.rs`) feeds
//! it from the cluster and writes the result.

mod convergence;
pub mod live_change;
mod overlap;
mod status;

pub use convergence::{Convergence, convergence};
pub use overlap::{PoolAge, older_overlapping};
pub use status::{
    BLOCKS_EXHAUSTED, CIDR_OVERLAP, LIVE_CHANGE_STALLED, LiveSummary, PoolFacts, PoolStatusView, UNSUPPORTED_FIELDS,
    pool_status,
};
