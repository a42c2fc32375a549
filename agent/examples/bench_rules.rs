//! What the leak rules cost per sample: one worker's `LeakDetector` fed 3,000 samples of a
//! flat, jittery RSS at 1 s (the default config: a 300 s trend window, whose Theil–Sen fit
//! takes 60 of its points, 1,770 pairwise slopes, on every sample), timed after the window
//! is full. Part of the agent's CPU per worker and sample (`bench-agent --compare`).
//!
//! ```text
//! cargo run --release -p heapwarden --example bench_rules
//! ```

use std::time::{Duration, Instant};

use heapwarden::config::WatchdogConfig;
use heapwarden::watchdog::rules::{LeakDetector, RulesConfig};

fn main() {
    const SAMPLES: u64 = 3_000;
    const FULL: u64 = 600;
    let mut detector = LeakDetector::new(RulesConfig::from_watchdog(&WatchdogConfig::default()));
    let start = Instant::now();
    let mut noise: u64 = 12_345;
    let mut spent = Duration::ZERO;
    for i in 0..SAMPLES {
        noise = noise
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // 40 MiB and up to 1 MiB of jitter.
        let value = (40 << 20) + (noise >> 44);
        let at = start + Duration::from_secs(i);
        let timed = Instant::now();
        std::hint::black_box(detector.observe(at, value));
        if i >= FULL {
            spent += timed.elapsed();
        }
    }
    let per = spent.as_secs_f64() * 1e6 / (SAMPLES - FULL) as f64;
    println!("leak rules, default config, window full: {per:.2} µs per sample");
}
