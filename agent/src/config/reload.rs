//! Reload planning, a pure decision: given the running config and a freshly loaded (and
//! validated) one, what runs from now on, what is applied live, and which changed keys
//! only take effect on a restart (they are kept at their running values and logged).
//!
//! Live: `[pool]` (workers, command, env, cwd, timeouts, restart policy — the command and
//! env on the rolling replacement), `[sampling]`, `[watchdog]`, `log.level`, `[demo]`
//! (which the replacement workers read themselves) and `[export.pyroscope]` (the exporter
//! reads the live config before each push). Restart only ([`RESTART_ONLY`], which the
//! reload table of `docs/src/operate/production.md` states key for key): `state-dir`,
//! `[admin]` (the listener and its limits, the token, open metrics), `pool.listen` and
//! `pool.balance` (bound once), `pool.user`/`pool.group` (the state directory's modes
//! follow them), `[profiles]` (the store's limits) and `log.redact` (built into the log
//! pipeline).

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

/// A key a reload cannot change: the running value stays, and a change is reported.
pub struct RestartOnly {
    pub key: &'static str,
    /// Puts the running value back into the new config; whether they differed.
    keep: fn(&mut Config, &Config) -> bool,
}

fn keep<T: PartialEq + Clone>(new: &mut T, running: &T) -> bool {
    let changed = new != running;
    new.clone_from(running);
    changed
}

/// Every restart-only key, in the order a reload reports them.
pub const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "state-dir",
        keep: |n, r| keep(&mut n.state_dir, &r.state_dir),
    },
    RestartOnly {
        key: "admin.listen",
        keep: |n, r| keep(&mut n.admin.listen, &r.admin.listen),
    },
    RestartOnly {
        key: "admin.token-file",
        keep: |n, r| keep(&mut n.admin.token_file, &r.admin.token_file),
    },
    RestartOnly {
        key: "admin.open-metrics",
        keep: |n, r| keep(&mut n.admin.open_metrics, &r.admin.open_metrics),
    },
    // The admin server's limits are set when it binds.
    RestartOnly {
        key: "admin.header-timeout",
        keep: |n, r| keep(&mut n.admin.header_timeout, &r.admin.header_timeout),
    },
    RestartOnly {
        key: "admin.idle-timeout",
        keep: |n, r| keep(&mut n.admin.idle_timeout, &r.admin.idle_timeout),
    },
    RestartOnly {
        key: "admin.max-connections",
        keep: |n, r| keep(&mut n.admin.max_connections, &r.admin.max_connections),
    },
    RestartOnly {
        key: "pool.listen",
        keep: |n, r| keep(&mut n.pool.listen, &r.pool.listen),
    },
    RestartOnly {
        key: "pool.balance",
        keep: |n, r| keep(&mut n.pool.balance, &r.pool.balance),
    },
    // The state and run directories' modes follow the workers' identity.
    RestartOnly {
        key: "pool.user",
        keep: |n, r| keep(&mut n.pool.user, &r.pool.user),
    },
    RestartOnly {
        key: "pool.group",
        keep: |n, r| keep(&mut n.pool.group, &r.pool.group),
    },
    RestartOnly {
        key: "profiles.max-count",
        keep: |n, r| keep(&mut n.profiles.max_count, &r.profiles.max_count),
    },
    RestartOnly {
        key: "profiles.max-bytes",
        keep: |n, r| keep(&mut n.profiles.max_bytes, &r.profiles.max_bytes),
    },
    RestartOnly {
        key: "profiles.min-free-disk",
        keep: |n, r| keep(&mut n.profiles.min_free_disk, &r.profiles.min_free_disk),
    },
    RestartOnly {
        key: "profiles.snapshot-headroom",
        keep: |n, r| {
            keep(
                &mut n.profiles.snapshot_headroom,
                &r.profiles.snapshot_headroom,
            )
        },
    },
    RestartOnly {
        key: "log.redact",
        keep: |n, r| keep(&mut n.log.redact, &r.log.redact),
    },
];

pub fn plan(running: &Config, new: Config) -> ReloadPlan {
    let mut config = new;
    let needs_restart = RESTART_ONLY
        .iter()
        .filter(|k| (k.keep)(&mut config, running))
        .map(|k| k.key)
        .collect();

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

    /// `[admin]` and `[profiles]` are read once, at start: each of their keys is
    /// restart-only, so a key added to either is kept (and reported) by a reload.
    #[test]
    fn every_key_of_the_sections_read_once_is_restart_only() {
        let restart_only: Vec<&str> = RESTART_ONLY.iter().map(|k| k.key).collect();
        for key in crate::config::load::known_keys() {
            if key.starts_with("admin.") || key.starts_with("profiles.") {
                assert!(restart_only.contains(&key.as_str()), "{key}");
            }
        }
    }

    /// The reload table of the production page names the restart-only keys exactly as
    /// [`RESTART_ONLY`] has them.
    #[test]
    fn the_production_page_states_every_restart_only_key() {
        const PAGE: &str = include_str!("../../../docs/src/operate/production.md");
        let row = PAGE
            .lines()
            .find(|l| l.starts_with("| ") && l.contains("| **on restart only**"))
            .expect("production.md's reload table has an `on restart only` row");
        let cell = row[2..].split(" | ").next().unwrap_or_default();
        let stated: Vec<&str> = cell.split(", ").map(|k| k.trim_matches('`')).collect();
        let code: Vec<&str> = RESTART_ONLY.iter().map(|k| k.key).collect();
        assert_eq!(
            stated, code,
            "docs/src/operate/production.md#reload: the restart-only row"
        );
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
