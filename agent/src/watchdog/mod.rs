//! The watchdog: one task that decides, from the sampler's facts, which workers must be
//! replaced — leaking ones and unhealthy ones alike (the one owner of that decision). It
//! feeds each worker's samples to its leak rules, writes the baseline profile at warm-up
//! end, and on a trip writes the leak profile, diffs it against the baseline, logs the top
//! growing allocation sites, and asks the supervisor for a make-before-break replacement
//! (unless `action = "profile-only"`); a probe-linked worker that stopped answering
//! samples is replaced as unhealthy (`health`). It publishes each slot's latest figures
//! (`figures`) for the admin API, each slot's leak suspect (`suspect`: what grew and
//! which function, for the page) for `/metrics`, and learns what a replacement costs the
//! pool (`lead`) so the predicted rule acts that far ahead of `max-memory`. It also
//! decides which workers the sampler takes every `fast-interval` as well (the fast lane:
//! those the predicted rule sees reaching `max-memory` within twice its horizon), so the
//! rule's persistence is confirmed in fractions of a second on a fast leak.

mod fallback;
mod figures;
mod health;
mod lead;
#[cfg(test)]
mod node_sawtooth_tests;
pub mod rules;
pub mod suspect;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::{Logger, debug, error, info, warn};
use tokio::sync::{mpsc, watch};

pub use figures::{FiguresView, SlotFigures};
pub use health::MissTracker;
use lead::ReplacementClock;
use rules::{LeakDetector, Observation, RulesConfig, Trip};
use suspect::MemoryFigures;
pub use suspect::{Suspect, SuspectKind, SuspectView};

use crate::config::types::{LeakAction, Watch};
use crate::config::{Config, WatchdogConfig};
use crate::log::Causes;
use crate::log::Nested;
use crate::metric_names::labels::ProfileOutcome;
use crate::metric_names::{
    HEAP_PROFILES, LEAK_DETECTIONS, PREDICT_HORIZON, REPLACEMENT_SECONDS, WORKER_GROWTH,
    WORKER_SECONDS_TO_LIMIT, WORKER_WATCH_FALLBACKS,
};
use crate::profiles::{
    CaptureRequest, ProfileFigures, ProfileStoreHandle, Trigger, take_profile, take_snapshot,
};
use crate::sampler::{FastLane, ProbeAnswer, WorkerSample};
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
    /// The figures at the first ready sample, then at warm-up end: what a detection's
    /// growth is measured from.
    base: MemoryFigures,
    /// PSS is read every `pss-every` rounds; the latest reading stands in between.
    last_pss: Option<u64>,
    /// Whether the worker's entry into the fast lane was logged (once per worker).
    fast_logged: bool,
    /// Heap against the tree's PSS, for a worker watched on its heap.
    fallback: fallback::PssFallback,
    trend: TrendGauges,
}

impl SlotWatch {
    fn new(sample: &WorkerSample, figure: Figure, rules: &RulesConfig) -> SlotWatch {
        let mut watch = SlotWatch {
            worker_id: sample.worker.worker_id,
            figure,
            detector: LeakDetector::new(rules.clone()),
            base: MemoryFigures::default(),
            last_pss: None,
            fast_logged: false,
            fallback: fallback::PssFallback::default(),
            trend: TrendGauges::register(sample.slot),
        };
        watch.base = watch.figures(sample);
        watch
    }

    fn figures(&mut self, sample: &WorkerSample) -> MemoryFigures {
        self.last_pss = sample.pss.or(self.last_pss);
        MemoryFigures {
            rss: sample.rss,
            pss: self.last_pss,
            heap: sample.heap.as_ref().map(|h| h.allocated),
            external: sample.external_bytes,
        }
    }
}

