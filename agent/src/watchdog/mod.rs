//! The watchdog: one task that feeds each worker's samples to its leak rules, writes the
//! baseline profile at warm-up end, and on a trip writes the leak profile, diffs it
//! against the baseline, logs the top growing allocation sites, and asks the supervisor
//! for a make-before-break replacement (unless `action = "profile-only"`).

pub mod capture;
#[cfg(test)]
mod node_sawtooth_tests;
pub mod rules;
pub mod snapshot;

use std::collections::HashMap;

use slog::{Logger, error, info, warn};
use tokio::sync::{mpsc, watch};

pub use capture::{CaptureError, CaptureRequest, take_profile};
use rules::{LeakDetector, Observation, RulesConfig, Trip};
pub use snapshot::{SnapshotError, SnapshotRequest, take_snapshot};

use crate::admin::api::{FiguresView, SlotFigures};
use crate::config::WatchdogConfig;
use crate::config::types::{LeakAction, Watch};
use crate::log::RedactedJson;
use crate::profiles::{ProfileFigures, ProfileStoreHandle, Trigger};
use crate::sampler::WorkerSample;
use crate::supervisor::{PoolView, Request, RestartReason, Runtime};

/// How many growing sites a detection record lists.
const TOP_SITES: usize = 5;

/// The memory figure a worker's rules watch, fixed for the worker's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figure {
    Heap,
    /// Node: the memory JavaScript holds, `heapUsed + external` (a Buffer leak lives in
    /// `external`, outside the V8 heap).
    JsHeld,
    Pss,
    Rss,
}

impl Figure {
    /// Decided by whether the worker links the probe (and which), not by one sample: a
    /// single late heap reply must not switch a probe-linked worker to the slower PSS
    /// cadence.
    fn pick(watch: Watch, probe: bool, runtime: Option<Runtime>) -> Figure {
        let node = runtime == Some(Runtime::Node);
        match watch {
            Watch::Heap | Watch::Auto if node => Figure::JsHeld,
            Watch::Heap => Figure::Heap,
            Watch::Pss => Figure::Pss,
            Watch::Rss => Figure::Rss,
            Watch::Auto if probe => Figure::Heap,
            Watch::Auto => Figure::Pss,
        }
    }

    fn read(self, sample: &WorkerSample) -> Option<u64> {
        match self {
            Figure::Heap => sample.heap.as_ref().map(|h| h.allocated),
            Figure::JsHeld => {
                let heap = sample.heap.as_ref()?.allocated;
                Some(heap + sample.external_bytes.unwrap_or(0))
            }
            Figure::Pss => sample.pss,
            Figure::Rss => Some(sample.rss),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Figure::Heap => "heap_allocated",
            Figure::JsHeld => "heap_used_plus_external",
            Figure::Pss => "pss",
            Figure::Rss => "rss",
        }
    }
}

struct SlotWatch {
    worker_id: u64,
    figure: Figure,
    detector: LeakDetector,
}

pub struct Watchdog {
    config: WatchdogConfig,
    rules: RulesConfig,
    slots: HashMap<usize, SlotWatch>,
    pool: watch::Receiver<PoolView>,
    requests: mpsc::Sender<Request>,
    store: ProfileStoreHandle,
    figures: watch::Sender<FiguresView>,
    log: Logger,
    /// `profiles.snapshot-headroom`, for `leak-snapshot`.
    snapshot_headroom: f64,
}

impl Watchdog {
    /// `profiles.snapshot-headroom` for the snapshots `watchdog.leak-snapshot` takes.
    pub fn with_snapshot_headroom(mut self, headroom: f64) -> Watchdog {
        self.snapshot_headroom = headroom;
        self
    }

    pub fn new(
        config: WatchdogConfig,
        pool: watch::Receiver<PoolView>,
        requests: mpsc::Sender<Request>,
        store: ProfileStoreHandle,
        figures: watch::Sender<FiguresView>,
        log: Logger,
    ) -> Watchdog {
        Watchdog {
            rules: RulesConfig::from_watchdog(&config),
            config,
            slots: HashMap::new(),
            pool,
            requests,
            store,
            figures,
            log,
            snapshot_headroom: 2.0,
        }
    }

    /// Consumes samples until the sampler stops.
    pub async fn run(mut self, mut samples: mpsc::Receiver<WorkerSample>) {
        while let Some(sample) = samples.recv().await {
            self.observe(sample);
        }
    }

