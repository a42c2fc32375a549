//! A read-only snapshot of the pool, published by the supervisor after every change
//! (tokio `watch`), for the sampler, the watchdog and the admin API. Those parts never
//! touch the pool itself; they send a `Request` to the supervisor.

use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::link::ControlLink;

/// What a slot is doing; also the `state` label of `heapwarden_worker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Starting,
    Ready,
    Replacing,
    Backoff,
    Failed,
    Stopping,
}

impl SlotState {
    pub const ALL: [SlotState; 6] = [
        SlotState::Starting,
        SlotState::Ready,
        SlotState::Replacing,
        SlotState::Backoff,
        SlotState::Failed,
        SlotState::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Replacing => "replacing",
            SlotState::Backoff => "backoff",
            SlotState::Failed => "failed",
            SlotState::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Unique per process started by this agent (slots are reused, ids are not).
    pub worker_id: u64,
    pub pid: u32,
    pub started_at: Instant,
    pub started_wall: SystemTime,
    pub ready: bool,
    /// The worker said hello over the control channel (it links heapwarden-probes).
    pub probe: bool,
    /// Which probe said hello (rust, node, native); `None` before any hello.
    pub runtime: Option<heapwarden_probes::Runtime>,
    pub link: Option<ControlLink>,
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

/// Why a worker is being replaced; also the `reason` label of restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    Exit,
    Crash,
    Leak,
    Unhealthy,
    Manual,
    Reload,
}

impl RestartReason {
    pub const ALL: [RestartReason; 6] = [
        RestartReason::Exit,
        RestartReason::Crash,
        RestartReason::Leak,
        RestartReason::Unhealthy,
        RestartReason::Manual,
        RestartReason::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Crash => "crash",
            RestartReason::Leak => "leak",
            RestartReason::Unhealthy => "unhealthy",
            RestartReason::Manual => "manual",
            RestartReason::Reload => "reload",
        }
    }
}

/// What other parts ask of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Replace the slot's worker make-before-break.
    Replace { slot: usize, reason: RestartReason },
    /// Replace every worker, one slot at a time.
    Reload,
}
