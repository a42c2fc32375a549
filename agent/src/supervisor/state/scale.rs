//! New pool settings from a reload. Timeouts, the restart policy and the budgets apply
//! from the next decision on; the slot count changes at once: new slots start a worker,
//! surplus slots (the highest numbers) drain theirs make-before-nothing — stop accepting,
//! finish in-flight work, then SIGTERM/SIGKILL as any drain — and are dropped once empty.
//! Scaling back up before a retiring slot emptied reuses it (with its history).

use std::time::Instant;

use super::*;

impl Pool {
    pub(super) fn reconfigure(
        &mut self,
        settings: PoolSettings,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let target = settings.workers.max(1);
        self.settings = settings;
        if self.stopping {
            return;
        }
        let old = self.active;
        self.active = target;
        self.replace_queue.retain(|(slot, _, _)| *slot < target);
        for slot in target..old {
            self.retire(slot, now, out);
        }
        while self.slots.len() < target {
            self.slots.push(Slot::new());
        }
        for slot in old..target {
            if self.role_in(slot, Role::Current).is_none() {
                self.spawn(slot, Role::Current, now, out);
            }
        }
        self.trim_retired();
        self.pump(now, out);
    }

    /// Drains the slot's serving worker and stops a replacement in flight; a pending
    /// respawn is cancelled.
    fn retire(&mut self, slot: usize, now: Instant, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.epoch += 1;
        s.retry_replacement = None;
        let ids: Vec<(WorkerId, Role)> = self
            .workers
            .values()
            .filter(|w| w.slot == slot)
            .map(|w| (w.id, w.role))
            .collect();
        for (id, role) in ids {
            match role {
                Role::Current => self.drain(id, now, out),
                Role::Replacement(_) => self.terminate(id, now, out),
                Role::Draining => {}
            }
        }
    }

    /// Drops retiring slots at the end that have no worker left.
    pub(super) fn trim_retired(&mut self) {
        while self.slots.len() > self.active {
            let last = self.slots.len() - 1;
            if self.workers.values().any(|w| w.slot == last) {
                break;
            }
            self.slots.pop();
        }
    }

    /// Slots still draining after a scale-down (for the log and tests).
    pub fn retiring(&self) -> usize {
        self.slots.len() - self.active
    }
}
