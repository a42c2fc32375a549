//! Taking one heap profile: reserve it in the store, have the worker write its raw dump
//! (cheap, in the worker: jemalloc's `prof.dump`, or V8's sampling profile from the Node
//! probe), convert it in a helper process (heavy, out of the worker and out of the
//! agent) by the format the worker reported, then commit it. Used for baseline, leak and
//! on-demand profiles alike, each under a [`crate::profiles::DumpPermit`]: one per slot,
//! a small global limit (a manual dump beyond it is refused, an automatic one waits), and
//! free disk checked again between the dump and its conversion. Heap snapshots are
//! `snapshot.rs`.

use std::time::{Duration, Instant};

use heapwarden_protocol::channel::{AgentMsg, DumpFormat, DumpKind, WorkerMsg};
use slog::{Logger, info, warn};

use super::{
    DumpBusy, ProfileFigures, ProfileMeta, ProfileStoreHandle, SnapshotRequest, StoreError,
    Trigger, convert_in_helper, convert_v8_in_helper,
};
use crate::log::{Causes, causes};
use crate::metric_names::labels::ProfileOutcome;
use crate::metric_names::{HEAP_PROFILE_DURATION, HEAP_PROFILES, PROFILES_STORED_BYTES};
use crate::sampler::ProfiledChildren;
use crate::supervisor::{ControlLink, Runtime, WorkerView};

/// The worker writes its dump well under a millisecond; this covers a busy machine.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("worker {slot} does not link the heapwarden probe, so it cannot write heap profiles")]
    NoProbe { slot: usize },
    #[error("skipped: {0}")]
    Skipped(StoreError),
    #[error("worker {slot} (pid {pid}) could not write its heap dump: {reason}")]
    Dump {
        slot: usize,
        pid: u32,
        reason: String,
    },
    #[error("the heap dump of worker {slot} could not be converted: {reason}")]
    Convert { slot: usize, reason: String },
    #[error("the profile store failed: {0}")]
    Store(StoreError),
    #[error("{0}; try again shortly")]
    Busy(DumpBusy),
}

impl CaptureError {
    /// The `outcome` label of `heapwarden_heap_profiles_total`; none for a dump refused
    /// before it started (busy), which is the client's to retry, not an outcome.
    pub fn outcome(&self) -> Option<ProfileOutcome> {
        Some(match self {
            CaptureError::NoProbe { .. } => ProfileOutcome::NoProbe,
            CaptureError::Skipped(StoreError::DiskShort { .. }) => ProfileOutcome::SkippedDiskFull,
            CaptureError::Skipped(StoreError::RetentionFull { .. }) => {
                ProfileOutcome::SkippedRetention
            }
            CaptureError::Skipped(_) | CaptureError::Store(_) => ProfileOutcome::StoreError,
            CaptureError::Dump { .. } => ProfileOutcome::DumpFailed,
            CaptureError::Convert { .. } => ProfileOutcome::ConvertFailed,
            CaptureError::Busy(_) => return None,
        })
    }
}

/// One profile to take, naming the worker it is taken from. Built by
/// [`CaptureRequest::of_worker`] for the watchdog and the admin API alike.
pub struct CaptureRequest {
    pub slot: usize,
    pub worker_id: u64,
    pub pid: u32,
    /// The worker's control link, only when a probe said hello on it.
    pub link: Option<ControlLink>,
    pub runtime: Option<Runtime>,
    pub trigger: Trigger,
    pub figures: ProfileFigures,
    pub rule: Option<String>,
    /// The worker's own pid when `pid` is one of its forked children.
    pub child_of: Option<u32>,
}

impl CaptureRequest {
    /// A profile of `worker`, which serves `slot`.
    pub fn of_worker(
        slot: usize,
        worker: &WorkerView,
        trigger: Trigger,
        figures: ProfileFigures,
        rule: Option<String>,
    ) -> CaptureRequest {
        CaptureRequest {
            slot,
            worker_id: worker.worker_id,
            pid: worker.pid,
            link: worker.link.clone().filter(|_| worker.probe),
            runtime: worker.runtime,
            trigger,
            figures,
            rule,
            child_of: None,
        }
    }

    /// The same profile taken in one of `worker`'s forked children when it is a pre-fork
    /// server whose children report on their own channels (the memory is theirs, not the
    /// arbiter's): for a baseline the largest child, so a server that loads the app in
    /// its children diffs like against like; for a leak or a manual profile the child
    /// that grew most since it first reported, else (manual) the largest. Stays on the
    /// worker when no such child is linked. (Periodic profiles do not call this yet: the
    /// exporter does not see the sampler's figures, so they stay the worker's own.)
    pub fn in_forked_child(mut self, worker: &WorkerView, children: ProfiledChildren) -> Self {
        let wanted = match self.trigger {
            Trigger::Baseline => children.largest,
            Trigger::Leak => children.grower,
            Trigger::Manual | Trigger::Periodic => children.grower.or(children.largest),
        };
        let linked = wanted.and_then(|pid| {
            let links = worker.children.as_ref()?.borrow();
            links.iter().find(|c| c.pid == pid).cloned()
        });
        if let Some(child) = linked {
            self.child_of = Some(worker.pid);
            self.pid = child.pid;
            self.link = Some(child.link);
        }
        self
    }