pub struct Watchdog {
    config: WatchdogConfig,
    rules: RulesConfig,
    slots: HashMap<usize, SlotWatch>,
    /// `sampling.missed-pings`: silences in a row that make a worker unhealthy.
    missed_pings: u32,
    misses: MissTracker,
    pool: watch::Receiver<PoolView>,
    /// Which worker serves each slot, as of the last pool view (for suspects' expiry);
    /// samples carry their own worker, so the view is read only when it changes.
    serving: Vec<Option<u64>>,
    /// The running config; a reload's `[watchdog]` applies from the next sample.
    settings: watch::Receiver<Config>,
    requests: mpsc::Sender<Request>,
    store: ProfileStoreHandle,
    figures: watch::Sender<FiguresView>,
    log: Logger,
    /// `profiles.snapshot-headroom`, for `leak-snapshot`.
    snapshot_headroom: f64,
    /// Each slot's latest culprit; the detection tasks record into it, `observe`
    /// expires it, `/metrics` renders it.
    suspects: Arc<watch::Sender<SuspectView>>,
    /// `sampling.interval`: the predicted rule's horizon counts in it.
    interval: Duration,
    clock: ReplacementClock,
    /// Profile capture times, sent back by the tasks that take them.
    profile_times: (mpsc::Sender<Duration>, mpsc::Receiver<Duration>),
    /// The predicted rule's horizon, as last exported.
    horizon: Duration,
    /// `sampling.fast-interval` as it takes effect, and the horizon for a worker sampled
    /// that often.
    fast_interval: Duration,
    fast_horizon: Duration,
    /// The workers sampled every `fast-interval` too; the sampler reads it.
    fast_lane: watch::Sender<FastLane>,
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
        let (config, missed_pings, interval, fast_interval) = {
            let running = settings.borrow_and_update();
            (
                running.watchdog.clone(),
                running.sampling.missed_pings,
                running.sampling.interval,
                running.sampling.fast_interval(),
            )
        };
        let serving = pool
            .borrow()
            .slots
            .iter()
            .map(|s| s.worker.as_ref().map(|w| w.worker_id))
            .collect();
        Watchdog {
            serving,
            interval,
            clock: ReplacementClock::default(),
            profile_times: mpsc::channel(16),
            horizon: Duration::ZERO,
            fast_interval,
            fast_horizon: Duration::ZERO,
            fast_lane: watch::Sender::new(FastLane::new()),
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
            suspects: Arc::new(watch::Sender::new(SuspectView::new())),
        }
    }

    /// Each slot's leak suspect, as `/metrics` renders it.
    pub fn suspects(&self) -> watch::Receiver<SuspectView> {
        self.suspects.subscribe()
    }

    /// The workers to sample every `fast-interval` as well, for the sampler.
    pub fn fast_lane(&self) -> watch::Receiver<FastLane> {
        self.fast_lane.subscribe()
    }

    /// Consumes samples until the sampler stops.
    pub async fn run(mut self, mut samples: mpsc::Receiver<WorkerSample>) {
        while let Some(sample) = samples.recv().await {
            self.observe(sample);
        }
    }

    fn observe(&mut self, sample: WorkerSample) {
        self.follow_settings();
        self.follow_pool();
        self.follow_replacement_time();
        self.check_health(&sample);
        self.expire_suspects(sample.at);
        let slot = sample.slot;
        let trend = self.run_rules(&sample);
        // One publication per sample: API readers wake once per round.
        self.figures.send_modify(|all| {
            let f: &mut SlotFigures = all.entry(slot).or_default();
            f.rss_bytes = Some(sample.rss);
            f.pss_bytes = sample.pss.or(f.pss_bytes);
            f.heap_allocated_bytes = sample.heap.as_ref().map(|h| h.allocated);
            f.heap_active_bytes = sample.heap.as_ref().map(|h| h.active);
            f.heap_children = sample.heap_children;
            if let Some((figure, obs)) = &trend {
                f.growth_bytes_per_second = obs.slope_bytes_per_sec;
                f.seconds_to_limit = obs.seconds_to_limit;
                f.watched = Some(figure.as_str().into());
            }
        });
        let Some((figure, obs)) = trend else { return };
        let (base, now) = match self.slots.get_mut(&slot) {
            Some(watch) => {
                watch.trend.record(&obs);
                let now = watch.figures(&sample);
                if obs.baseline_ready {
                    watch.base = now;
                }
                (watch.base, now)
            }
            None => return,
        };
        if obs.baseline_ready {
            self.spawn_profile(&sample, Trigger::Baseline, None, &obs);
        }
        if let Some(trip) = obs.trip.clone() {
            self.on_trip(&sample, figure, trip, &obs, (base, now));
        }
    }

    /// Drops the suspects of slots whose leaking worker is gone, once `suspect-ttl`
    /// passed since the detection.
    fn expire_suspects(&self, now: std::time::Instant) {
        let ttl = self.config.suspect_ttl;
        let serving = |slot: usize| self.serving.get(slot).copied().flatten();
        self.suspects
            .send_if_modified(|view| suspect::expire(view, serving, ttl, now));
    }

    /// Asks for the replacement of a probe-linked worker that missed `missed_pings`
    /// samples in a row while serving (a starting worker is covered by the supervisor's
    /// ready timeout, a replacing one is already on its way out).
    fn check_health(&mut self, sample: &WorkerSample) {
        if sample.fast {
            // Half a fast interval to answer is no test of health; full rounds judge it.
            return;
        }
        let answered = match sample.probe {
            ProbeAnswer::NotLinked => return,
            ProbeAnswer::Answered => true,
            ProbeAnswer::Missed => false,
        };
        let (id, limit) = (sample.worker.worker_id, self.missed_pings);
        let state = sample.slot_state;
        let Some(request) = self.misses.observe(id, sample.slot, state, answered, limit) else {
            return;
        };
        warn!(self.log, "A worker stopped answering; asking for its replacement.";
            "worker" => sample.slot, "worker_id" => id, "pid" => sample.worker.pid,
            "missed" => self.misses.missed(id));
        if let Err(e) = self.requests.try_send(request) {
            // Asked again on the next silence.
            self.misses.unreport(id);
            debug!(self.log, "The supervisor's request queue is full; retrying next round."; "error" => %Causes(&e));
        }
    }

    /// On a new pool view: forgets the silences of workers that left and the slots a
    /// reload removed, notes who serves each slot, and times the start → ready of
    /// workers that became ready.
    fn follow_pool(&mut self) {
        if !self.pool.has_changed().unwrap_or(false) {
            return;
        }
        let view = self.pool.borrow_and_update();
        self.serving = view
            .slots
            .iter()
            .map(|s| s.worker.as_ref().map(|w| w.worker_id))
            .collect();
        let live = |id| self.serving.contains(&Some(id));
        self.misses.retain(live);
        self.fast_lane.send_if_modified(|lane| {
            let before = lane.len();
            lane.retain(|id| live(*id));
            lane.len() != before
        });
        self.clock.note_view(&view);
        let slots = view.slots.len();
        drop(view);
        self.slots.retain(|slot, _| *slot < slots);
        self.figures.send_if_modified(|all| {
            let before = all.len();
            all.retain(|slot, _| *slot < slots);
            all.len() != before
        });
    }

    /// Takes the profile times measured since the last sample and exports what a
    /// replacement costs and how far ahead the predicted rule looks.
    fn follow_replacement_time(&mut self) {
        while let Ok(took) = self.profile_times.1.try_recv() {
            self.clock.note_profile(took);
        }
        let replacement = self.clock.replacement();
        let horizon = self
            .rules
            .horizon(replacement, self.interval, self.interval);
        self.fast_horizon = self
            .rules
            .horizon(replacement, self.interval, self.fast_interval);
        if horizon != self.horizon {
            self.horizon = horizon;
            metrics::gauge!(REPLACEMENT_SECONDS.name).set(replacement.as_secs_f64());
            metrics::gauge!(PREDICT_HORIZON.name).set(horizon.as_secs_f64());
        }
    }

    /// Takes a reloaded `[watchdog]`: new thresholds for every worker's detector (its
    /// history kept); a new watched figure starts every worker's rules afresh. Slots a
    /// reload removed are forgotten.
    fn follow_settings(&mut self) {
        if !self.settings.has_changed().unwrap_or(false) {
            return;
        }
        let (new, missed_pings, interval, fast_interval) = {
            let running = self.settings.borrow_and_update();
            (
                running.watchdog.clone(),
                running.sampling.missed_pings,
                running.sampling.interval,
                running.sampling.fast_interval(),
            )
        };
        self.missed_pings = missed_pings;
        self.interval = interval;
        self.fast_interval = fast_interval;
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
        let worker = &sample.worker;
        if !worker.ready {
            return None;
        }
        let (probe, runtime) = (worker.probe, worker.runtime);
        if sample.dumping {
            // A heap snapshot is being written: its own memory spike is no leak.
            return None;
        }
        let figure = Figure::pick(self.config.watch, probe, runtime);
        let rules = &self.rules;
        let watch = self
            .slots
            .entry(sample.slot)
            .or_insert_with(|| SlotWatch::new(sample, figure, rules));
        if watch.worker_id != worker.worker_id {
            *watch = SlotWatch::new(sample, figure, rules);
        }
        if watch.figure == Figure::Heap
            && let Some(switch) = watch.fallback.observe(
                Figure::Heap.read(sample),
                sample.pss,
                fallback::threshold(rules),
            )
        {
            warn!(self.log, "The worker's process tree grows in PSS while its probed heap stays flat; its leak rules watch the tree's PSS from now on.";
                "worker" => sample.slot, "pid" => worker.pid,
                "pss_growth_bytes" => switch.pss_growth, "heap_growth_bytes" => switch.heap_growth,
                "processes" => sample.processes, "heap_processes" => sample.heap_processes);
            metrics::counter!(WORKER_WATCH_FALLBACKS.name, "worker" => sample.slot.to_string())
                .increment(1);
            watch.figure = Figure::Pss;
            watch.detector = LeakDetector::with_baseline(rules.clone(), switch.pss_baseline);
        }
        let value = watch.figure.read(sample)?;
        let in_lane = self.fast_lane.borrow().contains(&worker.worker_id);
        // The persistence counts this worker's samples, so its horizon counts in the
        // interval it is sampled at.
        watch.detector.set_horizon(if in_lane || sample.fast {
            self.fast_horizon
        } else {
            self.horizon
        });
        let obs = watch.detector.observe(sample.at, value);
        if watch.figure == Figure::Heap && obs.baseline_ready {
            watch.fallback.arm(value, sample.pss);
        }
        let figure = watch.figure;
        self.steer_fast_lane(sample, &obs, figure, in_lane);
        Some((figure, obs))
    }

    /// Puts the worker in the fast lane while the predicted rule sees it reaching
    /// `max-memory` within twice the (full-round) horizon, and takes it out when that no
    /// longer holds or a rule tripped. A worker watched on PSS stays out: fast rounds
    /// read no smaps.
    /// `in_lane`: whether it was in the lane before this sample.
    fn steer_fast_lane(
        &mut self,
        sample: &WorkerSample,
        obs: &Observation,
        figure: Figure,
        in_lane: bool,
    ) {
        let Some(watch) = self.slots.get_mut(&sample.slot) else {
            return;
        };
        let close = self.fast_interval < self.interval
            && figure != Figure::Pss
            && watch.detector.tripped().is_none()
            && obs
                .predict_seconds
                .is_some_and(|s| s <= 2.0 * self.horizon.as_secs_f64());
        if close == in_lane {
            // Most samples of most workers: no change, and no write to the channel.
            return;
        }
        let id = sample.worker.worker_id;
        self.fast_lane.send_modify(|lane| {
            lane.retain(|w| *w != id);
            if close {
                lane.push(id);
            }
        });
        if close && !watch.fast_logged {
            watch.fast_logged = true;
            info!(self.log, "A worker heads for max-memory; it is sampled every fast-interval until it is replaced or turns back.";
                "worker" => sample.slot, "pid" => sample.worker.pid, "figure" => figure.as_str(),
                "seconds_to_limit" => obs.predict_seconds,
                "fast_interval_ms" => self.fast_interval.as_millis() as u64);
        } else {
            debug!(self.log, "A worker's fast-lane sampling changed.";
                "worker" => sample.slot, "pid" => sample.worker.pid, "fast" => close);
        }
    }

    fn on_trip(
        &self,
        sample: &WorkerSample,
        figure: Figure,
        trip: Trip,
        obs: &Observation,
        figures: (MemoryFigures, MemoryFigures),
    ) {
        let slot = sample.slot;
        warn!(self.log, "A leak rule tripped.";
            "worker" => slot, "pid" => sample.worker.pid, "rule" => trip.rule.as_str(),
            "figure" => figure.as_str(), "bytes" => trip.value,
            "baseline_bytes" => trip.baseline,
            "growth_bytes_per_second" => trip.slope_bytes_per_sec,
            "seconds_to_limit" => trip.seconds_to_limit,
            "horizon_seconds" => (trip.rule == rules::Rule::Predicted)
                .then(|| self.slots.get(&slot).map(|w| w.detector.horizon().as_secs_f64()))
                .flatten(),
            "action" => match self.config.action { LeakAction::Restart => "restart", LeakAction::ProfileOnly => "profile-only" });
        let detection = Detection {
            trip,
            base: figures.0,
            now: figures.1,
        };
        self.spawn_profile(sample, Trigger::Leak, Some(detection), obs);
    }

    /// Writes a profile off the sampling path; for a leak, then diffs and replaces.
    fn spawn_profile(
        &self,
        sample: &WorkerSample,
        trigger: Trigger,
        detection: Option<Detection>,
        obs: &Observation,
    ) {
        let worker = &sample.worker;
        let figures = ProfileFigures {
            rss: Some(sample.rss),
            pss: sample.pss,
            heap_allocated: sample.heap.as_ref().map(|h| h.allocated),
            heap_active: sample.heap.as_ref().map(|h| h.active),
            growth_bytes_per_second: obs.slope_bytes_per_sec,
        };
        let rule = detection.as_ref().map(|d| d.trip.rule.as_str().to_string());
        // A pre-fork server's profile is its child's (the one that grew, the largest).
        let request = CaptureRequest::of_worker(sample.slot, worker, trigger, figures, rule)
            .in_forked_child(worker, sample.heap_children);
        if request.link.is_none() && trigger == Trigger::Baseline {
            // A worker without a probe (`probe = "off"`, or one that did not load) has no
            // baseline to write; that was said once when it started, not at every one.
            metrics::counter!(HEAP_PROFILES.name, "trigger" => trigger.as_str(),
                "outcome" => ProfileOutcome::NoProbe.as_str())
            .increment(1);
            debug!(self.log, "No baseline profile: the worker has no probe."; "worker" => sample.slot);
            return;
        }
        // With `leak-snapshot`, a Node worker's snapshot at warm-up too: the leak
        // snapshot's retainers are then growth since it.
        let wants_snapshot = detection.is_some() || trigger == Trigger::Baseline;
        let snapshot = (wants_snapshot && self.config.leak_snapshot).then(|| {
            let mut snapshot = CaptureRequest::of_worker(
                request.slot,
                worker,
                trigger,
                request.figures.clone(),
                request.rule.clone(),
            )
            .into_snapshot(self.snapshot_headroom);
            snapshot.replace = Some(self.requests.clone());
            snapshot
        });
        let store = self.store.clone();
        let log = self.log.clone();
        let requests = self.requests.clone();
        let export = ExportNote::from_config(&self.settings.borrow());
        let restart = self.config.action == LeakAction::Restart;
        let (slot, worker_id) = (sample.slot, worker.worker_id);
        let suspects = self.suspects.clone();
        let timed = request.link.is_some().then(|| self.profile_times.0.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let profile = take_profile(&store, request, &log).await;
            if let (Some(times), Ok(_)) = (timed, &profile) {
                // Lost when the watchdog is behind: the next profile is timed too.
                let _ = times.try_send(started.elapsed());
            }
            let node_snapshot = snapshot.filter(|s| s.capture.runtime == Some(Runtime::Node));
            let Some(Detection { trip, base, now }) = detection else {
                // The baseline snapshot, after the baseline profile (one dump at a time).
                if let Some(snapshot) = node_snapshot {
                    let _ = take_snapshot(&store, snapshot, &log).await;
                }
                return;
            };
            // The replacement starts before the diff is read: the predicted rule counted
            // on the profile's time only, and every replacement is quicker this way. A
            // leak snapshot is taken from the old worker first, so it waits for that.
            let replace = restart.then_some(Request::Replace {
                slot,
                worker: worker_id,
                reason: RestartReason::Leak,
            });
            let (replace_now, replace_after_snapshot) = if node_snapshot.is_none() {
                (replace, None)
            } else {
                (None, replace)
            };
            if let Some(replace) = replace_now
                && requests.send(replace).await.is_err()
            {
                info!(log, "The supervisor is gone; the leaking worker is not replaced."; "worker" => slot);
            }
            // The diff next: it reads the leak profile and its baseline, which must
            // not wait behind (or be put at risk by) a snapshot.
            let diff = match &profile {
                Ok(meta) => store.diff(meta.id, None).await.ok(),
                Err(_) => None,
            };
            let entry = diff.as_ref().and_then(suspect::page_entry);
            let culprit =
                suspect::classify(&base, &now, entry.as_ref().map(|(f, b)| (f.as_str(), *b)));
            let profile_id = profile.as_ref().ok().map(|m| m.id);
            let profile_link = profile.as_ref().ok().and_then(|m| export.link(m));
            // The suspect first, then the count: a scrape that sees the detection sees
            // its culprit, so the page's first notification already names it.
            suspects.send_modify(|view| {
                suspect::record(
                    view,
                    slot,
                    Suspect {
                        worker_id,
                        rule: trip.rule,
                        function: culprit.function.clone(),
                        profile_id,
                        kind: culprit.kind,
                        growth_bytes: culprit.growth_bytes,
                        profile_link: suspect::label_link(profile_link.as_deref()),
                        detected_at: std::time::Instant::now(),
                    },
                );
            });
            metrics::counter!(LEAK_DETECTIONS.name,
                "worker" => slot.to_string(), "rule" => trip.rule.as_str())
            .increment(1);
            // With `leak-snapshot`: who holds the memory, summarised out of the worker
            // (after the diff, which must not wait behind a snapshot).
            // Holders by growth since the worker's warm-up snapshot (or, without one, all
            // they hold), summarised in the helper.
            let mut retainers = serde_json::Value::Null;
            let mut retainers_base = None;
            if let Some(snapshot) = node_snapshot
                && let Ok(meta) = take_snapshot(&store, snapshot, &log).await
            {
                match crate::profiles::retainers::diff_stored(
                    &store,
                    meta.id,
                    None,
                    TOP_SITES,
                    crate::profiles::HELPER_TIMEOUT,
                )
                .await
                {
                    Ok(diff) => {
                        retainers_base = diff.base_id;
                        retainers = serde_json::to_value(diff.holders).unwrap_or_default()
                    }
                    Err(error) => {
                        info!(log, "The leak snapshot could not be summarised."; "worker" => slot,
                            "snapshot_id" => meta.id, "error" => %error)
                    }
                }
            }
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
                "profile_id" => profile_id,
                "kind" => culprit.kind.as_str(), "suspect" => culprit.function.as_str(),
                "suspect_growth_bytes" => culprit.growth_bytes,
                "baseline_profile_id" => diff.as_ref().map(|d| d.base_id),
                "growth_bytes" => diff.as_ref().map(|d| d.total_delta_bytes),
                "top_growing_sites" => Nested(sites),
                "retainers" => Nested(retainers),
                "retainers_base_snapshot_id" => retainers_base,
                "sites_view" => diff.as_ref().map(|d| match d.view {
                    crate::profiles::DiffView::AppFrame => "app_frame",
                    crate::profiles::DiffView::AllocationSite => "allocation_site",
                }),
                "profile_export" => export.state(),
                "profile_link" => profile_link,
                "action" => if restart { "restart" } else { "profile-only" });
            if let Some(replace) = replace_after_snapshot
                && requests.send(replace).await.is_err()
            {
                info!(log, "The supervisor is gone; the leaking worker is not replaced."; "worker" => slot);
            }
        });
    }
}

