//! Upper bounds of every duration and count the agent computes with, checked at load so a
//! value that would overflow an instant or a delay (`ready-timeout = "400000000000y"`) is
//! a config error with its key, exit 64 — never a panic later. The code that computes
//! with these values saturates as well; the bounds say what is sane.

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
    let r = &config.pool.restart;
    if !(r.factor >= 1.0 && r.factor <= MAX_FACTOR) {
        errors.push(ConfigError::new(
            "pool.restart.factor",
            format!("must be a number from 1.0 to {MAX_FACTOR}"),
        ));
    }
    if r.max_restarts == 0 || r.max_restarts > MAX_RESTARTS {
        errors.push(ConfigError::new(
            "pool.restart.max-restarts",
            format!("must be from 1 to {MAX_RESTARTS}"),
        ));
    }
    let interval = config.sampling.interval;
    let window = config.watchdog.trend_window;
    if window < interval.saturating_mul(5) {
        errors.push(ConfigError::new(
            "watchdog.trend-window",
            "must span at least 5 sampling intervals",
        ));
    } else if window > interval.saturating_mul(MAX_WINDOW_SAMPLES) {
        errors.push(ConfigError::new(
            "watchdog.trend-window",
            format!("must span at most {MAX_WINDOW_SAMPLES} sampling intervals"),
        ));
    }
    check_predict(config, errors);
}

/// Most samples the prediction's persistence may ask for.
pub const MAX_PREDICT_SAMPLES: u32 = 60;

/// The `predicted` rule's guards: fractions, counts and margins within sane ranges, and a
/// fit window the rule's sample store can hold.
fn check_predict(config: &Config, errors: &mut Vec<ConfigError>) {
    let w = &config.watchdog;
    let interval = config.sampling.interval;
    // A window shorter than 5 intervals still fits the latest 5 samples (the fewest the
    // rule fits on), so a long `sampling.interval` never makes the default window an error.
    if w.predict_window > interval.saturating_mul(MAX_WINDOW_SAMPLES) {
        errors.push(ConfigError::new(
            "watchdog.predict-window",
            format!("must span at most {MAX_WINDOW_SAMPLES} sampling intervals"),
        ));
    }
    if !(w.predict_level >= 0.0 && w.predict_level < 1.0) {
        errors.push(ConfigError::new(
            "watchdog.predict-level",
            "must be a fraction of max-memory from 0.0 to below 1.0",
        ));
    }
    if w.predict_samples == 0 || w.predict_samples > MAX_PREDICT_SAMPLES {
        errors.push(ConfigError::new(
            "watchdog.predict-samples",
            format!("must be from 1 to {MAX_PREDICT_SAMPLES}"),
        ));
    }
    if !(w.predict_confidence >= 0.5 && w.predict_confidence <= 0.999) {
        errors.push(ConfigError::new(
            "watchdog.predict-confidence",
            "must be from 0.5 to 0.999",
        ));
    }
    if !(w.predict_margin >= 1.0 && w.predict_margin <= 100.0) {
        errors.push(ConfigError::new(
            "watchdog.predict-margin",
            "must be a number from 1.0 to 100",
        ));
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
