//! How each worker gets its probe (`[pool] probe`): decided once when the supervisor
//! starts, as environment variables added to every worker's. Rust workers link
//! `heapwarden-probes` themselves and need nothing; `native` puts the preload library in
//! the worker's `LD_PRELOAD` (`native`).

pub mod native;
mod program;

use std::ffi::OsString;

use slog::Logger;

use crate::config::PoolConfig;
use crate::config::types::ProbeKind;

/// What the agent adds to every worker of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachPlan {
    /// Set on the worker (the pool's own `env` wins over these).
    pub env: Vec<(String, String)>,
}

/// The plan for `argv` under `pool.probe`. Never fails: whatever cannot be attached is
/// logged once and the workers run without it.
pub fn plan(pool: &PoolConfig, argv: &[OsString], log: &Logger) -> AttachPlan {
    match pool.probe {
        ProbeKind::Native => native::plan(pool, argv, log),
        ProbeKind::Auto | ProbeKind::Node | ProbeKind::Off => AttachPlan::default(),
    }
}

#[cfg(test)]
mod tests;
