//! Reload planning, a pure decision: given the running config and a freshly loaded (and
//! validated) one, what runs from now on, what is applied live, and which changed keys
//! only take effect on a restart (they are kept at their running values and logged).
//!
//! Live: `[pool]` (workers, command, env, cwd, timeouts, restart policy — the command and
//! env on the rolling replacement), `[sampling]`, `[watchdog]`, `log.level`, `[demo]`
//! (which the replacement workers read themselves) and `[export.pyroscope]` (the exporter
//! reads the live config before each push). Restart only: `state-dir`, `[admin]`
//! (the listener, the token, open metrics), `pool.listen` and `pool.balance` (bound once),
//! `pool.user`/`pool.group` (the state directory's modes follow them),
//! `[profiles]` (the store's limits) and `log.redact` (built into the log pipeline).

use std::path::PathBuf;

use super::load::{ConfigErrors, load};
use super::sections::Config;

/// Where the running config came from, so a reload reads it the same way: the file, the
/// `HEAPWARDEN_*` environment (read again; the agent's own does not change) and the flags.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub flags: Vec<(&'static str, String)>,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        let env = std::env::vars().filter(|(k, _)| k.starts_with("HEAPWARDEN_"));
        load(self.file.as_deref(), env, &self.flags)
    }

    /// [`Self::load`] with another process's `HEAPWARDEN_*` environment (the CLI
    /// rebuilding a running agent's config).
    pub fn load_with_env(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        load(self.file.as_deref(), env, &self.flags)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// The config that runs from now on: the new one, with restart-only keys as running.
    pub config: Config,
    /// Parts applied live that changed (for the log).
    pub changed: Vec<&'static str>,
    /// Keys that changed but keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Parts the agent applies itself: a reload changing only these leaves the workers
/// running (switching to `action = "profile-only"` must not replace the pool).
const AGENT_ONLY_PARTS: [&str; 3] = ["watchdog", "sampling", "log.level"];

impl ReloadPlan {
    /// Whether the reload rolls the workers: when what they run may have changed, and
    /// when nothing changed at all (`heapwarden reload` as a rolling restart).
    pub fn replaces_workers(&self) -> bool {
        self.changed.is_empty() || self.changed.iter().any(|p| !AGENT_ONLY_PARTS.contains(p))
    }
}

pub fn plan(running: &Config, new: Config) -> ReloadPlan {
    let mut config = new;
    let mut needs_restart = Vec::new();
    let mut keep = |changed: bool, key: &'static str| {
        if changed {
            needs_restart.push(key);
        }
    };
    keep(config.state_dir != running.state_dir, "state-dir");
    keep(config.admin.listen != running.admin.listen, "admin.listen");
    keep(
        config.admin.token_file != running.admin.token_file,
        "admin.token-file",
    );
    keep(
        config.admin.open_metrics != running.admin.open_metrics,
        "admin.open-metrics",
    );
    keep(config.pool.listen != running.pool.listen, "pool.listen");
    keep(config.pool.balance != running.pool.balance, "pool.balance");
    // The state and run directories' modes follow the workers' identity.
    keep(config.pool.user != running.pool.user, "pool.user");
    keep(config.pool.group != running.pool.group, "pool.group");
    keep(config.profiles != running.profiles, "profiles");
    keep(config.log.redact != running.log.redact, "log.redact");
    config.state_dir = running.state_dir.clone();
    config.admin = running.admin.clone();
    config.pool.listen = running.pool.listen;
    config.pool.balance = running.pool.balance;
    config.pool.user = running.pool.user.clone();
    config.pool.group = running.pool.group.clone();
    config.profiles = running.profiles.clone();
    config.log.redact = running.log.redact.clone();

    let mut changed = Vec::new();
    // Timeouts and restart policy: the pool section minus what is reported on its own.
    let timings = |c: &Config| {
        let mut p = c.pool.clone();
        p.listen = running.pool.listen;
        p.workers = 0;
        p.command.clear();
        p.env.clear();
        p.cwd = None;
        p
    };
    let live = [
        (
            config.pool.worker_count() != running.pool.worker_count(),
            "pool.workers",
        ),
        (
            config.pool.command != running.pool.command
                || config.pool.env != running.pool.env
                || config.pool.cwd != running.pool.cwd,
            "pool.command",
        ),
        (timings(&config) != timings(running), "pool.timings"),
        (config.sampling != running.sampling, "sampling"),
        (config.watchdog != running.watchdog, "watchdog"),
        (config.log.level != running.log.level, "log.level"),
        (config.demo != running.demo, "demo"),
        (config.export != running.export, "export.pyroscope"),
    ];
    for (differs, part) in live {
        if differs {
            changed.push(part);
        }
    }
    ReloadPlan {
        config,
        changed,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::LogLevel;

    #[test]
    fn live_parts_change_and_restart_only_keys_keep_their_running_value() {
        let running = Config::default();
        let mut new = Config::default();
        new.pool.workers = 7;
        new.pool.kill_timeout = Duration::from_secs(3);
        new.pool.command = vec!["sleep".into(), "9".into()];
        new.sampling.interval = Duration::from_secs(2);
        new.watchdog.strikes = 9;
        new.log.level = LogLevel::Warn;
        new.pool.listen = "127.0.0.1:1".parse().unwrap();
        new.admin.listen = "127.0.0.1:2".parse().unwrap();
        new.state_dir = "/elsewhere".into();
        let plan = plan(&running, new.clone());
        assert_eq!(plan.config.pool.workers, 7);
        assert_eq!(plan.config.pool.command, new.pool.command);
        assert_eq!(plan.config.sampling, new.sampling);
        assert_eq!(plan.config.watchdog, new.watchdog);
        assert_eq!(plan.config.log.level, LogLevel::Warn);
        assert_eq!(plan.config.pool.listen, running.pool.listen);
        assert_eq!(plan.config.admin, running.admin);
        assert_eq!(plan.config.state_dir, running.state_dir);
        assert_eq!(
            plan.needs_restart,
            vec!["state-dir", "admin.listen", "pool.listen"]
        );
        assert_eq!(
            plan.changed,
            vec![
                "pool.workers",
                "pool.command",
                "pool.timings",
                "sampling",
                "watchdog",
                "log.level"
            ]
        );
    }

    #[test]
    fn only_a_change_to_what_workers_run_replaces_them() {
        let running = Config::default();
        let mut dry_run = Config::default();
        dry_run.watchdog.action = crate::config::types::LeakAction::ProfileOnly;
        dry_run.sampling.interval = Duration::from_secs(3);
        dry_run.log.level = LogLevel::Debug;
        let p = plan(&running, dry_run);
        assert_eq!(p.changed, vec!["sampling", "watchdog", "log.level"]);
        assert!(!p.replaces_workers(), "{:?}", p.changed);
        let mut env = Config::default();
        env.watchdog.strikes = 9;
        env.pool.env.insert("NODE_ENV".into(), "production".into());
        assert!(plan(&running, env).replaces_workers());
        // An unchanged file is the documented rolling restart.
        assert!(plan(&running, running.clone()).replaces_workers());
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = Config::default();
        let plan = plan(&running, running.clone());
        assert_eq!(plan.config, running);
        assert!(plan.changed.is_empty() && plan.needs_restart.is_empty());
    }

    proptest::proptest! {
        /// Whatever differs, the planned config equals the running one on every
        /// restart-only key and the new one on every live part.
        #[test]
        fn restart_only_keys_never_move(workers in 0usize..9, port in 1u16..65535, strikes in 1u32..9, redact in "[a-z]{0,5}") {
            let running = Config::default();
            let mut new = Config::default();
            new.pool.workers = workers;
            new.admin.listen = format!("127.0.0.1:{port}").parse().unwrap();
            new.pool.listen = format!("127.0.0.1:{}", port.wrapping_add(1).max(1)).parse().unwrap();
            new.watchdog.strikes = strikes;
            new.log.redact = vec![redact];
            let planned = plan(&running, new.clone()).config;
            proptest::prop_assert_eq!(&planned.admin, &running.admin);
            proptest::prop_assert_eq!(planned.pool.listen, running.pool.listen);
            proptest::prop_assert_eq!(&planned.log.redact, &running.log.redact);
            proptest::prop_assert_eq!(planned.pool.workers, new.pool.workers);
            proptest::prop_assert_eq!(&planned.watchdog, &new.watchdog);
        }
    }
}
