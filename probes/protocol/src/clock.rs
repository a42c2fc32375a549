//! The host's monotonic clock (`CLOCK_MONOTONIC`), which the agent and its workers read
//! alike (one kernel clock, not one per process): the agent names the time of a probe's
//! first push on it ([`AgentMsg::Report`]'s `at_us`), so every probe pushes at the same
//! instant, just before the agent's round, whenever it was told.
//!
//! [`AgentMsg::Report`]: crate::AgentMsg::Report

use std::time::{Duration, Instant};

/// Now on `CLOCK_MONOTONIC`, in microseconds (exact in a JSON number, a JavaScript
/// double, for 285 years of uptime; nanoseconds would be for 104 days).
pub fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let us = Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
    .as_micros();
    u64::try_from(us).unwrap_or(u64::MAX)
}

/// `at` on `CLOCK_MONOTONIC`, in microseconds (std's `Instant` reads that clock on Linux
/// but does not expose it).
pub fn monotonic_us_at(at: Instant) -> u64 {
    let (now, now_us) = (Instant::now(), monotonic_us());
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if at >= now {
        now_us.saturating_add(micros(at - now))
    } else {
        now_us.saturating_sub(micros(now - at))
    }
}

/// How long from `now_us` (on `CLOCK_MONOTONIC`) until the first of `at_us + k * every`
/// (k ≥ 0) that is not in the past, when `at_us` is within one `every` of `now_us`
/// either way; `None` otherwise (a clock in another time namespace, or nonsense), and
/// the caller falls back on the relative `first_ms`.
pub fn until_grid(at_us: u64, every: Duration, now_us: u64) -> Option<Duration> {
    let every_us = u64::try_from(every.as_micros()).ok().filter(|e| *e > 0)?;
    if at_us >= now_us {
        let wait = at_us - now_us;
        (wait <= every_us).then(|| Duration::from_micros(wait))
    } else {
        let late = now_us - at_us;
        (late <= every_us).then(|| Duration::from_micros(every_us - late))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_with_std_instants() {
        let start = Instant::now();
        let (a, b) = (monotonic_us_at(start), monotonic_us());
        assert!(b >= a && b - a < 1_000_000, "{a} then {b}");
        let later = start + Duration::from_millis(250);
        let diff = monotonic_us_at(later).abs_diff(a + 250_000);
        // Units, not timing: a preempted read may be late, but not by 50 ms.
        assert!(
            diff < 50_000,
            "an instant 250 ms on is 250,000 µs on: off by {diff} µs"
        );
    }

    #[test]
    fn the_grid_time_is_used_within_one_interval_either_way() {
        let every = Duration::from_secs(1);
        let now = 5_000_000;
        assert_eq!(
            until_grid(now + 430_000, every, now),
            Some(Duration::from_millis(430))
        );
        assert_eq!(until_grid(now, every, now), Some(Duration::ZERO));
        assert_eq!(until_grid(now + 1_000_000, every, now), Some(every));
        // Told a little late (a busy reader): the next point of the same grid.
        assert_eq!(
            until_grid(now - 100_000, every, now),
            Some(Duration::from_millis(900))
        );
        // Another clock, nonsense, or no interval: not used.
        assert_eq!(until_grid(now + 1_000_001, every, now), None);
        assert_eq!(until_grid(now - 1_000_001, every, now), None);
        assert_eq!(until_grid(u64::MAX, every, now), None);
        assert_eq!(until_grid(0, every, now), None);
        assert_eq!(until_grid(now, Duration::ZERO, now), None);
    }
}
