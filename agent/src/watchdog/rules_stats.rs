//! Robust statistics for the leak rules: medians, quantiles and the Theil–Sen slope (the
//! median of pairwise slopes), which ignores up to ~29% outliers where least squares
//! would follow a single spike; and the rules' compact sample [`Window`] they fit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Theil–Sen is O(n²) in pairs; past this many points an evenly spaced subset is used
/// (64 points = 2016 pairs), which keeps one evaluation in the tens of microseconds.
/// Fewer lose slow leaks: with 32, a 2 MiB/min leak under ±5 MiB of noise was caught in
/// 16 of 100 runs within an hour, against 88 (`--example rules_quality`).
const MAX_POINTS: usize = 64;

/// The `q` quantile (0..=1, nearest rank) of `values`; `None` when empty. Reorders.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let (_, v, _) = values.select_nth_unstable_by(rank(values.len(), q), f64::total_cmp);
    Some(*v)
}

/// The nearest rank of the `q` quantile among `len` values.
fn rank(len: usize, q: f64) -> usize {
    ((len - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize
}

/// `f64::total_cmp`'s order as an integer. The fits select among ~1,800 pairwise slopes on
/// every sample, and comparing these keys is a plain integer compare: the selection takes
/// ~30 % fewer instructions than with `total_cmp`, which makes the same key on every
/// comparison (`--example bench_rules` under callgrind).
fn order_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// The value of an [`order_key`] (the mapping is its own inverse).
fn from_order_key(key: i64) -> f64 {
    f64::from_bits((key ^ (((key >> 63) as u64) >> 1) as i64) as u64)
}

/// The `rank`-th smallest of `keys`, as its value.
fn select_key(keys: &mut [i64], rank: usize) -> f64 {
    let (_, key, _) = keys.select_nth_unstable(rank);
    from_order_key(*key)
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// A robust line through the points: slope (per second) and value at `origin`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    pub origin: Instant,
}

impl Fit {
    pub fn at(&self, t: Instant) -> f64 {
        self.intercept + self.slope * t.saturating_duration_since(self.origin).as_secs_f64()
    }
}

/// One sample of a [`Window`]: 8 bytes where `(Instant, f64)` takes 24, since a full
/// default trend window holds 300 of them for every worker. An `f32` keeps a value to 7
/// digits (64 bytes at 1 GiB), far finer than the page-sized steps of RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// Milliseconds since the window's origin.
    ms: u32,
    value: f32,
}

/// Sample times past this many milliseconds from the origin move the origin up to the
/// oldest sample (~25 days; a window spans at most a week, `config::bounds`).
const REBASE_MS: u32 = 1 << 31;

/// A rule's samples in time order, as compact [`Point`]s, and the fits on them.
#[derive(Debug, Clone, Default)]
pub struct Window {
    origin: Option<Instant>,
    points: VecDeque<Point>,
}

impl Window {
    /// Appends a sample. Samples come in time order; one that does not is kept where it
    /// lands, and the offsets saturate rather than wrap.
    pub fn push(&mut self, at: Instant, value: u64) {
        if self.points.is_empty() {
            self.origin = Some(at);
        }
        let mut ms = self.offset(at);
        if ms >= REBASE_MS {
            self.rebase();
            ms = self.offset(at);
        }
        if self.points.len() == self.points.capacity() {
            // A quarter more, not double: a full window keeps its length for the worker's
            // life, and 300 samples would sit in room for 512.
            self.points.reserve_exact((self.points.len() / 4).max(8));
        }
        self.points.push_back(Point {
            ms,
            value: value as f32,
        });
    }

    /// Drops the oldest samples while one is older than `max_age` at `at` and more than
    /// `keep_at_least` remain, or while more than `at_most` remain.
    pub fn trim(&mut self, at: Instant, max_age: Duration, keep_at_least: usize, at_most: usize) {
        while let Some(oldest) = self.points.front().and_then(|p| self.instant(p))
            && ((at.saturating_duration_since(oldest) > max_age
                && self.points.len() > keep_at_least)
                || self.points.len() > at_most)
        {
            self.points.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The `i`-th sample, oldest first.
    pub fn get(&self, i: usize) -> Option<(Instant, f64)> {
        let point = self.points.get(i)?;
        Some((self.instant(point)?, f64::from(point.value)))
    }

    /// Time from the oldest sample to the newest.
    pub fn span(&self) -> Duration {
        match (self.points.front(), self.points.back()) {
            (Some(first), Some(last)) => {
                Duration::from_millis(u64::from(last.ms.saturating_sub(first.ms)))
            }
            _ => Duration::ZERO,
        }
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (Instant, f64)> + '_ {
        self.points
            .iter()
            .filter_map(|p| Some((self.instant(p)?, f64::from(p.value))))
    }

    /// Theil–Sen fit of the whole window: [`theil_sen`].
    pub fn fit(&mut self) -> Option<Fit> {
        let origin = self.origin?;
        theil_sen(origin, self.points.make_contiguous())
    }

    /// Theil–Sen fit of the newer half of the window.
    pub fn fit_recent_half(&mut self) -> Option<Fit> {
        let origin = self.origin?;
        let points = self.points.make_contiguous();
        theil_sen(origin, &points[points.len() / 2..])
    }

    /// Theil–Sen fit of the whole window and its slope's lower bound: [`theil_sen_lower`].
    pub fn fit_lower(&mut self, confidence: f64) -> Option<(Fit, f64)> {
        let origin = self.origin?;
        theil_sen_lower(origin, self.points.make_contiguous(), confidence)
    }

    fn offset(&self, at: Instant) -> u32 {
        let since = self
            .origin
            .map_or(Duration::ZERO, |o| at.saturating_duration_since(o));
        u32::try_from(since.as_millis()).unwrap_or(u32::MAX)
    }

    /// A sample's instant (the origin is set whenever there are samples).
    fn instant(&self, point: &Point) -> Option<Instant> {
        Some(self.origin? + Duration::from_millis(u64::from(point.ms)))
    }

    /// Makes the oldest sample the origin.
    fn rebase(&mut self) {
        let Some(shift) = self.points.front().map(|p| p.ms) else {
            return;
        };
        self.origin = self
            .origin
            .map(|o| o + Duration::from_millis(u64::from(shift)));
        for point in &mut self.points {
            point.ms = point.ms.saturating_sub(shift);
        }
    }
}

/// Theil–Sen fit of points given in time order, their times counted from `origin`. Needs
/// 3 points spanning some time.
fn theil_sen(origin: Instant, points: &[Point]) -> Option<Fit> {
    let (chosen, origin) = choose(origin, points)?;
    let mut slopes = pairwise_slopes(&chosen);
    fit_with(&chosen, origin, &mut slopes)
}

/// Theil–Sen fit plus the one-sided lower confidence bound of its slope at `confidence`
/// (Sen 1968: of the N pairwise slopes of n points, sorted, the bound is the
/// ⌊(N − C)/2⌋-th, C = z·√(n(n−1)(2n+5)/18), z the normal quantile of `confidence`).
/// Noise, a sawtooth's drop or a plateau widen the spread of pairwise slopes and pull the
/// bound down; a steady climb keeps it near the slope.
fn theil_sen_lower(origin: Instant, points: &[Point], confidence: f64) -> Option<(Fit, f64)> {
    let (chosen, origin) = choose(origin, points)?;
    let mut slopes = pairwise_slopes(&chosen);
    let fit = fit_with(&chosen, origin, &mut slopes)?;
    let n = chosen.len() as f64;
    let c = normal_quantile(confidence) * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
    let rank = ((slopes.len() as f64 - c) / 2.0).floor().max(0.0) as usize;
    let rank = rank.min(slopes.len() - 1);
    Some((fit, select_key(&mut slopes, rank)))
}

/// The points as (seconds since the first, value), at most `MAX_POINTS` of them, and the
/// first one's instant.
fn choose(origin: Instant, points: &[Point]) -> Option<(Vec<(f64, f64)>, Instant)> {
    let first = points.first()?.ms;
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    let as_secs = |p: &Point| {
        (
            f64::from(p.ms.saturating_sub(first)) / 1000.0,
            f64::from(p.value),
        )
    };
    let mut chosen: Vec<(f64, f64)> = points.iter().step_by(stride).map(as_secs).collect();
    // Keep the newest point even when striding skips it.
    if !(points.len() - 1).is_multiple_of(stride)
        && let Some(last) = points.last()
    {
        chosen.push(as_secs(last));
    }
    let origin = origin + Duration::from_millis(u64::from(first));
    (chosen.len() >= 3).then_some((chosen, origin))
}

/// The slope of every pair of points at different times, as [`order_key`]s. Each point's
/// slopes to the later ones are one run without a branch (a pair at the same time makes
/// an infinite or NaN slope, dropped after): a fifth fewer instructions than a test per
/// pair.
fn pairwise_slopes(chosen: &[(f64, f64)]) -> Vec<i64> {
    let mut slopes = Vec::with_capacity(chosen.len() * chosen.len() / 2);
    for (i, a) in chosen.iter().enumerate() {
        let slope = |b: &(f64, f64)| order_key((b.1 - a.1) / (b.0 - a.0));
        slopes.extend(chosen[i + 1..].iter().map(slope));
    }
    slopes.retain(|key| from_order_key(*key).is_finite());
    slopes
}

fn fit_with(chosen: &[(f64, f64)], origin: Instant, slopes: &mut [i64]) -> Option<Fit> {
    if slopes.is_empty() {
        return None;
    }
    let slope = select_key(slopes, rank(slopes.len(), 0.5));
    let mut intercepts: Vec<f64> = chosen.iter().map(|(t, v)| v - slope * t).collect();
    let intercept = median(&mut intercepts)?;
    Some(Fit {
        slope,
        intercept,
        origin,
    })
}

/// The standard normal quantile for `p` in [0.5, 1) (Abramowitz & Stegun 26.2.23, error
/// below 4.5e-4: plenty for a confidence level).
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(0.5, 1.0 - 1e-12);
    let t = (-2.0 * (1.0 - p).ln()).sqrt();
    let z = t
        - (2.515517 + 0.802853 * t + 0.010328 * t * t)
            / (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
    z.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(points: impl IntoIterator<Item = (Instant, u64)>) -> Window {
        let mut window = Window::default();
        for (at, value) in points {
            window.push(at, value);
        }
        window
    }

    #[test]
    fn quantiles_and_median() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(quantile(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 0.0), Some(1.0));
        assert_eq!(quantile(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 1.0), Some(5.0));
    }

    #[test]
    fn theil_sen_ignores_a_spike_that_least_squares_would_follow() {
        let t0 = Instant::now();
        let value = |i| {
            if i == 50 {
                1_000_000_000_000
            } else {
                1000 + 2 * i
            }
        };
        let mut points = window((0..100).map(|i| (t0 + Duration::from_secs(i), value(i))));
        let fit = points.fit().expect("fits");
        assert!((fit.slope - 2.0).abs() < 1e-9, "slope {}", fit.slope);
        assert!((fit.at(t0 + Duration::from_secs(10)) - 1020.0).abs() < 1e-6);
    }

    #[test]
    fn subsampling_keeps_the_slope_on_long_series() {
        let t0 = Instant::now();
        let at = |i| t0 + Duration::from_millis(100 * i);
        let mut points = window((0..3000).map(|i| (at(i), 5 * i)));
        let fit = points.fit().expect("fits");
        assert!((fit.slope - 50.0).abs() < 1e-6, "slope {}", fit.slope);
        assert_eq!(window((0..2).map(|i| (at(i), 5 * i))).fit(), None);
    }

    #[test]
    fn a_window_keeps_its_samples_instants_across_a_rebase_and_trims_by_age_and_count() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut points = window([(t0, 1), (t0 + 20 * day, 2)]);
        // 20 days old, past 15: dropped.
        points.trim(t0 + 20 * day, 15 * day, 0, 10);
        assert_eq!(points.iter().collect::<Vec<_>>(), [(t0 + 20 * day, 2.0)]);
        // 30 days from the origin is past `REBASE_MS`: the origin moves up to day 20.
        points.push(t0 + 30 * day, 3);
        assert_eq!(points.origin, Some(t0 + 20 * day));
        let kept: Vec<(Instant, f64)> = points.iter().collect();
        assert_eq!(kept, [(t0 + 20 * day, 2.0), (t0 + 30 * day, 3.0)]);
        assert_eq!(points.span(), 10 * day);
        // All older than a day, but at least 2 stay; then at most 1.
        points.push(t0 + 31 * day, 4);
        points.trim(t0 + 100 * day, day, 2, 2);
        assert_eq!(points.len(), 2);
        assert_eq!(points.get(0), Some((t0 + 30 * day, 3.0)));
        points.trim(t0 + 31 * day, 100 * day, 0, 1);
        assert_eq!(points.get(0), Some((t0 + 31 * day, 4.0)));
        assert_eq!(points.get(1), None);
    }

    #[test]
    fn a_sample_out_of_time_order_neither_panics_nor_wraps() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut points = window([(at(0), 1), (at(5), 2), (at(2), 3), (at(6), 4)]);
        // Drops the first: the oldest left (5 s) is newer than the one after it (2 s).
        points.trim(at(6), Duration::from_millis(5_500), 0, 10);
        assert_eq!(points.len(), 3);
        assert_eq!(points.span(), Duration::from_secs(1));
        let fit = points.fit().expect("fits");
        assert!(fit.slope.is_finite(), "slope {}", fit.slope);
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [(0.5, 0.0), (0.9, 1.2816), (0.95, 1.6449), (0.99, 2.3263)] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-3,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn the_lower_bound_hugs_a_clean_line_and_drops_on_a_sawtooth() {
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_secs(i);
        let mut line = window((0..20).map(|i| (at(i), 10 * i)));
        let (fit, lower) = line.fit_lower(0.95).expect("fits");
        assert_eq!((fit.slope, lower), (10.0, 10.0));
        // Two teeth: rising 10/s, falling back every 10 s.
        let mut saw = window((0..20).map(|i| (at(i), 10 * (i % 10))));
        let (fit, lower) = saw.fit_lower(0.95).expect("fits");
        assert!(
            lower < 2.0 && lower < fit.slope,
            "slope {} lower {lower}: a sawtooth's climb is no line",
            fit.slope
        );
    }

    /// The fits on integer keys, with all pairs computed and the same-time ones dropped
    /// after, give exactly what the plain definition gives: `f64` slopes of the pairs later
    /// in time, selected with `total_cmp`.
    mod against_the_definition {
        use super::super::*;
        use proptest::prelude::*;
        use std::time::Duration;

        fn plain(origin: Instant, points: &[Point], confidence: f64) -> Option<(Fit, f64)> {
            let (chosen, origin) = choose(origin, points)?;
            let mut slopes = Vec::new();
            for (i, a) in chosen.iter().enumerate() {
                for b in &chosen[i + 1..] {
                    if b.0 - a.0 > 0.0 {
                        slopes.push((b.1 - a.1) / (b.0 - a.0));
                    }
                }
            }
            let slope = median(&mut slopes.clone())?;
            let mut intercepts: Vec<f64> = chosen.iter().map(|(t, v)| v - slope * t).collect();
            let intercept = median(&mut intercepts)?;
            let n = chosen.len() as f64;
            let c = normal_quantile(confidence) * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
            let rank = ((slopes.len() as f64 - c) / 2.0).floor().max(0.0) as usize;
            let rank = rank.min(slopes.len() - 1);
            let (_, lower, _) = slopes.select_nth_unstable_by(rank, f64::total_cmp);
            Some((
                Fit {
                    slope,
                    intercept,
                    origin,
                },
                *lower,
            ))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn the_keyed_fit_is_the_plain_one(
                // Steps of 0 ms (two samples at once) to 2 s, values up to 1 TiB.
                steps in proptest::collection::vec((0u64..2_000, 0u64..(1 << 40)), 3..200),
                confidence in 0.5f64..0.999,
            ) {
                let start = Instant::now();
                let mut at = start;
                let mut window = Window::default();
                for (ms, value) in &steps {
                    at += Duration::from_millis(*ms);
                    window.push(at, *value);
                }
                let origin = window.origin.expect("samples");
                let points = window.points.make_contiguous();
                let plain = plain(origin, points, confidence);
                prop_assert_eq!(theil_sen_lower(origin, points, confidence), plain);
                prop_assert_eq!(theil_sen(origin, points), plain.map(|(fit, _)| fit));
            }

            #[test]
            fn order_keys_sort_as_total_cmp_and_round_trip(a in any::<f64>(), b in any::<f64>()) {
                prop_assert_eq!(order_key(a).cmp(&order_key(b)), a.total_cmp(&b));
                prop_assert_eq!(from_order_key(order_key(a)).to_bits(), a.to_bits());
            }
        }
    }
}
