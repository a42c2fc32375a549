//! The ranges of every duration and number the agent computes with, as data
//! ([`Bound`], the config loader's, which a worker's section uses too): checked at
//! load so a value that would overflow an instant or a delay (`ready-timeout =
//! "400000000000y"`) is a config error with its key, exit 64 — never a panic later — and
//! stated on the configuration page from the same tables ([`stated`]; a test compares the
//! page's Bounds table with it). The code that computes with these values saturates as
//! well; the bounds say what is sane.

use std::collections::BTreeMap;
use std::time::Duration;

use heapwarden_protocol::config::bounds::Bound;

use super::load::ConfigError;
use super::sections::Config;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every duration key of the agent's own sections (`[demo]` bounds its own).
pub const DURATION_BOUNDS: &[Bound<Config, Duration>] = &[
    Bound::new(
        "admin.header-timeout",
        Duration::from_millis(100),
        HOUR,
        |c| c.admin.header_timeout,
    ),
    Bound::new(
        "admin.idle-timeout",
        Duration::from_millis(100),
        HOUR,
        |c| c.admin.idle_timeout,
    ),
    Bound::new("pool.min-uptime", Duration::ZERO, HOUR, |c| {
        c.pool.min_uptime
    }),
    Bound::new("pool.ready-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.ready_timeout
    }),
    Bound::new("pool.drain-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.drain_timeout
    }),
    Bound::new("pool.kill-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.kill_timeout
    }),
    Bound::new("pool.restart.initial-delay", Duration::ZERO, HOUR, |c| {
        c.pool.restart.initial_delay
    }),
    Bound::new("pool.restart.max-delay", Duration::ZERO, HOUR, |c| {
        c.pool.restart.max_delay
    }),
    Bound::new("pool.restart.window", Duration::ZERO, DAY, |c| {
        c.pool.restart.window
    }),
    Bound::new("pool.restart.cool-down", Duration::ZERO, DAY, |c| {
        c.pool.restart.cool_down
    }),
    Bound::new("sampling.interval", Duration::from_millis(50), HOUR, |c| {
        c.sampling.interval
    }),
    Bound::new(
        "sampling.fast-interval",
        Duration::from_millis(50),
        HOUR,
        |c| c.sampling.fast_interval,
    ),
    Bound::new("watchdog.warmup", Duration::ZERO, DAY, |c| {
        c.watchdog.warmup
    }),
    Bound::new("watchdog.trend-window", Duration::ZERO, WEEK, |c| {
        c.watchdog.trend_window
    }),
    Bound::new("watchdog.suspect-ttl", Duration::ZERO, WEEK, |c| {
        c.watchdog.suspect_ttl
    }),
    Bound::new(
        "export.pyroscope.timeout",
        Duration::from_millis(100),
        Duration::from_secs(300),
        |c| c.export.pyroscope.timeout,
    ),
    Bound::new("watchdog.predict-window", Duration::ZERO, DAY, |c| {
        c.watchdog.predict_window
    }),
];

/// Largest `pool.restart.factor`: any factor saturates at `max-delay`, but past this it
/// is a typo.
pub const MAX_FACTOR: f64 = 100.0;
/// Largest `pool.restart.max-restarts`: the failure times within `window` are kept.
pub const MAX_RESTARTS: u32 = 10_000;
/// Samples the trend rule keeps (`trend-window` / `interval` beyond it would never be
/// covered, so the rule could never trip).
pub const MAX_WINDOW_SAMPLES: u32 = 3600;
/// Most samples the prediction's persistence may ask for.
pub const MAX_PREDICT_SAMPLES: u32 = 60;

