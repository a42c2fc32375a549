//! Full V8 heap snapshots of Node workers, on request (`heapwarden dump SLOT --snapshot`,
//! `kind=snapshot` on the API) or at a leak trip with `watchdog.leak-snapshot = true`.
//!
//! A snapshot blocks the worker's event loop while V8 writes it and needs about twice
//! the heap in free memory, so: at most one at a time in the whole agent; refused when
//! `MemAvailable` < `profiles.snapshot-headroom` × the worker's heap used; and the
//! worker's link is marked busy meanwhile, so the sampler neither waits for nor counts
//! a missed answer and the leak rules skip the spike. The file is stored as is
//! (`<id>.heapsnapshot`) once its first bytes are V8's snapshot header.
//!
//! A snapshot is about twice the heap on disk: one that cannot fit (in `max-bytes`
//! once every other snapshot is gone, or on the disk above `min-free-disk`) is refused
//! before it is taken; the worker writes it under the byte cap the agent sends and
//! removes it past that; it never evicts a pprof profile; and a worker left holding a
//! failed snapshot's deleted file is replaced.

use std::path::Path;
use std::time::{Duration, Instant};

use heapwarden_protocol::Runtime;
use heapwarden_protocol::channel::{AgentMsg, DumpFormat, DumpKind, WorkerMsg};
use slog::{Logger, info, warn};

use super::{CaptureRequest, ProfileMeta, ProfileStoreHandle, StoreError};
use crate::log::{Causes, causes};
use crate::metric_names::HEAP_SNAPSHOTS;
use crate::metric_names::labels::SnapshotOutcome;
use crate::sampler::system::read_meminfo;
use crate::supervisor::{Request, RestartReason};
use tokio::sync::mpsc;

/// V8 writes ~50 MiB of heap in about a second; big heaps take far longer. The turn a
/// snapshot holds is bounded by its heap: `SNAPSHOT_BASE_TIMEOUT` plus one second per
/// `SNAPSHOT_BYTES_PER_SECOND`, at most `SNAPSHOT_TIMEOUT`, so a worker that never
/// answers does not hold every other snapshot off for five minutes.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
const SNAPSHOT_BASE_TIMEOUT: Duration = Duration::from_secs(20);
const SNAPSHOT_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
/// A snapshot file takes about twice the heap it describes (measured: a 92 MiB file for
/// 50 MiB of small objects).
const SNAPSHOT_BYTES_PER_HEAP_BYTE: u64 = 2;
/// One snapshot at a time, agent-wide: each costs a worker a frozen event loop and
/// the machine twice that worker's heap. A manual one is refused while another is taken;
/// the watchdog's (warm-up and trip, with `leak-snapshot`) wait their turn, so workers
/// warming up together, or a trip during a warm-up snapshot, all get theirs.
static TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// How long a watchdog snapshot waits for its turn.
const TURN_WAIT: Duration = Duration::from_secs(120);

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
    /// Where to ask for the worker's replacement when a failed snapshot left it holding
    /// the deleted file (the disk stays full until that worker exits).
    pub replace: Option<mpsc::Sender<Request>>,
}

