//! heapwarden: a memory-leak watchdog and observability agent for Linux services.
//!
//! One binary, several roles (`cli`): the agent (`supervisor`, `sampler`, `watchdog`,
//! `profiles`, `export`, `admin`), `check-config`, and the on-call CLI. The demo service the agent
//! runs by default is its own binary, `heapwarden-demo` (crate `demo/`).

#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api_types;
pub mod cli;
pub mod config;
pub mod export;
#[cfg(test)]
mod fuzzing;
pub mod log;
pub mod metric_names;
pub mod owned;
pub mod procfs;
pub mod profiles;
pub mod resident;
pub mod sampler;
pub mod supervisor;
pub mod ticks;
pub mod watchdog;
