//! The supervisor: forks the worker pool, passes it the listening socket and a control
//! channel, restarts what exits, replaces workers make-before-break, and stops them all
//! gracefully. Its decisions are a pure state machine (`state`); `runner` executes them.

pub mod link;
pub mod listen;
mod notify;
mod output;
pub mod runner;
mod spawn;
pub mod state;
pub mod trampoline;
pub mod view;

pub use link::{ControlLink, LinkError, LinkEvent};
pub use runner::{Supervisor, SupervisorHandles};
pub use view::{PoolView, Request, RestartReason, SlotState, SlotView, WorkerView};

use anyhow::Context;
use slog::{info, o};

use crate::config::Config;
use state::PoolSettings;

pub fn settings_from(config: &Config) -> PoolSettings {
    PoolSettings {
        workers: config.pool.worker_count(),
        min_uptime: config.pool.min_uptime,
        ready_timeout: config.pool.ready_timeout,
        drain_timeout: config.pool.drain_timeout,
        kill_timeout: config.pool.kill_timeout,
        restart: config.pool.restart.clone(),
        max_concurrent_replacements: config.watchdog.max_concurrent_replacements as usize,
        max_leak_restarts_per_hour: config.watchdog.max_leak_restarts_per_hour as usize,
    }
}

/// Runs the agent until it is told to stop: the `run` role.
pub fn run(config: Config) -> anyhow::Result<()> {
    let (log, log_guard) = crate::log::init(&config.log);
    let log = log.new(o!("module" => "supervisor"));
    // One thread: the agent is I/O-bound and small; a single thread also keeps the
    // parent-death signal tied to a thread that lives as long as the process.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let socket = listen::open(config.pool.listen)?;
        info!(log, "The agent is starting.";
            "workers" => config.pool.worker_count(),
            "listen" => socket.local_addr.map(|a| a.to_string()).unwrap_or_default(),
            "socket_activated" => socket.socket_activated);
        let (supervisor, _handles) = Supervisor::new(config, socket, log.clone())?;
        supervisor.run().await
    });
    drop(runtime);
    drop(log);
    drop(log_guard);
    result
}
