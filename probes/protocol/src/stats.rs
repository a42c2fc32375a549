//! `HeapStats`: the heap figures a probe reports on the control channel, as the agent
//! reads them. Reading them is the probe's business (`heapwarden-probes`: jemalloc).

use serde::{Deserialize, Serialize};

/// A worker's heap figures, in bytes. From jemalloc (`stats.*` after an `epoch` advance)
/// in Rust and native workers; from V8 in Node workers, where `allocated` is `heapUsed`,
/// `active` is `heapTotal` and the jemalloc-only figures are absent (`None`), never faked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeapStats {
    /// Bytes the application holds (heap used).
    pub allocated: u64,
    /// Bytes in active pages, a multiple of the page size (heap total).
    pub active: u64,
    /// Bytes in physically resident data pages mapped by jemalloc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident: Option<u64>,
    /// Bytes in active extents mapped by jemalloc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<u64>,
    /// Bytes in virtual memory kept for reuse rather than returned to the OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<u64>,
    /// Bytes jemalloc spends on its own bookkeeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<u64>,
}
