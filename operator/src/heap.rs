//! Giving freed heap back to the kernel in the background.
//!
//! Reconciling a burst (1 000 nodes joining: blocks, NodeNetworks, status writes) allocates
//! and frees far more than the reflector caches keep. glibc keeps freed memory in its arenas
//! (one per tokio worker that allocated), so the operator's RSS would stay at the burst's
//! high-water mark. Like Go's scavenger, a background task returns free pages every few
//! seconds; `malloc_trim` of an idle heap takes well under a millisecond.

use std::future::Future;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);

/// Trims the heap every [`EVERY`] until `stop` completes.
pub fn spawn_trimmer(stop: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => release_free_memory(),
            }
        }
    });
}

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has no
    // preconditions on the caller and does not touch memory still in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
