//! The supervisor: forks the worker pool, passes it the listening socket and a control
//! channel, restarts what exits, replaces workers make-before-break, and stops them all
//! gracefully. Its decisions are a pure state machine (`state`); `runner` executes them.

pub mod attach;
pub mod children;
pub mod command_hints;
mod contain;
pub mod identity;
pub mod link;
pub mod listen;
mod notify;
mod output;
// The one `/proc` reader, under the name its callers here know it by.
use crate::procfs as procstat;
pub mod program;
mod rundir;
pub mod runner;
mod spawn;
pub mod state;
pub mod view;

pub use children::{ChildLink, ChildLinks};
pub use contain::{ContainError, Containment};
pub use heapwarden_protocol::Runtime;
pub use link::{ControlLink, LinkError, LinkEvent};
pub use runner::{Supervisor, SupervisorHandles, SupervisorParts};
pub use view::{PoolView, ReloadOutcome, Request, RestartReason, SlotState, SlotView, WorkerView};

use crate::config::Config;
use crate::config::types::ProbeKind;
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
        // The native probe cannot know when a program it knows nothing of is ready, so
        // its workers are ready on sd_notify or after min-uptime, as plain ones are.
        ready_from_probe: config.pool.probe != ProbeKind::Native,
        probe_hello_grace: None,
    }
}
