//! Command-line entry: parses the role and its flags, loads and validates the config
//! before anything starts (a bad config is one line per error and exit 64), and
//! dispatches to the agent, the demo worker, the on-call verbs or a hidden helper mode.

mod args;
pub mod client;
mod table;

use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, ConfigArgs, ConvertArgs, DemoArgs};

use crate::config::{self, Config, EX_CONFIG};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = match load_config(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let source = config::ConfigSource {
                file: args.config.clone(),
                flags: args.overrides(),
            };
            exit_code(crate::agent::run(config, source, worker_env(&args)))
        }
        Command::Demo(args) => {
            let config = match load_config(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            exit_code(crate::demo::main(config, args))
        }
        Command::CheckConfig(args) => match load_config(&args) {
            Ok(config) => {
                println!(
                    "config ok: {} workers, service on {}, admin on {}",
                    config.pool.worker_count(),
                    config.pool.listen,
                    config.admin.listen
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::ConvertProfile(args) => exit_code(
            crate::profiles::helper_main(
                &args.format,
                &args.raw,
                &args.out,
                args.pid,
                args.exe.as_deref(),
            )
            .map_err(anyhow::Error::from),
        ),
        Command::Client(verb) => client::main(verb),
    }
}

/// What workers need to see the agent's config: the file (absolute) and the flags, as
/// the environment overrides they stand for. Variables the agent itself got pass on.
fn worker_env(args: &ConfigArgs) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(path) = &args.config {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        env.push((
            "HEAPWARDEN_CONFIG".to_string(),
            absolute.display().to_string(),
        ));
    }
    for (key, value) in args.overrides() {
        env.push((config::env_name(key), value));
    }
    env
}

/// Loads the config; on failure prints every error, one per line, and returns exit 64.
pub fn load_config(args: &ConfigArgs) -> Result<Config, ExitCode> {
    let source = config::ConfigSource {
        file: args.config.clone(),
        flags: args.overrides(),
    };
    match source.load() {
        Ok(c) => Ok(c),
        Err(errors) => {
            eprintln!("{errors}");
            Err(ExitCode::from(EX_CONFIG as u8))
        }
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heapwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
