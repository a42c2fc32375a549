//! Make-before-break replacements: the queue, the concurrency limit and the hourly
//! leak-restart budget.

use std::time::Instant;

use super::*;

impl Pool {
    /// A replacement of `worker` in `slot`. A request for a worker that no longer serves
    /// the slot (it crashed and was restarted since the decision, say) is dropped before it
    /// can replace the slot's next worker or spend the leak budget.
    pub(super) fn request_replacement(
        &mut self,
        slot: usize,
        worker: WorkerId,
        reason: RestartReason,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.stopping || slot >= self.active {
            return;
        }
        if self.role_in(slot, Role::Current) != Some(worker) {
            out.push(Action::ReplacementDropped {
                slot,
                worker,
                reason,
            });
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
        let queued = self.replace_queue.iter().any(|(s, _, _)| *s == slot);
        if !queued && self.replacement_of(slot).is_none() {
            self.replace_queue.push_back((slot, Some(worker), reason));
        }
        self.pump(now, out);
    }

    /// Starts queued replacements while under the concurrency limit.
    pub(super) fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        let limit = self.settings.max_concurrent_replacements.max(1);
        while !self.stopping && self.in_flight() < limit {
            let Some((slot, named, reason)) = self.replace_queue.pop_front() else {
                break;
            };
            let serving = self.role_in(slot, Role::Current);
            if let Some(worker) = named
                && serving != Some(worker)
            {
                out.push(Action::ReplacementDropped {
                    slot,
                    worker,
                    reason,
                });
                continue;
            }
            if serving.is_none() || self.replacement_of(slot).is_some() {
                continue; // the slot is restarting anyway, or already being replaced
            }
            if reason == RestartReason::Leak {
                self.slots[slot].leak_restarts.push_back(now);
            }
            self.spawn(slot, Role::Replacement(reason), now, out);
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.role, Role::Replacement(_)))
            .count()
    }
}
