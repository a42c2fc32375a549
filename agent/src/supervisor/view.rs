//! A read-only snapshot of the pool, published by the supervisor after every change
//! (tokio `watch`), for the sampler, the watchdog and the admin API. Those parts never
//! touch the pool itself; they send a `Request` to the supervisor.

use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::link::ControlLink;
/// Typed with the metrics' label values: a slot state is the `state` of
/// `heapwarden_worker_state`, a reason the `reason` of `heapwarden_worker_restarts_total`.
pub use crate::metric_names::labels::{RestartReason, SlotState};

#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Unique per process started by this agent (slots are reused, ids are not).
    pub worker_id: u64,
    pub pid: u32,
    pub started_at: Instant,
    pub started_wall: SystemTime,
    pub ready: bool,
    /// When it became ready (`ready_at - started_at`: the pool's start → ready time).
    pub ready_at: Option<Instant>,
    /// The worker said hello over the control channel (it links heapwarden-probes).
    pub probe: bool,
    /// Which probe said hello (rust, node, native); `None` before any hello.
    pub runtime: Option<heapwarden_protocol::Runtime>,
    pub link: Option<ControlLink>,
    /// The worker's forked children that report on their own channel (native probe).
    pub children: Option<super::children::ChildLinks>,
}

#[derive(Debug, Clone)]
pub struct SlotView {
    pub slot: usize,
    pub state: SlotState,
    /// The worker serving this slot (during a replacement: the old one, until the new
    /// one is ready).
    pub worker: Option<WorkerView>,
    pub restarts: u64,
    /// Leak restarts are paused for this slot: the hourly budget is spent.
    pub budget_exhausted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PoolView {
    pub slots: Vec<SlotView>,
    pub stopping: bool,
}

impl PoolView {
    /// Ready for traffic: not stopping and every slot has a ready worker.
    pub fn all_ready(&self) -> bool {
        !self.stopping
            && !self.slots.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.worker.as_ref().is_some_and(|w| w.ready))
    }
}

/// What other parts ask of the supervisor.
#[derive(Debug)]
pub enum Request {
    /// Replace the worker `worker` (a [`WorkerView::worker_id`]) of `slot`
    /// make-before-break. A request for a worker that no longer serves the slot is
    /// dropped and logged: a decision about one worker never lands on its successor.
    Replace {
        slot: usize,
        worker: u64,
        reason: RestartReason,
    },
    /// Read the config again and, when it is valid, apply it and replace every worker,
    /// one slot at a time; `reply` hears which of the two happened.
    Reload {
        reply: Option<oneshot::Sender<ReloadOutcome>>,
    },
}

/// Two requests ask the same when they name the same thing; who hears a reload's outcome
/// is not part of what is asked.
impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        match (self, other) {
            (
                Request::Replace {
                    slot,
                    worker,
                    reason,
                },
                Request::Replace {
                    slot: other_slot,
                    worker: other_worker,
                    reason: other_reason,
                },
            ) => slot == other_slot && worker == other_worker && reason == other_reason,
            (Request::Reload { .. }, Request::Reload { .. }) => true,
            _ => false,
        }
    }
}

/// What a requested reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is running; these changed keys keep their value until a restart.
    /// `replaces_workers`: false when only what the agent itself applies changed
    /// (`[watchdog]`, `[sampling]`, `log.level`), so the workers keep running.
    Applied {
        needs_restart: Vec<&'static str>,
        replaces_workers: bool,
    },
    /// The file was refused and the running config stays: `(key, error)` for each error.
    Refused { errors: Vec<(String, String)> },
}
