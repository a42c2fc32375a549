//! `heapwarden-demo`: one worker of the demo cache-aside HTTP service — what `heapwarden
//! run` starts in every slot when `pool.command` is empty, and a worker like any user's:
//! everything it gets from the agent comes through the public API of `heapwarden-probes`.
//!
//! `GET /items/{id}` reads through L1 (moka, `cache`) → L2 (Redis, `redis_l2`) → SQL
//! (`db`); writes invalidate every worker's L1 through the agent before answering
//! (`items`). Around it: CPU work on a bounded pool (`compute`), durable jobs (`jobs`),
//! NDJSON export, a leak on purpose (`leak`), the HTTP/1 server loop (`serve`), health
//! probes and the shutdown path (`server`), metrics (`metrics`), request ids and request
//! logs (`observe`), the worker's logger and redaction (`log`), JSON errors (`error`), its
//! `[demo]` config (`config`), the command line (`cli`) and the worker's life (`app`).

#![forbid(unsafe_code)]

// jemalloc with heap profiling compiled in; `app` switches sampling on at start.
heapwarden_probes::install!();

mod app;
mod cache;
mod cli;
mod compute;
mod config;
mod db;
mod error;
mod items;
mod jobs;
mod leak;
mod log;
mod metrics;
mod observe;
mod redis_l2;
mod routes;
mod serve;
mod server;

use std::process::ExitCode;

use clap::Parser;
use heapwarden_probes::WorkerContext;

use app::App;
use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let context = match WorkerContext::from_env() {
        Ok(context) => context,
        Err(error) => {
            eprintln!("heapwarden-demo: {error}");
            return ExitCode::from(config::EX_CONFIG);
        }
    };
    match cli.command {
        Some(Command::CheckConfig(args)) => match load_config(&context, args.file(&context)) {
            Ok(_) => {
                println!("demo config ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => {
            let settings = match cli.serve.settings(&context) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("config error: {error}");
                    return ExitCode::from(config::EX_CONFIG);
                }
            };
            let demo = match load_config(&context, settings.config_file.clone()) {
                Ok(demo) => demo,
                Err(code) => return code,
            };
            match app::main(demo, settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("heapwarden-demo: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The `[demo]` section of `file` (the agent's, unless a flag named another); on failure
/// prints every error, one per line, and returns exit 64.
fn load_config(
    context: &WorkerContext,
    file: Option<std::path::PathBuf>,
) -> Result<config::DemoConfig, ExitCode> {
    let context = WorkerContext {
        config_file: file,
        ..context.clone()
    };
    context.config_section().map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(config::EX_CONFIG)
    })
}
