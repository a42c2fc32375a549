//! The predicted rule on synthetic series with a fake clock: steady leaks trip it early
//! enough for a replacement to finish before the limit; sawtooth, plateaus, start-up
//! ramps and spikes never trip it.

use std::time::{Duration, Instant};

use super::predict::{PredictConfig, horizon};
use super::{LeakDetector, Observation, Rule, RulesConfig};

const MIB: f64 = 1024.0 * 1024.0;

fn defaults() -> RulesConfig {
    RulesConfig::from_watchdog(&crate::config::WatchdogConfig::default())
}

/// Default `max-memory` and `predicted`, without the growth and trend rules (which judge
/// plateaus by their own criteria).
fn predicted_only() -> RulesConfig {
    RulesConfig {
        growth: None,
        trend_min_rate: None,
        ..defaults()
    }
}

/// Default rules with `max-memory` at `limit_mib`.
fn limited(limit_mib: f64) -> RulesConfig {
    let mut config = defaults();
    config.max_memory = Some((limit_mib * MIB) as u64);
    config
}

/// Deterministic noise in [-amplitude, amplitude] (xorshift), so failures reproduce.
struct Noise(u64);

impl Noise {
    fn next(&mut self, amplitude: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 20_001) as f64 / 10_000.0 * amplitude - amplitude
    }
}

/// Feeds `series(second)` (MiB) once per `step` seconds with the given horizon; the time
/// and observation of the first trip.
fn run(
    config: RulesConfig,
    horizon: Duration,
    step: f64,
    seconds: f64,
    mut series: impl FnMut(f64) -> f64,
) -> Option<(f64, Observation)> {
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    detector.set_horizon(horizon);
    let mut t = 0.0;
    while t < seconds {
        let value = (series(t).max(0.0) * MIB) as u64;
        let obs = detector.observe(t0 + Duration::from_secs_f64(t), value);
        if obs.trip.is_some() {
            return Some((t, obs));
        }
        t += step;
    }
    None
}

fn predict_config(config: &RulesConfig) -> PredictConfig {
    config
        .predict
        .clone()
        .expect("on by default with max-memory")
}

#[test]
fn the_horizon_is_the_margin_on_the_replacement_plus_the_persistence() {
    let p = predict_config(&defaults());
    assert_eq!((p.margin, p.samples, p.level), (2.0, 3, 0.5));
    let second = Duration::from_secs(1);
    // 2 × 0.8 s + 3 samples of 1 s.
    assert_eq!(
        horizon(&p, Duration::from_millis(800), second, second),
        Duration::from_millis(4600)
    );
    // A replacement faster than one interval still leaves one interval.
    assert_eq!(
        horizon(&p, Duration::from_millis(50), second, second),
        Duration::from_secs(4)
    );
    // In the fast lane: the same lead, never under one full round, and the persistence
    // in samples 250 ms apart.
    let fast = Duration::from_millis(250);
    assert_eq!(
        horizon(&p, Duration::from_millis(50), second, fast),
        Duration::from_millis(1750)
    );
    assert_eq!(
        horizon(&p, Duration::from_millis(800), second, fast),
        Duration::from_millis(2350)
    );
    let off = RulesConfig {
        predict: None,
        ..defaults()
    };
    assert_eq!(off.horizon(second, second, second), Duration::ZERO);
    let no_limit = crate::config::WatchdogConfig {
        max_memory: crate::config::types::Toggle::Off,
        ..Default::default()
    };
    assert_eq!(RulesConfig::from_watchdog(&no_limit).predict, None);
}

