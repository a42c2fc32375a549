//! Leak rules for ONE worker, as a pure state machine over (time, bytes) samples of the
//! watched figure: no I/O and no clock of its own, so tests drive it with a fake clock.
//!
//! - `max_memory`: the first sample above the limit trips, warm-up or not.
//! - `growth`: once warm-up ends, the baseline is the median of the samples in the second
//!   half of warm-up (so a start-up spike does not count); `strikes` consecutive samples
//!   above baseline + growth trip.
//! - `trend`: a Theil–Sen slope over the last `trend_window` of samples (after warm-up)
//!   trips when it exceeds `trend_min_rate` and the rise is real rather than an artefact
//!   of sawtooth memory: the window is ≥ 80% covered, the last quarter's median exceeds
//!   the first quarter's by half the expected rise, and the rise over the window exceeds
//!   twice the spread of the samples around the fitted line (a GC sawtooth's spread is its
//!   whole amplitude, a leak's is its noise). The conditions must hold on an eighth of
//!   the window's samples in a row, as a Prometheus alert's `for:`.
//! - `predicted` (`rules_predict.rs`): the fitted trend reaches `max_memory` within the
//!   horizon the watchdog learned from the pool's replacements (`set_horizon`), guarded
//!   by level, persistence and the slope's lower confidence bound; it runs from the first
//!   sample, warm-up included, as `max_memory` does.
//!
//! A detector trips at most once; the caller `reset()`s it for the replacement worker.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::WatchdogConfig;
use crate::config::types::Predict;
use predict::{PredictConfig, Prediction, Predictor};
use stats::{Fit, Window, median, quantile};

// Kept beside this file (watchdog/rules_*.rs) and declared here, so the watchdog module
// only declares `rules`.
#[path = "rules_predict.rs"]
pub mod predict;
#[cfg(test)]
#[path = "rules_predict_tests.rs"]
mod predict_tests;
#[path = "rules_stats.rs"]
mod stats;
#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

/// Bounds the window's memory whatever the sampling interval (1 h of 1 s samples); config
/// validation keeps `trend-window` within this many intervals.
const MAX_WINDOW_SAMPLES: usize = crate::config::bounds::MAX_WINDOW_SAMPLES as usize;
/// The trend rule waits until samples cover this share of the window.
const MIN_WINDOW_COVERAGE: f64 = 0.8;
/// Slope is reported (metrics, time to limit) from this many post-warm-up samples on.
const MIN_SLOPE_SAMPLES: usize = 5;
/// While the trend is quiet (its slope under [`QUIET_SHARE`] of `trend-min-rate`, or the
/// rule off), the fit is redone on every this many samples and its line serves in
/// between. A quiet line cannot hold the rule's conditions, whose slope must exceed the
/// whole rate. The fit was ~6 % of the agent's CPU with 64 workers (`perf`), and most
/// workers are flat most of the time. Four samples move a full window's slope little,
/// and the rule needs an eighth of the window in a row to trip, so a leak trips at most 3
/// samples later (`--example rules_quality`).
const QUIET_REFIT: u8 = 4;
/// The share of `trend-min-rate` under which the trend counts as quiet.
const QUIET_SHARE: f64 = 0.5;
/// Persistence of the trend rule: its conditions must hold on this share of the window's
/// samples in a row. One window of pure noise can rise by chance; the next eighth of a
/// window of fresh samples undoes it (±48 MiB of noise, 80 s windows: 4 of 600
/// twenty-minute runs tripped without it, 0 of 1,200 with it).
const TREND_PERSISTENCE: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    pub max_memory: Option<u64>,
    pub growth: Option<u64>,
    pub strikes: u32,
    pub trend_window: Duration,
    /// Bytes per second.
    pub trend_min_rate: Option<f64>,
    pub warmup: Duration,
    /// The `predicted` rule; `None` when off or without `max_memory`.
    pub predict: Option<PredictConfig>,
}

