//! The agent's own resident set after start-up: once the pool is first ready, the pages
//! of the agent's own executable are handed back to the kernel (`MADV_PAGEOUT`), the way
//! a kernel frees its init sections after boot. Start-up touches far more code than the
//! running agent does — argument and config parsing, the state directory, the first
//! spawns, every path's first call — and the kernel maps text 64 KiB around each fault,
//! so after start-up ~5 MiB of the binary is resident of which the steady state uses
//! ~3.5 MiB. What the agent runs afterwards faults back in (from the page cache or the
//! disk, once); what it never runs again stops counting in its RSS and, when no other
//! process maps it, leaves memory.
//!
//! Only this executable's read-only mappings are advised (found by device and inode in
//! `/proc/self/maps`, so a binary replaced by a package upgrade is still found); libc and
//! the other libraries are shared with every process and left alone, and the kernel
//! itself skips any page another process maps. A kernel without `MADV_PAGEOUT` (before
//! 5.4) refuses it, which is only logged.

// One `madvise` call on the agent's own read-only mappings.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use slog::{Logger, debug, info};
use tokio::sync::watch;

use crate::procfs::{ProcFs, parse_maps_line};
use crate::supervisor::PoolView;

/// Sampling rounds after the pool is first ready before the pages are handed back: the
/// rounds, the first scrape and the workers' reports have run by then.
const ROUNDS_AFTER_READY: u32 = 3;

/// Waits for the pool to be ready once, then hands back the executable's pages; returns
/// early if the pool never gets there.
pub async fn shed_start_up_pages(
    mut view: watch::Receiver<PoolView>,
    interval: Duration,
    log: Logger,
) {
    if view.wait_for(PoolView::all_ready).await.is_err() {
        return;
    }
    tokio::time::sleep(interval.saturating_mul(ROUNDS_AFTER_READY)).await;
    let before = own_rss_kib();
    // Heap pages that start-up used and freed, in every malloc arena, first.
    // SAFETY: malloc_trim only returns free memory of the C library's allocator (the
    // agent's own) to the kernel; it is thread-safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    match tokio::task::spawn_blocking(page_out_own_executable).await {
        Ok(Ok(advised)) => info!(log, "The agent's start-up pages were handed back to the kernel.";
            "advised_bytes" => advised,
            "rss_before_kib" => before,
            "rss_after_kib" => own_rss_kib()),
        Ok(Err(e)) => debug!(log, "The agent's start-up pages could not be handed back.";
            "error" => %e),
        Err(_) => {}
    }
}

/// `MADV_PAGEOUT` on every mapping of this executable that is not writable; the bytes
/// advised.
pub fn page_out_own_executable() -> std::io::Result<u64> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for mapping in maps.lines().filter_map(parse_maps_line) {
        if mapping.writable || mapping.inode != exe.ino() || mapping.device != exe.dev() {
            continue;
        }
        let len = mapping.end - mapping.start;
        // SAFETY: advises a range of our own address space that /proc/self/maps lists as
        // one read-only mapping of our executable; MADV_PAGEOUT changes no contents (clean
        // file pages are read back on the next touch), only what is resident.
        let done = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                len as libc::size_t,
                libc::MADV_PAGEOUT,
            )
        };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        advised += len;
    }
    Ok(advised)
}

/// The agent's RSS in KiB, for the log line; 0 when unreadable.
fn own_rss_kib() -> u64 {
    ProcFs::system()
        .rss_bytes(std::process::id(), &mut Vec::new())
        .map_or(0, |bytes| bytes / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_is_found_and_paged_out_and_keeps_running() {
        // Other test processes of this binary may map the same pages, which the kernel
        // then keeps: what it did to the RSS is measured by `bench-agent`, not here.
        let advised = page_out_own_executable().expect("MADV_PAGEOUT");
        assert!(advised > 0, "no mapping of the test binary was found");
        assert!(own_rss_kib() > 0);
        // Code runs as before: it faults back in.
        assert_eq!(parse_maps_line("1-2 r--p 0 0:0 0").map(|m| m.end), Some(2));
    }
}
