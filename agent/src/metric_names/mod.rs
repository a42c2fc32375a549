//! Every metric the agent exports, typed once: name, kind, label keys, HELP text and (for
//! histograms) buckets, in [`CATALOG`]; the label value sets (`labels`: reasons, rules,
//! triggers, outcomes, states, …); and zero-initialisation of every series from those
//! types (`zero`), so a dashboard's name cannot drift from the exporter and no outcome is
//! forgotten. Whatever records a metric names it from here (`WORKER_UP.name`); a test
//! checks every name the dashboards and alert rules use against this catalog.
//!
//! It also builds the agent's recorder ([`build_recorder`]), which decides where each
//! family is stored: the per-worker families and the float counters by the agent itself
//! (`own_series`), every other by the Prometheus exporter.
//!
//! The bottom layer of the agent: it uses nothing of the agent, and every part may use it.

pub mod labels;
mod own_series;
#[cfg(test)]
mod tests;
mod zero;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

pub use own_series::{AgentRecorder, MetricsHandle, is_own_family, push_label_value};
pub use zero::{register_slot, register_zero_series};

/// Every family of the agent's starts with this; workers may not send such families.
pub const AGENT_PREFIX: &str = "heapwarden_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A counter with fractional values (CPU seconds), recorded as a gauge and rendered
    /// as a counter by `own_series`: the `metrics` crate's counters are integers.
    FloatCounter,
}

/// One exported metric family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Label keys, in the order the agent writes them.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Histogram bucket bounds, seconds; empty for other kinds.
    pub buckets: &'static [f64],
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
        buckets: &[],
    }
}

const WORKER: &[&str] = &["worker"];
use Kind::{Counter, FloatCounter, Gauge};

