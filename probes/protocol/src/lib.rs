//! `heapwarden-protocol`: the contract between the heapwarden agent and its workers,
//! defined once and linked by both sides (the agent, and `heapwarden-probes` in every
//! Rust worker and the native preload). It links no allocator.
//!
//! - [`channel`]: the control channel's frames and messages (`frames.json` beside this
//!   crate is the written fixture every probe decodes, the Node one included);
//! - [`context`]: the worker context ([`WorkerContext`]) and every environment variable
//!   the agent passes a worker;
//! - [`clock`]: the host's monotonic clock, on which the agent names push times;
//! - [`activation`]: socket activation (`LISTEN_FDS` and friends) and adopting inherited
//!   descriptors, for workers and for the agent when systemd starts it;
//! - [`HeapStats`]: the heap figures a probe reports;
//! - [`python_frames`]: how the native probe writes CPython frames into a raw heap dump;
//! - [`causes`]: an error with its causes on one line, each once (agent and demo logs);
//! - `config` (feature `config`): the config file's one loader, for the agent's sections
//!   and a worker's own (`WorkerContext::config_section`);
//! - [`redact`]: which log keys are sensitive (`log.redact`), matched the same way by the
//!   agent's log and by workers that log request data; with the `slog` feature, the one
//!   way both log a nested JSON value (`Nested`).
//!
//! Only `activation` uses `unsafe` (taking ownership of an inherited descriptor); it says
//! why every block is sound.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod activation;
pub mod causes;
pub mod channel;
pub mod clock;
#[cfg(feature = "config")]
pub mod config;
pub mod context;
pub mod python_frames;
pub mod redact;
mod stats;

pub use activation::{InheritedFdError, InheritedSocket, take_inherited_socket};
pub use causes::{Causes, causes};
pub use channel::{
    AgentMsg, DumpFormat, DumpKind, FrameDecoder, FrameError, MIN_REPORT_EVERY_MS,
    PROTOCOL_VERSION, PUSHED_SEQ, Runtime, WorkerMsg,
};
pub use context::{
    CHILD_SOCKET_ENV, CONFIG_ENV, CONTROL_FD_ENV, ContextError, DEFAULT_LOG_REDACT, LOG_LEVEL_ENV,
    LOG_REDACT_ENV, POOL_SIZE_ENV, RUST_PROBE_MARK, SLOT_ENV, STATE_DIR_ENV, WORKER_ID_ENV,
    WORKER_PID_ENV, WorkerContext, default_state_dir, worker_pid_matches,
};
#[cfg(feature = "slog")]
pub use redact::Nested;
pub use redact::{REDACTED, RedactKeys};
pub use stats::HeapStats;
