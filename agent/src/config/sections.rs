//! The config sections and their defaults (the contract in DESIGN.md, "Config sketch").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::export::{Every, ExportConfig, PyroscopeConfig, read_ca_file, valid_label_name};
use super::load::ConfigError;
use super::types::{Balance, LeakAction, Predict, ProbeKind, Rate, Size, Toggle, Watch};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Profiles, their index and the admin token; workers get it as their state
    /// directory (the demo keeps its SQLite database there).
    pub state_dir: PathBuf,
    pub admin: AdminConfig,
    pub pool: PoolConfig,
    pub sampling: SamplingConfig,
    pub watchdog: WatchdogConfig,
    pub profiles: ProfilesConfig,
    pub log: LogConfig,
    /// Profiles to the fleet's store (`[export.pyroscope]`, `export.rs`).
    pub export: ExportConfig,
    /// The demo's own section, opaque here: `heapwarden-demo` owns and checks its keys.
    pub demo: toml::Table,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Shared with workers run alone: the probe crate owns the default.
            state_dir: heapwarden_protocol::default_state_dir(),
            admin: AdminConfig::default(),
            pool: PoolConfig::default(),
            sampling: SamplingConfig::default(),
            watchdog: WatchdogConfig::default(),
            profiles: ProfilesConfig::default(),
            log: LogConfig::default(),
            export: ExportConfig::default(),
            demo: toml::Table::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Empty: `<state-dir>/admin-token`, created with a random token on first start.
    pub token_file: PathBuf,
    /// Serve /metrics, /healthz and /readyz without the token.
    pub open_metrics: bool,
    /// A connection must deliver each request head within this of the server being
    /// ready for it (after accept or the previous answer): closes slow senders and idle
    /// keep-alive connections alike.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that moved no byte for this long, with no request being handled, is
    /// closed (a client that stopped reading its answer).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Admin connections open at once; lowered at start to fit the fd limit. When full,
    /// the longest-idle connection is closed for a new one.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token_file: PathBuf::new(),
            open_metrics: true,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolConfig {
    /// 0: one worker per CPU.
    pub workers: usize,
    /// Program and arguments; empty: `heapwarden-demo` from next to this executable.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub listen: SocketAddr,
    /// round-robin | shared: how connections are spread over the workers.
    pub balance: Balance,
    #[serde(with = "humantime_serde")]
    pub min_uptime: Duration,
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub kill_timeout: Duration,
    /// auto | node | native | off: which probe the workers get (supervisor/attach).
    pub probe: ProbeKind,
    pub restart: RestartConfig,
    /// The user workers run as (name or uid); unset: the agent's own user, and then
    /// workers are as trusted as the agent (supervisor/identity).
    pub user: Option<String>,
    /// Their group (name or gid); unset: the user's primary group.
    pub group: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 0,
            command: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            balance: Balance::RoundRobin,
            min_uptime: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            kill_timeout: Duration::from_secs(10),
            probe: ProbeKind::Auto,
            restart: RestartConfig::default(),
            user: None,
            group: None,
        }
    }
}

impl PoolConfig {
    /// The configured worker count, with 0 meaning one per CPU.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestartConfig {
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub factor: f64,
    /// Failures within `window` that put a slot in the `failed` state.
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(15),
            factor: 2.0,
            max_restarts: 10,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SamplingConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Read smaps_rollup (PSS/USS/swap) once every N intervals: it takes the worker's
    /// mmap lock, so it is kept off the fast path.
    pub pss_every: u32,
    /// Unanswered pings after which a probe-linked worker is unhealthy.
    pub missed_pings: u32,
    /// How often a worker heading for `max-memory` is sampled (the watchdog's fast lane):
    /// the predicted rule's persistence then takes this many times fewer seconds. At most
    /// `interval` takes effect ([`SamplingConfig::fast_interval`]); `interval` itself
    /// turns the lane off.
    #[serde(with = "humantime_serde")]
    pub fast_interval: Duration,
}