    fn observe(&mut self, sample: WorkerSample) {
        let slot = sample.slot;
        let trend = self.run_rules(&sample);
        // One publication per sample: API readers wake once per round.
        self.figures.send_modify(|all| {
            let f: &mut SlotFigures = all.entry(slot).or_default();
            f.rss_bytes = Some(sample.rss);
            f.pss_bytes = sample.pss.or(f.pss_bytes);
            f.heap_allocated_bytes = sample.heap.as_ref().map(|h| h.allocated);
            f.heap_active_bytes = sample.heap.as_ref().map(|h| h.active);
            if let Some((figure, obs)) = &trend {
                f.growth_bytes_per_second = obs.slope_bytes_per_sec;
                f.seconds_to_limit = obs.seconds_to_limit;
                f.watched = Some(figure.as_str());
            }
        });
        let Some((figure, obs)) = trend else { return };
        record_trend(slot, &obs);
        if obs.baseline_ready {
            self.spawn_profile(&sample, Trigger::Baseline, None, &obs);
        }
        if let Some(trip) = obs.trip.clone() {
            self.on_trip(&sample, figure, trip, &obs);
        }
    }

    /// Feeds the sample to its slot's rules, once the worker serving the slot is ready
    /// (warm-up starts then: start-up allocations are no leak). A new worker in the slot
    /// gets fresh rules.
    fn run_rules(&mut self, sample: &WorkerSample) -> Option<(Figure, Observation)> {
        let (probe, runtime) = self.pool.borrow().slots.get(sample.slot).and_then(|s| {
            s.worker
                .as_ref()
                .filter(|w| w.worker_id == sample.worker_id && w.ready)
                .map(|w| (w.probe, w.runtime))
        })?;
        if sample.dumping {
            // A heap snapshot is being written: its own memory spike is no leak.
            return None;
        }
        let figure = Figure::pick(self.config.watch, probe, runtime);
        let rules = &self.rules;
        let watch = self.slots.entry(sample.slot).or_insert_with(|| SlotWatch {
            worker_id: sample.worker_id,
            figure,
            detector: LeakDetector::new(rules.clone()),
        });
        if watch.worker_id != sample.worker_id {
            *watch = SlotWatch {
                worker_id: sample.worker_id,
                figure,
                detector: LeakDetector::new(rules.clone()),
            };
        }
        let value = watch.figure.read(sample)?;
        Some((watch.figure, watch.detector.observe(sample.at, value)))
    }

    fn on_trip(&self, sample: &WorkerSample, figure: Figure, trip: Trip, obs: &Observation) {
        let slot = sample.slot;
        metrics::counter!("heapwarden_leak_detections_total",
            "worker" => slot.to_string(), "rule" => trip.rule.as_str())
        .increment(1);
        warn!(self.log, "A leak rule tripped.";
            "worker" => slot, "pid" => sample.pid, "rule" => trip.rule.as_str(),
            "figure" => figure.as_str(), "bytes" => trip.value,
            "baseline_bytes" => trip.baseline,
            "growth_bytes_per_second" => trip.slope_bytes_per_sec,
            "action" => match self.config.action { LeakAction::Restart => "restart", LeakAction::ProfileOnly => "profile-only" });
        self.spawn_profile(sample, Trigger::Leak, Some(trip), obs);
    }

