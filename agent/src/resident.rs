//! The agent's own resident set. Once the pool is first ready, again after the warm-up
//! baselines, and whenever the agent's RSS later jumps by a MiB over its settled level (a
//! leak trip's profiling, a burst of admin calls; at most every 10 minutes), the code and
//! read-only data that the burst touched and the steady state does not are handed back,
//! the way a kernel frees its init sections after boot. Start-up runs far more code than the running agent does —
//! argument and config parsing, the state directory, the first spawns, every path's first
//! call — and the kernel maps file pages 64 KiB around each fault, so after start-up
//! ~5 MiB of the binary is resident of which the steady state uses ~3.5 MiB. What the
//! agent runs afterwards faults back in (from the page cache); what it never runs again
//! stops counting in its RSS.
//!
//! How: `malloc_trim(0)`, then `MADV_DONTNEED` on every read-only file mapping of the
//! process (found in `/proc/self/smaps`) holding no private copy of a page (`Anonymous:
//! 0 kB`, so never a relocated RELRO range, a debugger's breakpoint or a uprobe). On such
//! a mapping it drops the page-table entries and nothing else, whatever the process's
//! user: the next touch maps the file's page again from the page cache, as after the
//! kernel's own reclaim of clean file pages. `MADV_PAGEOUT` is not used: the kernel
//! allows it only on files the process owns or may write (not root's
//! `/usr/bin/heapwarden` for an agent running as `heapwarden`), and where it works it
//! evicts the binary's pages from the page cache, so the next profile conversion — a
//! helper process running the same binary — and the next trip read them from disk.
//!
//! It also owns the trim of malloc's free pages ([`trim_heap`]), which the `/metrics`
//! handler calls after each render.

// `madvise` on the agent's own read-only file mappings, and `malloc_trim`.
#![allow(unsafe_code)]

use std::time::Duration;

use slog::{Logger, debug, info};
use tokio::sync::watch;

use crate::procfs::{ProcFs, parse_kib, parse_maps_line};
use crate::supervisor::PoolView;

/// Sampling rounds after the pool is first ready, and after the warm-up, before the pages
/// are handed back: the rounds, a scrape, the workers' reports or baselines have run.
const ROUNDS_AFTER: u32 = 3;
/// How often the RSS is compared with its settled level, in sampling intervals, and at
/// least this often.
const CHECK_ROUNDS: u32 = 10;
const CHECK_AT_LEAST: Duration = Duration::from_secs(10);
/// Checks after a hand-back that only learn the level the steady state settles at (its
/// periodic paths — scrapes, pushes — fault their pages back in meanwhile).
const SETTLE_CHECKS: u32 = 6;
/// Growth over the settled RSS, within one check, that hands back again…
const REGROWTH_KIB: u64 = 1024;
/// …at most this often.
const REGROWTH_GAP: Duration = Duration::from_secs(600);

/// Waits for the pool to be ready once and hands back the start-up pages, then those of
/// the warm-up baselines; afterwards, checking every `CHECK_ROUNDS` intervals, hands back
/// again when the RSS jumped by `REGROWTH_KIB` over the highest level it settled at (a
/// leak trip's profiling, a burst of admin calls). Returns if the pool never gets ready.
pub async fn keep_resident_set_lean(
    mut view: watch::Receiver<PoolView>,
    interval: Duration,
    warmup: Duration,
    log: Logger,
) {
    if view.wait_for(PoolView::all_ready).await.is_err() {
        return;
    }
    let after = interval.saturating_mul(ROUNDS_AFTER);
    tokio::time::sleep(after).await;
    hand_back(&log, After::StartUp).await;
    if !warmup.is_zero() {
        tokio::time::sleep(warmup).await;
        hand_back(&log, After::WarmUp).await;
    }
    let period = interval.saturating_mul(CHECK_ROUNDS).max(CHECK_AT_LEAST);
    let (mut settled, mut checks, mut last) = (0, 0, tokio::time::Instant::now());
    loop {
        tokio::time::sleep(period).await;
        let rss = own_rss_kib();
        checks += 1;
        if checks > SETTLE_CHECKS && rss > settled + REGROWTH_KIB && last.elapsed() >= REGROWTH_GAP
        {
            hand_back(&log, After::Regrowth).await;
            (settled, checks, last) = (0, 0, tokio::time::Instant::now());
        } else {
            settled = settled.max(rss);
        }
    }
}

/// What a hand-back follows: the start-up's is logged at info, the later ones at debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    StartUp,
    WarmUp,
    Regrowth,
}

async fn hand_back(log: &Logger, after: After) {
    let before = own_rss_kib();
    match tokio::task::spawn_blocking(drop_read_only_file_pages).await {
        Ok(Ok(dropped)) if after == After::StartUp => {
            info!(log, "The agent's start-up pages were handed back to the kernel.";
                "mappings" => dropped.mappings,
                "mapped_kib" => dropped.resident_kib,
                "rss_before_kib" => before,
                "rss_after_kib" => own_rss_kib())
        }
        Ok(Ok(dropped)) => debug!(log, "The agent's pages were handed back to the kernel.";
            "after" => ?after,
            "mappings" => dropped.mappings,
            "mapped_kib" => dropped.resident_kib,
            "rss_before_kib" => before,
            "rss_after_kib" => own_rss_kib()),
        Ok(Err(e)) => debug!(log, "The agent's pages could not be handed back.";
            "after" => ?after, "error" => %e),
        Err(_) => {}
    }
}

