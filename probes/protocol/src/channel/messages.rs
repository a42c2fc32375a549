//! The messages of the control channel, in both directions. Serialised as JSON objects
//! tagged by `type`, so a frame body reads like `{"type":"ping","seq":7}`.
//!
//! docs/src/workers/protocol.md is the written contract; the example frames in
//! `probes/protocol/frames.json` are decoded by these types (channel tests) and by the
//! Node probe's own test, so both probes answer to one description. Fields added after
//! version 1 shipped carry `#[serde(default)]`, so older probes still parse.

use serde::{Deserialize, Serialize};

use crate::HeapStats;

/// Which probe is speaking, from [`WorkerMsg::Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// `heapwarden-probes` linked into a Rust program (jemalloc figures).
    #[default]
    Rust,
    /// `probes/node/heapwarden-probe.cjs` loaded into Node.js (V8 figures).
    Node,
    /// The LD_PRELOAD library in a native program (jemalloc figures).
    Native,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Rust => "rust",
            Runtime::Node => "node",
            Runtime::Native => "native",
        }
    }
}

/// What [`AgentMsg::Dump`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpKind {
    /// A heap profile (jemalloc raw dump, or V8's sampling heap profile).
    #[default]
    Profile,
    /// A full V8 heap snapshot (`.heapsnapshot`); Node only, blocks the worker.
    Snapshot,
}

/// The file format a [`WorkerMsg::ProfileWritten`] left at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpFormat {
    /// jemalloc's `prof.dump` text (with the process's mappings).
    #[default]
    Jemalloc,
    /// V8's sampling heap profile, flattened by the Node probe (see docs/src/workers/protocol.md).
    V8Sampling,
    /// `v8.writeHeapSnapshot()` output, stored as is.
    V8Snapshot,
}

/// Worker → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// First message of each claimant on the channel. A later `hello` on the same
    /// channel is a fresh claim (a successor process took over).
    Hello {
        pid: u32,
        probe_version: String,
        #[serde(default)]
        runtime: Runtime,
        /// The probe pushes its stats on a timer when told to ([`AgentMsg::Report`]).
        /// Absent (false) in probes older than that message: the agent keeps asking them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        push: bool,
    },
    /// The app is listening and can take traffic.
    Ready,
    /// Answer to [`AgentMsg::Sample`], or, with `seq` [`PUSHED_SEQ`], one the probe pushed
    /// on its own timer after an [`AgentMsg::Report`] (never carrying metrics).
    Stats {
        seq: u64,
        heap: Option<HeapStats>,
        runtime_lag_seconds: Option<f64>,
        /// Messages the probe dropped since start because the agent was not reading.
        dropped: u64,
        /// The app's own metrics in Prometheus text format, when the agent asked.
        metrics: Option<String>,
        /// Node: `process.memoryUsage().external` (C++ objects bound to JS, Buffers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_bytes: Option<u64>,
        /// Node: `process.memoryUsage().arrayBuffers` (part of `external`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        array_buffers_bytes: Option<u64>,
        /// Node: times since start the probe restarted V8's sampling heap profiler after
        /// another party (an APM agent, DevTools) stopped it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sampling_restarts: Option<u64>,
    },
    /// Answer to [`AgentMsg::Dump`]; `error` is set when nothing was written.
    ProfileWritten {
        seq: u64,
        path: String,
        error: Option<String>,
        micros: u64,
        #[serde(default)]
        format: DumpFormat,
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
    /// Write a heap profile (or snapshot) to `path`; reply [`WorkerMsg::ProfileWritten`].
    Dump {
        seq: u64,
        path: String,
        #[serde(default)]
        kind: DumpKind,
        /// The most bytes the worker may write (snapshots: the room the store has); it
        /// stops, closes and removes the file past it. Absent: no cap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
    },
    /// Stop accepting and finish in-flight work within `deadline_ms`.
    Drain { deadline_ms: u64 },
    /// Another worker changed `key`: run the app's callback, reply [`WorkerMsg::Invalidated`].
    Invalidate { seq: u64, key: String, version: i64 },
    /// Every other worker acknowledged this worker's [`WorkerMsg::Invalidate`] `seq`.
    InvalidateDone { seq: u64 },
    /// Reply with [`WorkerMsg::Pong`].
    Ping { seq: u64 },
    /// Push a [`WorkerMsg::Stats`] (seq [`PUSHED_SEQ`], no metrics) `first_ms` from now and
    /// then every `every_ms`, without being asked; `every_ms` 0 stops. Sent only to a
    /// probe whose hello said `push`, at each claim and when the interval changes. The
    /// agent picks the first push time so the pushes land just before its sampling rounds;
    /// a probe schedules every push from it (not from the previous push), so the two do
    /// not drift apart.
    Report {
        every_ms: u64,
        first_ms: u64,
        /// The first push's time on the host's `CLOCK_MONOTONIC`, in microseconds
        /// ([`crate::clock`]). A probe uses it rather than `first_ms` when it is within
        /// one interval of its own clock, so all workers push at one instant, whenever
        /// each was told, and the agent wakes once for most of them rather than once per
        /// worker. Absent from older agents; a probe in another time namespace falls
        /// back on `first_ms`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_us: Option<u64>,
    },
}

/// The `seq` of a [`WorkerMsg::Stats`] the probe pushed on its own: the agent numbers its
/// requests from 1, so no answer carries it.
pub const PUSHED_SEQ: u64 = 0;

/// The shortest push interval a probe accepts; a smaller non-zero `every_ms` is raised
/// to it, so a hostile or buggy agent cannot make a worker spin.
pub const MIN_REPORT_EVERY_MS: u64 = 10;
