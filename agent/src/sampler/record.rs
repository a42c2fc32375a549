//! Writes one round's figures to the `metrics` recorder under the catalog's names (CPU
//! seconds, float counters, as gauges: the recorder renders them as counters). Label
//! values come from fixed sets: the slot number, a state name, a window. A slot's series
//! are registered once ([`SlotMetrics`]); a round then only stores values, instead of building a key and
//! looking it up in the registry for each of the ~20 series of each slot every second.

use std::cell::OnceCell;
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::WorkerSample;
use super::collect::HostFigures;
use crate::metric_names::labels::{
    BUDGET_EXHAUSTED, LoadPeriod, MemoryState, PressureWindow, worker_states,
};
use crate::metric_names::*;
use crate::supervisor::{PoolView, SlotState};

/// One slot's series, registered with the recorder once. A figure a worker may not have
/// (PSS before the first smaps round, heap figures without a probe, jemalloc's resident
/// and retained for Node, V8's external for Rust) is registered when first measured: a
/// registered series is exported at zero, and none is made up.
pub struct SlotMetrics {
    up: Gauge,
    states: [Gauge; SlotState::ALL.len()],
    budget_exhausted: Gauge,
    rss: Gauge,
    cpu: LazyGauge,
    pss: LazyGauge,
    uss: LazyGauge,
    swap: LazyGauge,
    heap_allocated: LazyGauge,
    heap_active: LazyGauge,
    heap_resident: LazyGauge,
    heap_retained: LazyGauge,
    external: LazyGauge,
    array_buffers: LazyGauge,
    runtime_lag: LazyGauge,
    probe_dropped: Counter,
    probe_sampling_restarts: Counter,
}

/// A slot's gauge, registered at its first value. It keeps only the name, the shared label
/// and the handle (not the whole [`Metric`]): each slot has ten of them.
pub struct LazyGauge {
    name: &'static str,
    worker: Arc<str>,
    gauge: OnceCell<Gauge>,
}

impl LazyGauge {
    fn new(metric: Metric, worker: &Arc<str>) -> LazyGauge {
        LazyGauge {
            name: metric.name,
            worker: worker.clone(),
            gauge: OnceCell::new(),
        }
    }

    pub fn set(&self, value: f64) {
        self.gauge
            .get_or_init(|| gauge!(self.name, "worker" => self.worker.clone()))
            .set(value);
    }
}

impl SlotMetrics {
    pub fn register(slot: usize) -> SlotMetrics {
        let worker = crate::metric_names::labels::worker(slot);
        let g = |m: Metric| gauge!(m.name, "worker" => worker.clone());
        let lazy = |m: Metric| LazyGauge::new(m, &worker);
        SlotMetrics {
            up: g(WORKER_UP),
            states: SlotState::ALL.map(|state| {
                gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => state.as_str())
            }),
            budget_exhausted: gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => BUDGET_EXHAUSTED),
            rss: g(WORKER_RSS),
            cpu: lazy(WORKER_CPU),
            pss: lazy(WORKER_PSS),
            uss: lazy(WORKER_USS),
            swap: lazy(WORKER_SWAP),
            heap_allocated: lazy(WORKER_HEAP_ALLOCATED),
            heap_active: lazy(WORKER_HEAP_ACTIVE),
            heap_resident: lazy(WORKER_HEAP_RESIDENT),
            heap_retained: lazy(WORKER_HEAP_RETAINED),
            external: lazy(WORKER_EXTERNAL),
            array_buffers: lazy(WORKER_ARRAY_BUFFERS),
            runtime_lag: lazy(WORKER_RUNTIME_LAG),
            probe_dropped: counter!(WORKER_PROBE_DROPPED.name, "worker" => worker.clone()),
            probe_sampling_restarts: counter!(WORKER_PROBE_SAMPLING_RESTARTS.name, "worker" => worker.clone()),
        }
    }
}

/// Every slot's handles, indexed by slot, registered when a slot is first seen.
#[derive(Default)]
pub struct SlotsMetrics(Vec<SlotMetrics>);

impl SlotsMetrics {
    pub fn slot(&mut self, slot: usize) -> &SlotMetrics {
        while self.0.len() <= slot {
            let next = self.0.len();
            self.0.push(SlotMetrics::register(next));
        }
        &self.0[slot]
    }
}

