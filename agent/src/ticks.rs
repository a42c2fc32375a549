//! The agent's periodic timers tick on one grid: the sampler's rounds, the supervisor's
//! heartbeat and the metrics upkeep all fire at `grid + k × period`, so where their
//! periods meet (every round, at the default 1 s `interval`) one wake-up of the agent
//! serves them all instead of each waking it at its own phase. Owns only that: what a
//! timer does on its tick is its owner's.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The grid every periodic timer of one agent shares; taken once at start.
#[derive(Debug, Clone, Copy)]
pub struct Grid(Instant);

impl Grid {
    pub fn start() -> Self {
        Grid(Instant::now())
    }

    /// An interval ticking on the grid every `period`: at once (at the last grid time,
    /// as `tokio::time::interval` ticks at once), then at the grid times after it. A late
    /// tick skips to the next grid time rather than shifting the grid.
    pub fn interval(self, period: Duration) -> Interval {
        let period = period.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval_at(self.last_point(period, Instant::now()), period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        ticker
    }

    /// The last grid time of `period` at or before `now`.
    fn last_point(self, period: Duration, now: Instant) -> Instant {
        let since = now.saturating_duration_since(self.0).as_nanos();
        let whole = since - since % period.as_nanos();
        // Whole nanoseconds fit a u64 for 584 years; past that the start itself, which a
        // skipping interval keeps on the grid as well.
        self.0 + Duration::from_nanos(u64::try_from(whole).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_point_is_the_last_multiple_of_the_period() {
        let grid = Grid::start();
        let second = Duration::from_secs(1);
        assert_eq!(grid.last_point(second, grid.0), grid.0);
        assert_eq!(
            grid.last_point(second, grid.0 + Duration::from_millis(2_700)),
            grid.0 + 2 * second
        );
        assert_eq!(
            grid.last_point(
                Duration::from_millis(250),
                grid.0 + Duration::from_millis(2_700)
            ),
            grid.0 + Duration::from_millis(2_500)
        );
    }

    /// Timers of different periods, made at different moments, tick at the same instants
    /// where their periods meet.
    #[tokio::test(start_paused = true)]
    async fn timers_made_apart_tick_together() {
        let grid = Grid::start();
        let mut second = grid.interval(Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(1_370)).await;
        let mut fifth = grid.interval(Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(2_120)).await;
        let mut five = grid.interval(Duration::from_secs(5));
        let (mut seconds, mut fifths, mut fives) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..6 {
            seconds.push(second.tick().await - grid.0);
        }
        for _ in 0..30 {
            fifths.push(fifth.tick().await - grid.0);
        }
        for _ in 0..3 {
            fives.push(five.tick().await - grid.0);
        }
        let off_grid = |ticks: &[Duration], period: u128| {
            ticks.iter().filter(|t| t.as_millis() % period != 0).count()
        };
        assert_eq!(off_grid(&seconds, 1_000), 0, "{seconds:?}");
        assert_eq!(off_grid(&fifths, 200), 0, "{fifths:?}");
        assert_eq!(off_grid(&fives, 5_000), 0, "{fives:?}");
        assert_eq!(
            fives[0],
            Duration::ZERO,
            "the first tick is at once, at the last grid time"
        );
    }
}
