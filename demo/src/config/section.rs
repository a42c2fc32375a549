//! The `[demo]` section: the demo service's own settings, their defaults, their ranges
//! as data (the loader's [`Bound`], stated on the configuration page as checked here) and
//! the checks that need more than a type.

#[cfg(test)]
use std::collections::BTreeMap;
use std::time::Duration;

use heapwarden_probes::config::bounds::Bound;
use heapwarden_probes::config::{ConfigSection, Size};
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DemoConfig {
    /// Empty: a SQLite file in the state directory. `postgres://…` for PostgreSQL.
    pub database_url: String,
    /// Empty: no L2 cache.
    pub redis_url: String,
    /// Prepended to every Redis key, so several deployments (or tests) can share one Redis.
    pub redis_key_prefix: String,
    pub l1_capacity: u64,
    #[serde(with = "humantime_serde")]
    pub l1_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub l2_ttl: Duration,
    /// Rows the items table is filled with at start (idempotent); `--seed` overrides.
    pub seed_rows: u64,
    pub leak_endpoint: bool,
    /// Bytes leaked per second on purpose (0B: none).
    pub leak_rate: Size,
    /// Worker slots that leak at `leak-rate`; empty: every worker.
    pub leak_slots: Vec<usize>,
    /// Upper bound of the SQL connection pool.
    pub db_max_connections: u32,
    /// How long a request waits for a pooled connection before failing with 503.
    #[serde(with = "humantime_serde")]
    pub db_acquire_timeout: Duration,
    /// Idle connections above the minimum are closed after this long.
    #[serde(with = "humantime_serde")]
    pub db_idle_timeout: Duration,
    /// Per-command Redis timeout: a Redis that stops answering costs at most this.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Threads of the CPU pool behind `POST /compute` (0: one per core).
    pub compute_threads: usize,
    /// Requests waiting for a compute thread; beyond this `/compute` answers 503.
    pub compute_queue: usize,
    /// Largest `rounds` a single compute request or job may ask for.
    pub compute_max_rounds: u64,
    /// Jobs this worker runs at once.
    pub jobs_concurrency: usize,
    /// Attempts before a job goes to the dead-letter state.
    pub job_max_attempts: u32,
    /// Delay before the first retry; doubles with each further attempt.
    #[serde(with = "humantime_serde")]
    pub job_backoff: Duration,
    /// How long a taken job stays leased to its worker; past it, another worker retakes it.
    #[serde(with = "humantime_serde")]
    pub job_lease: Duration,
    /// How often an idle worker looks for due jobs.
    #[serde(with = "humantime_serde")]
    pub jobs_poll: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body: Size,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            database_url: String::new(),
            redis_url: String::new(),
            redis_key_prefix: "heapwarden:demo:".to_string(),
            l1_capacity: 10_000,
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(300),
            seed_rows: 1000,
            leak_endpoint: false,
            leak_rate: Size(0),
            leak_slots: Vec::new(),
            db_max_connections: 8,
            db_acquire_timeout: Duration::from_secs(5),
            db_idle_timeout: Duration::from_secs(60),
            redis_timeout: Duration::from_millis(250),
            compute_threads: 0,
            compute_queue: 16,
            compute_max_rounds: 50_000_000,
            jobs_concurrency: 2,
            job_max_attempts: 5,
            job_backoff: Duration::from_millis(500),
            job_lease: Duration::from_secs(30),
            jobs_poll: Duration::from_millis(250),
            max_body: Size::kib(64),
        }
    }
}

impl ConfigSection for DemoConfig {
    const KEY: &'static str = "demo";