#[test]
fn steady_leaks_trip_predicted_while_a_replacement_still_fits_under_the_limit() {
    // A replacement measured at 0.3 s (start → ready + profile): horizon 2 × 0.3 → 1 s
    // (one interval) + 3 s.
    let config = limited(200.0);
    let h = config.horizon(
        Duration::from_millis(300),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    for rate in [1.0, 5.0, 10.0, 20.0] {
        // Every phase of the leak against the sampling clock, with ±0.5 MiB of noise.
        for phase in 0..10 {
            let mut noise = Noise(17 + phase);
            let start = 20.0 + phase as f64 * rate / 10.0;
            let (at, obs) = run(config.clone(), h, 1.0, 600.0, |t| {
                start + rate * t + noise.next(0.5)
            })
            .unwrap_or_else(|| panic!("{rate} MiB/s phase {phase}: no trip"));
            let trip = obs.trip.expect("trip");
            assert_eq!(trip.rule, Rule::Predicted, "{rate} MiB/s phase {phase}");
            let true_value = start + rate * at;
            let left = (200.0 - true_value) / rate;
            assert!(
                left >= 0.6,
                "{rate} MiB/s phase {phase}: tripped {left:.2}s before the limit at {true_value:.1} MiB"
            );
            assert!(
                left <= h.as_secs_f64() + 1.0,
                "{rate} MiB/s phase {phase}: tripped {left:.2}s early (horizon {h:?})"
            );
            let eta = trip.seconds_to_limit.expect("the prediction acted on");
            assert!(eta <= h.as_secs_f64(), "eta {eta}");
        }
    }
}

#[test]
fn a_10_mib_per_second_leak_trips_during_warm_up_at_the_default_horizon() {
    // Nothing measured yet: the detector's default horizon (1 s of replacement).
    let (at, obs) = run(
        limited(200.0),
        Duration::from_millis(5500),
        1.0,
        60.0,
        |t| 30.0 + 10.0 * t,
    )
    .expect("trips");
    let trip = obs.trip.expect("trip");
    assert_eq!(trip.rule, Rule::Predicted);
    assert!(at < 30.0, "in warm-up: {at}s");
    assert!(
        trip.value < (185.0 * MIB) as u64,
        "{} MiB",
        trip.value as f64 / MIB
    );
}

#[test]
fn persistence_resets_when_the_climb_stops_short() {
    let config = limited(200.0);
    let h = Duration::from_secs(4);
    let t0 = Instant::now();
    let mut detector = LeakDetector::new(config);
    detector.set_horizon(h);
    let mut feed = |s: u64, mib: f64| {
        detector.observe(t0 + Duration::from_secs(s), (mib * MIB) as u64);
        detector.predict_holds()
    };
    let leak = |s: u64| 20.0 + 10.0 * s as f64;
    // 10 MiB/s: the prediction first holds within 4 s (40 MiB) of the limit.
    let first = (0..30).find(|s| feed(*s, leak(*s)) == 1).expect("holds");
    assert!(
        (150.0..=170.0).contains(&leak(first)),
        "first held at {} MiB",
        leak(first)
    );
    assert_eq!(feed(first + 1, leak(first + 1)), 2);
    // The climb stops and the figure falls back: the count starts over.
    let mut holds = 2;
    for s in first + 2..first + 30 {
        holds = feed(s, 150.0);
        if holds == 0 {
            break;
        }
    }
    assert_eq!(
        holds, 0,
        "the prediction stops holding once the figure fell"
    );
}

#[test]
fn off_leaves_the_limit_to_max_memory() {
    let config = RulesConfig {
        predict: None,
        ..limited(200.0)
    };
    let (_, obs) = run(config, Duration::from_secs(4), 1.0, 60.0, |t| {
        20.0 + 10.0 * t
    })
    .expect("trips");
    assert_eq!(obs.trip.expect("trip").rule, Rule::MaxMemory);
}

#[test]
fn plateaus_after_a_load_step_never_trip() {
    let h = defaults().horizon(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // 150 MiB, then a step that climbs at 10 MiB/s to 400 MiB (78 % of 512) and stays;
    // and a cache filling towards 450 MiB (88 %) ever more slowly.
    let mut noise = Noise(5);
    let step = |t: f64| 150.0 + (10.0 * (t - 60.0)).clamp(0.0, 250.0);
    let trip = run(predicted_only(), h, 1.0, 1800.0, |t| {
        step(t) + noise.next(3.0)
    });
    assert_eq!(trip.map(|(t, o)| (t, o.trip)), None, "load step");
    let mut noise = Noise(9);
    let fill = |t: f64| 100.0 + 350.0 * (1.0 - (-(t - 60.0).max(0.0) / 20.0).exp());
    let trip = run(predicted_only(), h, 1.0, 1800.0, |t| {
        fill(t) + noise.next(2.0)
    });
    assert_eq!(trip.map(|(t, o)| (t, o.trip)), None, "cache fill");
}

#[test]
fn start_up_ramps_never_trip() {
    let h = defaults().horizon(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // From the first sample (warm-up): a linear ramp 20 → 350 MiB in 30 s, and a ramp
    // that decelerates towards 450 MiB (88 % of the limit) with an 8 s time constant.
    let ramp = |t: f64| 20.0 + (11.0 * t).min(330.0);
    assert_eq!(
        run(predicted_only(), h, 1.0, 600.0, ramp).map(|(t, o)| (t, o.trip)),
        None,
        "linear ramp"
    );
    let settle = |t: f64| 450.0 * (1.0 - (-t / 8.0).exp());
    assert_eq!(
        run(predicted_only(), h, 1.0, 600.0, settle).map(|(t, o)| (t, o.trip)),
        None,
        "settling ramp"
    );
    // The same at 4 samples a second.
    assert_eq!(
        run(predicted_only(), h, 0.25, 600.0, settle).map(|(t, o)| (t, o.trip)),
        None,
        "settling ramp, 250 ms sampling"
    );
}

#[test]
fn one_off_spikes_near_the_limit_never_trip() {
    let h = defaults().horizon(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    for width in [1.0, 2.0] {
        let spike = |t: f64| {
            if (100.0..100.0 + width).contains(&t) {
                505.0
            } else {
                300.0
            }
        };
        assert_eq!(
            run(predicted_only(), h, 1.0, 300.0, spike).map(|(t, o)| (t, o.trip)),
            None,
            "{width}-sample spike"
        );
    }
}

#[test]
fn gc_sawtooth_reaching_three_quarters_of_the_limit_never_trips() {
    let h = defaults().horizon(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // 100 → 384 MiB (75 % of 512) and back, at periods shorter and longer than the fit.
    for period in [10.0, 20.0, 45.0, 90.0] {
        for phase in [0.0, 3.0, 7.0] {
            let saw = |t: f64| 100.0 + 284.0 * ((t + phase) % period) / period;
            let trip = run(predicted_only(), h, 1.0, 1800.0, saw);
            assert_eq!(
                trip.map(|(t, o)| (t, o.trip)),
                None,
                "period {period}s phase {phase}s"
            );
        }
    }
}
