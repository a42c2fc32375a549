//! Writes one round's figures to the `metrics` recorder under the catalog's names,
//! and renders the float CPU counters the recorder cannot hold. Label values come from
//! fixed sets: the slot number, a state name, a window.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use metrics::{counter, gauge, histogram};

use super::WorkerSample;
use super::collect::HostFigures;
use crate::metric_names::labels::{
    BUDGET_EXHAUSTED, LoadPeriod, MemoryState, PressureWindow, worker_states,
};
use crate::metric_names::*;
use crate::supervisor::{PoolView, SlotState};

/// `heapwarden_worker_up` and `heapwarden_worker_state` for every slot.
pub fn record_slots(view: &PoolView) {
    for slot in &view.slots {
        let worker = slot.slot.to_string();
        let up = slot.worker.as_ref().is_some_and(|w| w.ready)
            && matches!(slot.state, SlotState::Ready | SlotState::Replacing);
        gauge!(WORKER_UP.name, "worker" => worker.clone()).set(if up { 1.0 } else { 0.0 });
        // One state at a time: a ready slot whose leak-restart budget is spent shows as
        // `budget_exhausted` (it serves, but a leak no longer replaces it), not `ready`.
        let exhausted = slot.budget_exhausted && slot.state == SlotState::Ready;
        for state in SlotState::ALL {
            let value = if state == slot.state && !exhausted {
                1.0
            } else {
                0.0
            };
            gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => state.as_str())
                .set(value);
        }
        gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => BUDGET_EXHAUSTED)
            .set(if exhausted { 1.0 } else { 0.0 });
    }
}

/// Slots a reload removed: down, in no state (their series stay, at zero).
pub fn record_removed_slots(slots: std::ops::Range<usize>) {
    for slot in slots {
        let worker = slot.to_string();
        gauge!(WORKER_UP.name, "worker" => worker.clone()).set(0.0);
        for state in worker_states() {
            gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => state).set(0.0);
        }
    }
}

/// `dropped_since`: control messages the worker's probe dropped since the last round.
pub fn record_worker(sample: &WorkerSample, dropped_since: u64) {
    let worker = sample.slot.to_string();
    let set = |m: Metric, value: f64| gauge!(m.name, "worker" => worker.clone()).set(value);
    set(WORKER_RSS, sample.rss as f64);
    if let Some(pss) = sample.pss {
        set(WORKER_PSS, pss as f64);
    }
    if let Some(uss) = sample.uss {
        set(WORKER_USS, uss as f64);
    }
    if let Some(swap) = sample.swap {
        set(WORKER_SWAP, swap as f64);
    }
    if let Some(heap) = &sample.heap {
        set(WORKER_HEAP_ALLOCATED, heap.allocated as f64);
        set(WORKER_HEAP_ACTIVE, heap.active as f64);
        // Absent for Node workers: V8 has no such figures, and none are made up.
        if let Some(resident) = heap.resident {
            set(WORKER_HEAP_RESIDENT, resident as f64);
        }
        if let Some(retained) = heap.retained {
            set(WORKER_HEAP_RETAINED, retained as f64);
        }
    }
    if let Some(external) = sample.external_bytes {
        set(WORKER_EXTERNAL, external as f64);
    }
    if let Some(array_buffers) = sample.array_buffers_bytes {
        set(WORKER_ARRAY_BUFFERS, array_buffers as f64);
    }
    if let Some(lag) = sample.runtime_lag_seconds {
        set(WORKER_RUNTIME_LAG, lag);
    }
    counter!(WORKER_PROBE_DROPPED.name, "worker" => worker.clone()).increment(dropped_since);
}

pub fn record_host(host: &HostFigures) {
    if let Some(agent) = &host.agent {
        gauge!(AGENT_RSS.name).set(agent.rss as f64);
    }
    if let Some(mem) = &host.memory {
        for (state, bytes) in [
            (MemoryState::Total, mem.total),
            (MemoryState::Available, mem.available),
            (MemoryState::Used, mem.used()),
        ] {
            gauge!(SYSTEM_MEMORY.name, "state" => state.as_str()).set(bytes as f64);
        }
    }
    if let Some(load) = &host.load {
        for (period, value) in [
            (LoadPeriod::OneMinute, load.one),
            (LoadPeriod::FiveMinutes, load.five),
            (LoadPeriod::FifteenMinutes, load.fifteen),
        ] {
            gauge!(SYSTEM_LOAD.name, "period" => period.as_str()).set(value);
        }
    }
    if let Some(cg) = &host.cgroup {
        for (window, value) in [
            (PressureWindow::Avg10, cg.pressure_avg10),
            (PressureWindow::Avg60, cg.pressure_avg60),
        ] {
            if let Some(v) = value {
                gauge!(CGROUP_MEMORY_PRESSURE.name, "window" => window.as_str()).set(v);
            }
        }
        if let Some(v) = cg.current {
            gauge!(CGROUP_MEMORY_CURRENT.name).set(v as f64);
        }
        if let Some(v) = cg.max {
            gauge!(CGROUP_MEMORY_MAX.name).set(v as f64);
        }
    }
}

pub fn record_round_duration(seconds: f64) {
    histogram!(SAMPLE_DURATION.name).record(seconds);
}

/// CPU seconds as Prometheus counters with fractional values, by slot, plus the agent's.
pub fn render_cpu_counters(workers: &BTreeMap<usize, f64>, agent: Option<f64>) -> String {
    fn family(out: &mut String, m: Metric) {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} counter", m.name);
    }
    let mut out = String::new();
    if !workers.is_empty() {
        family(&mut out, WORKER_CPU);
        for (slot, seconds) in workers {
            let _ = writeln!(out, "{}{{worker=\"{slot}\"}} {seconds}", WORKER_CPU.name);
        }
    }
    if let Some(seconds) = agent {
        family(&mut out, AGENT_CPU);
        let _ = writeln!(out, "{} {seconds}", AGENT_CPU.name);
    }
    out
}
