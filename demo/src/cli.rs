//! The command line, and how it combines with the worker context: under the agent the
//! slot, state directory, log settings and config file come from the probe's
//! `WorkerContext` (the agent passed them); run alone, from these flags or their defaults.
//! A flag given explicitly wins over the context.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use heapwarden_probes::WorkerContext;
use slog::Level;

use crate::log::{Redactor, parse_level};

#[derive(Debug, Parser)]
#[command(
    name = "heapwarden-demo",
    version,
    about = "One worker of heapwarden's demo cache-aside service (run by `heapwarden run`, or alone)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the [demo] section (and HEAPWARDEN_DEMO_* overrides): one line per error,
    /// exit 64 if any. `heapwarden check-config` runs this.
    CheckConfig(ConfigArg),
}

#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArg {
    /// Config file shared with the agent; only its [demo] section is read. Default: the
    /// agent's (HEAPWARDEN_CONFIG), else the built-in defaults.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where to listen when the agent passed no socket.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory of the SQLite database. Default: the agent's state directory, else
    /// $STATE_DIRECTORY, /var/lib/heapwarden for root, ~/.local/state/heapwarden.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// error, warn, info, debug or trace. Default: the agent's log.level, else info.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Fill the items table with N rows (idempotent) before serving.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker slot (metric label `worker`). Default: the agent's, else 0.
    #[arg(long)]
    pub slot: Option<usize>,
}

/// The agent's default `pool.listen`.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            config: ConfigArg::default(),
            listen: DEFAULT_LISTEN,
            state_dir: None,
            log_level: None,
            seed: None,
            slot: None,
        }
    }
}

/// Where this worker runs and how it logs: the flags over the agent's context.
#[derive(Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub log_level: Level,
    pub redactor: Redactor,
    pub seed: Option<u64>,
    pub slot: usize,
    /// Slots in the pool; None when run alone.
    pub pool_size: Option<usize>,
}

impl ConfigArg {
    pub fn file(&self, context: &WorkerContext) -> Option<PathBuf> {
        self.config.clone().or_else(|| context.config_file.clone())
    }
}

impl ServeArgs {
    pub fn settings(&self, context: &WorkerContext) -> Result<Settings, String> {
        let level = self.log_level.as_ref().or(context.log_level.as_ref());
        let log_level = match level {
            Some(text) => parse_level(text).map_err(|e| format!("log level: {e}"))?,
            None => Level::Info,
        };
        Ok(Settings {
            config_file: self.config.file(context),
            listen: self.listen,
            state_dir: self
                .state_dir
                .clone()
                .or_else(|| context.state_dir.clone())
                .unwrap_or_else(heapwarden_probes::default_state_dir),
            log_level,
            redactor: Redactor::new(context.log_redact.as_deref()),
            seed: self.seed,
            slot: self.slot.or(context.slot).unwrap_or(0),
            pool_size: context.pool_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_context_and_the_context_over_defaults() {
        let context = WorkerContext {
            slot: Some(2),
            pool_size: Some(4),
            state_dir: Some(PathBuf::from("/agent/state")),
            config_file: Some(PathBuf::from("/agent/heapwarden.toml")),
            log_level: Some("warn".into()),
            ..WorkerContext::default()
        };
        let alone = ServeArgs::default();
        let under_agent = alone.settings(&context).expect("valid");
        assert_eq!(under_agent.slot, 2);
        assert_eq!(under_agent.pool_size, Some(4));
        assert_eq!(under_agent.state_dir, PathBuf::from("/agent/state"));
        assert_eq!(under_agent.log_level, Level::Warning);
        assert_eq!(
            under_agent.config_file,
            Some(PathBuf::from("/agent/heapwarden.toml"))
        );
        let flags = ServeArgs {
            slot: Some(7),
            state_dir: Some(PathBuf::from("/mine")),
            log_level: Some("debug".into()),
            ..ServeArgs::default()
        };
        let mine = flags.settings(&context).expect("valid");
        assert_eq!((mine.slot, mine.log_level), (7, Level::Debug), "flags win");
        assert_eq!(mine.state_dir, PathBuf::from("/mine"));
        let defaults = ServeArgs::default()
            .settings(&WorkerContext::default())
            .expect("valid");
        assert_eq!((defaults.slot, defaults.log_level), (0, Level::Info));
        assert_eq!(defaults.pool_size, None);
    }

    #[test]
    fn a_bad_level_is_an_error() {
        let args = ServeArgs {
            log_level: Some("loud".into()),
            ..ServeArgs::default()
        };
        let error = args.settings(&WorkerContext::default()).unwrap_err();
        assert!(error.contains("loud"), "{error}");
    }
}
