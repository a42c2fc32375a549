//! A worker's life in the pool: start, readiness, exit, backoff and crash loops, timers,
//! drain and termination.

use std::time::Instant;

use super::*;

impl Pool {
    pub(super) fn spawn(&mut self, slot: usize, role: Role, now: Instant, out: &mut Vec<Action>) {
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
                ready_at: None,
                probe: false,
                role,
                kill_reason: None,
            },
        );
        self.slots[slot].phase = Phase::Running;
        out.push(Action::Spawn { slot, worker: id });
        let s = &self.settings;
        out.push(Action::Schedule {
            at: deadline(now, s.ready_timeout),
            timer: Timer::ReadyTimeout { worker: id },
        });
        out.push(Action::Schedule {
            at: deadline(now, s.min_uptime),
            timer: Timer::MinUptime { worker: id },
        });
    }

    pub(super) fn on_ready(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.ready || w.role == Role::Draining {
            return;
        }
        w.ready = true;
        w.ready_at = Some(now);
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

    pub(super) fn on_exit(
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
        if slot >= self.active {
            // A retiring slot: nothing restarts there; it goes once empty.
            self.trim_retired();
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
                let serving = self.role_in(slot, Role::Current);
                self.slots[slot].retry_replacement = serving.map(|old| (old, reason));
                self.back_off(slot, now, out);
                self.pump(now, out);
            }
        }
    }

    /// Records a failure and schedules the next start: exponential delay, or the
    /// cool-down once `max_restarts` failures fall within `window`.
    pub(super) fn back_off(&mut self, slot: usize, now: Instant, out: &mut Vec<Action>) {
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
            let until = deadline(now, r.cool_down);
            if !has_worker {
                s.phase = Phase::Failed;
            }
            out.push(Action::SlotFailed { slot, until });
            out.push(Action::Schedule { at: until, timer });
            return;
        }
        let delay = backoff_delay(r, s.attempt);
        s.attempt = s.attempt.saturating_add(1);
        if !has_worker {
            s.phase = Phase::Backoff;
        }
        out.push(Action::Schedule {
            at: deadline(now, delay),
            timer,
        });
    }

    pub(super) fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Action>) {
        match timer {
            Timer::Respawn { slot, epoch } => {
                if self.stopping
                    || slot >= self.active
                    || self.slots.get(slot).is_none_or(|s| s.epoch != epoch)
                {
                    return;
                }
                let retry = self.slots[slot].retry_replacement.take();
                if self.role_in(slot, Role::Current).is_none() {
                    self.spawn(slot, Role::Current, now, out);
                } else if let Some((old, reason)) = retry {
                    self.replace_queue.push_front((slot, Some(old), reason));
                    self.pump(now, out);
                }
            }
            Timer::MinUptime { worker } => {
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                let says_ready = w.probe && self.settings.ready_from_probe;
                let (slot, plain_and_waiting) = (w.slot, !says_ready && !w.ready);
                // Only a worker that has not said hello yet waits out the hello grace.
                let hello_due = self
                    .settings
                    .probe_hello_grace
                    .filter(|_| !w.probe)
                    .map(|grace| w.started_at + grace)
                    .filter(|due| *due > now);
                if w.role == Role::Current {
                    self.slots[slot].attempt = 0;
                }
                // A worker that does not report readiness through a probe (none, or the
                // native one) and did not send sd_notify is ready once it has stayed up
                // this long, and, when it was given a probe, once that probe had its
                // chance to say hello.
                match (plain_and_waiting, hello_due) {
                    (true, Some(at)) => out.push(Action::Schedule {
                        at,
                        timer: Timer::MinUptime { worker },
                    }),
                    (true, None) => self.on_ready(worker, now, out),
                    (false, _) => {}
                }
            }
            Timer::ReadyTimeout { worker } => {
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                if w.ready || w.role == Role::Draining {
                    return;
                }
                w.kill_reason = Some(RestartReason::ReadyTimeout);
                out.push(Action::ReadyTimedOut {
                    slot: w.slot,
                    worker,
                    pid: w.pid,
                });
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
                    at: deadline(now, self.settings.kill_timeout),
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

    pub(super) fn drain(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
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
            at: deadline(now, self.settings.drain_timeout),
            timer: Timer::DrainDeadline { worker },
        });
    }

    /// Shutdown path: SIGTERM now, SIGKILL after `kill_timeout`.
    pub(super) fn terminate(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
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
                at: deadline(now, self.settings.kill_timeout),
                timer: Timer::KillDeadline { worker },
            });
        }
    }

    pub(super) fn count_restart(
        &mut self,
        slot: usize,
        reason: RestartReason,
        out: &mut Vec<Action>,
    ) {
        self.slots[slot].restarts += 1;
        out.push(Action::CountRestart { slot, reason });
    }

    pub(super) fn exit_if_done(&self, out: &mut Vec<Action>) {
        if self.stopping && self.workers.is_empty() {
            out.push(Action::Exit);
        }
    }

    pub(super) fn role_in(&self, slot: usize, role: Role) -> Option<WorkerId> {
        self.workers
            .values()
            .find(|w| w.slot == slot && w.role == role)
            .map(|w| w.id)
    }

    pub(super) fn replacement_of(&self, slot: usize) -> Option<WorkerId> {
        self.workers
            .values()
            .find(|w| w.slot == slot && matches!(w.role, Role::Replacement(_)))
            .map(|w| w.id)
    }
}
