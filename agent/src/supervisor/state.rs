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

    fn spawn(&mut self, slot: usize, role: Role, now: Instant, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        self.workers.insert(
            id,
            Worker {
                id,
                slot,
                pid: None,
                started_at: now,
                ready: false,
                probe: false,
                role,
                kill_reason: None,
            },
        );
        self.slots[slot].phase = Phase::Running;
        out.push(Action::Spawn { slot, worker: id });
        let s = &self.settings;
        out.push(Action::Schedule {
            at: now + s.ready_timeout,
            timer: Timer::ReadyTimeout { worker: id },
        });
        out.push(Action::Schedule {
            at: now + s.min_uptime,
            timer: Timer::MinUptime { worker: id },
        });
    }

    fn on_ready(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.ready || w.role == Role::Draining {
            return;
        }
        w.ready = true;
        let (slot, role) = (w.slot, w.role);
        if let Role::Replacement(reason) = role {
            if let Some(old) = self.role_in(slot, Role::Current) {
                self.drain(old, now, out);
            }
            if let Some(w) = self.workers.get_mut(&worker) {
                w.role = Role::Current;
            }
            self.count_restart(slot, reason, out);
            self.pump(now, out);
        }
    }

    fn on_exit(
        &mut self,
        worker: WorkerId,
        status: ExitStatus,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        let slot = w.slot;
        if self.stopping {
            self.exit_if_done(out);
            return;
        }
        match w.role {
            Role::Draining => {}
            Role::Current => {
                let reason = w.kill_reason.unwrap_or(match status {
                    ExitStatus::Signal(_) => RestartReason::Crash,
                    ExitStatus::Code(_) => RestartReason::Exit,
                });
                self.count_restart(slot, reason, out);
                if let Some(next) = self.replacement_of(slot) {
                    // The replacement was already starting: it takes over the slot.
                    if let Some(n) = self.workers.get_mut(&next) {
                        n.role = Role::Current;
                    }
                    self.pump(now, out);
                } else {
                    self.back_off(slot, now, out);
                }
            }
            Role::Replacement(reason) => {
                // The old worker keeps serving; try again after a backoff.
                self.slots[slot].retry_replacement = Some(reason);
                self.back_off(slot, now, out);
                self.pump(now, out);
            }
        }
    }

    /// Records a failure and schedules the next start: exponential delay, or the
    /// cool-down once `max_restarts` failures fall within `window`.
    fn back_off(&mut self, slot: usize, now: Instant, out: &mut Vec<Action>) {
        let r = &self.settings.restart;
        let has_worker = self.role_in(slot, Role::Current).is_some();
        let s = &mut self.slots[slot];
        while s
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > r.window)
        {
            s.failures.pop_front();
        }
        s.failures.push_back(now);
        s.epoch += 1;
        let timer = Timer::Respawn {
            slot,
            epoch: s.epoch,
        };
        if s.failures.len() >= r.max_restarts as usize {
            s.failures.clear();
            s.attempt = 0;
            let until = now + r.cool_down;
            if !has_worker {
                s.phase = Phase::Failed;
            }
            out.push(Action::SlotFailed { slot, until });
            out.push(Action::Schedule { at: until, timer });
            return;
        }
        let delay = r
            .initial_delay
            .mul_f64(r.factor.powi(s.attempt.min(64) as i32));
        let delay = delay.min(r.max_delay);
        s.attempt += 1;
        if !has_worker {
            s.phase = Phase::Backoff;
        }
        out.push(Action::Schedule {
            at: now + delay,
            timer,
        });
    }

    fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Action>) {
        match timer {
            Timer::Respawn { slot, epoch } => {
                if self.stopping || self.slots.get(slot).is_none_or(|s| s.epoch != epoch) {
                    return;
                }
                let retry = self.slots[slot].retry_replacement.take();
                if self.role_in(slot, Role::Current).is_none() {
                    self.spawn(slot, Role::Current, now, out);
                } else if let Some(reason) = retry {
                    self.replace_queue.push_front((slot, reason));
                    self.pump(now, out);
                }
            }
            Timer::MinUptime { worker } => {
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                let (slot, plain_and_waiting) = (w.slot, !w.probe && !w.ready);
                if w.role == Role::Current {
                    self.slots[slot].attempt = 0;
                }
                // A worker without the probe and without sd_notify is ready once it
                // has stayed up this long.
                if plain_and_waiting {
                    self.on_ready(worker, now, out);
                }
            }
            Timer::ReadyTimeout { worker } => {
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                if w.ready || w.role == Role::Draining {
                    return;
                }
                w.kill_reason = Some(RestartReason::Unhealthy);
                if let Some(pid) = w.pid {
                    out.push(Action::Signal {
                        worker,
                        pid,
                        signal: Signal::Kill,
                    });
                }
            }
            Timer::DrainDeadline { worker } => {
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                if let (Some(pid), true) = (w.pid, w.probe) {
                    out.push(Action::Signal {
                        worker,
                        pid,
                        signal: Signal::Term,
                    });
                }
                out.push(Action::Schedule {
                    at: now + self.settings.kill_timeout,
                    timer: Timer::KillDeadline { worker },
                });
            }
            Timer::KillDeadline { worker } => {
                if let Some(pid) = self.workers.get(&worker).and_then(|w| w.pid) {
                    out.push(Action::Signal {
                        worker,
                        pid,
                        signal: Signal::Kill,
                    });
                }
            }
        }
    }

    fn request_replacement(
        &mut self,
        slot: usize,
        reason: RestartReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.stopping || slot >= self.slots.len() {
            return;
        }
        if reason == RestartReason::Leak {
            let s = &mut self.slots[slot];
            while s
                .leak_restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= HOUR)
            {
                s.leak_restarts.pop_front();
            }
            if s.leak_restarts.len() >= self.settings.max_leak_restarts_per_hour {
                if !s.budget_exhausted {
                    s.budget_exhausted = true;
                    out.push(Action::BudgetExhausted { slot });
                }
                return;
            }
            s.budget_exhausted = false;
        }
        let queued = self.replace_queue.iter().any(|(s, _)| *s == slot);
        if !queued && self.replacement_of(slot).is_none() {
            self.replace_queue.push_back((slot, reason));
        }
        self.pump(now, out);
    }

    /// Starts queued replacements while under the concurrency limit.
    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        let limit = self.settings.max_concurrent_replacements.max(1);
        while !self.stopping && self.in_flight() < limit {
            let Some((slot, reason)) = self.replace_queue.pop_front() else {
                break;
            };
            let serving = self.role_in(slot, Role::Current);
            if serving.is_none() || self.replacement_of(slot).is_some() {
                continue; // the slot is restarting anyway, or already being replaced
            }
            if reason == RestartReason::Leak {
                self.slots[slot].leak_restarts.push_back(now);
            }
            self.spawn(slot, Role::Replacement(reason), now, out);
        }
    }

    fn in_flight(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.role, Role::Replacement(_)))
            .count()
    }

    fn drain(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.role = Role::Draining;
        if let Some(pid) = w.pid {
            out.push(Action::Drain {
                worker,
                pid,
                via_channel: w.probe,
            });
        }
        out.push(Action::Schedule {
            at: now + self.settings.drain_timeout,
            timer: Timer::DrainDeadline { worker },
        });
    }

    /// Shutdown path: SIGTERM now, SIGKILL after `kill_timeout`.
    fn terminate(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.role = Role::Draining;
        if let Some(pid) = w.pid {
            out.push(Action::Signal {
                worker,
                pid,
                signal: Signal::Term,
            });
            out.push(Action::Schedule {
                at: now + self.settings.kill_timeout,
                timer: Timer::KillDeadline { worker },
            });
        }
    }

    fn count_restart(&mut self, slot: usize, reason: RestartReason, out: &mut Vec<Action>) {
        self.slots[slot].restarts += 1;
        out.push(Action::CountRestart { slot, reason });
    }

    fn exit_if_done(&self, out: &mut Vec<Action>) {
        if self.stopping && self.workers.is_empty() {
            out.push(Action::Exit);
        }
    }

    fn role_in(&self, slot: usize, role: Role) -> Option<WorkerId> {
        self.workers
            .values()
            .find(|w| w.slot == slot && w.role == role)
            .map(|w| w.id)
    }

    fn replacement_of(&self, slot: usize) -> Option<WorkerId> {
        self.workers
            .values()
            .find(|w| w.slot == slot && matches!(w.role, Role::Replacement(_)))
            .map(|w| w.id)
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

    pub fn live_pids(&self) -> Vec<u32> {
        self.workers.values().filter_map(|w| w.pid).collect()
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
#[path = "state_tests.rs"]
mod tests;