/// The horizon a detector uses until the watchdog has measured a replacement: 1 s of
/// replacement at the default margin and interval.
const DEFAULT_REPLACEMENT: Duration = Duration::from_secs(1);

impl RulesConfig {
    pub fn from_watchdog(w: &WatchdogConfig) -> RulesConfig {
        RulesConfig {
            max_memory: w.max_memory.get().map(|s| s.bytes()),
            growth: w.growth.get().map(|s| s.bytes()),
            strikes: w.strikes,
            trend_window: w.trend_window,
            trend_min_rate: w.trend_min_rate.get().map(|r| r.bytes_per_second),
            warmup: w.warmup,
            predict: (w.predict == Predict::On && w.max_memory.get().is_some()).then_some(
                PredictConfig {
                    window: w.predict_window,
                    level: w.predict_level,
                    samples: w.predict_samples,
                    confidence: w.predict_confidence,
                    margin: w.predict_margin,
                },
            ),
        }
    }

    /// The predicted rule's horizon for a measured replacement time and a worker sampled
    /// `every` (zero when off): [`predict::horizon`].
    pub fn horizon(&self, replacement: Duration, interval: Duration, every: Duration) -> Duration {
        self.predict.as_ref().map_or(Duration::ZERO, |p| {
            predict::horizon(p, replacement, interval, every)
        })
    }
}

