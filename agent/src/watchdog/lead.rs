//! What a leak replacement costs this pool, learned while it runs: the start → ready time
//! of its recent workers (from the pool view) and the time of its recent leak-rule
//! profiles (dump + convert, timed by the watchdog). The predicted rule looks that far
//! ahead, times its margin; both figures are exported (`heapwarden_replacement_seconds`,
//! `heapwarden_predict_horizon_seconds`).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crate::supervisor::PoolView;

/// How many recent measurements of each kind are kept; the slowest of them counts, so one
/// fast start on an idle moment does not shorten the horizon.
const RECENT: usize = 8;
/// Until a worker of the pool has been seen going ready.
const DEFAULT_READY: Duration = Duration::from_secs(1);
/// Until a profile has been timed: a leak can trip before the baseline profile is taken,
/// and a conversion takes 50 ms on an idle machine but seconds on a loaded one (it
/// symbolizes against the worker's executable), so the guess errs long.
const DEFAULT_PROFILE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct ReplacementClock {
    ready: VecDeque<Duration>,
    profile: VecDeque<Duration>,
    /// Workers whose start → ready was taken (ids are never reused).
    timed: HashSet<u64>,
}

impl ReplacementClock {
    /// Takes the start → ready time of every ready worker not seen yet, and forgets the
    /// workers that left the view.
    pub fn note_view(&mut self, view: &PoolView) {
        let workers = || view.slots.iter().filter_map(|s| s.worker.as_ref());
        for w in workers() {
            let Some(ready_at) = w.ready_at else { continue };
            if self.timed.insert(w.worker_id) {
                push(
                    &mut self.ready,
                    ready_at.saturating_duration_since(w.started_at),
                );
            }
        }
        self.timed
            .retain(|id| workers().any(|w| w.worker_id == *id));
    }

    /// A profile's dump + convert time.
    pub fn note_profile(&mut self, took: Duration) {
        push(&mut self.profile, took);
    }

    /// The slowest recent start → ready plus the slowest recent profile.
    pub fn replacement(&self) -> Duration {
        let slowest = |d: &VecDeque<Duration>, default| d.iter().copied().max().unwrap_or(default);
        slowest(&self.ready, DEFAULT_READY) + slowest(&self.profile, DEFAULT_PROFILE)
    }
}

fn push(recent: &mut VecDeque<Duration>, d: Duration) {
    if recent.len() == RECENT {
        recent.pop_front();
    }
    recent.push_back(d);
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::supervisor::{SlotState, SlotView, WorkerView};

    fn view(workers: &[(u64, Option<u64>)]) -> PoolView {
        let t0 = Instant::now();
        PoolView {
            slots: workers
                .iter()
                .enumerate()
                .map(|(slot, (id, ready_ms))| SlotView {
                    slot,
                    state: SlotState::Ready,
                    worker: Some(WorkerView {
                        worker_id: *id,
                        pid: 1,
                        started_at: t0,
                        ready_at: ready_ms.map(|ms| t0 + Duration::from_millis(ms)),
                        started_wall: SystemTime::now(),
                        ready: ready_ms.is_some(),
                        probe: true,
                        runtime: None,
                        link: None,
                        children: None,
                    }),
                    restarts: 0,
                    budget_exhausted: false,
                })
                .collect(),
            stopping: false,
        }
    }

    #[test]
    fn defaults_until_measured_then_the_slowest_recent_start_and_profile() {
        let mut clock = ReplacementClock::default();
        assert_eq!(clock.replacement(), Duration::from_millis(1500));
        clock.note_view(&view(&[(1, Some(40)), (2, None)]));
        clock.note_profile(Duration::from_millis(60));
        assert_eq!(clock.replacement(), Duration::from_millis(100));
        // Seen again: not counted twice. Worker 2 goes ready slower.
        clock.note_view(&view(&[(1, Some(40)), (2, Some(300))]));
        assert_eq!(clock.replacement(), Duration::from_millis(360));
        assert_eq!(clock.ready.len(), 2);
        // Eight faster starts push the slow one out.
        for id in 3..11 {
            clock.note_view(&view(&[(id, Some(20))]));
        }
        assert_eq!(clock.replacement(), Duration::from_millis(80));
        assert_eq!(clock.timed.len(), 1, "workers that left are forgotten");
    }
}
