//! The `predicted` rule for ONE worker, as a pure state machine over (time, bytes) samples
//! and the horizon the watchdog hands it: it trips when the fitted trend says the watched
//! figure reaches `max_memory` before a replacement could be finished, so the old worker
//! is drained before it gets there. Guarded the way trusted predictors are (Prometheus
//! `predict_linear` with a level check and a `for:`, oomd's rising-and-not-falling):
//!
//! - **fit**: Theil–Sen over the latest `window` of samples (warm-up included: a fast leak
//!   can reach the limit before warm-up ends), at least `MIN_SAMPLES` of them;
//! - **confidence**: the time to the limit is taken at the slope's one-sided lower bound
//!   at `confidence` (Sen's interval), the conservative edge: a sawtooth's drop, a plateau
//!   or noise in the window pull it down, often below zero — or at the Theil–Sen slope of
//!   the window's recent half when that is lower (rising-and-not-slowing: a ramp that
//!   settles is not extrapolated at its early pace), from the lower of the sample and the
//!   fitted line now (a curve that bends over sits below its chord);
//! - **level**: the sample and the fitted line now are both above `level` × the limit;
//! - **persistence**: the prediction holds on `samples` consecutive samples.
//!
//! The horizon includes the persistence (see [`horizon`]), so when the prediction first
//! holds there is still the replacement time × margin left after it has held long enough.
//! Every sample also says how near the limit looks ([`Predictor::seconds_to_limit_hint`]),
//! from which the watchdog decides whom to sample faster; it never trips anything.

use std::time::{Duration, Instant};

use super::stats::Window;

/// The fewest samples a prediction is fitted on.
const MIN_SAMPLES: usize = 5;
/// Bounds the fit window's memory, as the trend rule's.
const MAX_SAMPLES: usize = crate::config::bounds::MAX_WINDOW_SAMPLES as usize;

#[derive(Debug, Clone, PartialEq)]
pub struct PredictConfig {
    pub window: Duration,
    /// Fraction of the limit the figure must be above.
    pub level: f64,
    /// Consecutive samples the prediction must hold on.
    pub samples: u32,
    /// One-sided confidence of the slope's lower bound.
    pub confidence: f64,
    /// `predict-margin`, applied to the measured replacement time by [`horizon`].
    pub margin: f64,
}

/// What the rule predicted on a sample where it held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Time to the limit at the slope's lower bound, from the fitted value now.
    pub seconds_to_limit: f64,
    /// The Theil–Sen slope and its lower bound, bytes per second.
    pub slope: f64,
    pub slope_lower: f64,
}

/// How far ahead the rule looks: the replacement time × `margin` (at least one full-round
/// `interval`: the next sample may already be too late, and for a worker in the fast lane
/// a fast sample can go unanswered while the full round always comes), plus `samples`
/// samples `every` apart (`interval`, or `fast-interval` in the fast lane) for the
/// persistence to be confirmed.
pub fn horizon(
    config: &PredictConfig,
    replacement: Duration,
    interval: Duration,
    every: Duration,
) -> Duration {
    let lead = replacement
        .mul_f64(config.margin.clamp(1.0, 100.0))
        .max(interval);
    lead.saturating_add(every.saturating_mul(config.samples.max(1)))
}

#[derive(Debug, Clone, Default)]
pub struct Predictor {
    window: Window,
    holds: u32,
    /// The latest sample's conservative time to the limit, when the guards passed.
    latest: Option<Prediction>,
    /// Before the fit has its 5 samples: the time to the limit at the rise since the
    /// previous sample, above the level guard.
    early: Option<f64>,
}

impl Predictor {
    /// Feeds one sample. `Some` on the sample where the prediction has held for
    /// `samples` samples in a row (the caller trips once).
    pub fn observe(
        &mut self,
        config: &PredictConfig,
        limit: u64,
        horizon: Duration,
        at: Instant,
        value: u64,
    ) -> Option<Prediction> {
        self.window.push(at, value);
        self.window
            .trim(at, config.window, MIN_SAMPLES, MAX_SAMPLES);
        self.latest = self.predict(config, limit, at, value);
        self.early = self.early_estimate(config, limit);
        match self
            .latest
            .filter(|p| p.seconds_to_limit <= horizon.as_secs_f64())
        {
            Some(prediction) => {
                self.holds = self.holds.saturating_add(1);
                (self.holds >= config.samples.max(1)).then_some(prediction)
            }
            None => {
                self.holds = 0;
                None
            }
        }
    }

    /// Consecutive samples the prediction held on so far.
    pub fn holds(&self) -> u32 {
        self.holds
    }

    /// How near the limit looks, for the fast lane ([`crate::sampler::FastLane`]): the
    /// latest sample's conservative time to the limit, within the horizon or not; before
    /// the fit has its 5 samples, the time at the rise since the previous sample. `None`
    /// below the level guard or without a rise. Never a reason to trip: sampling a worker
    /// faster only brings the rule's own evidence sooner.
    pub fn seconds_to_limit_hint(&self) -> Option<f64> {
        self.latest.map(|p| p.seconds_to_limit).or(self.early)
    }

    fn early_estimate(&self, config: &PredictConfig, limit: u64) -> Option<f64> {
        let n = self.window.len();
        if !(2..MIN_SAMPLES).contains(&n) {
            return None;
        }
        let ((t0, v0), (t1, v1)) = (self.window.get(n - 2)?, self.window.get(n - 1)?);
        let dt = t1.saturating_duration_since(t0).as_secs_f64();
        let limit = limit as f64;
        (v1 >= config.level * limit && v1 > v0 && dt > 0.0)
            .then(|| ((limit - v1) * dt / (v1 - v0)).max(0.0))
    }

    fn predict(
        &mut self,
        config: &PredictConfig,
        limit: u64,
        at: Instant,
        value: u64,
    ) -> Option<Prediction> {
        let limit = limit as f64;
        let floor = config.level * limit;
        // The cheap guard first: most samples of most workers stop here, unfitted.
        if (value as f64) < floor || self.window.len() < MIN_SAMPLES {
            return None;
        }
        let (fit, lower) = self.window.fit_lower(config.confidence)?;
        let recent = self.window.fit_recent_half().map_or(lower, |f| f.slope);
        let slope_lower = lower.min(recent);
        let now = fit.at(at).min(value as f64);
        if now < floor || slope_lower <= 0.0 {
            return None;
        }
        Some(Prediction {
            seconds_to_limit: ((limit - now) / slope_lower).max(0.0),
            slope: fit.slope,
            slope_lower,
        })
    }
}
