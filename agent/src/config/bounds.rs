//! The ranges of every duration and number the agent computes with, as data: checked at
//! load so a value that would overflow an instant or a delay (`ready-timeout =
//! "400000000000y"`) is a config error with its key, exit 64 — never a panic later — and
//! stated on the configuration page from the same tables ([`stated`]; a test compares the
//! page's Bounds table with it). The code that computes with these values saturates as
//! well; the bounds say what is sane.

use std::collections::BTreeMap;
use std::time::Duration;

use super::load::ConfigError;
use super::sections::Config;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration key and its allowed range.
pub struct DurationBound {
    pub key: &'static str,
    pub min: Duration,
    pub max: Duration,
    pub get: fn(&Config) -> Duration,
}

/// Every duration key of the agent's own sections (`[demo]` bounds its own).
pub const DURATION_BOUNDS: &[DurationBound] = &[
    bound(
        "admin.header-timeout",
        Duration::from_millis(100),
        HOUR,
        |c| c.admin.header_timeout,
    ),
    bound(
        "admin.idle-timeout",
        Duration::from_millis(100),
        HOUR,
        |c| c.admin.idle_timeout,
    ),
    bound("pool.min-uptime", Duration::ZERO, HOUR, |c| {
        c.pool.min_uptime
    }),
    bound("pool.ready-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.ready_timeout
    }),
    bound("pool.drain-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.drain_timeout
    }),
    bound("pool.kill-timeout", Duration::ZERO, HOUR, |c| {
        c.pool.kill_timeout
    }),
    bound("pool.restart.initial-delay", Duration::ZERO, HOUR, |c| {
        c.pool.restart.initial_delay
    }),
    bound("pool.restart.max-delay", Duration::ZERO, HOUR, |c| {
        c.pool.restart.max_delay
    }),
    bound("pool.restart.window", Duration::ZERO, DAY, |c| {
        c.pool.restart.window
    }),
    bound("pool.restart.cool-down", Duration::ZERO, DAY, |c| {
        c.pool.restart.cool_down
    }),
    bound("sampling.interval", Duration::from_millis(50), HOUR, |c| {
        c.sampling.interval
    }),
    bound("watchdog.warmup", Duration::ZERO, DAY, |c| {
        c.watchdog.warmup
    }),
    bound("watchdog.trend-window", Duration::ZERO, WEEK, |c| {
        c.watchdog.trend_window
    }),
    bound("watchdog.suspect-ttl", Duration::ZERO, WEEK, |c| {
        c.watchdog.suspect_ttl
    }),
    bound(
        "export.pyroscope.timeout",
        Duration::from_millis(100),
        Duration::from_secs(300),
        |c| c.export.pyroscope.timeout,
    ),
    bound("watchdog.predict-window", Duration::ZERO, DAY, |c| {
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

/// A number key and its allowed range; `below_max` when the maximum itself is refused.
pub struct NumberBound {
    pub key: &'static str,
    pub min: f64,
    pub max: f64,
    pub below_max: bool,
    pub get: fn(&Config) -> f64,
}

/// Every bounded count and number. NaN is outside every range.
pub const NUMBER_BOUNDS: &[NumberBound] = &[
    number("admin.max-connections", 1.0, 4096.0, |c| {
        c.admin.max_connections as f64
    }),
    number("pool.workers", 0.0, 1024.0, |c| c.pool.workers as f64),
    number("pool.restart.factor", 1.0, MAX_FACTOR, |c| {
        c.pool.restart.factor
    }),
    number("pool.restart.max-restarts", 1.0, MAX_RESTARTS as f64, |c| {
        c.pool.restart.max_restarts.into()
    }),
    // A fraction of max-memory: 1.0 would predict the limit itself, too late to act.
    NumberBound {
        below_max: true,
        ..number("watchdog.predict-level", 0.0, 1.0, |c| {
            c.watchdog.predict_level
        })
    },
    number(
        "watchdog.predict-samples",
        1.0,
        MAX_PREDICT_SAMPLES as f64,
        |c| c.watchdog.predict_samples.into(),
    ),
    number("watchdog.predict-confidence", 0.5, 0.999, |c| {
        c.watchdog.predict_confidence
    }),
    number("watchdog.predict-margin", 1.0, 100.0, |c| {
        c.watchdog.predict_margin
    }),
];

/// A window key that must span a number of sampling intervals (`sampling.interval`).
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

const fn number(key: &'static str, min: f64, max: f64, get: fn(&Config) -> f64) -> NumberBound {
    NumberBound {
        key,
        min,
        max,
        below_max: false,
        get,
    }
}

impl NumberBound {
    /// The range as the page and the error state it: `1 to 100`, `0 to below 1`.
    pub fn range(&self) -> String {
        let below = if self.below_max { "below " } else { "" };
        format!("{} to {below}{}", self.min, self.max)
    }

    fn holds(&self, value: f64) -> bool {
        value >= self.min && (value < self.max || (!self.below_max && value == self.max))
    }
}

/// Every bounded key with its ranges as the configuration page states them, in the
/// page's words: `0s to 1h`, `5 to 3600 sampling intervals`, `1 to 100`.
pub fn stated() -> BTreeMap<&'static str, Vec<String>> {
    let mut keys: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for b in DURATION_BOUNDS {
        keys.entry(b.key).or_default().push(format!(
            "{} to {}",
            humantime::format_duration(b.min),
            humantime::format_duration(b.max)
        ));
    }
    for b in SPAN_BOUNDS {
        keys.entry(b.key).or_default().push(format!(
            "{} to {} sampling intervals",
            b.min_intervals, b.max_intervals
        ));
    }
    for b in NUMBER_BOUNDS {
        keys.entry(b.key).or_default().push(b.range());
    }
    keys
}

const fn bound(
    key: &'static str,
    min: Duration,
    max: Duration,
    get: fn(&Config) -> Duration,
) -> DurationBound {
    DurationBound { key, min, max, get }
}

/// Checks every bound; each violation is one error naming its key.
pub fn check(config: &Config, errors: &mut Vec<ConfigError>) {
    for b in DURATION_BOUNDS {
        let value = (b.get)(config);
        if value > b.max {
            errors.push(ConfigError::new(
                b.key,
                format!("must be at most {}", humantime::format_duration(b.max)),
            ));
        } else if value < b.min {
            errors.push(ConfigError::new(
                b.key,
                format!("must be at least {}", humantime::format_duration(b.min)),
            ));
        }
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
        if !b.holds((b.get)(config)) {
            errors.push(ConfigError::new(
                b.key,
                format!("must be from {}", b.range()),
            ));
        }
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
