//! `WorkerContext`: what the agent tells every worker about its place in the pool, through
//! the environment — its slot, its pool, where the agent keeps state, which config file
//! the agent read and how it logs. The agent writes these variables with
//! [`WorkerContext::to_env`] and a worker reads them with [`WorkerContext::from_env`], so
//! the names have one owner.
//!
//! The names are the agent's own environment overrides (`HEAPWARDEN_STATE_DIR` is
//! `state-dir`, `HEAPWARDEN_LOG_LEVEL` is `log.level`, …) carrying the values the agent
//! resolved, so a worker run by hand can be given the same context the same way.

use std::path::PathBuf;

/// A worker-context variable (`HEAPWARDEN_WORKER_SLOT`, …) is set but malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not usable: {reason}")]
pub struct ContextError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Environment variable naming the inherited control socket's descriptor number.
pub const CONTROL_FD_ENV: &str = "HEAPWARDEN_CONTROL_FD";
/// Environment variable naming the one process that may use the control channel: the
/// worker the agent started (the agent's forked child sets it to its own pid before it
/// execs the command, which keeps the pid). Descendants inherit the environment but not the claim.
pub const WORKER_PID_ENV: &str = "HEAPWARDEN_WORKER_PID";

/// Whether this process is the worker the agent started: `Some(true)` when
/// [`WORKER_PID_ENV`] names this pid, `Some(false)` when it names another (this is a
/// descendant that inherited the environment), `None` when it is not set (an agent that
/// predates it, or a test harness).
pub fn worker_pid_matches() -> Option<bool> {
    let value = std::env::var(WORKER_PID_ENV).ok()?;
    Some(value.trim() == std::process::id().to_string())
}

/// The worker's slot, `0..pool_size`: stable across replacements (metric label `worker`).
pub const SLOT_ENV: &str = "HEAPWARDEN_WORKER_SLOT";
/// Increases with every worker the agent starts; two processes never share one.
pub const WORKER_ID_ENV: &str = "HEAPWARDEN_WORKER_ID";
/// The number of slots in the pool (`pool.workers`, resolved: never 0).
pub const POOL_SIZE_ENV: &str = "HEAPWARDEN_POOL_WORKERS";
/// The agent's state directory (`state-dir`).
pub const STATE_DIR_ENV: &str = "HEAPWARDEN_STATE_DIR";
/// The config file the agent read, absolute; unset when it runs on defaults.
pub const CONFIG_ENV: &str = "HEAPWARDEN_CONFIG";
/// The agent's log level (`log.level`: error, warn, info, debug or trace).
pub const LOG_LEVEL_ENV: &str = "HEAPWARDEN_LOG_LEVEL";
/// Keys whose values logs must redact (`log.redact`), as a JSON array of strings.
pub const LOG_REDACT_ENV: &str = "HEAPWARDEN_LOG_REDACT";

/// The agent's `log.redact` default: what logs redact unless the config says otherwise.
pub const DEFAULT_LOG_REDACT: &[&str] = &[
    "authorization",
    "cookie",
    "set-cookie",
    "password",
    "token",
    "secret",
    "api_key",
];

