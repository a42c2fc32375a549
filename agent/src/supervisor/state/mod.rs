//! The supervisor's decisions as data: `Pool::handle(event, now) -> Vec<Action>`. Nothing
//! here forks, signals or sleeps; time comes in with each event, so tests drive it with
//! a fake clock.
//!
//! Slot transitions (checked by `allowed` in debug builds and in tests):
//!
//! | from \ to  | starting | ready | replacing | backoff | failed | stopping |
//! |------------|----------|-------|-----------|---------|--------|----------|
//! | starting   |    ·     |  yes  |           |   yes   |  yes   |   yes    |
//! | ready      |   yes¹   |   ·   |    yes    |   yes   |  yes   |   yes    |
//! | replacing  |   yes¹   |  yes  |     ·     |   yes   |  yes   |   yes    |
//! | backoff    |   yes    |       |           |    ·    |        |   yes    |
//! | failed     |   yes    |       |           |         |   ·    |   yes    |
//!
//! ¹ the serving worker exited and a not-yet-ready replacement takes over.
//!
//! `lifecycle` handles a worker's life (start, ready, exit, backoff, timers, drain);
//! `replace` the make-before-break queue and the leak-restart budget.

mod lifecycle;
mod replace;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::view::{RestartReason, SlotState};
use crate::config::RestartConfig;

pub type WorkerId = u64;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub workers: usize,
    pub min_uptime: Duration,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    pub kill_timeout: Duration,
    pub restart: RestartConfig,
    pub max_concurrent_replacements: usize,
    pub max_leak_restarts_per_hour: usize,
    /// Whether a probe-linked worker says when it is ready (the Rust probe's `Ready`).
    /// When not (the native probe), a worker is ready on sd_notify or after
    /// `min_uptime`, with or without a probe.
    pub ready_from_probe: bool,
    /// Set when every worker was given a probe (`pool.probe`): a worker that has not
    /// said hello is not taken for a plain program (ready at `min-uptime`) before this.
    pub probe_hello_grace: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    Spawned {
        worker: WorkerId,
        pid: u32,
    },
    SpawnFailed {
        worker: WorkerId,
    },
    /// The worker links the probe (it said hello on the control channel).
    Hello {
        worker: WorkerId,
    },
    Ready {
        worker: WorkerId,
    },
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    Timer(Timer),
    Replace {
        slot: usize,
        reason: RestartReason,
    },
    Reload,
    Shutdown,
    ForceShutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Backoff or cool-down is over; `epoch` guards against stale timers.
    Respawn {
        slot: usize,
        epoch: u64,
    },
    ReadyTimeout {
        worker: WorkerId,
    },
    MinUptime {
        worker: WorkerId,
    },
    DrainDeadline {
        worker: WorkerId,
    },
    KillDeadline {
        worker: WorkerId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn {
        slot: usize,
        worker: WorkerId,
    },
    /// Ask the worker to stop accepting and finish in-flight work: over the control
    /// channel when it links the probe, else SIGTERM.
    Drain {
        worker: WorkerId,
        pid: u32,
        via_channel: bool,
    },
    Signal {
        worker: WorkerId,
        pid: u32,
        signal: Signal,
    },
    Schedule {
        at: Instant,
        timer: Timer,
    },
    CountRestart {
        slot: usize,
        reason: RestartReason,
    },
    SlotFailed {
        slot: usize,
        until: Instant,
    },
    BudgetExhausted {
        slot: usize,
    },
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Current,
    Replacement(RestartReason),
    Draining,
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub slot: usize,
    pub pid: Option<u32>,
    pub started_at: Instant,
    pub ready: bool,
    pub probe: bool,
    role: Role,
    /// Why we killed it ourselves, so its exit is counted under that reason.
    kill_reason: Option<RestartReason>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    Backoff,
    Failed,
}

#[derive(Debug, Clone)]
struct Slot {
    phase: Phase,
    /// Consecutive quick failures; the next delay is initial × factor^attempt.
    attempt: u32,
    failures: VecDeque<Instant>,
    leak_restarts: VecDeque<Instant>,
    restarts: u64,
    budget_exhausted: bool,
    /// A replacement that failed and waits for its backoff to try again.
    retry_replacement: Option<RestartReason>,
    epoch: u64,
}

