//! Leak-rule tests on synthetic series with a fake clock (`t0 + offsets`).

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{LeakDetector, Observation, QUIET_REFIT, Rule, RulesConfig};

const MIB: u64 = 1024 * 1024;

fn defaults() -> RulesConfig {
    RulesConfig::from_watchdog(&crate::config::WatchdogConfig::default())
}

/// Deterministic noise in [-amplitude, amplitude] (xorshift), so failures reproduce.
struct Noise(u64);

impl Noise {
    fn next(&mut self, amplitude: u64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (2 * amplitude + 1)) as i64 - amplitude as i64
    }
}

/// Feeds one sample per second from `series(second)`; returns (second, observation) of
/// the first trip, if any.
fn run(
    config: RulesConfig,
    seconds: u64,
    mut series: impl FnMut(u64) -> u64,
) -> Option<(u64, Observation)> {
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    (0..seconds).find_map(|s| {
        let obs = detector.observe(t0 + Duration::from_secs(s), series(s));
        obs.trip.is_some().then_some((s, obs))
    })
}

fn sawtooth(period: u64, phase: u64) -> impl FnMut(u64) -> u64 {
    // Ramps 100 → 300 MiB over `period` seconds, then a GC drops it back.
    move |s| 100 * MIB + 200 * MIB * ((s + phase) % period) / period
}

#[test]
fn gc_sawtooth_never_trips_over_30_minutes() {
    let short_window = RulesConfig {
        trend_window: Duration::from_secs(120),
        ..defaults()
    };
    // A ramp as long as the window is indistinguishable from a leak inside it, so the
    // window must span several GC cycles (docs/src/operate/leak-rules.md); periods up to a quarter
    // of the window are covered here.
    for config in [defaults(), short_window] {
        let longest = config.trend_window.as_secs() / 4;
        for period in [20, 30, 45, 75].into_iter().filter(|p| *p <= longest) {
            for phase in (0..period).step_by(5) {
                let trip = run(config.clone(), 1800, sawtooth(period, phase));
                assert_eq!(trip, None, "period {period}s phase {phase}s, {config:?}");
            }
        }
    }
}

#[test]
fn start_up_spike_never_trips_and_does_not_move_the_baseline() {
    let mut noise = Noise(7);
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(defaults());
    for s in 0..1800u64 {
        // 450 MiB for the first 10 s (caches warming, a burst of requests), then ~100 MiB.
        let value = if s < 10 { 450 * MIB } else { 100 * MIB };
        let value = (value as i64 + noise.next(4 * MIB)) as u64;
        let obs = detector.observe(t0 + Duration::from_secs(s), value);
        assert_eq!(obs.trip, None, "tripped at {s}s");
    }
    let baseline = detector.baseline().expect("baseline taken");
    assert!(
        baseline.abs_diff(100 * MIB) < 5 * MIB,
        "baseline {baseline}"
    );
}

#[test]
fn linear_leak_trips_trend_within_its_window_and_before_max_memory() {
    let config = RulesConfig {
        trend_window: Duration::from_secs(120),
        ..defaults()
    };
    let warmup = config.warmup.as_secs();
    let mut noise = Noise(42);
    // Flat 100 MiB through warm-up, then 1 MiB/s with ±5 MiB noise.
    let (at, obs) = run(config.clone(), 3600, |s| {
        let leak = s.saturating_sub(warmup) * MIB;
        (100 * MIB as i64 + leak as i64 + noise.next(5 * MIB)) as u64
    })
    .expect("the leak trips a rule");
    let trip = obs.trip.expect("trip");
    assert_eq!(trip.rule, Rule::Trend, "tripped by {trip:?} at {at}s");
    assert!(
        at <= warmup + 120,
        "trend took {}s after warm-up",
        at - warmup
    );
    let max_crossing = warmup + 412; // 100 MiB + 1 MiB/s reaches 512 MiB
    assert!(at < max_crossing);
    let slope = trip.slope_bytes_per_sec.expect("slope");
    assert!(
        (slope - MIB as f64).abs() < 0.1 * MIB as f64,
        "slope {slope}"
    );
    let eta = obs.seconds_to_limit.expect("growing, so a time to limit");
    let expected = (max_crossing - at) as f64;
    assert!(
        (eta - expected).abs() < 30.0,
        "eta {eta}s, expected ~{expected}s"
    );
}

