//! Full V8 heap snapshots of Node workers, on request (`heapwarden dump SLOT --snapshot`,
//! `kind=snapshot` on the API) or at a leak trip with `watchdog.leak-snapshot = true`.
//!
//! A snapshot blocks the worker's event loop while V8 writes it and needs about twice
//! the heap in free memory, so: at most one at a time in the whole agent; refused when
//! `MemAvailable` < `profiles.snapshot-headroom` × the worker's heap used; and the
//! worker's link is marked busy meanwhile, so the sampler neither waits for nor counts
//! a missed answer and the leak rules skip the spike. The file is stored as is
//! (`<id>.heapsnapshot`) once its first bytes are V8's snapshot header.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heapwarden_protocol::Runtime;
use heapwarden_protocol::channel::{AgentMsg, DumpFormat, DumpKind, WorkerMsg};
use slog::{Logger, info, warn};

use super::{CaptureRequest, ProfileMeta, ProfileStoreHandle, StoreError};
use crate::metric_names::HEAP_SNAPSHOTS;
use crate::metric_names::labels::SnapshotOutcome;
use crate::sampler::system::read_meminfo;

/// V8 writes ~50 MiB of heap in about a second; big heaps take far longer.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// One snapshot at a time, agent-wide: each costs a worker a frozen event loop and
/// the machine twice that worker's heap.
static IN_PROGRESS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("another heap snapshot is being taken; try again when it is done")]
    Busy,
    #[error("worker {slot} has no Node probe, so it cannot write a heap snapshot")]
    NotNode { slot: usize },
    #[error(
        "only {available} bytes of memory are available, below {needed} ({headroom} x the worker's {heap} bytes of heap): a snapshot could push the machine into the OOM killer"
    )]
    MemoryShort {
        available: u64,
        needed: u64,
        heap: u64,
        headroom: f64,
    },
    #[error("worker {slot} has not been sampled yet, so the memory a snapshot needs is unknown")]
    NoFigures { slot: usize },
    #[error("skipped: {0}")]
    Skipped(StoreError),
    #[error("worker {slot} (pid {pid}) could not write its heap snapshot: {reason}")]
    Dump {
        slot: usize,
        pid: u32,
        reason: String,
    },
    #[error("the profile store failed: {0}")]
    Store(StoreError),
}

impl SnapshotError {
    /// Refusals the caller can resolve by waiting or freeing memory (HTTP 409).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SnapshotError::Busy
                | SnapshotError::NotNode { .. }
                | SnapshotError::MemoryShort { .. }
                | SnapshotError::NoFigures { .. }
        )
    }

    /// The `outcome` label of `heapwarden_heap_snapshots_total`.
    fn outcome(&self) -> SnapshotOutcome {
        match self {
            SnapshotError::Busy => SnapshotOutcome::Busy,
            SnapshotError::NotNode { .. } => SnapshotOutcome::NoProbe,
            SnapshotError::MemoryShort { .. } => SnapshotOutcome::MemoryShort,
            SnapshotError::NoFigures { .. } => SnapshotOutcome::NoFigures,
            SnapshotError::Skipped(_) => SnapshotOutcome::SkippedDiskFull,
            SnapshotError::Dump { .. } => SnapshotOutcome::DumpFailed,
            SnapshotError::Store(_) => SnapshotOutcome::StoreError,
        }
    }
}

/// A heap snapshot of the worker a [`CaptureRequest`] names
/// ([`CaptureRequest::into_snapshot`]).
pub struct SnapshotRequest {
    pub capture: CaptureRequest,
    /// `profiles.snapshot-headroom`.
    pub headroom: f64,
}

/// Clears [`IN_PROGRESS`] however the snapshot ends.
struct Turn;

impl Turn {
    fn take() -> Option<Turn> {
        IN_PROGRESS
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        IN_PROGRESS.store(false, Ordering::Release);
    }
}

