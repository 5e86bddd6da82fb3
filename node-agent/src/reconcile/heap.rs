//! Giving freed heap back to the kernel after a pass.
//!
//! A pass builds the desired and the observed state (tens of thousands of routes, neighbours
//! and FDB entries at 5 000 peers) and drops them again. glibc keeps freed memory in its
//! arenas (one per thread that allocated, and tokio's workers all do), so without a trim the
//! agent's RSS stays at the high-water mark of its largest pass although the memory is free.

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has no
    // preconditions on the caller and does not touch memory still in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
