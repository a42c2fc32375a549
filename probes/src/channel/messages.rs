//! The messages of the control channel, in both directions. Serialised as JSON objects
//! tagged by `type`, so a frame body reads like `{"type":"ping","seq":7}`.

use serde::{Deserialize, Serialize};

use crate::stats::HeapStats;

/// Worker → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// First message on a fresh channel.
    Hello { pid: u32, probe_version: String },
    /// The app is listening and can take traffic.
    Ready,
    /// Answer to [`AgentMsg::Sample`].
    Stats {
        seq: u64,
        heap: Option<HeapStats>,
        runtime_lag_seconds: Option<f64>,
        /// Messages the probe dropped since start because the agent was not reading.
        dropped: u64,
        /// The app's own metrics in Prometheus text format, when the agent asked.
        metrics: Option<String>,
    },
    /// Answer to [`AgentMsg::Dump`]; `error` is set when no profile was written.
    ProfileWritten {
        seq: u64,
        path: String,
        error: Option<String>,
        micros: u64,
    },
    /// Ask the agent to relay an invalidation to every other worker.
    Invalidate { seq: u64, key: String, version: i64 },
    /// Acknowledges an [`AgentMsg::Invalidate`] once the app's callback ran.
    Invalidated { seq: u64 },
    /// Answer to [`AgentMsg::Ping`].
    Pong { seq: u64 },
}

/// Agent → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// Reply with [`WorkerMsg::Stats`]; include the app's metrics text when `metrics`.
    Sample { seq: u64, metrics: bool },
    /// Write a raw heap profile to `path`; reply with [`WorkerMsg::ProfileWritten`].
    Dump { seq: u64, path: String },
    /// Stop accepting and finish in-flight work within `deadline_ms`.
    Drain { deadline_ms: u64 },
    /// Another worker changed `key`: run the app's callback, reply [`WorkerMsg::Invalidated`].
    Invalidate { seq: u64, key: String, version: i64 },
    /// Every other worker acknowledged this worker's [`WorkerMsg::Invalidate`] `seq`.
    InvalidateDone { seq: u64 },
    /// Reply with [`WorkerMsg::Pong`].
    Ping { seq: u64 },
}
