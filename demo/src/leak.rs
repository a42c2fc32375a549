//! Leaking on purpose, so the watchdog has something real to catch: `POST /debug/leak`
//! and the `leak-rate` background leak both allocate in one clearly named function, which
//! is what the top entry of a heap-profile diff shows.

use std::sync::Mutex;
use std::time::Duration;

use slog::{Logger, info};

/// Never freed: that is the point.
static LEAKED: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// Largest single leak one request may ask for.
pub const MAX_LEAK_PER_REQUEST: u64 = 256 * 1024 * 1024;

/// Allocates `bytes`, touches every page (so RSS grows too, not only the heap figures) and
/// keeps the block forever. Returns the total leaked so far.
#[inline(never)]
pub fn leak_on_purpose_for_heap_profile(bytes: usize) -> usize {
    let block = vec![0xA5u8; bytes].into_boxed_slice();
    let block = std::hint::black_box(block);
    let mut leaked = LEAKED.lock().unwrap_or_else(|p| p.into_inner());
    leaked.push(block);
    leaked.iter().map(|b| b.len()).sum()
}

/// Leaks `bytes_per_second` in ten steps a second until the process exits.
pub async fn leak_steadily(bytes_per_second: u64, log: Logger) {
    const STEPS_PER_SECOND: u64 = 10;
    let step = usize::try_from(bytes_per_second / STEPS_PER_SECOND).unwrap_or(usize::MAX);
    if step == 0 {
        return;
    }
    info!(log, "Leaking memory on purpose (leak-rate is set)."; "bytes_per_second" => bytes_per_second);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / STEPS_PER_SECOND));
    loop {
        tick.tick().await;
        leak_on_purpose_for_heap_profile(step);
    }
}
