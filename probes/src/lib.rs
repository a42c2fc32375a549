//! `heapwarden-probes`: the library a Rust worker links so the heapwarden agent can see
//! inside it.
//!
//! It owns these things, each in its own module:
//! - the allocator ([`install!`], jemalloc with heap profiling compiled in, sampling
//!   off until [`activate_profiling`]) and its figures ([`HeapStats`]);
//! - raw heap-profile dumps ([`dump_profile`]) that the agent symbolises out of process;
//! - the control channel to the agent ([`channel`] frames, [`Probe`] client on its own
//!   thread, so nothing in the worker's hot path ever waits on the agent);
//! - a liveness helper ([`spawn_lag_monitor`]) that tells a stalled async runtime apart
//!   from a busy one;
//! - socket activation: [`take_listen_socket`] adopts the listener the agent shares;
//! - the worker's context ([`WorkerContext`]): slot, pool size, state directory, config
//!   file and log settings, as the agent passes them; and the worker's own section of
//!   that config file, read and checked as the agent reads its own
//!   ([`WorkerContext::config_section`], [`config`], default feature `config`).
//!
//! The channel's frames and messages, the worker context with its environment names and
//! socket activation live in `heapwarden-protocol` (which the agent links without any
//! allocator) and are re-exported here unchanged.
//!
//! The allocator, heap figures and dumps need the default `jemalloc` feature; without it
//! (the agent's build) the crate is the channel types, socket activation and the context,
//! and a [`Probe`] answers samples without heap figures.
//!
//! # Opting in
//! One line at the binary's crate root, then take the probe at start:
//! ```no_run
//! heapwarden_probes::install!();
//!
//! fn main() {
//!     let _ = heapwarden_probes::activate_profiling();
//!     // None when the program is not run by the heapwarden agent.
//!     if let Some(probe) = heapwarden_probes::Probe::from_env() {
//!         // ... take the shared socket (`take_listen_socket`), start serving, then:
//!         probe.ready();
//!         // ... and stop accepting once `probe.drained()` resolves.
//!     }
//! }
//! ```
//! `MALLOC_CONF` in the environment still overrides the compiled-in jemalloc options.
//! jemalloc is the whole process's allocator (feature `process-malloc`, on by default):
//! the C libraries the worker links allocate from it too, so their memory is in the heap
//! figures and profiles. The native preload library builds this crate without it, in a
//! workspace of its own, and wraps a `_rjem_`-prefixed jemalloc in `malloc`/`free` of its
//! own (reading `_RJEM_MALLOC_CONF`).
//!
//! Only `alloc` (jemalloc's C interface) and `held_fd` (the probe's own copies of the
//! control socket, checked before each use) use `unsafe`; each says why every block is
//! sound.
#![deny(unsafe_code)]

#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
pub mod alloc;
mod client;
pub mod diag;
mod dump;
mod error;
#[allow(unsafe_code)]
mod held_fd;
mod liveness;
mod stats;

#[cfg(feature = "slog")]
pub use heapwarden_protocol::Nested;
/// The control channel's frames and messages, from `heapwarden-protocol` (their one home).
pub use heapwarden_protocol::channel;
#[cfg(feature = "config")]
pub use heapwarden_protocol::config;
pub use heapwarden_protocol::python_frames;

#[cfg(feature = "jemalloc")]
pub use alloc::{DEFAULT_MALLOC_CONF, MALLOC_CONF_ENV, activate_profiling, profiling_active};
pub use channel::{
    AgentMsg, DumpFormat, DumpKind, FrameDecoder, FrameError, PROTOCOL_VERSION, Runtime, WorkerMsg,
};
pub use client::{
    CHILD_SOCKET_ENV, CONTROL_FD_ENV, INVALIDATE_TIMEOUT, Probe, RUST_PROBE_MARK, WORKER_PID_ENV,
    worker_pid_matches,
};
pub use dump::dump_profile;
pub use error::ProbeError;
pub use heapwarden_protocol::{
    CONFIG_ENV, Causes, ContextError, DEFAULT_LOG_REDACT, InheritedFdError, InheritedSocket,
    LOG_LEVEL_ENV, LOG_REDACT_ENV, POOL_SIZE_ENV, REDACTED, RedactKeys, SLOT_ENV, STATE_DIR_ENV,
    WORKER_ID_ENV, WorkerContext, default_state_dir,
};
pub use held_fd::{PRIVATE_FD_FLOOR, close_held_in_forked_child, duplicate_high};
pub use liveness::{RuntimeLag, spawn_lag_monitor};
pub use stats::{HeapStats, ReadHeapStats};

/// The listening socket the agent shares (socket activation), or `None` when none was
/// passed to this process; see [`heapwarden_protocol::take_inherited_socket`].
pub fn take_inherited_socket() -> Result<Option<InheritedSocket>, ProbeError> {
    Ok(heapwarden_protocol::take_inherited_socket()?)
}

/// [`take_inherited_socket`] as a TCP listener (blocking, close-on-exec): what a worker
/// accepts on.
pub fn take_listen_socket() -> Result<Option<std::net::TcpListener>, ProbeError> {
    Ok(heapwarden_protocol::activation::take_listen_socket()?)
}

/// Re-exported so that [`install!`] expands without the app depending on it directly.
#[cfg(feature = "jemalloc")]
#[doc(hidden)]
pub use tikv_jemallocator as __jemallocator;

/// The crate's own unit tests need the same allocator and options a worker gets. Expanded
/// locally, the macro's export name trips `deny(unsafe_code)`, hence the allow.
#[cfg(all(test, feature = "jemalloc"))]
#[allow(unsafe_code)]
mod test_allocator {
    crate::install!();
}
