//! HELP text for every agent-side metric in DESIGN.md ("Metric names"), registered with
//! whichever recorder is current. Prometheus tooling (`promtool check metrics`) flags a
//! family without HELP, and the dashboards show it as the panel description.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub fn describe_metrics() {
    describe_counter!(
        "heapwarden_worker_metrics_rejected_total",
        "Lines of a worker's metrics text dropped (or, for worker_label, corrected) by reason."
    );
    describe_counter!(
        "heapwarden_admin_connections_closed_total",
        "Admin connections the server closed: header_timeout, idle, evicted (for a new one at the cap), refused (cap reached, all busy)."
    );
    describe_gauge!(
        "heapwarden_admin_connections_open",
        "Admin connections open now."
    );
    describe_counter!(
        "heapwarden_worker_failed_total",
        "Times a worker slot entered the failed state (crash loop), before its cool-down."
    );
    describe_gauge!(
        "heapwarden_profiles_limit_bytes",
        "profiles.max-bytes: the retention limit of stored heap profiles."
    );
    describe_gauge!(
        "heapwarden_worker_up",
        "1 when the slot's worker is running and ready."
    );
    describe_gauge!(
        "heapwarden_worker_state",
        "1 for the slot's current state (starting, ready, replacing, backoff, failed, stopping)."
    );
    describe_gauge!(
        "heapwarden_worker_rss_bytes",
        "Resident set size of the worker's process tree."
    );
    describe_gauge!(
        "heapwarden_worker_pss_bytes",
        "Proportional set size of the worker's process tree (smaps_rollup)."
    );
    describe_gauge!(
        "heapwarden_worker_uss_bytes",
        "Unique set size (private pages) of the worker's process tree."
    );
    describe_gauge!(
        "heapwarden_worker_swap_bytes",
        "Swapped-out memory of the worker's process tree."
    );
    describe_gauge!(
        "heapwarden_worker_heap_allocated_bytes",
        "Heap used: jemalloc stats.allocated; V8 heapUsed for Node workers."
    );
    describe_gauge!(
        "heapwarden_worker_heap_active_bytes",
        "Heap total: jemalloc stats.active; V8 heapTotal for Node workers."
    );
    describe_gauge!(
        "heapwarden_worker_heap_resident_bytes",
        "jemalloc stats.resident."
    );
    describe_gauge!(
        "heapwarden_worker_heap_retained_bytes",
        "jemalloc stats.retained."
    );
    describe_gauge!(
        "heapwarden_worker_external_bytes",
        "Node workers: memory of C++ objects bound to JavaScript, Buffers included (process.memoryUsage().external)."
    );
    describe_gauge!(
        "heapwarden_worker_array_buffers_bytes",
        "Node workers: ArrayBuffer and Buffer backing stores (process.memoryUsage().arrayBuffers, part of external)."
    );
    describe_gauge!(
        "heapwarden_worker_runtime_lag_seconds",
        "Scheduling lag of the worker's async runtime (Node: the longest event-loop delay since the last sample)."
    );
    describe_counter!(
        "heapwarden_worker_probe_dropped_messages_total",
        "Control messages the worker's probe dropped because the agent was not reading."
    );
    describe_gauge!(
        "heapwarden_worker_growth_bytes_per_second",
        "Fitted trend of the watched memory figure."
    );
    describe_gauge!(
        "heapwarden_worker_seconds_to_limit",
        "Predicted seconds until the watched figure reaches max-memory."
    );
    describe_counter!(
        "heapwarden_worker_restarts_total",
        "Worker restarts by reason."
    );
    describe_counter!(
        "heapwarden_leak_detections_total",
        "Leak rule trips by rule."
    );
    describe_counter!(
        "heapwarden_heap_profiles_total",
        "Heap profiles taken by trigger and outcome."
    );
    describe_histogram!(
        "heapwarden_heap_profile_duration_seconds",
        "Time to dump, convert and store one heap profile."
    );
    describe_gauge!(
        "heapwarden_profiles_stored_bytes",
        "Bytes of heap profiles kept in the state directory."
    );
    describe_histogram!(
        "heapwarden_drain_duration_seconds",
        "Time a replaced worker took to drain."
    );
    describe_histogram!(
        "heapwarden_sample_duration_seconds",
        "Duration of one sampling round over all workers."
    );
    describe_gauge!(
        "heapwarden_agent_rss_bytes",
        "Resident set size of the agent process."
    );
    describe_gauge!(
        "heapwarden_system_memory_bytes",
        "Machine memory by state (total, available, used)."
    );
    describe_gauge!("heapwarden_system_load", "Load average by period.");
    describe_gauge!(
        "heapwarden_cgroup_memory_pressure",
        "PSI memory pressure (some) of the agent's cgroup, percent."
    );
    describe_gauge!(
        "heapwarden_cgroup_memory_current_bytes",
        "memory.current of the agent's cgroup."
    );
    describe_gauge!(
        "heapwarden_cgroup_memory_max_bytes",
        "memory.max of the agent's cgroup, when limited."
    );
}