#[test]
fn max_memory_trips_on_the_first_sample_over_even_in_warm_up() {
    let (at, obs) = run(
        defaults(),
        60,
        |s| if s < 5 { 100 * MIB } else { 513 * MIB },
    )
    .expect("trips");
    assert_eq!(at, 5);
    let trip = obs.trip.expect("trip");
    assert_eq!(
        (trip.rule, trip.value, trip.baseline),
        (Rule::MaxMemory, 513 * MIB, None)
    );
    assert_eq!(
        run(defaults(), 60, |_| 512 * MIB),
        None,
        "at the limit is not over it"
    );
}

#[test]
fn growth_counts_consecutive_strikes_and_a_dip_resets_them() {
    let config = RulesConfig {
        max_memory: None,
        trend_min_rate: None,
        ..defaults()
    };
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    let mut feed = |s: u64, mib: u64| detector.observe(t0 + Duration::from_secs(s), mib * MIB);
    for s in 0..30 {
        assert!(!feed(s, 100).baseline_ready);
    }
    assert!(feed(30, 100).baseline_ready, "warm-up ends at 30 s");
    assert!(
        !feed(31, 100).baseline_ready,
        "baseline_ready is reported once"
    );
    // 357 MiB > 100 + 256: two strikes, a dip, then three in a row.
    assert_eq!(feed(32, 357).trip, None);
    assert_eq!(feed(33, 357).trip, None);
    assert_eq!(
        feed(34, 356).trip,
        None,
        "356 MiB is not above baseline + growth"
    );
    assert_eq!(feed(35, 357).trip, None);
    assert_eq!(feed(36, 357).trip, None);
    let trip = feed(37, 357).trip.expect("third consecutive strike trips");
    assert_eq!((trip.rule, trip.baseline), (Rule::Growth, Some(100 * MIB)));
    assert_eq!(
        feed(38, 400).trip,
        None,
        "a detector trips once until reset"
    );
}

#[test]
fn reset_starts_a_new_warm_up_for_the_replacement_worker() {
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(defaults());
    assert!(detector.observe(t0, 600 * MIB).trip.is_some());
    assert_eq!(detector.tripped(), Some(Rule::MaxMemory));
    detector.reset();
    assert_eq!(detector.tripped(), None);
    let later = t0 + Duration::from_secs(100);
    assert!(!detector.observe(later, 50 * MIB).baseline_ready);
    let obs = detector.observe(later + Duration::from_secs(30), 50 * MIB);
    assert!(obs.baseline_ready);
    assert_eq!(detector.baseline(), Some(50 * MIB));
}

#[test]
fn flat_memory_reports_no_time_to_limit() {
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(defaults());
    let mut last = Observation::default();
    for s in 0..200 {
        last = detector.observe(t0 + Duration::from_secs(s), 100 * MIB);
    }
    assert_eq!(last.slope_bytes_per_sec, Some(0.0));
    assert_eq!(last.seconds_to_limit, None);
}