pub const WORKER_UP: Metric = metric(
    "heapwarden_worker_up",
    Gauge,
    WORKER,
    "1 when the slot's worker is running and ready.",
);
pub const WORKER_STATE: Metric = metric(
    "heapwarden_worker_state",
    Gauge,
    &["worker", "state"],
    "1 for the slot's current state (starting, ready, replacing, backoff, failed, stopping, or budget_exhausted instead of ready while its leak-restart budget is spent).",
);
pub const WORKER_RSS: Metric = metric(
    "heapwarden_worker_rss_bytes",
    Gauge,
    WORKER,
    "Resident set size of the worker's process tree.",
);
pub const WORKER_PSS: Metric = metric(
    "heapwarden_worker_pss_bytes",
    Gauge,
    WORKER,
    "Proportional set size of the worker's process tree (smaps_rollup).",
);
pub const WORKER_USS: Metric = metric(
    "heapwarden_worker_uss_bytes",
    Gauge,
    WORKER,
    "Unique set size (private pages) of the worker's process tree.",
);
pub const WORKER_SWAP: Metric = metric(
    "heapwarden_worker_swap_bytes",
    Gauge,
    WORKER,
    "Swapped-out memory of the worker's process tree.",
);
pub const WORKER_HEAP_ALLOCATED: Metric = metric(
    "heapwarden_worker_heap_allocated_bytes",
    Gauge,
    WORKER,
    "Heap used: jemalloc stats.allocated; V8 heapUsed for Node workers.",
);
pub const WORKER_HEAP_ACTIVE: Metric = metric(
    "heapwarden_worker_heap_active_bytes",
    Gauge,
    WORKER,
    "Heap total: jemalloc stats.active; V8 heapTotal for Node workers.",
);
pub const WORKER_HEAP_RESIDENT: Metric = metric(
    "heapwarden_worker_heap_resident_bytes",
    Gauge,
    WORKER,
    "jemalloc stats.resident.",
);
pub const WORKER_HEAP_RETAINED: Metric = metric(
    "heapwarden_worker_heap_retained_bytes",
    Gauge,
    WORKER,
    "jemalloc stats.retained.",
);
pub const WORKER_EXTERNAL: Metric = metric(
    "heapwarden_worker_external_bytes",
    Gauge,
    WORKER,
    "Node workers: memory of C++ objects bound to JavaScript, Buffers included (process.memoryUsage().external).",
);
pub const WORKER_ARRAY_BUFFERS: Metric = metric(
    "heapwarden_worker_array_buffers_bytes",
    Gauge,
    WORKER,
    "Node workers: ArrayBuffer and Buffer backing stores (process.memoryUsage().arrayBuffers, part of external).",
);
pub const WORKER_CPU: Metric = metric(
    "heapwarden_worker_cpu_seconds_total",
    FloatCounter,
    WORKER,
    "CPU time of the worker's process tree.",
);
pub const WORKER_RUNTIME_LAG: Metric = metric(
    "heapwarden_worker_runtime_lag_seconds",
    Gauge,
    WORKER,
    "Scheduling lag of the worker's async runtime (Node: the longest event-loop delay since the last sample).",
);
pub const WORKER_LOG_LINES_TRUNCATED: Metric = metric(
    "heapwarden_worker_log_lines_truncated_total",
    Counter,
    WORKER,
    "Worker output lines longer than 64 KiB, cut to their first 64 KiB when relayed.",
);
pub const WORKER_METRICS_REJECTED: Metric = metric(
    "heapwarden_worker_metrics_rejected_total",
    Counter,
    &["worker", "reason"],
    "Lines of a worker's metrics text dropped (or, for worker_label, corrected) by reason.",
);
pub const ADMIN_CONNECTIONS_CLOSED: Metric = metric(
    "heapwarden_admin_connections_closed_total",
    Counter,
    &["reason"],
    "Admin connections the server closed: header_timeout, idle, evicted (for a new one at the cap), refused (cap reached, all busy).",
);
pub const ADMIN_CONNECTIONS_OPEN: Metric = metric(
    "heapwarden_admin_connections_open",
    Gauge,
    &[],
    "Admin connections open now.",
);
pub const WORKER_PROBE_DROPPED: Metric = metric(
    "heapwarden_worker_probe_dropped_messages_total",
    Counter,
    WORKER,
    "Control messages the worker's probe dropped because the agent was not reading.",
);
pub const WORKER_PROBE_SAMPLING_RESTARTS: Metric = metric(
    "heapwarden_worker_probe_sampling_restarts_total",
    Counter,
    WORKER,
    "Times the worker's Node probe restarted V8's sampling heap profiler after the app (an APM agent, DevTools) stopped it.",
);
pub const WORKER_GROWTH: Metric = metric(
    "heapwarden_worker_growth_bytes_per_second",
    Gauge,
    WORKER,
    "Fitted trend of the watched memory figure.",
);
pub const WORKER_SECONDS_TO_LIMIT: Metric = metric(
    "heapwarden_worker_seconds_to_limit",
    Gauge,
    WORKER,
    "Predicted seconds until the watched figure reaches max-memory.",
);
pub const REPLACEMENT_SECONDS: Metric = metric(
    "heapwarden_replacement_seconds",
    Gauge,
    &[],
    "Measured time a leak replacement needs: the pool's slowest recent start to ready plus the slowest recent leak-profile capture.",
);
pub const PREDICT_HORIZON: Metric = metric(
    "heapwarden_predict_horizon_seconds",
    Gauge,
    &[],
    "The predicted rule acts when the watched figure is predicted to reach max-memory within this: replacement time x predict-margin (at least one interval) + predict-samples intervals.",
);
pub const WORKER_RESTARTS: Metric = metric(
    "heapwarden_worker_restarts_total",
    Counter,
    &["worker", "reason"],
    "Worker restarts by reason.",
);
pub const WORKER_FAILED: Metric = metric(
    "heapwarden_worker_failed_total",
    Counter,
    WORKER,
    "Times a worker slot entered the failed state (crash loop), before its cool-down.",
);
pub const WORKER_WATCH_FALLBACKS: Metric = metric(
    "heapwarden_worker_watch_fallbacks_total",
    Counter,
    WORKER,
    "Leak rules switched from the probed heap to the process tree's PSS: the tree grew while the heap stayed flat.",
);
pub const LEAK_DETECTIONS: Metric = metric(
    "heapwarden_leak_detections_total",
    Counter,
    &["worker", "rule"],
    "Leak rule trips by rule.",
);
/// One series per slot: the culprit of its latest detection, rendered by the watchdog
/// (it must disappear when the suspect expires, which the recorder cannot do).
pub const LEAK_SUSPECT: Metric = metric(
    "heapwarden_leak_suspect_info",
    Gauge,
    &[
        "worker",
        "rule",
        "function",
        "profile_id",
        "kind",
        "profile_link",
    ],
    "The culprit of the slot's latest leak detection (value: its growth in bytes); kind is heap, external or native_rss; profile_link opens the leak profile in Grafana when export.pyroscope.link-base is set.",
);
pub const HEAP_PROFILES: Metric = metric(
    "heapwarden_heap_profiles_total",
    Counter,
    &["trigger", "outcome"],
    "Heap profiles taken by trigger and outcome.",
);
pub const HEAP_SNAPSHOTS: Metric = metric(
    "heapwarden_heap_snapshots_total",
    Counter,
    &["trigger", "outcome"],
    "Node heap snapshots taken by trigger and outcome.",
);
pub const HEAP_PROFILE_DURATION: Metric = Metric {
    buckets: &[
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ],
    ..metric(
        "heapwarden_heap_profile_duration_seconds",
        Kind::Histogram,
        &[],
        "Time to dump, convert and store one heap profile.",
    )
};
pub const PROFILE_EXPORTS: Metric = metric(
    "heapwarden_profile_exports_total",
    Counter,
    &["outcome"],
    "Heap profiles pushed to Pyroscope by outcome (sent, rejected, expired, invalid: one per profile; retried: per failed attempt).",
);
pub const PROFILE_EXPORT_LAG: Metric = metric(
    "heapwarden_profile_export_lag_seconds",
    Gauge,
    &[],
    "Age of the oldest stored profile not yet pushed to Pyroscope; 0 when none waits (or export is off).",
);
pub const PROFILE_EXPORT_PENDING: Metric = metric(
    "heapwarden_profile_export_pending",
    Gauge,
    &[],
    "Stored profiles waiting to be pushed to Pyroscope.",
);
/// One push: a local sink answers in milliseconds, the default timeout is 10 s.
pub const PROFILE_PUSH_DURATION: Metric = Metric {
    buckets: &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ],
    ..metric(
        "heapwarden_profile_push_duration_seconds",
        Kind::Histogram,
        &[],
        "Time of one push to Pyroscope, connect to the last byte of the answer.",
    )
};
pub const PROFILES_STORED_BYTES: Metric = metric(
    "heapwarden_profiles_stored_bytes",
    Gauge,
    &[],
    "Bytes of heap profiles kept in the state directory.",
);
pub const PROFILES_LIMIT_BYTES: Metric = metric(
    "heapwarden_profiles_limit_bytes",
    Gauge,
    &[],
    "profiles.max-bytes: the retention limit of stored heap profiles.",
);
/// Draining one worker, up to the default 30 s drain deadline and beyond.
pub const DRAIN_DURATION: Metric = Metric {
    buckets: &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0],
    ..metric(
        "heapwarden_drain_duration_seconds",
        Kind::Histogram,
        &[],
        "Time a replaced worker took to drain.",
    )
};
/// One sampling round: 50 µs (procfs only, few workers) to 1 s (a probe timing out).
pub const SAMPLE_DURATION: Metric = Metric {
    buckets: &[
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0,
    ],
    ..metric(
        "heapwarden_sample_duration_seconds",
        Kind::Histogram,
        &[],
        "Duration of one sampling round over all workers.",
    )
};
pub const AGENT_RSS: Metric = metric(
    "heapwarden_agent_rss_bytes",
    Gauge,
    &[],
    "Resident set size of the agent process.",
);
pub const AGENT_CPU: Metric = metric(
    "heapwarden_agent_cpu_seconds_total",
    FloatCounter,
    &[],
    "CPU time of the agent process.",
);
pub const SYSTEM_MEMORY: Metric = metric(
    "heapwarden_system_memory_bytes",
    Gauge,
    &["state"],
    "Machine memory by state (total, available, used).",
);
pub const SYSTEM_LOAD: Metric = metric(
    "heapwarden_system_load",
    Gauge,
    &["period"],
    "Load average by period.",
);
pub const CGROUP_MEMORY_PRESSURE: Metric = metric(
    "heapwarden_cgroup_memory_pressure",
    Gauge,
    &["window"],
    "PSI memory pressure (some) of the agent's cgroup, percent.",
);
pub const CGROUP_MEMORY_CURRENT: Metric = metric(
    "heapwarden_cgroup_memory_current_bytes",
    Gauge,
    &[],
    "memory.current of the agent's cgroup.",
);
pub const CGROUP_MEMORY_MAX: Metric = metric(
    "heapwarden_cgroup_memory_max_bytes",
    Gauge,
    &[],
    "memory.max of the agent's cgroup, when limited.",
);