    /// Writes a profile off the sampling path; for a leak, then diffs and replaces.
    fn spawn_profile(
        &self,
        sample: &WorkerSample,
        trigger: Trigger,
        trip: Option<Trip>,
        obs: &Observation,
    ) {
        let view = self.pool.borrow();
        let Some(worker) = view.slots.get(sample.slot).and_then(|s| s.worker.clone()) else {
            return;
        };
        drop(view);
        let figures = ProfileFigures {
            rss: Some(sample.rss),
            pss: sample.pss,
            heap_allocated: sample.heap.as_ref().map(|h| h.allocated),
            heap_active: sample.heap.as_ref().map(|h| h.active),
            growth_bytes_per_second: obs.slope_bytes_per_sec,
        };
        let rule = trip.as_ref().map(|t| t.rule.as_str().to_string());
        let snapshot = (trip.is_some() && self.config.leak_snapshot).then(|| SnapshotRequest {
            slot: sample.slot,
            pid: worker.pid,
            link: worker.link.clone().filter(|_| worker.probe),
            runtime: worker.runtime,
            trigger,
            figures: figures.clone(),
            rule: rule.clone(),
            headroom: self.snapshot_headroom,
        });
        let request = CaptureRequest {
            slot: sample.slot,
            pid: worker.pid,
            link: worker.link.filter(|_| worker.probe),
            trigger,
            figures,
            rule,
        };
        let store = self.store.clone();
        let log = self.log.clone();
        let requests = self.requests.clone();
        let restart = self.config.action == LeakAction::Restart;
        let slot = sample.slot;
        tokio::spawn(async move {
            let profile = take_profile(&store, request, &log).await;
            let Some(trip) = trip else { return };
            if let Some(snapshot) = snapshot.filter(|s| s.runtime == Some(Runtime::Node)) {
                let _ = take_snapshot(&store, snapshot, &log).await;
            }
            let diff = match &profile {
                Ok(meta) => store.diff(meta.id, None).await.ok(),
                Err(_) => None,
            };
            let sites = diff
                .as_ref()
                .map(|d| {
                    serde_json::to_value(
                        d.top
                            .iter()
                            .filter(|e| e.delta_bytes > 0)
                            .take(TOP_SITES)
                            .collect::<Vec<_>>(),
                    )
                    .unwrap_or_default()
                })
                .unwrap_or_default();
            error!(log, "A memory leak was detected.";
                "worker" => slot, "rule" => trip.rule.as_str(), "bytes" => trip.value,
                "profile_id" => profile.as_ref().ok().map(|m| m.id),
                "baseline_profile_id" => diff.as_ref().map(|d| d.base_id),
                "growth_bytes" => diff.as_ref().map(|d| d.total_delta_bytes),
                "top_growing_sites" => RedactedJson(sites),
                "action" => if restart { "restart" } else { "profile-only" });
            if restart {
                let replace = Request::Replace {
                    slot,
                    reason: RestartReason::Leak,
                };
                if requests.send(replace).await.is_err() {
                    info!(log, "The supervisor is gone; the leaking worker is not replaced."; "worker" => slot);
                }
            }
        });
    }
}

fn record_trend(slot: usize, obs: &Observation) {
    let worker = slot.to_string();
    metrics::gauge!("heapwarden_worker_growth_bytes_per_second", "worker" => worker.clone())
        .set(obs.slope_bytes_per_sec.unwrap_or(0.0));
    // NaN when not growing: comparisons against it are false, so alerts stay quiet.
    metrics::gauge!("heapwarden_worker_seconds_to_limit", "worker" => worker)
        .set(obs.seconds_to_limit.unwrap_or(f64::NAN));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(heap: bool) -> WorkerSample {
        WorkerSample {
            slot: 0,
            worker_id: 1,
            pid: 1,
            at: std::time::Instant::now(),
            rss: 300,
            pss: None,
            uss: None,
            swap: None,
            cpu_seconds: 0.0,
            processes: 1,
            heap: heap.then_some(heapwarden_probes::HeapStats {
                allocated: 100,
                active: 120,
                resident: Some(150),
                mapped: Some(200),
                retained: Some(0),
                metadata: Some(10),
            }),
            runtime_lag_seconds: None,
            external_bytes: Some(40),
            array_buffers_bytes: Some(20),
            dumping: false,
        }
    }

    #[test]
    fn auto_watches_the_heap_of_probe_linked_workers_even_after_a_missed_reply() {
        let figure = Figure::pick(Watch::Auto, true, Some(Runtime::Rust));
        assert_eq!(figure, Figure::Heap);
        assert_eq!(figure.read(&sample(true)), Some(100));
        // A late reply skips this sample; it does not switch the figure.
        assert_eq!(figure.read(&sample(false)), None);
    }

    #[test]
    fn auto_watches_pss_of_plain_workers_and_explicit_choices_win() {
        assert_eq!(Figure::pick(Watch::Auto, false, None), Figure::Pss);
        assert_eq!(Figure::pick(Watch::Rss, true, None), Figure::Rss);
        assert_eq!(Figure::Rss.read(&sample(false)), Some(300));
    }

    #[test]
    fn node_workers_are_watched_on_heap_used_plus_external() {
        let node = Some(Runtime::Node);
        assert_eq!(Figure::pick(Watch::Auto, true, node), Figure::JsHeld);
        assert_eq!(Figure::pick(Watch::Heap, true, node), Figure::JsHeld);
        assert_eq!(Figure::pick(Watch::Rss, true, node), Figure::Rss);
        // heapUsed 100 + external 40: a Buffer leak moves the watched figure.
        assert_eq!(Figure::JsHeld.read(&sample(true)), Some(140));
        assert_eq!(Figure::JsHeld.read(&sample(false)), None);
    }
}