/// `heapwarden_worker_up` and `heapwarden_worker_state` for every slot.
pub fn record_slots(view: &PoolView, metrics: &mut SlotsMetrics) {
    for slot in &view.slots {
        let m = metrics.slot(slot.slot);
        let up = slot.worker.as_ref().is_some_and(|w| w.ready)
            && matches!(slot.state, SlotState::Ready | SlotState::Replacing);
        m.up.set(if up { 1.0 } else { 0.0 });
        // One state at a time: a ready slot whose leak-restart budget is spent shows as
        // `budget_exhausted` (it serves, but a leak no longer replaces it), not `ready`.
        let exhausted = slot.budget_exhausted && slot.state == SlotState::Ready;
        for (state, gauge) in SlotState::ALL.iter().zip(&m.states) {
            let value = if *state == slot.state && !exhausted {
                1.0
            } else {
                0.0
            };
            gauge.set(value);
        }
        m.budget_exhausted.set(if exhausted { 1.0 } else { 0.0 });
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

/// `since`: what the worker's probe counted since the last round.
pub fn record_worker(sample: &WorkerSample, since: ProbeCounts, m: &SlotMetrics) {
    m.rss.set(sample.rss as f64);
    m.cpu.set(sample.cpu_seconds);
    if let Some(pss) = sample.pss {
        m.pss.set(pss as f64);
    }
    if let Some(uss) = sample.uss {
        m.uss.set(uss as f64);
    }
    if let Some(swap) = sample.swap {
        m.swap.set(swap as f64);
    }
    if let Some(heap) = &sample.heap {
        m.heap_allocated.set(heap.allocated as f64);
        m.heap_active.set(heap.active as f64);
        // Absent for Node workers: V8 has no such figures, and none are made up.
        if let Some(resident) = heap.resident {
            m.heap_resident.set(resident as f64);
        }
        if let Some(retained) = heap.retained {
            m.heap_retained.set(retained as f64);
        }
    }
    if let Some(external) = sample.external_bytes {
        m.external.set(external as f64);
    }
    if let Some(array_buffers) = sample.array_buffers_bytes {
        m.array_buffers.set(array_buffers as f64);
    }
    if let Some(lag) = sample.runtime_lag_seconds {
        m.runtime_lag.set(lag);
    }
    m.probe_dropped.increment(since.dropped);
    m.probe_sampling_restarts.increment(since.sampling_restarts);
}

/// The counters a probe reports as totals since its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounts {
    /// Control messages it dropped because the agent was not reading.
    pub dropped: u64,
    /// Node: restarts of V8's sampling heap profiler another party stopped.
    pub sampling_restarts: u64,
}

impl ProbeCounts {
    /// What grew since `last` (a worker's totals never go down; a new worker starts
    /// from none).
    pub fn since(self, last: ProbeCounts) -> ProbeCounts {
        ProbeCounts {
            dropped: self.dropped.saturating_sub(last.dropped),
            sampling_restarts: self
                .sampling_restarts
                .saturating_sub(last.sampling_restarts),
        }
    }
}

/// The agent's own and the machine's series, each registered when first measured (a
/// host without a cgroup v2 memory controller exports none of those), then only stored.
#[derive(Default)]
pub struct HostMetrics {
    agent_rss: OnceCell<Gauge>,
    agent_cpu: OnceCell<Gauge>,
    memory: [OnceCell<Gauge>; 3],
    load: [OnceCell<Gauge>; 3],
    pressure: [OnceCell<Gauge>; 2],
    cgroup_current: OnceCell<Gauge>,
    cgroup_max: OnceCell<Gauge>,
    round_duration: OnceCell<Histogram>,
}

fn set(cell: &OnceCell<Gauge>, register: impl FnOnce() -> Gauge, value: f64) {
    cell.get_or_init(register).set(value);
}

pub fn record_host(host: &HostFigures, m: &HostMetrics) {
    if let Some(agent) = &host.agent {
        set(&m.agent_rss, || gauge!(AGENT_RSS.name), agent.rss as f64);
        set(&m.agent_cpu, || gauge!(AGENT_CPU.name), agent.cpu_seconds);
    }
    if let Some(mem) = &host.memory {
        for ((state, bytes), cell) in [
            (MemoryState::Total, mem.total),
            (MemoryState::Available, mem.available),
            (MemoryState::Used, mem.used()),
        ]
        .into_iter()
        .zip(&m.memory)
        {
            let register = || gauge!(SYSTEM_MEMORY.name, "state" => state.as_str());
            set(cell, register, bytes as f64);
        }
    }
    if let Some(load) = &host.load {
        for ((period, value), cell) in [
            (LoadPeriod::OneMinute, load.one),
            (LoadPeriod::FiveMinutes, load.five),
            (LoadPeriod::FifteenMinutes, load.fifteen),
        ]
        .into_iter()
        .zip(&m.load)
        {
            set(
                cell,
                || gauge!(SYSTEM_LOAD.name, "period" => period.as_str()),
                value,
            );
        }
    }
    if let Some(cg) = &host.cgroup {
        for ((window, value), cell) in [
            (PressureWindow::Avg10, cg.pressure_avg10),
            (PressureWindow::Avg60, cg.pressure_avg60),
        ]
        .into_iter()
        .zip(&m.pressure)
        {
            if let Some(v) = value {
                let register = || gauge!(CGROUP_MEMORY_PRESSURE.name, "window" => window.as_str());
                set(cell, register, v);
            }
        }
        if let Some(v) = cg.current {
            set(
                &m.cgroup_current,
                || gauge!(CGROUP_MEMORY_CURRENT.name),
                v as f64,
            );
        }
        if let Some(v) = cg.max {
            set(&m.cgroup_max, || gauge!(CGROUP_MEMORY_MAX.name), v as f64);
        }
    }
}

pub fn record_round_duration(seconds: f64, m: &HostMetrics) {
    m.round_duration
        .get_or_init(|| histogram!(SAMPLE_DURATION.name))
        .record(seconds);
}
