//! What the trend rule decides on synthetic series, for re-running when its fit changes
//! (`MAX_POINTS`, the window, the persistence): false trips on flat, noisy memory, and
//! how long a leak takes to trip it, with the slope it reports. One sample per second,
//! the default config but for the rules under test (`max-memory` and `growth` off, so
//! only `trend` can trip); deterministic noise, so two builds see the same series.
//!
//! ```text
//! cargo run --release -p heapwarden --example rules_quality
//! ```

use std::time::{Duration, Instant};

use heapwarden::config::WatchdogConfig;
use heapwarden::watchdog::rules::{LeakDetector, RulesConfig};

const MIB: f64 = 1024.0 * 1024.0;

/// Uniform noise in [-amplitude, amplitude] (xorshift64).
struct Noise(u64);

impl Noise {
    fn next(&mut self, amplitude: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        amplitude * ((self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
    }
}

fn trend_only(window: Duration) -> RulesConfig {
    RulesConfig {
        max_memory: None,
        growth: None,
        trend_window: window,
        ..RulesConfig::from_watchdog(&WatchdogConfig::default())
    }
}

/// Feeds `seconds` samples of `series`; the second of the trip and the slopes reported
/// from `slopes_from` on.
fn run(
    config: RulesConfig,
    seconds: u64,
    slopes_from: u64,
    mut series: impl FnMut(u64) -> f64,
) -> (Option<u64>, Vec<f64>) {
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    let mut slopes = Vec::new();
    for s in 0..seconds {
        let obs = detector.observe(t0 + Duration::from_secs(s), series(s).max(0.0) as u64);
        if s >= slopes_from
            && let Some(slope) = obs.slope_bytes_per_sec
        {
            slopes.push(slope);
        }
        if obs.trip.is_some() {
            return (Some(s), slopes);
        }
    }
    (None, slopes)
}

fn percentile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    println!("## Trend rule on synthetic series (1 s samples)\n");
    println!(
        "| series | runs | trips | detection s after the leak starts: median / p90 / max | reported slope: RMS error |"
    );
    println!("|---|---:|---:|---:|---:|");
    // False trips: flat memory with wide noise, short and default windows.
    for (window, amplitude, runs) in [(80, 48.0, 600), (300, 48.0, 200), (300, 5.0, 200)] {
        let mut trips = 0;
        for run_index in 0..runs {
            let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ ((run_index as u64 + 1) * 7919));
            let (trip, _) = run(trend_only(Duration::from_secs(window)), 1200, 0, |_| {
                100.0 * MIB + noise.next(amplitude * MIB)
            });
            trips += usize::from(trip.is_some());
        }
        println!(
            "| flat 100 MiB ±{amplitude} MiB, {window} s window, 20 min | {runs} | {trips} | — | — |"
        );
    }
    // Leaks from 60 s on, default window, ±5 MiB of noise.
    for (label, rate) in [
        ("1 MiB/min (the minimum rate)", MIB / 60.0),
        ("2 MiB/min", 2.0 * MIB / 60.0),
        ("10 MiB/min", 10.0 * MIB / 60.0),
        ("1 MiB/s", MIB),
    ] {
        const START: u64 = 60;
        const RUNS: usize = 100;
        let mut delays = Vec::new();
        let mut squared = 0.0;
        let mut count = 0usize;
        for run_index in 0..RUNS {
            let mut noise = Noise(0x2545_f491_4f6c_dd1d ^ ((run_index as u64 + 1) * 104_729));
            let (trip, slopes) = run(
                trend_only(Duration::from_secs(300)),
                3600,
                START + 300,
                |s| 100.0 * MIB + rate * s.saturating_sub(START) as f64 + noise.next(5.0 * MIB),
            );
            if let Some(at) = trip {
                delays.push(at - START);
            }
            squared += slopes.iter().map(|s| (s - rate).powi(2)).sum::<f64>();
            count += slopes.len();
        }
        let detected = if delays.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{} / {} / {}",
                percentile(&mut delays, 0.5),
                percentile(&mut delays, 0.9),
                percentile(&mut delays, 1.0)
            )
        };
        let rms = if count > 0 {
            format!(
                "{:.1} % of the rate",
                100.0 * (squared / count as f64).sqrt() / rate
            )
        } else {
            "—".to_string()
        };
        println!(
            "| {label}, ±5 MiB, 300 s window | {RUNS} | {} | {detected} | {rms} |",
            delays.len()
        );
    }
}