/// Where heapwarden keeps state unless `state-dir` says otherwise: systemd's
/// `StateDirectory=` (`$STATE_DIRECTORY`), `/var/lib/heapwarden` for root, and
/// `~/.local/state/heapwarden` for anyone else, so it works without privileges. The
/// agent's default, and a worker's when it runs alone.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) if !effective_uid_is_root() => {
            PathBuf::from(home).join(".local/state/heapwarden")
        }
        _ => PathBuf::from("/var/lib/heapwarden"),
    }
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`): no
/// `unsafe` needed. Unreadable counts as root, which picks the system path.
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(true)
}

/// The worker's context; every field is `None` when its variable is unset (the program
/// was not started by the agent, or the agent had nothing to say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerContext {
    pub slot: Option<usize>,
    pub worker_id: Option<u64>,
    pub pool_size: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_redact: Option<Vec<String>>,
}

impl WorkerContext {
    /// Reads the context from this process's environment. A variable that is set but
    /// malformed is an error naming it; an unset one is `None`.
    pub fn from_env() -> Result<WorkerContext, ContextError> {
        WorkerContext::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the context through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<WorkerContext, ContextError> {
        let text = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let number = |name: &'static str| -> Result<Option<u64>, ContextError> {
            text(name)
                .map(|value| {
                    value.trim().parse::<u64>().map_err(|e| ContextError {
                        var: name,
                        value: value.clone(),
                        reason: e.to_string(),
                    })
                })
                .transpose()
        };
        let index = |name: &'static str| -> Result<Option<usize>, ContextError> {
            number(name)?
                .map(|n| {
                    usize::try_from(n).map_err(|e| ContextError {
                        var: name,
                        value: n.to_string(),
                        reason: e.to_string(),
                    })
                })
                .transpose()
        };
        let log_redact = text(LOG_REDACT_ENV)
            .map(|value| {
                serde_json::from_str::<Vec<String>>(&value).map_err(|e| ContextError {
                    var: LOG_REDACT_ENV,
                    value: value.clone(),
                    reason: format!("expected a JSON array of strings: {e}"),
                })
            })
            .transpose()?;
        Ok(WorkerContext {
            slot: index(SLOT_ENV)?,
            worker_id: number(WORKER_ID_ENV)?,
            pool_size: index(POOL_SIZE_ENV)?,
            state_dir: text(STATE_DIR_ENV).map(PathBuf::from),
            config_file: text(CONFIG_ENV).map(PathBuf::from),
            log_level: text(LOG_LEVEL_ENV).map(|l| l.trim().to_ascii_lowercase()),
            log_redact,
        })
    }

    /// This worker's own section of the agent's config file ([`Self::config_file`];
    /// defaults without one), overridden by this process's `HEAPWARDEN_<SECTION>_*`
    /// variables: the agent's loader ([`crate::config`]), so a worker's settings read,
    /// and fail, as the agent's do.
    #[cfg(feature = "config")]
    pub fn config_section<S: crate::config::ConfigSection>(
        &self,
    ) -> Result<S, crate::config::ConfigErrors> {
        crate::config::load(self.config_file.as_deref(), std::env::vars(), &[])
    }

    /// The variables that describe this context, for the agent to set on a worker.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        let mut put = |name, value: Option<String>| {
            if let Some(value) = value {
                env.push((name, value));
            }
        };
        put(SLOT_ENV, self.slot.map(|n| n.to_string()));
        put(WORKER_ID_ENV, self.worker_id.map(|n| n.to_string()));
        put(POOL_SIZE_ENV, self.pool_size.map(|n| n.to_string()));
        put(
            STATE_DIR_ENV,
            self.state_dir.as_ref().map(|p| p.display().to_string()),
        );
        put(
            CONFIG_ENV,
            self.config_file.as_ref().map(|p| p.display().to_string()),
        );
        put(LOG_LEVEL_ENV, self.log_level.clone());
        put(
            LOG_REDACT_ENV,
            self.log_redact
                .as_ref()
                .map(|keys| serde_json::Value::from(keys.clone()).to_string()),
        );
        env
    }
}

/// The Rust probe's writer thread's name, and so a string every program that can start a
/// probe carries in its read-only data: the agent looks for it to refuse putting the
/// native probe (a second probe on the same channel) into such a program.
pub const RUST_PROBE_MARK: &str = "heapwarden-probe-tx";

/// Environment variable naming the per-worker Unix stream socket the agent listens on
/// for the worker's forked children (pre-fork servers: gunicorn, uwsgi, celery): a child
/// that keeps running connects there and speaks the same protocol on its own connection,
/// since it may use no descriptor it inherited.
pub const CHILD_SOCKET_ENV: &str = "HEAPWARDEN_CHILD_SOCKET";

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn what_the_agent_writes_a_worker_reads_back() {
        let context = WorkerContext {
            slot: Some(3),
            worker_id: Some(17),
            pool_size: Some(8),
            state_dir: Some(PathBuf::from("/var/lib/heapwarden")),
            config_file: Some(PathBuf::from("/etc/heapwarden/heapwarden.toml")),
            log_level: Some("warn".into()),
            log_redact: Some(vec!["authorization".into(), "x-\"odd\"".into()]),
        };
        let env = context.to_env();
        assert_eq!(env.len(), 7);
        let read = WorkerContext::from_lookup(lookup(&env)).expect("reads back");
        assert_eq!(read, context);
    }

    #[test]
    fn the_default_state_dir_follows_the_effective_user() {
        // The test may run as root or not; either way the answer is one of the two.
        let dir = default_state_dir();
        if std::env::var_os("STATE_DIRECTORY").is_none() {
            let home =
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/heapwarden"));
            assert!(
                dir == Path::new("/var/lib/heapwarden") || Some(&dir) == home.as_ref(),
                "{dir:?}"
            );
            assert_eq!(
                dir == Path::new("/var/lib/heapwarden"),
                effective_uid_is_root() || home.is_none()
            );
        }
    }

    #[test]
    fn nothing_set_is_an_empty_context() {
        let read = WorkerContext::from_lookup(|_| None).expect("empty is fine");
        assert_eq!(read, WorkerContext::default());
        assert!(read.to_env().is_empty());
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (name, value) in [
            (SLOT_ENV, "two"),
            (POOL_SIZE_ENV, "-1"),
            (WORKER_ID_ENV, "1e3"),
            (LOG_REDACT_ENV, "authorization,cookie"),
        ] {
            let error = WorkerContext::from_lookup(lookup(&[(name, value.to_string())]))
                .expect_err("malformed");
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    proptest::proptest! {
        /// Arbitrary values never panic: a context or an error naming the variable.
        #[test]
        fn arbitrary_values_never_panic(slot in "\\PC{0,12}", redact in "\\PC{0,24}") {
            let vars = [(SLOT_ENV, slot), (LOG_REDACT_ENV, redact)];
            if let Err(error) = WorkerContext::from_lookup(lookup(&vars)) {
                let text = error.to_string();
                proptest::prop_assert!(text.contains(SLOT_ENV) || text.contains(LOG_REDACT_ENV));
            }
        }
    }
}
