//! The watchdog: one task that decides, from the sampler's facts, which workers must be
//! replaced — leaking ones and unhealthy ones alike (the one owner of that decision). It
//! feeds each worker's samples to its leak rules, writes the baseline profile at warm-up
//! end, and on a trip writes the leak profile, diffs it against the baseline, logs the top
//! growing allocation sites, and asks the supervisor for a make-before-break replacement
//! (unless `action = "profile-only"`); a probe-linked worker that stopped answering
//! samples is replaced as unhealthy (`health`). It publishes each slot's latest figures
//! (`figures`) for the admin API.

mod fallback;
mod figures;
mod health;
#[cfg(test)]
mod node_sawtooth_tests;
pub mod rules;

use std::collections::HashMap;

use slog::{Logger, debug, error, info, warn};
use tokio::sync::{mpsc, watch};

pub use figures::{FiguresView, SlotFigures};
pub use health::MissTracker;
use rules::{LeakDetector, Observation, RulesConfig, Trip};

use crate::config::types::{LeakAction, Watch};
use crate::config::{Config, WatchdogConfig};
use crate::log::RedactedJson;
use crate::metric_names::labels::ProfileOutcome;
use crate::metric_names::{
    HEAP_PROFILES, LEAK_DETECTIONS, WORKER_GROWTH, WORKER_SECONDS_TO_LIMIT, WORKER_WATCH_FALLBACKS,
};
use crate::profiles::{
    CaptureRequest, ProfileFigures, ProfileStoreHandle, SnapshotRequest, Trigger, take_profile,
    take_snapshot,
};
use crate::sampler::{ProbeAnswer, WorkerSample};
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
    /// Heap against the tree's PSS, for a worker watched on its heap.
    fallback: fallback::PssFallback,
}

