//! `ProbeError`: everything the probe's public API can fail with, carrying the key, path
//! or sequence number involved.

use std::path::PathBuf;

/// Errors from the probe library.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    // tikv-jemalloc-ctl's error implements std's Error only with its `use_std` feature,
    // so it is carried as a field and shown in the message rather than as a source.
    #[cfg(feature = "jemalloc")]
    #[error("jemalloc control key {key} failed: {cause}")]
    Jemalloc {
        key: &'static str,
        cause: tikv_jemalloc_ctl::Error,
    },
    #[error("heap profile path {path:?} contains a NUL byte")]
    DumpPathNul { path: PathBuf },
    #[cfg(feature = "jemalloc")]
    #[error("jemalloc could not write a heap profile to {path:?} (is profiling enabled?): {cause}")]
    Dump {
        path: PathBuf,
        cause: tikv_jemalloc_ctl::Error,
    },
    /// Built without the `jemalloc` feature: no heap figures, no heap profiles.
    #[cfg(not(feature = "jemalloc"))]
    #[error("heapwarden-probes was built without its jemalloc feature")]
    NoJemalloc,
    #[error("control channel to the agent is closed")]
    ChannelClosed,
    #[error("control channel send queue is full; message dropped")]
    QueueFull,
    #[error("agent did not confirm invalidation {seq} of key {key:?} in time")]
    InvalidateTimeout { seq: u64, key: String },
    /// An inherited descriptor variable (`HEAPWARDEN_CONTROL_FD`, `LISTEN_FDS`) is unusable.
    #[error("{var}={value:?} does not name a usable inherited socket: {reason}")]
    InheritedFd {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// A worker-context variable (`HEAPWARDEN_WORKER_SLOT`, …) is set but malformed.
    #[error("{var}={value:?} is not usable: {reason}")]
    Context {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("control channel I/O failed while {doing}")]
    Io {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<heapwarden_protocol::InheritedFdError> for ProbeError {
    fn from(e: heapwarden_protocol::InheritedFdError) -> ProbeError {
        ProbeError::InheritedFd {
            var: e.var,
            value: e.value,
            reason: e.reason,
        }
    }
}

impl From<heapwarden_protocol::ContextError> for ProbeError {
    fn from(e: heapwarden_protocol::ContextError) -> ProbeError {
        ProbeError::Context {
            var: e.var,
            value: e.value,
            reason: e.reason,
        }
    }
}
