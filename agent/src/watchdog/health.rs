//! The unhealthy decision: counting a probe-linked worker's unanswered samples and
//! deciding, once, that it must be replaced. The sampler only reports whether the probe
//! answered; this is the one place that turns silences into a replacement. Pure state,
//! tested without a worker.

use std::collections::HashMap;

use crate::supervisor::{Request, RestartReason, SlotState};

#[derive(Debug, Default, Clone, Copy)]
struct Misses {
    consecutive: u32,
    /// The replacement was asked for; never ask twice for the same worker.
    reported: bool,
}

#[derive(Debug, Default)]
pub struct MissTracker {
    by_worker: HashMap<u64, Misses>,
}

impl MissTracker {
    /// Records one round's outcome for a probe-linked worker. Returns the request to send
    /// when this miss is the `limit`-th in a row and the slot is serving (a starting
    /// worker is covered by the ready timeout, a replacing one is already on its way out).
    pub fn observe(
        &mut self,
        worker_id: u64,
        slot: usize,
        state: SlotState,
        answered: bool,
        limit: u32,
    ) -> Option<Request> {
        let entry = self.by_worker.entry(worker_id).or_default();
        if answered {
            entry.consecutive = 0;
            return None;
        }
        entry.consecutive = entry.consecutive.saturating_add(1);
        let due = limit > 0 && entry.consecutive >= limit && state == SlotState::Ready;
        if due && !entry.reported {
            entry.reported = true;
            return Some(Request::Replace {
                slot,
                worker: worker_id,
                reason: RestartReason::Unhealthy,
            });
        }
        None
    }

    /// The request could not be delivered (the supervisor's queue was full): ask again
    /// next round.
    pub fn unreport(&mut self, worker_id: u64) {
        if let Some(entry) = self.by_worker.get_mut(&worker_id) {
            entry.reported = false;
        }
    }

    pub fn missed(&self, worker_id: u64) -> u32 {
        self.by_worker.get(&worker_id).map_or(0, |m| m.consecutive)
    }

    /// Forgets workers that are no longer in the pool.
    pub fn retain(&mut self, mut live: impl FnMut(u64) -> bool) {
        self.by_worker.retain(|id, _| live(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_requested_once_after_the_limit() {
        let mut t = MissTracker::default();
        assert_eq!(t.observe(7, 2, SlotState::Ready, false, 3), None);
        assert_eq!(t.observe(7, 2, SlotState::Ready, false, 3), None);
        assert_eq!(
            t.observe(7, 2, SlotState::Ready, false, 3),
            Some(Request::Replace {
                slot: 2,
                worker: 7,
                reason: RestartReason::Unhealthy
            })
        );
        assert_eq!(t.observe(7, 2, SlotState::Ready, false, 3), None);
        assert_eq!(t.missed(7), 4);
    }

    #[test]
    fn an_answer_resets_the_count() {
        let mut t = MissTracker::default();
        t.observe(1, 0, SlotState::Ready, false, 2);
        t.observe(1, 0, SlotState::Ready, true, 2);
        assert_eq!(t.observe(1, 0, SlotState::Ready, false, 2), None);
        assert_eq!(t.missed(1), 1);
    }

    #[test]
    fn only_serving_slots_are_reported_and_unreport_retries() {
        let mut t = MissTracker::default();
        assert_eq!(t.observe(1, 0, SlotState::Starting, false, 1), None);
        assert_eq!(t.observe(1, 0, SlotState::Replacing, false, 1), None);
        assert!(t.observe(1, 0, SlotState::Ready, false, 1).is_some());
        t.unreport(1);
        assert!(t.observe(1, 0, SlotState::Ready, false, 1).is_some());
    }

    #[test]
    fn retain_forgets_gone_workers() {
        let mut t = MissTracker::default();
        t.observe(1, 0, SlotState::Ready, false, 5);
        t.observe(2, 1, SlotState::Ready, false, 5);
        t.retain(|id| id == 2);
        assert_eq!(t.missed(1), 0);
        assert_eq!(t.missed(2), 1);
    }
}