/// The `rule` label of `heapwarden_leak_detections_total`.
pub use crate::metric_names::labels::Rule;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trip {
    pub rule: Rule,
    /// The sample that tripped.
    pub value: u64,
    /// The growth baseline, once taken.
    pub baseline: Option<u64>,
    pub slope_bytes_per_sec: Option<f64>,
    /// `predicted`: the conservative time to the limit it acted on.
    pub seconds_to_limit: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub trip: Option<Trip>,
    /// Fitted growth of the watched figure (`heapwarden_worker_growth_bytes_per_second`).
    pub slope_bytes_per_sec: Option<f64>,
    /// Predicted time until `max_memory` at the fitted slope; `None` when not growing.
    pub seconds_to_limit: Option<f64>,
    /// True on exactly one observation, when warm-up ends: write the baseline profile now.
    pub baseline_ready: bool,
    /// The predicted rule's prediction, on the sample where it has held long enough.
    pub predicted: Option<Prediction>,
    /// How near the limit the predicted rule sees this sample, within the horizon or not
    /// ([`Predictor::seconds_to_limit_hint`]): the watchdog's fast lane.
    pub predict_seconds: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct LeakDetector {
    config: RulesConfig,
    started: Option<Instant>,
    /// Second half of warm-up, for the baseline.
    warmup_tail: Vec<f64>,
    baseline: Option<u64>,
    strikes: u32,
    /// Post-warm-up samples within `trend_window`, oldest first.
    window: Window,
    tripped: Option<Rule>,
    predictor: Predictor,
    /// How far ahead `predicted` looks (`set_horizon`).
    horizon: Duration,
    /// Consecutive samples the trend rule's conditions held on.
    trend_holds: usize,
    /// The latest fit of the window, and the samples it has served since (`QUIET_REFIT`).
    last_fit: Option<Fit>,
    fit_age: u8,
}

impl LeakDetector {
    pub fn new(config: RulesConfig) -> LeakDetector {
        let second = Duration::from_secs(1);
        let horizon = config.horizon(DEFAULT_REPLACEMENT, second, second);
        LeakDetector {
            predictor: Predictor::default(),
            horizon,
            config,
            started: None,
            warmup_tail: Vec::new(),
            baseline: None,
            strikes: 0,
            window: Window::default(),
            tripped: None,
            trend_holds: 0,
            last_fit: None,
            fit_age: 0,
        }
    }

    /// A detector past its warm-up, its baseline already taken: a worker whose rules
    /// switch figure mid-life (`fallback`) keeps the moment its first baseline was taken.
    pub fn with_baseline(config: RulesConfig, baseline: u64) -> LeakDetector {
        LeakDetector {
            baseline: Some(baseline),
            ..LeakDetector::new(config)
        }
    }

    /// Forgets everything: the next sample starts a new warm-up (a new worker).
    pub fn reset(&mut self) {
        let horizon = self.horizon;
        *self = LeakDetector::new(self.config.clone());
        self.horizon = horizon;
    }

    /// How far ahead the predicted rule looks from the next sample on: the watchdog's
    /// measure of this pool's replacement time, through `RulesConfig::horizon`.
    pub fn set_horizon(&mut self, horizon: Duration) {
        self.horizon = horizon;
    }

    /// The predicted rule's horizon, as last set.
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    /// Consecutive samples the predicted rule's prediction held on so far.
    pub fn predict_holds(&self) -> u32 {
        self.predictor.holds()
    }

    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// New thresholds (a reload) from the next sample on, keeping the worker's warm-up,
    /// baseline and window: a changed rule judges the history already seen. The window is
    /// trimmed to a shorter `trend-window` at the next sample.
    pub fn set_config(&mut self, config: RulesConfig) {
        self.config = config;
        self.last_fit = None;
    }

    pub fn baseline(&self) -> Option<u64> {
        self.baseline
    }

    /// The rule that tripped, until `reset`.
    pub fn tripped(&self) -> Option<Rule> {
        self.tripped
    }

    /// Consecutive samples above baseline + growth so far.
    pub fn strikes(&self) -> u32 {
        self.strikes
    }

    pub fn observe(&mut self, at: Instant, value: u64) -> Observation {
        let started = *self.started.get_or_insert(at);
        let elapsed = at.saturating_duration_since(started);
        let mut obs = Observation::default();
        let mut trip = None;
        if let Some(limit) = self.config.max_memory
            && value > limit
        {
            trip = Some(Rule::MaxMemory);
        }
        // Fed every sample (its window stays continuous), warm-up included.
        if let (Some(predict), Some(limit)) = (&self.config.predict, self.config.max_memory) {
            obs.predicted = self
                .predictor
                .observe(predict, limit, self.horizon, at, value);
            obs.predict_seconds = self.predictor.seconds_to_limit_hint();
            if trip.is_none() && obs.predicted.is_some() {
                trip = Some(Rule::Predicted);
            }
        }
        if self.baseline.is_none() {
            if elapsed < self.config.warmup {
                if elapsed >= self.config.warmup / 2 {
                    self.warmup_tail.push(value as f64);
                }
                return self.finish(obs, trip, value);
            }
            let baseline = median(&mut self.warmup_tail).unwrap_or(value as f64);
            self.baseline = Some(baseline.round() as u64);
            self.warmup_tail = Vec::new();
            obs.baseline_ready = true;
        }
        self.push_window(at, value);
        if trip.is_none() && self.growth_tripped(value) {
            trip = Some(Rule::Growth);
        }
        // A trip's record carries the slope: fitted afresh on that sample.
        let fit = self.fit(trip.is_some());
        if let Some(fit) = fit {
            obs.slope_bytes_per_sec = Some(fit.slope);
            obs.seconds_to_limit = self.seconds_to_limit(&fit, at);
        }
        self.trend_holds = if fit.is_some_and(|f| self.trend_tripped(&f)) {
            self.trend_holds + 1
        } else {
            0
        };
        if trip.is_none() && self.trend_holds >= (self.window.len() / TREND_PERSISTENCE).max(1) {
            trip = Some(Rule::Trend);
        }
        self.finish(obs, trip, value)
    }

    fn finish(&mut self, mut obs: Observation, trip: Option<Rule>, value: u64) -> Observation {
        if let Some(rule) = trip
            && self.tripped.is_none()
        {
            self.tripped = Some(rule);
            let predicted = obs.predicted.filter(|_| rule == Rule::Predicted);
            obs.trip = Some(Trip {
                rule,
                value,
                baseline: self.baseline,
                slope_bytes_per_sec: obs.slope_bytes_per_sec.or(predicted.map(|p| p.slope)),
                seconds_to_limit: predicted.map(|p| p.seconds_to_limit),
            });
        }
        obs
    }

    fn push_window(&mut self, at: Instant, value: u64) {
        self.window.push(at, value);
        self.window
            .trim(at, self.config.trend_window, 0, MAX_WINDOW_SAMPLES);
    }

    fn growth_tripped(&mut self, value: u64) -> bool {
        let (Some(growth), Some(baseline)) = (self.config.growth, self.baseline) else {
            return false;
        };
        if value > baseline.saturating_add(growth) {
            self.strikes = self.strikes.saturating_add(1);
        } else {
            self.strikes = 0;
        }
        self.strikes >= self.config.strikes.max(1)
    }

    /// The window's Theil–Sen line: the last one while the trend is quiet and it has
    /// served fewer than `QUIET_REFIT` samples (`fresh` refits anyway), else a new fit.
    fn fit(&mut self, fresh: bool) -> Option<Fit> {
        if self.window.len() < MIN_SLOPE_SAMPLES {
            self.last_fit = None;
            return None;
        }
        if let Some(fit) = self.last_fit
            && !fresh
            && self.fit_age + 1 < QUIET_REFIT
            && self.quiet(&fit)
        {
            self.fit_age += 1;
            return Some(fit);
        }
        self.fit_age = 0;
        self.last_fit = self.window.fit();
        self.last_fit
    }

    /// Whether a fitted slope is too low for the trend rule to trip within a few samples.
    fn quiet(&self, fit: &Fit) -> bool {
        self.config
            .trend_min_rate
            .is_none_or(|min_rate| fit.slope < QUIET_SHARE * min_rate)
    }

    fn seconds_to_limit(&self, fit: &Fit, now: Instant) -> Option<f64> {
        let limit = self.config.max_memory? as f64;
        if fit.slope <= 0.0 {
            return None;
        }
        Some(((limit - fit.at(now)) / fit.slope).max(0.0))
    }

    /// Whether the trend rule's conditions hold on this sample's window (`trend_holds`
    /// counts how long they have).
    fn trend_tripped(&self, fit: &Fit) -> bool {
        let Some(min_rate) = self.config.trend_min_rate else {
            return false;
        };
        // A fit exists only for a window of `MIN_SLOPE_SAMPLES` or more.
        let span = self.window.span().as_secs_f64();
        if fit.slope <= min_rate
            || span < MIN_WINDOW_COVERAGE * self.config.trend_window.as_secs_f64()
        {
            return false;
        }
        // Consistency: the last quarter sits above the first by half the expected rise.
        let quarter = (self.window.len() / 4).max(1);
        let mut head: Vec<f64> = self.window.iter().take(quarter).map(|s| s.1).collect();
        let mut tail: Vec<f64> = self
            .window
            .iter()
            .rev()
            .take(quarter)
            .map(|s| s.1)
            .collect();
        let (Some(head), Some(tail)) = (median(&mut head), median(&mut tail)) else {
            return false;
        };
        if tail - head < 0.5 * min_rate * span {
            return false;
        }
        // Signal over spread: the fitted rise must exceed twice the interquartile range of
        // the residuals. A sawtooth's residual IQR is about half its amplitude, and a
        // sawtooth whose floor does not rise cannot climb more than its amplitude; for
        // bounded noise ±a the IQR is about a, and a chance slope of pure noise stays
        // far below a rise of 2a.
        let mut residuals: Vec<f64> = self.window.iter().map(|(t, v)| v - fit.at(t)).collect();
        let q1 = quantile(&mut residuals, 0.25).unwrap_or(0.0);
        let q3 = quantile(&mut residuals, 0.75).unwrap_or(0.0);
        fit.slope * span > 2.0 * (q3 - q1)
    }
}
