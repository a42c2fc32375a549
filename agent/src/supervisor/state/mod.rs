//! The supervisor's decisions as data: `Pool::handle(event, now) -> Vec<Action>`. Nothing
//! here forks, signals or sleeps; time comes in with each event, so tests drive it with
//! a fake clock.
//!
//! Slot transitions (checked by `allowed` in debug builds; `table_tests` checks this
//! table against `allowed` cell by cell, and random event sequences against both — every
//! `yes` is reached, nothing else is):
//!
//! | from \ to  | starting | ready | replacing | backoff | failed | stopping |
//! |------------|----------|-------|-----------|---------|--------|----------|
//! | starting   |    ·     |  yes  |   yes¹    |   yes   |  yes   |   yes    |
//! | ready      |          |   ·   |    yes    |   yes   |  yes   |   yes    |
//! | replacing  |   yes²   |  yes  |     ·     |         |        |   yes    |
//! | backoff    |   yes    |       |           |    ·    |        |   yes    |
//! | failed     |   yes    |       |           |         |   ·    |   yes    |
//! | stopping   |          |       |           |         |        |    ·     |
//!
//! ¹ a replacement was asked for while the serving worker was still starting.
//! ² the serving worker exited and the not-yet-ready replacement takes over, or the
//!   replacement of a still-starting worker failed.
//!
//! `lifecycle` handles a worker's life (start, ready, exit, backoff, timers, drain);
//! `replace` the make-before-break queue and the leak-restart budget; `scale` new
//! settings from a reload (more slots, or fewer: the surplus slots drain and go).

mod lifecycle;
mod replace;
mod scale;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::view::{RestartReason, SlotState};
use crate::config::RestartConfig;

pub type WorkerId = u64;

#[derive(Debug, Clone, PartialEq)]
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
    /// Replace `worker`, which serves `slot`; dropped (`ReplacementDropped`) when that
    /// worker no longer serves the slot by the time the request is handled or started.
    Replace {
        slot: usize,
        worker: WorkerId,
        reason: RestartReason,
    },
    Reload,
    /// A reloaded config: new timeouts, restart policy and budget from now on, and the
    /// slot count (surplus slots drain; new ones start). Applied before `Reload`.
    Reconfigure(PoolSettings),
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

impl Timer {
    /// The worker a timer is about; `None` for a slot's respawn.
    pub fn worker(self) -> Option<WorkerId> {
        match self {
            Timer::Respawn { .. } => None,
            Timer::ReadyTimeout { worker }
            | Timer::MinUptime { worker }
            | Timer::DrainDeadline { worker }
            | Timer::KillDeadline { worker } => Some(worker),
        }
    }
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
    /// A worker was not ready within `ready-timeout` and is being killed (a `Signal`
    /// follows): said once, with the cause, so the kill is not a mystery.
    ReadyTimedOut {
        slot: usize,
        worker: WorkerId,
        pid: Option<u32>,
    },
    /// A replacement named a worker that no longer serves its slot (it exited, or was
    /// replaced already): nothing is replaced and nothing is charged to the budget.
    ReplacementDropped {
        slot: usize,
        worker: WorkerId,
        reason: RestartReason,
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
    /// When it became ready: start → ready is what a replacement costs the pool.
    pub ready_at: Option<Instant>,
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
    /// A replacement that failed and waits for its backoff to try again: the worker it
    /// replaces and why.
    retry_replacement: Option<(WorkerId, RestartReason)>,
    epoch: u64,
}

#[derive(Debug)]
pub struct Pool {
    settings: PoolSettings,
    /// Slots `0..active` serve; any beyond are retiring (their last workers draining)
    /// and are dropped once empty.
    slots: Vec<Slot>,
    active: usize,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    stopping: bool,
    /// Queued replacements: the slot, the worker named (`None`: whoever serves the slot
    /// when its turn comes, as a reload asks) and why.
    replace_queue: VecDeque<(usize, Option<WorkerId>, RestartReason)>,
}

const HOUR: Duration = Duration::from_secs(3600);

/// `now + wait`, saturating instead of panicking: config validation bounds every
/// duration, but the state machine must hold whatever it is given. Past what an
/// `Instant` can hold, the deadline is a century away (as good as never).
fn deadline(now: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(wait)
        .or_else(|| now.checked_add(wait.min(CENTURY)))
        .unwrap_or(now)
}

/// `initial × factor^attempt`, capped at `max` before it can overflow; a factor that is
/// not a number ≥ 1 counts as 1.
fn backoff_delay(r: &RestartConfig, attempt: u32) -> Duration {
    let factor = if r.factor.is_finite() && r.factor >= 1.0 {
        r.factor
    } else {
        1.0
    };
    let exponent = attempt.min(i32::MAX as u32) as i32;
    let seconds = r.initial_delay.as_secs_f64() * factor.powi(exponent);
    if seconds.is_finite() && seconds < r.max_delay.as_secs_f64() {
        Duration::try_from_secs_f64(seconds).map_or(r.max_delay, |d| d.min(r.max_delay))
    } else {
        r.max_delay
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            phase: Phase::Running,
            attempt: 0,
            failures: VecDeque::new(),
            leak_restarts: VecDeque::new(),
            restarts: 0,
            budget_exhausted: false,
            retry_replacement: None,
            epoch: 0,
        }
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            slots: (0..settings.workers).map(|_| Slot::new()).collect(),
            active: settings.workers,
            settings,
            workers: BTreeMap::new(),
            next_id: 1,
            stopping: false,
            replace_queue: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let before: Vec<SlotState> = (0..self.active).map(|s| self.slot_state(s)).collect();
        let mut out = Vec::new();
        self.dispatch(event, now, &mut out);
        for (slot, from) in before.into_iter().enumerate().take(self.active) {
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
                for slot in 0..self.active {
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
            Event::Replace {
                slot,
                worker,
                reason,
            } => self.request_replacement(slot, worker, reason, now, out),
            Event::Reload => {
                if !self.stopping {
                    for slot in 0..self.active {
                        let queued = self.replace_queue.iter().any(|(s, _, _)| *s == slot);
                        if !queued {
                            self.replace_queue
                                .push_back((slot, None, RestartReason::Reload));
                        }
                    }
                    self.pump(now, out);
                }
            }
            Event::Reconfigure(settings) => self.reconfigure(settings, now, out),
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

    /// Serving slots (retiring ones are not counted).
    pub fn slot_count(&self) -> usize {
        self.active
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
    from == to
        || matches!(
            (from, to),
            (Starting, Ready | Replacing | Backoff | Failed | Stopping)
                | (Ready, Replacing | Backoff | Failed | Stopping)
                | (Replacing, Starting | Ready | Stopping)
                | (Backoff | Failed, Starting | Stopping)
        )
}

#[cfg(test)]
mod overflow_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