#[test]
fn ten_mib_per_second_leak_trips_before_the_limit() {
    let mut noise = Noise(3);
    let (at, obs) = run(defaults(), 600, |s| {
        (50 * MIB as i64 + (s.saturating_sub(30) * 10 * MIB) as i64 + noise.next(2 * MIB)) as u64
    })
    .expect("trips");
    // 50 MiB + 10 MiB/s crosses 306 MiB (growth) at ~56 s and 512 MiB at ~77 s: growth
    // or max_memory must have caught it by then.
    assert!(at <= 80, "tripped at {at}s by {:?}", obs.trip);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bounded_noise_on_a_flat_series_never_trips_trend(
        level_mib in 20u64..400,
        amplitude_mib in 0u64..50,
        seed in 1u64..u64::MAX,
        window_s in 60u64..600,
    ) {
        let config = RulesConfig {
            max_memory: None,
            growth: None,
            trend_window: Duration::from_secs(window_s),
            ..defaults()
        };
        let mut noise = Noise(seed);
        let trip = run(config, 1200, |_| {
            let amplitude = amplitude_mib * MIB;
            (level_mib * MIB) .saturating_add_signed(noise.next(amplitude.max(1)))
        });
        prop_assert_eq!(trip, None);
    }
}

#[test]
fn leak_under_a_gc_sawtooth_trips_trend_once_the_floor_climbs() {
    let warmup = defaults().warmup.as_secs();
    let mut tooth = sawtooth(20, 0);
    // A 200 MiB sawtooth whose floor rises 1 MiB/s after warm-up.
    let (at, obs) = run(defaults(), 1800, |s| {
        tooth(s) + s.saturating_sub(warmup) * MIB
    })
    .expect("the rising floor is a leak");
    let trip = obs.trip.expect("trip");
    assert!(matches!(trip.rule, Rule::Trend | Rule::Growth), "{trip:?}");
    assert!(at <= warmup + 300, "took {}s after warm-up", at - warmup);
}

#[test]
fn a_chance_rise_in_a_short_window_of_wide_noise_does_not_trip_trend() {
    // Found by the property test above: a flat 36 MiB with ±48 MiB of noise (clipped at
    // 0) and an 80 s window, whose window at 318 s rose 0.69 MiB/s by chance and, with no
    // persistence, tripped trend there.
    let config = RulesConfig {
        max_memory: None,
        growth: None,
        trend_window: Duration::from_secs(80),
        ..defaults()
    };
    let mut noise = Noise(13315202267340863549);
    let trip = run(config, 1200, |_| {
        (36 * MIB).saturating_add_signed(noise.next(48 * MIB))
    });
    assert_eq!(trip, None);
}

/// The reported slopes of `seconds` samples of `series`, from the first fit on.
fn fitted_slopes(seconds: u64, mut series: impl FnMut(u64) -> u64) -> Vec<f64> {
    let config = RulesConfig {
        max_memory: None,
        growth: None,
        ..defaults()
    };
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    (0..seconds)
        .filter_map(|s| {
            detector
                .observe(t0 + Duration::from_secs(s), series(s))
                .slope_bytes_per_sec
        })
        .collect()
}

#[test]
fn a_quiet_trend_is_refitted_every_few_samples_and_a_rising_one_on_every_sample() {
    let changes = |slopes: &[f64]| slopes.windows(2).filter(|w| w[0] != w[1]).count();
    // Flat with 1 MiB of jitter: each new fit moves the slope, but only every
    // QUIET_REFIT-th sample fits.
    let mut noise = Noise(5);
    let flat = fitted_slopes(900, |_| (100 * MIB).saturating_add_signed(noise.next(MIB)));
    let refits = flat.len() / usize::from(QUIET_REFIT);
    assert!(
        (refits - 2..=refits + 1).contains(&changes(&flat)),
        "{} changes in {} slopes",
        changes(&flat),
        flat.len()
    );
    // Rising at 2 MiB/min, four times the quiet share of the minimum rate: every sample.
    let mut noise = Noise(6);
    let rising = fitted_slopes(900, |s| {
        (100 * MIB + s * 2 * MIB / 60).saturating_add_signed(noise.next(MIB))
    });
    assert!(
        changes(&rising) * 10 >= (rising.len() - 1) * 9,
        "{} changes in {} slopes",
        changes(&rising),
        rising.len()
    );
}
