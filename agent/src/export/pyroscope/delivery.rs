//! The delivery decisions, pure and clock-free: what to do with a profile given its age
//! and the sink's answer, and how long to wait before the next attempt (exponential
//! backoff with full jitter, `Retry-After` honoured as a floor). The loop in `mod.rs` only
//! carries them out.

use std::time::Duration;

use super::client::PushResult;
use crate::metric_names::labels::ExportOutcome;

/// Pyroscope refuses samples older than this (`reject_older_than`, default 1 h).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The profile is done with: record `outcome`, move the cursor past it.
    Done {
        outcome: ExportOutcome,
        reason: Option<String>,
    },
    /// Try the same profile again after `delay`.
    Again { delay: Duration, reason: String },
}

/// The step after `result`, on the `failures`-th failure in a row (0 for the first),
/// with `jitter` uniform in [0, 1).
pub fn after_push(result: PushResult, failures: u32, jitter: f64) -> Step {
    match result {
        PushResult::Sent => Step::Done {
            outcome: ExportOutcome::Sent,
            reason: None,
        },
        PushResult::Refused { status, message } => Step::Done {
            outcome: ExportOutcome::Rejected,
            reason: Some(if status == 0 {
                message
            } else {
                format!("HTTP {status}: {message}")
            }),
        },
        PushResult::Retry { reason, after } => {
            let backoff = backoff(failures, jitter);
            Step::Again {
                delay: after.map_or(backoff, |floor| floor.max(backoff.min(floor * 2))),
                reason,
            }
        }
    }
}

/// Full jitter: uniform in [0, min(MAX, FIRST · 2^failures)], never below 100 ms.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let ceiling = FIRST_DELAY
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_DELAY);
    ceiling
        .mul_f64(jitter.clamp(0.0, 1.0))
        .max(Duration::from_millis(100))
}

/// Whether a profile written at `created_unix_ms` is too old to send at `now_unix_ms`.
pub fn expired(created_unix_ms: u64, now_unix_ms: u64) -> bool {
    now_unix_ms.saturating_sub(created_unix_ms) > MAX_AGE.as_millis() as u64
}

/// A small xorshift generator for jitter: no need for a crate, nor for quality.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_jitter_spreads_it() {
        assert_eq!(backoff(0, 1.0), FIRST_DELAY);
        assert_eq!(backoff(3, 1.0), FIRST_DELAY * 8);
        assert_eq!(backoff(30, 1.0), MAX_DELAY);
        assert_eq!(backoff(30, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(30, 0.5), MAX_DELAY / 2);
        let mut j = Jitter::seeded();
        let draws: Vec<f64> = (0..1000).map(|_| j.next()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d < 0.1) && draws.iter().any(|d| *d > 0.9));
    }

    #[test]
    fn retry_after_is_a_floor_and_refusals_are_final() {
        let step = after_push(
            PushResult::Retry {
                reason: "429".into(),
                after: Some(Duration::from_secs(2)),
            },
            0,
            0.0,
        );
        assert_eq!(
            step,
            Step::Again {
                delay: Duration::from_secs(2),
                reason: "429".into()
            }
        );
        let Step::Again { delay, .. } = after_push(
            PushResult::Retry {
                reason: "429".into(),
                after: Some(Duration::from_secs(2)),
            },
            10,
            1.0,
        ) else {
            panic!("a 429 is retried");
        };
        assert_eq!(delay, Duration::from_secs(4));
        let done = after_push(
            PushResult::Refused {
                status: 400,
                message: "bad".into(),
            },
            5,
            0.3,
        );
        assert_eq!(
            done,
            Step::Done {
                outcome: ExportOutcome::Rejected,
                reason: Some("HTTP 400: bad".into())
            }
        );
    }

    #[test]
    fn an_hour_old_profile_has_expired() {
        let hour = 3_600_000;
        assert!(!expired(10 * hour, 11 * hour));
        assert!(expired(10 * hour, 11 * hour + 1));
        assert!(!expired(11 * hour, 10 * hour));
    }
}