/// Every metric the agent exports (worker families it merges are the workers' own).
pub const CATALOG: &[Metric] = &[
    WORKER_UP,
    WORKER_STATE,
    WORKER_RSS,
    WORKER_PSS,
    WORKER_USS,
    WORKER_SWAP,
    WORKER_HEAP_ALLOCATED,
    WORKER_HEAP_ACTIVE,
    WORKER_HEAP_RESIDENT,
    WORKER_HEAP_RETAINED,
    WORKER_EXTERNAL,
    WORKER_ARRAY_BUFFERS,
    WORKER_CPU,
    WORKER_RUNTIME_LAG,
    WORKER_PROBE_DROPPED,
    WORKER_PROBE_SAMPLING_RESTARTS,
    WORKER_LOG_LINES_TRUNCATED,
    WORKER_METRICS_REJECTED,
    ADMIN_CONNECTIONS_CLOSED,
    ADMIN_CONNECTIONS_OPEN,
    WORKER_GROWTH,
    WORKER_SECONDS_TO_LIMIT,
    REPLACEMENT_SECONDS,
    PREDICT_HORIZON,
    WORKER_RESTARTS,
    WORKER_FAILED,
    LEAK_DETECTIONS,
    LEAK_SUSPECT,
    WORKER_WATCH_FALLBACKS,
    HEAP_PROFILES,
    HEAP_SNAPSHOTS,
    HEAP_PROFILE_DURATION,
    PROFILE_EXPORTS,
    PROFILE_EXPORT_LAG,
    PROFILE_EXPORT_PENDING,
    PROFILE_PUSH_DURATION,
    PROFILES_STORED_BYTES,
    PROFILES_LIMIT_BYTES,
    DRAIN_DURATION,
    SAMPLE_DURATION,
    AGENT_RSS,
    AGENT_CPU,
    SYSTEM_MEMORY,
    SYSTEM_LOAD,
    CGROUP_MEMORY_PRESSURE,
    CGROUP_MEMORY_CURRENT,
    CGROUP_MEMORY_MAX,
];

/// The catalog entry named `name`.
pub fn find(name: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| m.name == name)
}

/// The agent's recorder: a Prometheus exporter with every histogram's buckets, and the
/// agent's own families beside it ([`AgentRecorder`]); not installed (the agent installs
/// one process-wide, tests use one locally).
pub fn build_recorder() -> Result<AgentRecorder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for m in CATALOG.iter().filter(|m| m.kind == Kind::Histogram) {
        builder = builder.set_buckets_for_metric(Matcher::Full(m.name.to_string()), m.buckets)?;
    }
    Ok(AgentRecorder::new(builder.build_recorder()))
}

/// Registers every family's HELP text with the current recorder. Prometheus tooling
/// (`promtool check metrics`) flags a family without HELP, and the dashboards show it as
/// the panel description.
pub fn describe_all() {
    for m in CATALOG {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            // Rendered with its HELP line by the watchdog's suspect board.
            Kind::Gauge if m.name == LEAK_SUSPECT.name => {}
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
            // Rendered with its HELP line from the catalog by `own_series`.
            Kind::FloatCounter => {}
        }
    }
}
