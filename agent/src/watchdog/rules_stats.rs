//! Robust statistics for the leak rules: medians, quantiles and the Theil–Sen slope (the
//! median of pairwise slopes), which ignores up to ~29% outliers where least squares
//! would follow a single spike.

use std::time::Instant;

/// Theil–Sen is O(n²) in pairs; past this many points an evenly spaced subset is used
/// (64 points = 2016 pairs), which keeps one evaluation in the tens of microseconds.
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

/// Theil–Sen fit of (time, value) points given in time order. Needs 3 points spanning
/// some time.
pub fn theil_sen(points: &[(Instant, f64)]) -> Option<Fit> {
    let (chosen, origin) = choose(points)?;
    let mut slopes = pairwise_slopes(&chosen);
    fit_with(&chosen, origin, &mut slopes)
}

/// Theil–Sen fit plus the one-sided lower confidence bound of its slope at `confidence`
/// (Sen 1968: of the N pairwise slopes of n points, sorted, the bound is the
/// ⌊(N − C)/2⌋-th, C = z·√(n(n−1)(2n+5)/18), z the normal quantile of `confidence`).
/// Noise, a sawtooth's drop or a plateau widen the spread of pairwise slopes and pull the
/// bound down; a steady climb keeps it near the slope.
pub fn theil_sen_lower(points: &[(Instant, f64)], confidence: f64) -> Option<(Fit, f64)> {
    let (chosen, origin) = choose(points)?;
    let mut slopes = pairwise_slopes(&chosen);
    let fit = fit_with(&chosen, origin, &mut slopes)?;
    let n = chosen.len() as f64;
    let c = normal_quantile(confidence) * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
    let rank = ((slopes.len() as f64 - c) / 2.0).floor().max(0.0) as usize;
    let rank = rank.min(slopes.len() - 1);
    Some((fit, select_key(&mut slopes, rank)))
}

/// The points as (seconds since the first, value), at most `MAX_POINTS` of them.
fn choose(points: &[(Instant, f64)]) -> Option<(Vec<(f64, f64)>, Instant)> {
    let origin = points.first()?.0;
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    let as_secs = |(t, v): &(Instant, f64)| (t.saturating_duration_since(origin).as_secs_f64(), *v);
    let mut chosen: Vec<(f64, f64)> = points.iter().step_by(stride).map(as_secs).collect();
    // Keep the newest point even when striding skips it.
    if !(points.len() - 1).is_multiple_of(stride)
        && let Some(last) = points.last()
    {
        chosen.push(as_secs(last));
    }
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
    use std::time::Duration;

    use super::*;

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
        let mut points: Vec<(Instant, f64)> = (0..100)
            .map(|i| (t0 + Duration::from_secs(i), 1000.0 + 2.0 * i as f64))
            .collect();
        points[50].1 = 1e12;
        let fit = theil_sen(&points).expect("fits");
        assert!((fit.slope - 2.0).abs() < 1e-9, "slope {}", fit.slope);
        assert!((fit.at(t0 + Duration::from_secs(10)) - 1020.0).abs() < 1e-6);
    }

    #[test]
    fn subsampling_keeps_the_slope_on_long_series() {
        let t0 = Instant::now();
        let points: Vec<(Instant, f64)> = (0..3000)
            .map(|i| (t0 + Duration::from_millis(100 * i), 5.0 * (i as f64 / 10.0)))
            .collect();
        let fit = theil_sen(&points).expect("fits");
        assert!((fit.slope - 5.0).abs() < 1e-6, "slope {}", fit.slope);
        assert_eq!(theil_sen(&points[..2]), None);
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
        let line: Vec<(Instant, f64)> = (0..20).map(|i| (at(i), 10.0 * i as f64)).collect();
        let (fit, lower) = theil_sen_lower(&line, 0.95).expect("fits");
        assert_eq!((fit.slope, lower), (10.0, 10.0));
        // Two teeth: rising 10/s, falling back every 10 s.
        let saw: Vec<(Instant, f64)> = (0..20).map(|i| (at(i), 10.0 * (i % 10) as f64)).collect();
        let (fit, lower) = theil_sen_lower(&saw, 0.95).expect("fits");
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

        fn plain(points: &[(Instant, f64)], confidence: f64) -> Option<(Fit, f64)> {
            let (chosen, origin) = choose(points)?;
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
                let points: Vec<(Instant, f64)> = steps
                    .iter()
                    .map(|(ms, value)| {
                        at += Duration::from_millis(*ms);
                        (at, *value as f64)
                    })
                    .collect();
                prop_assert_eq!(theil_sen_lower(&points, confidence), plain(&points, confidence));
                prop_assert_eq!(theil_sen(&points), plain(&points, confidence).map(|(fit, _)| fit));
            }

            #[test]
            fn order_keys_sort_as_total_cmp_and_round_trip(a in any::<f64>(), b in any::<f64>()) {
                prop_assert_eq!(order_key(a).cmp(&order_key(b)), a.total_cmp(&b));
                prop_assert_eq!(from_order_key(order_key(a)).to_bits(), a.to_bits());
            }
        }
    }
}
