//! Giving memory back to the system after a burst.

/// Returns the heap's free pages to the system. Applying a listing of a
/// large mesh allocates tens of MiB (every key as read, the changes it
/// makes) that are freed once it is applied; glibc's allocator keeps such
/// pages for later unless asked (musl's gives them back by itself).
pub(super) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
