//! Writes one round's figures to the `metrics` recorder under the names in DESIGN.md,
//! and renders the float CPU counters the recorder cannot hold. Label values come from
//! fixed sets: the slot number, a state name, a window.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use metrics::{counter, gauge, histogram};

use super::WorkerSample;
use super::collect::HostFigures;
use crate::supervisor::{PoolView, SlotState};

pub const SAMPLE_DURATION: &str = "heapwarden_sample_duration_seconds";
pub const WORKER_CPU: &str = "heapwarden_worker_cpu_seconds_total";
pub const AGENT_CPU: &str = "heapwarden_agent_cpu_seconds_total";

/// `heapwarden_worker_up` and `heapwarden_worker_state` for every slot.
pub fn record_slots(view: &PoolView) {
    for slot in &view.slots {
        let worker = slot.slot.to_string();
        let up = slot.worker.as_ref().is_some_and(|w| w.ready)
            && matches!(slot.state, SlotState::Ready | SlotState::Replacing);
        gauge!("heapwarden_worker_up", "worker" => worker.clone()).set(if up { 1.0 } else { 0.0 });
        for state in SlotState::ALL {
            let value = if state == slot.state { 1.0 } else { 0.0 };
            gauge!("heapwarden_worker_state", "worker" => worker.clone(), "state" => state.as_str())
                .set(value);
        }
        // Not a state of its own (the slot keeps serving), but what alerts page on.
        let exhausted = if slot.budget_exhausted { 1.0 } else { 0.0 };
        gauge!("heapwarden_worker_state", "worker" => worker.clone(), "state" => "budget_exhausted")
            .set(exhausted);
    }
}

/// `dropped_since`: control messages the worker's probe dropped since the last round.
pub fn record_worker(sample: &WorkerSample, dropped_since: u64) {
    let worker = sample.slot.to_string();
    let set = |name: &'static str, value: f64| gauge!(name, "worker" => worker.clone()).set(value);
    set("heapwarden_worker_rss_bytes", sample.rss as f64);
    if let Some(pss) = sample.pss {
        set("heapwarden_worker_pss_bytes", pss as f64);
    }
    if let Some(uss) = sample.uss {
        set("heapwarden_worker_uss_bytes", uss as f64);
    }
    if let Some(swap) = sample.swap {
        set("heapwarden_worker_swap_bytes", swap as f64);
    }
    if let Some(heap) = &sample.heap {
        set(
            "heapwarden_worker_heap_allocated_bytes",
            heap.allocated as f64,
        );
        set("heapwarden_worker_heap_active_bytes", heap.active as f64);
        // Absent for Node workers: V8 has no such figures, and none are made up.
        if let Some(resident) = heap.resident {
            set("heapwarden_worker_heap_resident_bytes", resident as f64);
        }
        if let Some(retained) = heap.retained {
            set("heapwarden_worker_heap_retained_bytes", retained as f64);
        }
    }
    if let Some(external) = sample.external_bytes {
        set("heapwarden_worker_external_bytes", external as f64);
    }
    if let Some(array_buffers) = sample.array_buffers_bytes {
        set(
            "heapwarden_worker_array_buffers_bytes",
            array_buffers as f64,
        );
    }
    if let Some(lag) = sample.runtime_lag_seconds {
        set("heapwarden_worker_runtime_lag_seconds", lag);
    }
    counter!("heapwarden_worker_probe_dropped_messages_total", "worker" => worker.clone())
        .increment(dropped_since);
}

pub fn record_host(host: &HostFigures) {
    if let Some(agent) = &host.agent {
        gauge!("heapwarden_agent_rss_bytes").set(agent.rss as f64);
    }
    if let Some(mem) = &host.memory {
        gauge!("heapwarden_system_memory_bytes", "state" => "total").set(mem.total as f64);
        gauge!("heapwarden_system_memory_bytes", "state" => "available").set(mem.available as f64);
        gauge!("heapwarden_system_memory_bytes", "state" => "used").set(mem.used() as f64);
    }
    if let Some(load) = &host.load {
        gauge!("heapwarden_system_load", "period" => "1m").set(load.one);
        gauge!("heapwarden_system_load", "period" => "5m").set(load.five);
        gauge!("heapwarden_system_load", "period" => "15m").set(load.fifteen);
    }
    if let Some(cg) = &host.cgroup {
        if let Some(v) = cg.pressure_avg10 {
            gauge!("heapwarden_cgroup_memory_pressure", "window" => "avg10").set(v);
        }
        if let Some(v) = cg.pressure_avg60 {
            gauge!("heapwarden_cgroup_memory_pressure", "window" => "avg60").set(v);
        }
        if let Some(v) = cg.current {
            gauge!("heapwarden_cgroup_memory_current_bytes").set(v as f64);
        }
        if let Some(v) = cg.max {
            gauge!("heapwarden_cgroup_memory_max_bytes").set(v as f64);
        }
    }
}

pub fn record_round_duration(seconds: f64) {
    histogram!(SAMPLE_DURATION).record(seconds);
}

/// CPU seconds as Prometheus counters with fractional values, by slot, plus the agent's.
pub fn render_cpu_counters(workers: &BTreeMap<usize, f64>, agent: Option<f64>) -> String {
    let mut out = String::new();
    if !workers.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {WORKER_CPU} CPU time of the worker's process tree."
        );
        let _ = writeln!(out, "# TYPE {WORKER_CPU} counter");
        for (slot, seconds) in workers {
            let _ = writeln!(out, "{WORKER_CPU}{{worker=\"{slot}\"}} {seconds}");
        }
    }
    if let Some(seconds) = agent {
        let _ = writeln!(out, "# HELP {AGENT_CPU} CPU time of the agent process.");
        let _ = writeln!(out, "# TYPE {AGENT_CPU} counter");
        let _ = writeln!(out, "{AGENT_CPU} {seconds}");
    }
    out
}
