//! The supervisor: forks the worker pool, passes it the listening socket and a control
//! channel, restarts what exits, replaces workers make-before-break, and stops them all
//! gracefully. Its decisions are a pure state machine (`state`); `runner` executes them.

pub mod link;
pub mod listen;
mod notify;
mod output;
pub mod program;
pub mod runner;
mod spawn;
pub mod state;
pub mod trampoline;
pub mod view;

pub use link::{ControlLink, LinkError, LinkEvent};
pub use runner::{Supervisor, SupervisorHandles};
pub use view::{PoolView, Request, RestartReason, SlotState, SlotView, WorkerView};

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