/// A trip and the figures it is judged against.
struct Detection {
    trip: Trip,
    base: MemoryFigures,
    now: MemoryFigures,
}

/// What the detection record says of the leak profile's way to Pyroscope: `pending`
/// (the exporter pushes it within seconds; its index entry records when) or `off`, and
/// the link to it when `link-base` is set.
struct ExportNote {
    enabled: bool,
    link_base: String,
    context: crate::export::pyroscope::LabelContext,
}

impl ExportNote {
    fn from_config(config: &Config) -> ExportNote {
        let export = &config.export.pyroscope;
        ExportNote {
            enabled: export.enabled(),
            link_base: export.link_base.clone(),
            context: crate::export::pyroscope::LabelContext::new(export, &config.pool.env),
        }
    }

    fn state(&self) -> &'static str {
        if self.enabled { "pending" } else { "off" }
    }

    fn link(&self, meta: &crate::profiles::ProfileMeta) -> Option<String> {
        let labels = crate::export::pyroscope::profile_labels(meta, &self.context);
        crate::export::pyroscope::profile_link(&self.link_base, &labels, meta.created_unix_ms)
    }
}

/// A slot's trend gauges, looked up in the registry once per worker rather than on
/// every sample (a key built, hashed and cloned twice per worker and second).
struct TrendGauges {
    growth: metrics::Gauge,
    seconds_to_limit: metrics::Gauge,
}

impl TrendGauges {
    fn register(slot: usize) -> TrendGauges {
        let worker = crate::metric_names::labels::worker(slot);
        TrendGauges {
            growth: metrics::gauge!(WORKER_GROWTH.name, "worker" => worker.clone()),
            seconds_to_limit: metrics::gauge!(WORKER_SECONDS_TO_LIMIT.name, "worker" => worker),
        }
    }

    fn record(&self, obs: &Observation) {
        self.growth.set(obs.slope_bytes_per_sec.unwrap_or(0.0));
        // NaN when not growing: comparisons against it are false, so alerts stay quiet.
        self.seconds_to_limit
            .set(obs.seconds_to_limit.unwrap_or(f64::NAN));
    }
}

#[cfg(test)]
mod tests;