/// What one hand-back advised.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    mappings: usize,
    /// Their resident size before, by `smaps`.
    resident_kib: u64,
}

/// Hands the free pages of every malloc arena back to the kernel. A burst's scratch
/// (a `/metrics` render's, say) is freed to the arena of the thread that ran it, and
/// glibc keeps a freed page resident unless it sits at the top of its arena above the
/// trim threshold, which grows with each large block freed.
pub fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of the C library's allocator (the
    // agent's own) to the kernel; it is thread-safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}

/// `malloc_trim(0)`, then `MADV_DONTNEED` on every read-only file mapping of this
/// process that holds no private page.
fn drop_read_only_file_pages() -> std::io::Result<Dropped> {
    // Heap pages that the burst used and freed, in every malloc arena, first.
    trim_heap();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = Dropped::default();
    for m in clean_read_only_file_mappings(&smaps) {
        let (start, len) = (m.start as *mut libc::c_void, (m.end - m.start) as usize);
        // SAFETY: the range is one mapping of our own address space that smaps lists as
        // read-only, file-backed and without a private (anonymous) page: its contents are
        // the file's, which the next touch maps again from the page cache. DONTNEED drops
        // the page-table entries of the range, and on such a mapping nothing else.
        if unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        dropped.mappings += 1;
        dropped.resident_kib += m.rss_kib;
    }
    Ok(dropped)
}

/// One mapping of `/proc/self/smaps` that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: u64,
    end: u64,
    rss_kib: u64,
}

/// The read-only file mappings of an `smaps` text whose `Anonymous:` line says 0 kB (a
/// mapping without that line is not listed).
fn clean_read_only_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    // (mapping, Rss kB, Anonymous kB) of the mapping being read.
    let mut current: Option<(CleanMapping, Option<u64>)> = None;
    let mut finish = |current: Option<(CleanMapping, Option<u64>)>| {
        if let Some((m, Some(0))) = current {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = parse_maps_line(line) {
            finish(current.take());
            current = (!header.writable && header.inode != 0).then_some((
                CleanMapping {
                    start: header.start,
                    end: header.end,
                    rss_kib: 0,
                },
                None,
            ));
            continue;
        }
        let Some((m, anonymous)) = current.as_mut() else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("Rss:") {
            m.rss_kib = parse_kib(rest).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            // An unreadable figure counts as private pages: the mapping is left alone.
            *anonymous = Some(parse_kib(rest).unwrap_or(u64::MAX));
        }
    }
    finish(current);
    out
}

/// The agent's RSS in KiB, for the log line and the regrowth check; 0 when unreadable.
fn own_rss_kib() -> u64 {
    ProcFs::system()
        .rss_bytes(std::process::id(), &mut Vec::new())
        .map_or(0, |bytes| bytes / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fd:01 1234 /usr/bin/heapwarden
Rss:                 640 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0c0b00000-55d0c0f00000 r-xp 00100000 fd:01 1234 /usr/bin/heapwarden
Rss:                3072 kB
Anonymous:             0 kB
55d0c0f00000-55d0c0f40000 r--p 00500000 fd:01 1234 /usr/bin/heapwarden
Rss:                 256 kB
Anonymous:           256 kB
55d0c0f40000-55d0c0f41000 rw-p 00540000 fd:01 1234 /usr/bin/heapwarden
Rss:                   4 kB
Anonymous:             4 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 700 kB
Anonymous:           700 kB
7f0000000000-7f0000010000 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libm.so.6
Rss:                  64 kB
Anonymous:             0 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7f0000100000-7f0000101000 r--p 00000000 fd:01 100 /usr/lib/libtruncated.so
Rss:                   4 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages_are_dropped() {
        let found = clean_read_only_file_mappings(SMAPS);
        let ranges: Vec<(u64, u64, u64)> =
            found.iter().map(|m| (m.start, m.end, m.rss_kib)).collect();
        assert_eq!(
            ranges,
            [
                (0x55d0c0a00000, 0x55d0c0b00000, 640),
                (0x55d0c0b00000, 0x55d0c0f00000, 3072),
                (0x7f0000000000, 0x7f0000010000, 64),
            ],
            // Not the relocated (RELRO) range, the writable data, the heap, the vDSO, nor
            // a mapping whose Anonymous line is missing.
        );
    }

    #[test]
    fn the_test_process_drops_its_file_pages_and_keeps_running() {
        let file_kib = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(parse_kib)
                .unwrap()
        };
        let before = file_kib();
        let dropped = drop_read_only_file_pages().expect("madvise");
        let after = file_kib();
        assert!(dropped.mappings > 0, "no read-only file mapping was found");
        // Whatever this process's user, its own page tables drop the file pages (about
        // two thirds here); the threads of other tests fault some back in meanwhile.
        assert!(
            after * 4 < before * 3,
            "RssFile {before} kB → {after} kB, {dropped:?}"
        );
        // Code runs as before: it faults back in.
        assert_eq!(parse_maps_line("1-2 r--p 0 0:0 0").map(|m| m.end), Some(2));
    }
}