impl SamplingConfig {
    /// The fast lane's interval as it takes effect: never slower than `interval`, so a
    /// fast `interval` alone does not make the default an error.
    pub fn fast_interval(&self) -> Duration {
        self.fast_interval.min(self.interval)
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            interval: Duration::from_secs(1),
            pss_every: 10,
            missed_pings: 5,
            fast_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WatchdogConfig {
    pub watch: Watch,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    pub max_memory: Toggle<Size>,
    pub growth: Toggle<Size>,
    pub strikes: u32,
    #[serde(with = "humantime_serde")]
    pub trend_window: Duration,
    pub trend_min_rate: Toggle<Rate>,
    pub action: LeakAction,
    pub max_concurrent_replacements: u32,
    pub max_leak_restarts_per_hour: u32,
    /// Node workers: also take a full heap snapshot at warm-up and when a rule trips, so
    /// the detection record names the holders that grew (heavy; off).
    pub leak_snapshot: bool,
    /// How long a slot's leak suspect (`heapwarden_leak_suspect_info`) outlives the
    /// worker it names, so the page still says what leaked after the replacement.
    #[serde(with = "humantime_serde")]
    pub suspect_ttl: Duration,
    /// The `predicted` rule: replace a worker before it reaches `max-memory`.
    pub predict: Predict,
    /// The samples the prediction is fitted on (the latest this long).
    #[serde(with = "humantime_serde")]
    pub predict_window: Duration,
    /// Level guard: act only once the fitted figure is above this fraction of `max-memory`.
    pub predict_level: f64,
    /// Persistence: the prediction must hold on this many consecutive samples.
    pub predict_samples: u32,
    /// Confidence of the slope's lower bound the prediction uses (Sen's interval).
    pub predict_confidence: f64,
    /// Margin on the measured replacement time (start → ready + profile).
    pub predict_margin: f64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            watch: Watch::Auto,
            warmup: Duration::from_secs(30),
            max_memory: Toggle::On(Size::mib(512)),
            growth: Toggle::On(Size::mib(256)),
            strikes: 3,
            trend_window: Duration::from_secs(300),
            trend_min_rate: Toggle::On(Rate {
                bytes_per_second: 1048576.0 / 60.0,
            }),
            action: LeakAction::Restart,
            max_concurrent_replacements: 1,
            max_leak_restarts_per_hour: 6,
            leak_snapshot: false,
            suspect_ttl: Duration::from_secs(3600),
            predict: Predict::On,
            predict_window: Duration::from_secs(20),
            predict_level: 0.5,
            predict_samples: 3,
            predict_confidence: 0.95,
            predict_margin: 2.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfilesConfig {
    pub max_count: usize,
    pub max_bytes: Size,
    /// A dump is skipped (logged, counted) when the state directory's filesystem has
    /// less than this free.
    pub min_free_disk: Size,
    /// A heap snapshot is refused (409) unless `MemAvailable` is at least this many
    /// times the worker's heap used: V8 needs about twice the heap to write one.
    pub snapshot_headroom: f64,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            max_count: 50,
            max_bytes: Size::mib(512),
            min_free_disk: Size::mib(256),
            snapshot_headroom: 2.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    pub level: LogLevel,
    /// Keys whose values are replaced by "[REDACTED]" before a record is serialised.
    pub redact: Vec<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            // Workers that get no list from the agent use the same defaults.
            redact: heapwarden_protocol::DEFAULT_LOG_REDACT
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Config {
    /// Semantic checks that serde cannot express; every problem is collected.
    pub(super) fn check(&self, errors: &mut Vec<ConfigError>) {
        let p = &self.pool;
        if p.command.first().is_some_and(|c| c.trim().is_empty()) {
            errors.push(ConfigError::new(
                "pool.command",
                "the program name is empty",
            ));
        }
        let headroom = self.profiles.snapshot_headroom;
        if !(headroom.is_finite() && headroom >= 0.0) {
            errors.push(ConfigError::new(
                "profiles.snapshot-headroom",
                "must be a number >= 0 (2.0: free memory of twice the heap)",
            ));
        }
        let r = &p.restart;
        if r.initial_delay > r.max_delay {
            errors.push(ConfigError::new(
                "pool.restart.initial-delay",
                "must not exceed pool.restart.max-delay",
            ));
        }
        if p.listen == self.admin.listen && p.listen.port() != 0 {
            errors.push(ConfigError::new(
                "admin.listen",
                "must differ from pool.listen",
            ));
        }
        super::export::validate(&self.export.pyroscope, errors);
        super::bounds::check(self, errors);
    }
}