/// Every bounded count and number. NaN is outside every range.
pub const NUMBER_BOUNDS: &[Bound<Config, f64>] = &[
    Bound::new("admin.max-connections", 1.0, 4096.0, |c| {
        c.admin.max_connections as f64
    }),
    Bound::new("pool.workers", 0.0, 1024.0, |c| c.pool.workers as f64),
    Bound::new("pool.restart.factor", 1.0, MAX_FACTOR, |c| {
        c.pool.restart.factor
    }),
    Bound::new("pool.restart.max-restarts", 1.0, MAX_RESTARTS as f64, |c| {
        c.pool.restart.max_restarts.into()
    }),
    Bound::at_least("sampling.pss-every", 1.0, |c| c.sampling.pss_every as f64),
    Bound::at_least("watchdog.strikes", 1.0, |c| c.watchdog.strikes as f64),
    Bound::at_least("watchdog.max-concurrent-replacements", 1.0, |c| {
        c.watchdog.max_concurrent_replacements as f64
    }),
    Bound::at_least("profiles.max-count", 1.0, |c| c.profiles.max_count as f64),
    // A fraction of max-memory: 1.0 would predict the limit itself, too late to act.
    Bound::below("watchdog.predict-level", 0.0, 1.0, |c| {
        c.watchdog.predict_level
    }),
    Bound::new(
        "watchdog.predict-samples",
        1.0,
        MAX_PREDICT_SAMPLES as f64,
        |c| c.watchdog.predict_samples.into(),
    ),
    Bound::new("watchdog.predict-confidence", 0.5, 0.999, |c| {
        c.watchdog.predict_confidence
    }),
    Bound::new("watchdog.predict-margin", 1.0, 100.0, |c| {
        c.watchdog.predict_margin
    }),
];

/// A window key that must span a number of sampling intervals (`sampling.interval`): a
/// range relative to another key, which [`Bound`] does not express.
pub struct SpanBound {
    pub key: &'static str,
    pub min_intervals: u32,
    pub max_intervals: u32,
    pub get: fn(&Config) -> Duration,
}

pub const SPAN_BOUNDS: &[SpanBound] = &[
    SpanBound {
        key: "watchdog.trend-window",
        min_intervals: 5,
        max_intervals: MAX_WINDOW_SAMPLES,
        get: |c| c.watchdog.trend_window,
    },
    // A window shorter than 5 intervals still fits the latest 5 samples (the fewest the
    // rule fits on), so a long `sampling.interval` never makes the default window an error.
    SpanBound {
        key: "watchdog.predict-window",
        min_intervals: 0,
        max_intervals: MAX_WINDOW_SAMPLES,
        get: |c| c.watchdog.predict_window,
    },
];

/// Every bounded key with its ranges as the configuration page states them, in the
/// page's words: `0s to 1h`, `5 to 3600 sampling intervals`, `1 to 100`, `at least 1`.
pub fn stated() -> BTreeMap<&'static str, Vec<String>> {
    let mut keys: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for b in DURATION_BOUNDS {
        keys.entry(b.key).or_default().push(b.stated());
    }
    for b in SPAN_BOUNDS {
        keys.entry(b.key).or_default().push(format!(
            "{} to {} sampling intervals",
            b.min_intervals, b.max_intervals
        ));
    }
    for b in NUMBER_BOUNDS {
        keys.entry(b.key).or_default().push(b.stated());
    }
    keys
}

/// Checks every bound; each violation is one error naming its key.
pub fn check(config: &Config, errors: &mut Vec<ConfigError>) {
    for b in DURATION_BOUNDS {
        b.check(config, errors);
    }
    let interval = config.sampling.interval;
    for b in SPAN_BOUNDS {
        let window = (b.get)(config);
        if window < interval.saturating_mul(b.min_intervals) {
            errors.push(ConfigError::new(
                b.key,
                format!("must span at least {} sampling intervals", b.min_intervals),
            ));
        } else if window > interval.saturating_mul(b.max_intervals) {
            errors.push(ConfigError::new(
                b.key,
                format!("must span at most {} sampling intervals", b.max_intervals),
            ));
        }
    }
    for b in NUMBER_BOUNDS {
        b.check(config, errors);
    }
}

/// Dotted keys whose default value is a duration (`"30s"`), `[demo]` included.
#[cfg(test)]
pub fn duration_keys() -> Vec<String> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialise");
    super::load::known_keys()
        .into_iter()
        .filter(|key| {
            let value = key
                .split('.')
                .try_fold(&defaults, |node, part| node.get(part));
            value
                .and_then(|v| v.as_str())
                .is_some_and(|s| humantime::parse_duration(s).is_ok())
        })
        .collect()
}
