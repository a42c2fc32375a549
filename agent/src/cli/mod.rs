//! Command-line entry: parses the role and its flags, loads and validates the config
//! before anything starts (a bad config — the `[demo]` section and a missing
//! `heapwarden-demo` included — is one line per error and exit 64), and dispatches to the
//! agent, the on-call verbs or a hidden helper mode.

mod args;
pub mod client;
mod discover;
mod out;
mod package_files;
mod table;

use out::outln;
use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, ConfigArgs, ConvertArgs};

use crate::config::{self, Config, EX_CONFIG};
use crate::supervisor::program;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = match load_checked(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            exit_code(crate::agent::run(config, config_source(&args)))
        }
        Command::CheckConfig(args) => match load_checked(&args) {
            Ok(config) => {
                for w in config::warnings(&config) {
                    eprintln!("config warning: {}: {}", w.key, w.message);
                }
                outln!(
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
        Command::SummarizeSnapshot(args) => exit_code(
            crate::profiles::retainers::summarize_file(&args.file, args.min_bytes, args.top)
                .map_err(anyhow::Error::from)
                .and_then(|summary| {
                    outln!("{}", serde_json::to_string(&summary)?);
                    Ok(())
                }),
        ),
        Command::Client(verb) => client::main(verb),
        Command::PackageFiles { dir } => exit_code(package_files::write(&dir)),
    }
}

/// Where the config comes from, for the agent's reloads: the file (absolute, as the
/// workers are told it) and the flags.
fn config_source(args: &ConfigArgs) -> config::ConfigSource {
    config::ConfigSource {
        file: config_file(args),
        flags: args.overrides(),
    }
}

fn config_file(args: &ConfigArgs) -> Option<std::path::PathBuf> {
    let path = args.config.as_ref()?;
    Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()))
}

/// Loads the config; on failure prints every error, one per line, and returns exit 64.
pub fn load_config(args: &ConfigArgs) -> Result<Config, ExitCode> {
    config_source(args).load().map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EX_CONFIG)
    })
}

/// [`load_config`], then what the workers will run: a missing `heapwarden-demo`, and
/// the demo's verdict on its `[demo]` section (`heapwarden-demo check-config`). For `run`
/// and `check-config`; the on-call verbs only need the admin address.
fn load_checked(args: &ConfigArgs) -> Result<Config, ExitCode> {
    let file = config_file(args);
    let (config, mut problems) = match config_source(args).load() {
        Ok(config) => {
            let problems = program::check(&config, file.as_deref());
            (Some(config), problems)
        }
        // Every error at once: the demo's verdict on [demo] too, when it is installed.
        Err(errors) => (None, vec![errors.to_string()]),
    };
    if config.is_none() {
        problems.extend(program::check_demo_if_installed(file.as_deref()));
    }
    match config {
        Some(config) if problems.is_empty() => {
            for line in crate::supervisor::command_hints::warnings(&config) {
                eprintln!("{line}");
            }
            Ok(config)
        }
        _ => {
            for line in problems {
                eprintln!("{line}");
            }
            Err(ExitCode::from(EX_CONFIG))
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
