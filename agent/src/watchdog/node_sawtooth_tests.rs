//! The leak rules on a Node worker's real memory: samples of `heapUsed + external`
//! recorded from a Node process whose heap sawtooths between about 50 and 200 MiB under
//! V8's own GC (`bench/node/record-sawtooth.js`, 600 samples), replayed one per second on
//! a fake clock: 10 minutes with the default rules and no trip; the same trace with a
//! leak added under it trips.

use std::time::{Duration, Instant};

use super::rules::{LeakDetector, RulesConfig};
use crate::config::WatchdogConfig;

const TRACE: &str = include_str!("testdata/node_sawtooth.txt");
const MIB: f64 = 1024.0 * 1024.0;

fn trace() -> Vec<u64> {
    TRACE
        .lines()
        .map(|l| l.trim().parse().expect("a byte count per line"))
        .collect()
}

/// Replays `values` at 1 s spacing; the second at which a rule tripped, if any.
fn replay(values: impl Iterator<Item = u64>) -> Option<(u64, &'static str)> {
    replay_with(
        RulesConfig::from_watchdog(&WatchdogConfig::default()),
        values,
    )
}

fn replay_with(
    config: RulesConfig,
    values: impl Iterator<Item = u64>,
) -> Option<(u64, &'static str)> {
    let mut detector = LeakDetector::new(config);
    let t0 = Instant::now();
    for (s, value) in values.enumerate() {
        let obs = detector.observe(t0 + Duration::from_secs(s as u64), value);
        if let Some(trip) = obs.trip {
            return Some((s as u64, trip.rule.as_str()));
        }
    }
    None
}

#[test]
fn the_recorded_trace_is_a_real_sawtooth_between_50_and_200_mib() {
    let values = trace();
    assert_eq!(values.len(), 600, "10 minutes at one sample a second");
    let drops = values
        .windows(2)
        .filter(|w| w[1] as f64 + 60.0 * MIB < w[0] as f64)
        .count();
    assert!(drops >= 5, "the heap fell back {drops} times");
    let (lo, hi) = (
        *values.iter().min().unwrap() as f64,
        *values.iter().max().unwrap() as f64,
    );
    assert!(
        lo < 80.0 * MIB && hi > 180.0 * MIB,
        "{:.0}..{:.0} MiB",
        lo / MIB,
        hi / MIB
    );
}

#[test]
fn a_node_heap_sawtoothing_for_10_minutes_never_trips() {
    assert_eq!(replay(trace().into_iter()), None);
}

#[test]
fn the_predicted_rule_stays_silent_with_the_limit_close_above_the_peaks() {
    // max-memory 256 MiB: the GC peaks (~200 MiB) reach 78 % of it, well inside the
    // predicted rule's level guard, at the horizon of a 1 s replacement.
    let mut config = RulesConfig::from_watchdog(&WatchdogConfig::default());
    config.max_memory = Some((256.0 * MIB) as u64);
    assert!(config.predict.is_some());
    assert_eq!(replay_with(config, trace().into_iter()), None);
}

#[test]
fn the_same_sawtooth_over_a_leak_trips() {
    // 1 MiB/s of leak under the recorded heap: the floor climbs past the GC's reach.
    let leaking = trace()
        .into_iter()
        .enumerate()
        .map(|(s, v)| v + (s as f64 * MIB) as u64);
    let (at, rule) = replay(leaking).expect("the leak is seen through the sawtooth");
    assert!(at < 600, "tripped at {at}s by {rule}");
}