#[derive(Debug)]
pub struct Pool {
    settings: PoolSettings,
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    stopping: bool,
    replace_queue: VecDeque<(usize, RestartReason)>,
}

const HOUR: Duration = Duration::from_secs(3600);

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        let slot = Slot {
            phase: Phase::Running,
            attempt: 0,
            failures: VecDeque::new(),
            leak_restarts: VecDeque::new(),
            restarts: 0,
            budget_exhausted: false,
            retry_replacement: None,
            epoch: 0,
        };
        Pool {
            slots: vec![slot; settings.workers],
            settings,
            workers: BTreeMap::new(),
            next_id: 1,
            stopping: false,
            replace_queue: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let before: Vec<SlotState> = (0..self.slots.len()).map(|s| self.slot_state(s)).collect();
        let mut out = Vec::new();
        self.dispatch(event, now, &mut out);
        for (slot, from) in before.into_iter().enumerate() {
            let to = self.slot_state(slot);
            debug_assert!(
                allowed(from, to),
                "slot {slot}: {from:?} -> {to:?} is not allowed"
            );
        }
        out
    }

    fn dispatch(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                for slot in 0..self.slots.len() {
                    self.spawn(slot, Role::Current, now, out);
                }
            }
            Event::Spawned { worker, pid } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.pid = Some(pid);
                    if self.stopping {
                        self.terminate(worker, now, out);
                    }
                }
            }
            Event::SpawnFailed { worker } => self.on_exit(worker, ExitStatus::Code(127), now, out),
            Event::Hello { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.probe = true;
                }
            }
            Event::Ready { worker } => self.on_ready(worker, now, out),
            Event::Exited { worker, status } => self.on_exit(worker, status, now, out),
            Event::Timer(timer) => self.on_timer(timer, now, out),
            Event::Replace { slot, reason } => self.request_replacement(slot, reason, now, out),
            Event::Reload => {
                if !self.stopping {
                    for slot in 0..self.slots.len() {
                        let queued = self.replace_queue.iter().any(|(s, _)| *s == slot);
                        if !queued {
                            self.replace_queue.push_back((slot, RestartReason::Reload));
                        }
                    }
                    self.pump(now, out);
                }
            }
            Event::Shutdown => {
                if !self.stopping {
                    self.stopping = true;
                    self.replace_queue.clear();
                    let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
                    for id in ids {
                        self.terminate(id, now, out);
                    }
                }
                self.exit_if_done(out);
            }
            Event::ForceShutdown => {
                self.stopping = true;
                for w in self.workers.values() {
                    if let Some(pid) = w.pid {
                        out.push(Action::Signal {
                            worker: w.id,
                            pid,
                            signal: Signal::Kill,
                        });
                    }
                }
                self.exit_if_done(out);
            }
        }
    }

    // ---- read side, for the published view ----

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// The worker serving the slot.
    pub fn serving(&self, slot: usize) -> Option<&Worker> {
        self.role_in(slot, Role::Current)
            .and_then(|id| self.workers.get(&id))
    }

    pub fn restarts(&self, slot: usize) -> u64 {
        self.slots[slot].restarts
    }

    pub fn budget_exhausted(&self, slot: usize) -> bool {
        self.slots[slot].budget_exhausted
    }

    pub fn slot_state(&self, slot: usize) -> SlotState {
        if self.stopping {
            return SlotState::Stopping;
        }
        let s = &self.slots[slot];
        match (self.serving(slot), s.phase) {
            (None, Phase::Failed) => SlotState::Failed,
            (None, _) => SlotState::Backoff,
            (Some(_), _) if self.replacement_of(slot).is_some() => SlotState::Replacing,
            (Some(w), _) if w.ready => SlotState::Ready,
            (Some(_), _) => SlotState::Starting,
        }
    }
}

/// The transition table of the module header.
pub fn allowed(from: SlotState, to: SlotState) -> bool {
    use SlotState::*;
    if from == to || to == Stopping {
        return true;
    }
    matches!(
        (from, to),
        (Starting, Ready | Backoff | Failed | Replacing)
            | (Ready, Starting | Replacing | Backoff | Failed)
            | (Replacing, Starting | Ready | Backoff | Failed)
            | (Backoff, Starting | Ready)
            | (Failed, Starting | Ready)
    )
}

#[cfg(test)]
mod tests;
