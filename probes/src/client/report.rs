//! Pushing the heap figures on the agent's interval ([`AgentMsg::Report`]), so the agent
//! reads the latest instead of asking every worker every round. One thread, started on
//! the first report that asks for pushes; it sleeps until the next push time, and each
//! push time is counted from the first one the report named (never from the previous
//! push), so the probe stays in step with the agent's rounds however long a push takes.
//! The first is the report's `at_us` on the host's monotonic clock, the same instant for
//! every worker, when it is within one interval of this process's clock; otherwise
//! `first_ms` from when the report arrived.
//!
//! A hostile or buggy report cannot make the worker spin or sleep forever: `every_ms`
//! is raised to [`MIN_REPORT_EVERY_MS`] and `first_ms` is capped at one interval.
//!
//! [`AgentMsg::Report`]: crate::channel::AgentMsg::Report

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use heapwarden_protocol::clock::{monotonic_us, until_grid};
use heapwarden_protocol::{MIN_REPORT_EVERY_MS, PUSHED_SEQ};

use super::handler::{reply, sample};
use super::{Shared, lock};
use crate::diag::warn;

/// When to push next; `every` is `None` while the agent asked for no pushes.
#[derive(Debug, Default)]
struct Schedule {
    every: Option<Duration>,
    next: Option<Instant>,
    stopped: bool,
}

impl Schedule {
    /// Applies a report received at `now` (`now_us` on the monotonic clock).
    fn set(&mut self, every_ms: u64, first_ms: u64, at_us: Option<u64>, now: Instant, now_us: u64) {
        if every_ms == 0 {
            self.every = None;
            self.next = None;
            return;
        }
        let every = Duration::from_millis(every_ms.max(MIN_REPORT_EVERY_MS));
        let first = at_us
            .and_then(|at| until_grid(at, every, now_us))
            .unwrap_or_else(|| Duration::from_millis(first_ms).min(every));
        self.every = Some(every);
        self.next = now.checked_add(first);
    }

    /// Whether a push is due at `now`; when it is, moves `next` to the first grid time
    /// after `now` (a push that fell far behind is not repeated to catch up).
    fn due(&mut self, now: Instant) -> bool {
        let (Some(every), Some(next)) = (self.every, self.next) else {
            return false;
        };
        if now < next {
            return false;
        }
        let behind = now.duration_since(next).as_nanos() / every.as_nanos().max(1);
        let steps = u32::try_from(behind + 1).unwrap_or(u32::MAX);
        self.next = every.checked_mul(steps).and_then(|d| next.checked_add(d));
        true
    }
}

/// The reader thread's handle on the push thread; dropping it stops the thread.
pub(super) struct Reporter {
    schedule: Arc<(Mutex<Schedule>, Condvar)>,
}

impl Reporter {
    /// Starts the push thread; `None` (logged) when no thread could be started, and the
    /// agent keeps asking as it does of a probe that never pushes.
    pub(super) fn start(shared: &Arc<Shared>) -> Option<Reporter> {
        let schedule: Arc<(Mutex<Schedule>, Condvar)> = Arc::default();
        let (for_thread, shared) = (schedule.clone(), shared.clone());
        let started = std::thread::Builder::new()
            .name("heapwarden-report".into())
            .spawn(move || run(&shared, &for_thread));
        match started {
            Ok(_) => Some(Reporter { schedule }),
            Err(_) => {
                warn("Could not start the stats push thread.", &[]);
                None
            }
        }
    }

    pub(super) fn set(&self, every_ms: u64, first_ms: u64, at_us: Option<u64>) {
        let (schedule, wake) = &*self.schedule;
        let (now, now_us) = (Instant::now(), monotonic_us());
        lock(schedule).set(every_ms, first_ms, at_us, now, now_us);
        wake.notify_one();
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let (schedule, wake) = &*self.schedule;
        lock(schedule).stopped = true;
        wake.notify_one();
    }
}

fn run(shared: &Shared, schedule: &(Mutex<Schedule>, Condvar)) {
    let (schedule, wake) = schedule;
    let mut current = lock(schedule);
    loop {
        if current.stopped || shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if current.due(now) {
            drop(current);
            reply(shared, sample(shared, PUSHED_SEQ, false));
            current = lock(schedule);
            continue;
        }
        current = match current.next {
            Some(next) => {
                let wait = next.saturating_duration_since(now);
                wake.wait_timeout(current, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
            None => wake
                .wait(current)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_follow_the_grid_set_by_the_report() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert!(!s.due(t0), "no report, no push");
        s.set(1000, 300, None, t0, 0);
        assert!(!s.due(t0 + Duration::from_millis(299)));
        assert!(s.due(t0 + Duration::from_millis(305)));
        assert_eq!(s.next, Some(t0 + Duration::from_millis(1300)));
        // Late by three and a half intervals: one push, then back on the grid.
        assert!(s.due(t0 + Duration::from_millis(4800)));
        assert!(!s.due(t0 + Duration::from_millis(4801)));
        assert_eq!(s.next, Some(t0 + Duration::from_millis(5300)));
    }

    #[test]
    fn the_clock_time_wins_over_first_ms_when_it_is_on_this_clock() {
        let (t0, now_us) = (Instant::now(), 7_000_000);
        let mut s = Schedule::default();
        s.set(1000, 300, Some(now_us + 120_000), t0, now_us);
        assert_eq!(s.next, Some(t0 + Duration::from_millis(120)));
        // Told 80 ms after the named time: the next point of the same grid.
        s.set(1000, 300, Some(now_us - 80_000), t0, now_us);
        assert_eq!(s.next, Some(t0 + Duration::from_millis(920)));
        // Further than an interval away (another time namespace): first_ms.
        s.set(1000, 300, Some(now_us + 5_000_000), t0, now_us);
        assert_eq!(s.next, Some(t0 + Duration::from_millis(300)));
        s.set(1000, 300, Some(0), t0, now_us);
        assert_eq!(s.next, Some(t0 + Duration::from_millis(300)));
    }

    #[test]
    fn hostile_reports_neither_spin_nor_sleep_forever() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set(1, u64::MAX, Some(u64::MAX), t0, 0);
        assert_eq!(s.every, Some(Duration::from_millis(MIN_REPORT_EVERY_MS)));
        assert_eq!(
            s.next,
            Some(t0 + Duration::from_millis(MIN_REPORT_EVERY_MS)),
            "the first push waits one interval at most"
        );
        s.set(u64::MAX, u64::MAX, None, t0, 0);
        assert!(
            s.every.is_some(),
            "a huge interval is taken, not overflowed"
        );
        assert!(!s.due(t0 + Duration::from_secs(3600)));
        s.set(0, 5, Some(3), t0, 0);
        assert_eq!((s.every, s.next), (None, None), "every_ms 0 stops");
        assert!(!s.due(t0 + Duration::from_secs(10)));
    }
}