pub struct Watchdog {
    config: WatchdogConfig,
    rules: RulesConfig,
    slots: HashMap<usize, SlotWatch>,
    /// `sampling.missed-pings`: silences in a row that make a worker unhealthy.
    missed_pings: u32,
    misses: MissTracker,
    pool: watch::Receiver<PoolView>,
    /// The running config; a reload's `[watchdog]` applies from the next sample.
    settings: watch::Receiver<Config>,
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
        mut settings: watch::Receiver<Config>,
        pool: watch::Receiver<PoolView>,
        requests: mpsc::Sender<Request>,
        store: ProfileStoreHandle,
        figures: watch::Sender<FiguresView>,
        log: Logger,
    ) -> Watchdog {
        let (config, missed_pings) = {
            let running = settings.borrow_and_update();
            (running.watchdog.clone(), running.sampling.missed_pings)
        };
        Watchdog {
            rules: RulesConfig::from_watchdog(&config),
            config,
            slots: HashMap::new(),
            missed_pings,
            misses: MissTracker::default(),
            pool,
            settings,
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
        self.follow_settings();
        self.check_health(&sample);
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

    /// Asks for the replacement of a probe-linked worker that missed `missed_pings`
    /// samples in a row while serving (a starting worker is covered by the supervisor's
    /// ready timeout, a replacing one is already on its way out).
    fn check_health(&mut self, sample: &WorkerSample) {
        let answered = match sample.probe {
            ProbeAnswer::NotLinked => return,
            ProbeAnswer::Answered => true,
            ProbeAnswer::Missed => false,
        };
        if self.pool.has_changed().unwrap_or(false) {
            let view = self.pool.borrow_and_update();
            let live = |id| {
                view.slots
                    .iter()
                    .any(|s| s.worker.as_ref().is_some_and(|w| w.worker_id == id))
            };
            self.misses.retain(live);
        }
        let state = self.pool.borrow().slots.get(sample.slot).and_then(|s| {
            s.worker
                .as_ref()
                .filter(|w| w.worker_id == sample.worker_id)
                .map(|_| s.state)
        });
        let Some(state) = state else { return };
        let (id, limit) = (sample.worker_id, self.missed_pings);
        let Some(request) = self.misses.observe(id, sample.slot, state, answered, limit) else {
            return;
        };
        warn!(self.log, "A worker stopped answering; asking for its replacement.";
            "worker" => sample.slot, "worker_id" => id, "pid" => sample.pid,
            "missed" => self.misses.missed(id));
        if let Err(e) = self.requests.try_send(request) {
            // Asked again on the next silence.
            self.misses.unreport(id);
            debug!(self.log, "The supervisor's request queue is full; retrying next round."; "error" => %e);
        }
    }

    /// Takes a reloaded `[watchdog]`: new thresholds for every worker's detector (its
    /// history kept); a new watched figure starts every worker's rules afresh. Slots a
    /// reload removed are forgotten.
    fn follow_settings(&mut self) {
        let slots = self.pool.borrow().slots.len();
        self.slots.retain(|slot, _| *slot < slots);
        self.figures.send_if_modified(|all| {
            let before = all.len();
            all.retain(|slot, _| *slot < slots);
            all.len() != before
        });
        if !self.settings.has_changed().unwrap_or(false) {
            return;
        }
        let (new, missed_pings) = {
            let running = self.settings.borrow_and_update();
            (running.watchdog.clone(), running.sampling.missed_pings)
        };
        self.missed_pings = missed_pings;
        if new == self.config {
            return;
        }
        self.rules = RulesConfig::from_watchdog(&new);
        if new.watch != self.config.watch {
            self.slots.clear();
        }
        for watch in self.slots.values_mut() {
            watch.detector.set_config(self.rules.clone());
        }
        info!(self.log, "The leak rules use new settings.";
            "watch" => format!("{:?}", new.watch).to_lowercase(),
            "max_memory" => new.max_memory.get().map(|s| s.bytes()),
            "growth" => new.growth.get().map(|s| s.bytes()),
            "trend_window_seconds" => new.trend_window.as_secs());
        self.config = new;
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
        let fresh = || SlotWatch {
            worker_id: sample.worker_id,
            figure,
            detector: LeakDetector::new(rules.clone()),
            fallback: fallback::PssFallback::default(),
        };
        let watch = self.slots.entry(sample.slot).or_insert_with(fresh);
        if watch.worker_id != sample.worker_id {
            *watch = fresh();
        }
        if watch.figure == Figure::Heap
            && let Some(switch) = watch.fallback.observe(
                Figure::Heap.read(sample),
                sample.pss,
                fallback::threshold(rules),
            )
        {
            warn!(self.log, "The worker's process tree grows in PSS while its probed heap stays flat; its leak rules watch the tree's PSS from now on.";
                "worker" => sample.slot, "pid" => sample.pid,
                "pss_growth_bytes" => switch.pss_growth, "heap_growth_bytes" => switch.heap_growth,
                "processes" => sample.processes, "heap_processes" => sample.heap_processes);
            metrics::counter!(WORKER_WATCH_FALLBACKS.name, "worker" => sample.slot.to_string())
                .increment(1);
            watch.figure = Figure::Pss;
            watch.detector = LeakDetector::with_baseline(rules.clone(), switch.pss_baseline);
        }
        let value = watch.figure.read(sample)?;
        let obs = watch.detector.observe(sample.at, value);
        if watch.figure == Figure::Heap && obs.baseline_ready {
            watch.fallback.arm(value, sample.pss);
        }
        Some((watch.figure, obs))
    }

    fn on_trip(&self, sample: &WorkerSample, figure: Figure, trip: Trip, obs: &Observation) {
        let slot = sample.slot;
        metrics::counter!(LEAK_DETECTIONS.name,
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
        let (pid, link) = profile_source(&worker, sample, trigger);
        if link.is_none() && trigger == Trigger::Baseline {
            // A worker without a probe (`probe = "off"`, or one that did not load) has no
            // baseline to write; that was said once when it started, not at every one.
            metrics::counter!(HEAP_PROFILES.name, "trigger" => trigger.as_str(),
                "outcome" => ProfileOutcome::NoProbe.as_str())
            .increment(1);
            debug!(self.log, "No baseline profile: the worker has no probe."; "worker" => sample.slot);
            return;
        }
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
            pid,
            link,
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

/// Where a profile is taken: a pre-fork server's forked child when one reports on its own
/// channel — the one that grew most for a leak, the largest for the baseline — else the
/// worker itself (its link only when it has a probe).
fn profile_source(
    worker: &crate::supervisor::WorkerView,
    sample: &WorkerSample,
    trigger: Trigger,
) -> (u32, Option<crate::supervisor::ControlLink>) {
    let wanted = match trigger {
        Trigger::Leak => sample.heap_grower,
        Trigger::Baseline => sample.heap_largest_child,
        Trigger::Manual => None,
    };
    let child = wanted.and_then(|pid| {
        let children = worker.children.as_ref()?.borrow();
        children.iter().find(|c| c.pid == pid).cloned()
    });
    match child {
        Some(child) => (child.pid, Some(child.link)),
        None => (worker.pid, worker.link.clone().filter(|_| worker.probe)),
    }
}

fn record_trend(slot: usize, obs: &Observation) {
    let worker = slot.to_string();
    metrics::gauge!(WORKER_GROWTH.name, "worker" => worker.clone())
        .set(obs.slope_bytes_per_sec.unwrap_or(0.0));
    // NaN when not growing: comparisons against it are false, so alerts stay quiet.
    metrics::gauge!(WORKER_SECONDS_TO_LIMIT.name, "worker" => worker)
        .set(obs.seconds_to_limit.unwrap_or(f64::NAN));
}

#[cfg(test)]
mod tests;