    fn validate(&self, errors: &mut Vec<ConfigError>) {
        self.check(errors);
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// The section's durations: a cache TTL of centuries (moka refuses over 1000 years) or a
/// pool timeout that overflows an instant is a typo, and a zero TTL, timeout or poll
/// interval would cache nothing, fail every wait or spin.
pub const DURATION_BOUNDS: &[Bound<DemoConfig, Duration>] = &[
    Bound::new("demo.l1-ttl", Duration::from_millis(1), MONTH, |c| c.l1_ttl),
    // Redis expiry is in whole seconds.
    Bound::new("demo.l2-ttl", Duration::from_secs(1), MONTH, |c| c.l2_ttl),
    Bound::new(
        "demo.db-acquire-timeout",
        Duration::from_millis(1),
        HOUR,
        |c| c.db_acquire_timeout,
    ),
    Bound::new("demo.db-idle-timeout", Duration::ZERO, DAY, |c| {
        c.db_idle_timeout
    }),
    Bound::new("demo.redis-timeout", Duration::from_millis(1), HOUR, |c| {
        c.redis_timeout
    }),
    Bound::new("demo.job-backoff", Duration::ZERO, DAY, |c| c.job_backoff),
    Bound::new("demo.job-lease", Duration::from_secs(1), DAY, |c| {
        c.job_lease
    }),
    Bound::new("demo.jobs-poll", Duration::from_millis(1), HOUR, |c| {
        c.jobs_poll
    }),
];

/// The section's counts: none of these may be zero.
pub const COUNT_BOUNDS: &[Bound<DemoConfig, u64>] = &[
    Bound::at_least("demo.l1-capacity", 1, |c| c.l1_capacity),
    Bound::at_least("demo.db-max-connections", 1, |c| {
        c.db_max_connections.into()
    }),
    Bound::at_least("demo.compute-queue", 1, |c| c.compute_queue as u64),
    Bound::at_least("demo.compute-max-rounds", 1, |c| c.compute_max_rounds),
    Bound::at_least("demo.jobs-concurrency", 1, |c| c.jobs_concurrency as u64),
    Bound::at_least("demo.job-max-attempts", 1, |c| c.job_max_attempts.into()),
];

/// The section's sizes.
pub const SIZE_BOUNDS: &[Bound<DemoConfig, Size>] =
    &[Bound::at_least("demo.max-body", Size(256), |c| c.max_body)];

/// Every bounded key with its range as the configuration page states it (`1s to
/// 30days`, `at least 1`); a test holds the page's Bounds table to it.
#[cfg(test)]
pub fn stated() -> BTreeMap<&'static str, String> {
    let durations = DURATION_BOUNDS.iter().map(|b| (b.key, b.stated()));
    let counts = COUNT_BOUNDS.iter().map(|b| (b.key, b.stated()));
    let sizes = SIZE_BOUNDS.iter().map(|b| (b.key, b.stated()));
    durations.chain(counts).chain(sizes).collect()
}

impl DemoConfig {
    fn check(&self, errors: &mut Vec<ConfigError>) {
        for b in DURATION_BOUNDS {
            b.check(self, errors);
        }
        for b in COUNT_BOUNDS {
            b.check(self, errors);
        }
        for b in SIZE_BOUNDS {
            b.check(self, errors);
        }
        let mut fail = |key: &str, message: &str| {
            errors.push(ConfigError::new(&format!("demo.{key}"), message));
        };
        let url = self.database_url.as_str();
        if !(url.is_empty()
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            fail(
                "database-url",
                "must be empty (SQLite in state-dir), postgres://… or sqlite:…",
            );
        }
        let redis = self.redis_url.as_str();
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            fail("redis-url", "must be empty (no L2) or redis://…");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        let mut errors = Vec::new();
        DemoConfig::default().check(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        let bad = DemoConfig {
            database_url: "mysql://x".into(),
            jobs_concurrency: 0,
            max_body: Size(10),
            ..DemoConfig::default()
        };
        bad.check(&mut errors);
        let text = format!("{errors:?}");
        for key in [
            "demo.database-url",
            "demo.jobs-concurrency",
            "demo.max-body",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn kebab_case_keys_parse() {
        let parsed: DemoConfig =
            toml::from_str("db-max-connections = 3\njob-backoff = \"50ms\"\nmax-body = \"1KiB\"\n")
                .expect("parses");
        assert_eq!(parsed.db_max_connections, 3);
        assert_eq!(parsed.job_backoff, Duration::from_millis(50));
        assert_eq!(parsed.max_body, Size::kib(1));
    }
}
