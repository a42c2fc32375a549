//! Reload (SIGHUP, `heapwarden reload`, `POST /api/v1/reload`): the config is read again
//! off the control loop's thread, validated as at start, planned (`config::reload::plan`,
//! pure) and applied. A bad file is logged with every error and changes nothing. A good
//! one: the new command and environment for the rolling replacement of every running
//! slot (`Event::Reload`), then the new pool settings and slot count
//! (`Event::Reconfigure`: new slots start, surplus slots drain and their queued
//! replacements are dropped), the new `[sampling]`/`[watchdog]` for the sampler and
//! watchdog from their next round (published on the config channel), and the new log
//! level at once.
//! Keys that only a restart can change are logged and keep their running value.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use slog::{Logger, error, info, warn};

use super::super::attach::{self, Attached};
use super::super::identity::WorkerIdentity;
use super::super::program::{self, ProgramError};
use super::super::state::Event;
use super::super::view::ReloadOutcome;
use super::{Inbox, Supervisor};
use crate::config::{Config, ConfigErrors, reload};
use crate::log::{Causes, causes};

/// What workers are started with: `pool.command` (or `heapwarden-demo` from next to the
/// agent), the environment (`pool.env` over the worker context — slot size, state
/// directory, config file, log settings — plus the probe's), and the probe attached.
pub struct WorkerCommand {
    pub argv: Vec<OsString>,
    pub env: BTreeMap<String, String>,
    pub attached: Option<Attached>,
    /// `pool.user`/`pool.group`, resolved; `None`: the agent's own user.
    pub identity: Option<WorkerIdentity>,
}

impl WorkerCommand {
    /// `config_file`: the agent's config file (absolute), which workers read too.
    pub fn prepare(
        config: &Config,
        config_file: Option<&Path>,
        listen: Option<SocketAddr>,
        log: &Logger,
    ) -> Result<WorkerCommand, ProgramError> {
        let argv = program::worker_argv(config, &program::own_exe()?)?;
        let identity =
            WorkerIdentity::resolve(config.pool.user.as_deref(), config.pool.group.as_deref())?;
        // The pool's own env wins over the context the agent passes on. Workers under
        // their own user are not told the paths they cannot use (the config file, the
        // state directory).
        let mut env = config.pool.env.clone();
        let mut context = program::worker_context(config, config_file);
        if identity.is_some() {
            context.config_file = None;
            context.state_dir = None;
        }
        for (key, value) in context.to_env() {
            env.entry(key.to_string()).or_insert(value);
        }
        let plan = attach::prepare(
            config.pool.probe,
            &argv,
            &env,
            &config.state_dir,
            config.pool.cwd.as_deref(),
            listen.map(|a| a.port()),
        );
        if let Some(why) = &plan.not_attached {
            warn!(log, "The probe cannot be attached; workers run as plain programs with procfs figures only.";
                "probe" => config.pool.probe.as_str(), "reason" => why.as_str());
        }
        if let Some(probe) = plan.attached {
            info!(log, "Workers get a probe."; "probe" => probe.as_str());
        }
        if let Some(who) = &identity {
            let readable = who.readable_among(config_file);
            if let Some(path) = readable.first() {
                warn!(log, "The workers' user can read the agent's config file; make it 0600 or 0640 with a group the workers are not in.";
                    "user" => who.user.as_str(), "path" => %path.display());
            }
            info!(log, "Workers run as their own user."; "user" => who.user.as_str(), "uid" => who.uid, "gid" => who.gid);
        }
        env.extend(plan.env);
        Ok(WorkerCommand {
            argv,
            env,
            attached: plan.attached,
            identity,
        })
    }

    /// How long a worker given a probe has to say hello before it is taken for one that
    /// never loads it (and sampled from procfs only); half the ready timeout at most, so
    /// a plain worker is still ready in time.
    pub fn hello_grace(&self, config: &Config) -> Option<Duration> {
        self.attached
            .map(|_| (config.pool.ready_timeout / 2).min(Duration::from_secs(10)))
    }
}

/// Where a requested reload's outcome goes.
pub(super) type ReloadReply = tokio::sync::oneshot::Sender<ReloadOutcome>;

impl Supervisor {
    /// Reads the config on a blocking thread; the result comes back to the inbox.
    pub(super) fn start_reload(&self, reply: Option<ReloadReply>) {
        let source = self.source.clone();
        let done = self.inbox_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = done.blocking_send(Inbox::Reloaded {
                loaded: Box::new(source.load()),
                reply,
            });
        });
    }

    /// `reply`, when a caller asked (`POST /api/v1/reload`), hears the outcome; dropped
    /// unanswered when the agent is stopping.
    pub(super) fn finish_reload(
        &mut self,
        loaded: Result<Config, ConfigErrors>,
        reply: Option<ReloadReply>,
    ) {
        if self.pool.stopping() {
            return;
        }
        let answer = |outcome| {
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        };
        let new = match loaded {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    error!(self.log, "The reloaded config has an error.";
                        "key" => &e.key, "error" => &e.message);
                }
                error!(self.log, "The reloaded config was refused; the running config stays.";
                    "errors" => errors.0.len());
                answer(ReloadOutcome::Refused {
                    errors: errors.0.into_iter().map(|e| (e.key, e.message)).collect(),
                });
                return;
            }
        };
        let plan = reload::plan(&self.config, new);
        for key in &plan.needs_restart {
            warn!(self.log, "A changed setting needs a restart to take effect."; "key" => *key);
        }
        let listen = self.socket.local_addr();
        let command = match WorkerCommand::prepare(
            &plan.config,
            self.source.file.as_deref(),
            listen,
            &self.log,
        ) {
            Ok(command) => command,
            Err(e) => {
                error!(self.log, "The reloaded worker command cannot be resolved; the running config stays.";
                        "error" => %Causes(&e));
                answer(ReloadOutcome::Refused {
                    errors: vec![("pool.command".to_string(), causes(&e))],
                });
                return;
            }
        };
        let replaces_workers = plan.replaces_workers();
        answer(ReloadOutcome::Applied {
            needs_restart: plan.needs_restart.clone(),
            replaces_workers,
        });
        let mut settings = crate::supervisor::settings_from(&plan.config);
        settings.probe_hello_grace = command.hello_grace(&plan.config);
        self.command = command;
        self.log_level.set(plan.config.log.level);
        let (from, to) = (self.pool.slot_count(), settings.workers);
        if to > from {
            (self.slot_series)(from..to);
        }
        self.config = plan.config;
        self.config_tx.send_replace(self.config.clone());
        if !replaces_workers {
            info!(self.log, "The config was reloaded; only the agent's own settings changed, so the workers keep running.";
                "changed" => plan.changed.join(","), "workers" => to);
        } else {
            info!(self.log, "The config was reloaded; replacing every worker, one slot at a time.";
                "changed" => plan.changed.join(","), "workers_before" => from, "workers" => to);
            // The rolling replacement covers the slots that ran the old config; slots the
            // new count adds start with the new one, and surplus slots drain instead.
            if self.feed(Event::Reload) {
                return;
            }
        }
        self.feed(Event::Reconfigure(settings));
    }
}