    /// The same worker and figures, as a V8 heap snapshot (`headroom`:
    /// `profiles.snapshot-headroom`).
    pub fn into_snapshot(self, headroom: f64) -> SnapshotRequest {
        SnapshotRequest {
            capture: self,
            headroom,
            replace: None,
        }
    }
}

/// Takes one profile and records its outcome in the metrics and the log.
pub async fn take_profile(
    store: &ProfileStoreHandle,
    request: CaptureRequest,
    log: &Logger,
) -> Result<ProfileMeta, CaptureError> {
    let started = Instant::now();
    let trigger = request.trigger.as_str();
    let slot = request.slot;
    // A refused manual dump is the client's to retry, not a profile outcome.
    let _permit = match request.trigger {
        Trigger::Manual | Trigger::Periodic => {
            store.try_dump_permit(slot).map_err(CaptureError::Busy)?
        }
        Trigger::Baseline | Trigger::Leak => store.dump_permit(slot).await,
    };
    let result = capture(store, request).await;
    let outcome = match &result {
        Ok(_) => Some(ProfileOutcome::Written),
        Err(e) => e.outcome(),
    };
    if let Some(outcome) = outcome {
        metrics::counter!(HEAP_PROFILES.name, "trigger" => trigger, "outcome" => outcome.as_str())
            .increment(1);
    }
    let outcome = outcome.map_or("busy", ProfileOutcome::as_str);
    match &result {
        Ok(meta) => {
            let seconds = started.elapsed().as_secs_f64();
            metrics::histogram!(HEAP_PROFILE_DURATION.name).record(seconds);
            info!(log, "A heap profile was written.";
                "worker" => slot, "profile_id" => meta.id, "trigger" => trigger,
                "bytes" => meta.bytes, "seconds" => seconds);
        }
        Err(e) => warn!(log, "A heap profile was not written."; "worker" => slot,
            "trigger" => trigger, "outcome" => outcome, "error" => %Causes(e)),
    }
    if let Ok(stats) = store.stats().await {
        metrics::gauge!(PROFILES_STORED_BYTES.name).set(stats.stored_bytes as f64);
    }
    result
}

async fn capture(
    store: &ProfileStoreHandle,
    request: CaptureRequest,
) -> Result<ProfileMeta, CaptureError> {
    let CaptureRequest {
        slot,
        worker_id,
        pid,
        link,
        runtime,
        trigger,
        figures,
        rule,
        child_of,
    } = request;
    let link = link.ok_or(CaptureError::NoProbe { slot })?;
    let mut pending = store
        .begin(slot, Some(worker_id), pid, trigger)
        .await
        .map_err(CaptureError::Skipped)?;
    pending.runtime = runtime;
    pending.child_of = child_of;
    let path = pending.path_for_worker().display().to_string();
    let reply = link
        .request(
            move |seq| AgentMsg::Dump {
                seq,
                path,
                kind: DumpKind::Profile,
                max_bytes: None,
            },
            DUMP_TIMEOUT,
        )
        .await;
    let written = match reply {
        Ok(WorkerMsg::ProfileWritten {
            error: None,
            format,
            ..
        }) => Ok(format),
        Ok(WorkerMsg::ProfileWritten { error: Some(e), .. }) => Err(e),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
    .and_then(|format| match format {
        DumpFormat::V8Snapshot => Err("the worker wrote a heap snapshot, not a profile".into()),
        other => Ok(other),
    });
    let written = match written {
        Ok(format) => store
            .adopt(&pending)
            .await
            .map(|()| format)
            .map_err(|e| causes(&e)),
        Err(e) => Err(e),
    };
    if written.is_ok()
        && let Err(e) = store.recheck_disk(&pending).await
    {
        store.abort(pending).await;
        return Err(CaptureError::Skipped(e));
    }
    let converted = match written {
        Ok(DumpFormat::Jemalloc) => {
            convert_in_helper(&pending.raw_path, &pending.out_path, Some(pid)).await
        }
        Ok(DumpFormat::V8Sampling) => {
            convert_v8_in_helper(&pending.raw_path, &pending.out_path).await
        }
        Ok(DumpFormat::V8Snapshot) | Err(_) => {
            let reason = written.err().unwrap_or_default();
            store.abort(pending).await;
            return Err(CaptureError::Dump { slot, pid, reason });
        }
    };
    if let Err(e) = converted {
        store.abort(pending).await;
        return Err(CaptureError::Convert {
            slot,
            reason: causes(&e),
        });
    }
    let (meta, removed) = store
        .commit(pending, figures, rule)
        .await
        .map_err(|e| match e {
            StoreError::RetentionFull { .. } => CaptureError::Skipped(e),
            e => CaptureError::Store(e),
        })?;
    drop(removed);
    Ok(meta)
}
