//! `RuntimeLag`: detects a stalled async runtime for the app's `/healthz`.
//!
//! A task sleeps for a fixed period and records how late it woke. A busy runtime wakes it
//! a little late; a blocked one does not wake it at all, which is why the lag also counts
//! how overdue the pending tick is right now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How many recent ticks the reported lag is the maximum of.
const WINDOW: usize = 16;

/// Handle to a lag monitor; cheap to clone. The monitor task stops once every handle is gone.
#[derive(Debug, Clone)]
pub struct RuntimeLag {
    state: Arc<LagState>,
}

#[derive(Debug)]
struct LagState {
    origin: Instant,
    period: Duration,
    /// Microseconds after `origin` at which the monitor last woke.
    last_tick_micros: AtomicU64,
    /// Largest lateness over the last `WINDOW` ticks, in microseconds.
    recent_max_lag_micros: AtomicU64,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Starts the monitor on the current tokio runtime, ticking every `period`.
///
/// # Panics
/// When called outside a tokio runtime, or on one built without the time driver.
pub fn spawn_lag_monitor(period: Duration) -> RuntimeLag {
    let lag = RuntimeLag {
        state: Arc::new(LagState {
            origin: Instant::now(),
            period,
            last_tick_micros: AtomicU64::new(0),
            recent_max_lag_micros: AtomicU64::new(0),
        }),
    };
    let weak = Arc::downgrade(&lag.state);
    tokio::spawn(run_monitor(weak, period));
    lag
}

async fn run_monitor(weak: Weak<LagState>, period: Duration) {
    let mut window = [0u64; WINDOW];
    for tick in 0usize.. {
        let due = Instant::now() + period;
        tokio::time::sleep(period).await;
        let woke = Instant::now();
        let Some(state) = weak.upgrade() else { return };
        window[tick % WINDOW] = micros(woke.saturating_duration_since(due));
        let recent_max = window.iter().copied().max().unwrap_or(0);
        state
            .recent_max_lag_micros
            .store(recent_max, Ordering::Relaxed);
        state
            .last_tick_micros
            .store(micros(woke - state.origin), Ordering::Relaxed);
    }
}

impl RuntimeLag {
    /// Scheduling lag in seconds: the worst of the recent ticks and the pending one.
    pub fn lag_seconds(&self) -> f64 {
        let state = &self.state;
        let now = micros(state.origin.elapsed());
        let last_tick = state.last_tick_micros.load(Ordering::Relaxed);
        let overdue = now
            .saturating_sub(last_tick)
            .saturating_sub(micros(state.period));
        let recent = state.recent_max_lag_micros.load(Ordering::Relaxed);
        recent.max(overdue) as f64 / 1e6
    }

    /// True when the runtime recently woke the monitor more than `threshold` late, or
    /// has not woken it for more than `threshold` past its due time (a blocked runtime).
    pub fn is_stalled(&self, threshold: Duration) -> bool {
        self.lag_seconds() > threshold.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::spawn_lag_monitor;

    #[test]
    fn blocked_runtime_is_reported_stalled_then_lag_recorded() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let lag = spawn_lag_monitor(Duration::from_millis(10));
            let deadline = Instant::now() + Duration::from_secs(5);
            while lag
                .state
                .last_tick_micros
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                assert!(Instant::now() < deadline, "monitor never ticked");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                !lag.is_stalled(Duration::from_millis(500)),
                "lag {}",
                lag.lag_seconds()
            );

            // Block the only runtime thread: this is the stall being measured.
            std::thread::sleep(Duration::from_millis(400));
            assert!(
                lag.is_stalled(Duration::from_millis(250)),
                "overdue tick not seen"
            );

            // Let the monitor run; its late wake-up stays in the recent maximum.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(lag.lag_seconds() >= 0.25, "lag {}", lag.lag_seconds());
        });
    }
}
