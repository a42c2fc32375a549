//! What the supervisor tells the rest of the agent and systemd: the pool view (after
//! every change), the heartbeat with `STATUS=`/`WATCHDOG=1`, and drain durations.

use std::cmp::Reverse;
use std::time::Instant;

use slog::info;

use super::super::state::{ExitStatus, WorkerId};
use super::super::view::{PoolView, SlotState, SlotView, WorkerView};
use super::{Supervisor, TimerKey};
use crate::metric_names::DRAIN_DURATION;

impl Supervisor {
    /// A planned stop: the drain's duration, and one line with how the worker ended
    /// (its exit code, or the signal it was stopped with after `drain-timeout`).
    pub(super) fn record_drain(&self, worker: WorkerId, status: ExitStatus) {
        let Some(rt) = self.runtimes.get(&worker) else {
            return;
        };
        if let Some(started) = rt.drain_started {
            let seconds = started.elapsed().as_secs_f64();
            metrics::histogram!(DRAIN_DURATION.name).record(seconds);
            let (code, signal) = match status {
                ExitStatus::Code(c) => (Some(c), None),
                ExitStatus::Signal(s) => (None, Some(s)),
            };
            let slot = self.pool.worker(worker).map(|w| w.slot);
            info!(self.log, "A drained worker has exited.";
                "worker" => slot, "worker_id" => worker, "pid" => rt.pid, "seconds" => seconds,
                "exit_code" => code, "signal" => signal);
        }
    }

    pub(super) fn heartbeat(&mut self) {
        let _ = self.heartbeat_tx.send(Instant::now());
        self.systemd.watchdog();
        let view = self.view_tx.borrow();
        let ready = view
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Ready)
            .count();
        let restarts: u64 = view.slots.iter().map(|s| s.restarts).sum();
        let last_leak = match self.last_leak {
            Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
            None => "none".into(),
        };
        let status = format!(
            "{ready}/{} workers ready, {restarts} restarts, last leak: {last_leak}",
            view.slots.len()
        );
        let all_ready = view.all_ready();
        drop(view);
        if all_ready {
            self.systemd.ready(&status);
        }
        self.systemd.status(&status);
    }

    pub(super) fn publish(&mut self) {
        // A worker the pool forgot was reaped: its resources and its timers go with it.
        let pool = &self.pool;
        let known = self.runtimes.len();
        self.runtimes.retain(|id, _| pool.worker(*id).is_some());
        if self.runtimes.len() < known {
            // What the forgotten workers' trees left behind has no live worker now.
            self.sweep_orphans();
        }
        self.timers.retain(|Reverse((_, _, TimerKey(t)))| {
            t.worker().is_none_or(|id| pool.worker(id).is_some())
        });
        let slots = (0..self.pool.slot_count())
            .map(|slot| {
                let worker = self.pool.serving(slot).and_then(|w| {
                    let rt = self.runtimes.get(&w.id)?;
                    Some(WorkerView {
                        worker_id: w.id,
                        pid: rt.pid,
                        started_at: w.started_at,
                        started_wall: rt.started_wall,
                        ready: w.ready,
                        ready_at: w.ready_at,
                        probe: w.probe,
                        runtime: rt.runtime,
                        link: Some(rt.link.clone()),
                        children: Some(rt.children.clone()),
                    })
                });
                SlotView {
                    slot,
                    state: self.pool.slot_state(slot),
                    worker,
                    restarts: self.pool.restarts(slot),
                    budget_exhausted: self.pool.budget_exhausted(slot),
                }
            })
            .collect();
        let view = PoolView {
            slots,
            stopping: self.pool.stopping(),
        };
        let became_ready = view.all_ready() && !self.view_tx.borrow().all_ready();
        self.view_tx.send_replace(view);
        if became_ready {
            info!(self.log, "Every worker is ready."; "workers" => self.pool.slot_count());
            self.heartbeat();
        }
    }
}