/// Takes one snapshot and logs and counts its outcome.
pub async fn take_snapshot(
    store: &ProfileStoreHandle,
    request: SnapshotRequest,
    log: &Logger,
) -> Result<ProfileMeta, SnapshotError> {
    let started = Instant::now();
    let (slot, trigger) = (request.capture.slot, request.capture.trigger.as_str());
    let result = snapshot(store, request).await;
    let outcome = result
        .as_ref()
        .map_or_else(SnapshotError::outcome, |_| SnapshotOutcome::Written)
        .as_str();
    metrics::counter!(HEAP_SNAPSHOTS.name, "trigger" => trigger, "outcome" => outcome).increment(1);
    match &result {
        Ok(meta) => info!(log, "A heap snapshot was written."; "worker" => slot,
            "profile_id" => meta.id, "trigger" => trigger, "bytes" => meta.bytes,
            "seconds" => started.elapsed().as_secs_f64()),
        Err(e) => warn!(log, "A heap snapshot was not written."; "worker" => slot,
            "trigger" => trigger, "outcome" => outcome, "error" => %e),
    }
    result
}

async fn snapshot(
    store: &ProfileStoreHandle,
    request: SnapshotRequest,
) -> Result<ProfileMeta, SnapshotError> {
    let SnapshotRequest {
        capture:
            CaptureRequest {
                slot,
                worker_id,
                pid,
                link,
                runtime,
                trigger,
                figures,
                rule,
            },
        headroom,
    } = request;
    let link = link
        .filter(|_| runtime == Some(Runtime::Node))
        .ok_or(SnapshotError::NotNode { slot })?;
    let _turn = Turn::take().ok_or(SnapshotError::Busy)?;
    // Before the first heap sample, RSS stands in (it is larger: the safe side).
    let heap = figures
        .heap_allocated
        .or(figures.rss)
        .ok_or(SnapshotError::NoFigures { slot })?;
    check_memory(heap, headroom)?;
    let pending = store
        .begin(slot, Some(worker_id), pid, trigger)
        .await
        .map_err(SnapshotError::Skipped)?
        .into_snapshot();
    let path = pending.raw_path.display().to_string();
    let busy = link.mark_dumping();
    let reply = link
        .request(
            move |seq| AgentMsg::Dump {
                seq,
                path,
                kind: DumpKind::Snapshot,
            },
            SNAPSHOT_TIMEOUT,
        )
        .await;
    drop(busy);
    let failed = |reason: String| SnapshotError::Dump { slot, pid, reason };
    let checked = match reply {
        Ok(WorkerMsg::ProfileWritten {
            error: None,
            format: DumpFormat::V8Snapshot,
            ..
        }) => check_file(&pending.raw_path),
        Ok(WorkerMsg::ProfileWritten { error: Some(e), .. }) => Err(e),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
    .and_then(|()| {
        std::fs::rename(&pending.raw_path, &pending.out_path).map_err(|e| e.to_string())
    });
    if let Err(reason) = checked {
        store.abort(pending).await;
        return Err(failed(reason));
    }
    let (meta, _removed) = store
        .commit(pending, figures, rule)
        .await
        .map_err(SnapshotError::Store)?;
    Ok(meta)
}

fn check_memory(heap: u64, headroom: f64) -> Result<(), SnapshotError> {
    let Ok(memory) = read_meminfo(Path::new("/proc")) else {
        return Ok(());
    };
    let needed = (heap as f64 * headroom).min(u64::MAX as f64) as u64;
    if memory.available < needed {
        return Err(SnapshotError::MemoryShort {
            available: memory.available,
            needed,
            heap,
            headroom,
        });
    }
    Ok(())
}

fn check_file(path: &Path) -> Result<(), String> {
    match super::v8::looks_like_heap_snapshot(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the file the worker wrote is not a V8 heap snapshot".into()),
        Err(e) => Err(format!("the snapshot file cannot be read: {e}")),
    }
}