/// This snapshot's turn, released however it ends.
async fn turn(trigger: super::Trigger) -> Option<tokio::sync::SemaphorePermit<'static>> {
    match trigger {
        super::Trigger::Manual | super::Trigger::Periodic => TURN.try_acquire().ok(),
        super::Trigger::Baseline | super::Trigger::Leak => {
            tokio::time::timeout(TURN_WAIT, TURN.acquire())
                .await
                .ok()?
                .ok()
        }
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
            "trigger" => trigger, "outcome" => outcome, "error" => %Causes(e)),
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
                // Heap snapshots are the worker's own (Node: no forked children).
                child_of: _,
            },
        headroom,
        replace,
    } = request;
    let link = link
        .filter(|_| runtime == Some(Runtime::Node))
        .ok_or(SnapshotError::NotNode { slot })?;
    let _turn = turn(trigger).await.ok_or(SnapshotError::Busy)?;
    // Before the first heap sample, RSS stands in (it is larger: the safe side).
    let heap = figures
        .heap_allocated
        .or(figures.rss)
        .ok_or(SnapshotError::NoFigures { slot })?;
    check_memory(heap, headroom)?;
    let expected = heap.saturating_mul(SNAPSHOT_BYTES_PER_HEAP_BYTE);
    let (pending, max_bytes) = store
        .begin_snapshot(slot, Some(worker_id), pid, trigger, expected)
        .await
        .map_err(SnapshotError::Skipped)?;
    let path = pending.path_for_worker().display().to_string();
    let timeout = snapshot_timeout(heap);
    let busy = link.mark_dumping();
    let reply = link
        .request(
            move |seq| AgentMsg::Dump {
                seq,
                path,
                kind: DumpKind::Snapshot,
                max_bytes: Some(max_bytes),
            },
            timeout,
        )
        .await;
    drop(busy);
    let failed = |reason: String| SnapshotError::Dump { slot, pid, reason };
    let checked = match reply {
        Ok(WorkerMsg::ProfileWritten {
            error: None,
            format: DumpFormat::V8Snapshot,
            ..
        }) => match store.adopt(&pending).await {
            Ok(()) => check_file(&pending.raw_path),
            Err(e) => Err(causes(&e)),
        },
        Ok(WorkerMsg::ProfileWritten { error: Some(e), .. }) => Err(e),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
    .and_then(|()| {
        std::fs::rename(&pending.raw_path, &pending.out_path).map_err(|e| e.to_string())
    });
    if let Err(reason) = checked {
        let held = holds_deleted_file(pid, pending.path_for_worker());
        store.abort(pending).await;
        if held && let Some(replace) = replace {
            // The file is gone from the directory but not from the disk while the
            // worker keeps it open: replacing the worker frees the space.
            let _ = replace
                .send(Request::Replace {
                    slot,
                    worker: worker_id,
                    reason: RestartReason::Unhealthy,
                })
                .await;
            return Err(failed(format!(
                "{reason}; the worker still holds the removed file open, so it is replaced"
            )));
        }
        return Err(failed(reason));
    }
    let (meta, _removed) = store
        .commit(pending, figures, rule)
        .await
        .map_err(SnapshotError::Store)?;
    Ok(meta)
}

/// How long a worker with `heap` bytes may take to answer a snapshot request: while it
/// does, it holds the agent-wide turn and its samples are not counted as missed, so a
/// worker that never answers is taken for hung after this, not after five minutes.
fn snapshot_timeout(heap: u64) -> Duration {
    (SNAPSHOT_BASE_TIMEOUT + Duration::from_secs(heap / SNAPSHOT_BYTES_PER_SECOND))
        .min(SNAPSHOT_TIMEOUT)
}

/// Whether `pid` has a descriptor open on `path` (also once `path` was removed, which
/// procfs shows as `path (deleted)`).
fn holds_deleted_file(pid: u32, path: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let deleted = format!("{} (deleted)", path.display());
    entries.flatten().any(|entry| {
        std::fs::read_link(entry.path())
            .is_ok_and(|target| target == path || target.to_string_lossy() == deleted.as_str())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_turn_is_bounded_by_the_heap_it_writes() {
        assert_eq!(snapshot_timeout(0), Duration::from_secs(20));
        assert_eq!(snapshot_timeout(50 << 20), Duration::from_secs(26));
        assert_eq!(snapshot_timeout(100 << 30), SNAPSHOT_TIMEOUT);
    }

    #[test]
    fn a_process_holding_a_removed_file_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.raw");
        let held = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(holds_deleted_file(std::process::id(), &path));
        drop(held);
        assert!(!holds_deleted_file(std::process::id(), &path));
    }
}
