//! One sampling round: procfs reads on a blocking thread while the probe-linked workers'
//! figures are gathered: a probe that pushes ([`ControlLink::keep_reporting`]) was told to
//! push [`push_lead`] before each round, and its push is taken; one that did not push in
//! time (an older probe, or a late one) is asked, all concurrently, so one slow worker
//! delays nobody. A fast-lane round ([`SamplerState::fast_round`]) takes the same samples
//! of a few workers between full rounds, asking their probes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, join_all};
use heapwarden_protocol::{AgentMsg, HeapStats, WorkerMsg};
use slog::{Logger, debug, warn};

use super::child_heaps::ChildHeaps;
use super::collect::{
    HostFigures, HostReaders, Roots, TreeFigures, collect_host, collect_trees, read_trees,
};
use super::procfs::ProcError;
use super::tree::TreeCache;
use super::{ProbeAnswer, WorkerSample, record};
use crate::config::SamplingConfig;
use crate::log::Causes;
use crate::supervisor::{
    ChildLink, ControlLink, LinkError, PoolView, SlotState, SlotView, WorkerView,
};

/// A worker to sample this round.
#[derive(Debug, Clone)]
struct Target {
    slot: usize,
    state: SlotState,
    worker: WorkerView,
    /// The worker's control link when it said hello (it has a probe).
    link: Option<ControlLink>,
    /// Its forked children that report on their own channels.
    children: Vec<ChildLink>,
}

impl Target {
    fn of(s: &SlotView) -> Option<Target> {
        let w = s.worker.as_ref()?;
        Some(Target {
            slot: s.slot,
            state: s.state,
            worker: w.clone(),
            link: if w.probe { w.link.clone() } else { None },
            children: w
                .children
                .as_ref()
                .map(|c| c.borrow().to_vec())
                .unwrap_or_default(),
        })
    }
}

/// Which round is taken.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Every worker, on the `interval` grid; smaps on every `pss-every`th.
    Full { with_smaps: bool },
    /// The fast lane's workers, on the `fast-interval` grid.
    Fast,
}

/// What [`SamplerState::take`] read.
struct Taken {
    samples: Vec<WorkerSample>,
    /// The pids whose probes were asked (workers and their reporting children).
    reporting: HashSet<u32>,
    /// The machine's and the agent's figures, on full rounds.
    host: Option<HostFigures>,
}

/// What a probe said, when it answered.
#[derive(Debug, Default)]
struct ProbeReply {
    heap: Option<HeapStats>,
    runtime_lag_seconds: Option<f64>,
    external_bytes: Option<u64>,
    array_buffers_bytes: Option<u64>,
    /// The probe's totals, when it answered with stats.
    counts: Option<record::ProbeCounts>,
}

pub struct SamplerState {
    cfg: SamplingConfig,
    roots: Roots,
    log: Logger,
    round: u64,
    /// Workers whose procfs read failed, so the failure is logged once, not every second.
    warned: HashSet<u64>,
    /// Each worker's last reported probe totals (drops, sampling restarts): the slot's
    /// counters grow by the difference, so they stay monotonic across replacements.
    probe_counts: HashMap<u64, record::ProbeCounts>,
    /// The most slots any view had: slots beyond the current view were scaled away.
    slots_seen: usize,
    /// Each worker's process tree between walks (the blocking thread takes it per round).
    trees: Arc<std::sync::Mutex<TreeCache>>,
    /// The agent's own and the machine's files, kept open.
    host: Arc<std::sync::Mutex<HostReaders>>,
    /// Heap figures of the workers and their forked children between rounds.
    child_heaps: ChildHeaps,
    /// Each slot's metric handles, registered once.
    slot_metrics: record::SlotsMetrics,
    /// The agent's and the machine's, likewise.
    host_metrics: record::HostMetrics,
}

impl SamplerState {
    pub fn new(cfg: SamplingConfig, roots: Roots, log: Logger) -> Self {
        let host = Arc::new(std::sync::Mutex::new(HostReaders::new(&roots)));
        SamplerState {
            cfg,
            roots,
            log,
            round: 0,
            warned: HashSet::new(),
            probe_counts: HashMap::new(),
            slots_seen: 0,
            trees: Arc::default(),
            host,
            child_heaps: ChildHeaps::default(),
            slot_metrics: record::SlotsMetrics::default(),
            host_metrics: record::HostMetrics::default(),
        }
    }

    /// Takes a reloaded `[sampling]` for the next round; false when nothing changed.
    pub fn set_config(&mut self, cfg: SamplingConfig) -> bool {
        let changed = cfg != self.cfg;
        self.cfg = cfg;
        changed
    }

    pub fn interval(&self) -> std::time::Duration {
        self.cfg.interval
    }

    pub fn fast_interval(&self) -> std::time::Duration {
        self.cfg.fast_interval()
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// `tick_at`: when this round was due; the next is one interval later.
    pub async fn round(&mut self, view: &PoolView, tick_at: Instant) -> Vec<WorkerSample> {
        let started = Instant::now();
        let with_smaps = self
            .round
            .is_multiple_of(u64::from(self.cfg.pss_every.max(1)));
        self.round += 1;
        let targets: Vec<Target> = view.slots.iter().filter_map(Target::of).collect();
        let roots = self.roots.clone();
        let host = self.host.clone();
        let read_host =
            move || collect_host(&roots, &mut host.lock().unwrap_or_else(|p| p.into_inner()));
        let taken = self
            .take(&targets, tick_at, Scope::Full { with_smaps }, read_host)
            .await;
        let host = taken.host.unwrap_or_default();

        let live: HashSet<u64> = targets.iter().map(|t| t.worker.worker_id).collect();
        self.warned.retain(|id| live.contains(id));
        self.probe_counts.retain(|id, _| live.contains(id));
        self.child_heaps.retain(&taken.reporting);

        if !host.errors.is_empty() {
            debug!(self.log, "Some machine figures could not be read.";
                "errors" => host.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
        }
        record::record_slots(view, &mut self.slot_metrics);
        if self.slots_seen > view.slots.len() {
            record::record_removed_slots(view.slots.len()..self.slots_seen);
        }
        self.slots_seen = self.slots_seen.max(view.slots.len());
        record::record_host(&host, &self.host_metrics);
        record::record_round_duration(started.elapsed().as_secs_f64(), &self.host_metrics);
        taken.samples
    }

    /// A fast-lane round, every `fast-interval` between full rounds: samples only the
    /// workers in `lane` (by worker id), without smaps, the machine's figures or the
    /// per-round bookkeeping, and marks its samples `fast`.
    pub async fn fast_round(
        &mut self,
        view: &PoolView,
        lane: &[u64],
        tick_at: Instant,
    ) -> Vec<WorkerSample> {
        let targets: Vec<Target> = view
            .slots
            .iter()
            .filter(|s| {
                s.worker
                    .as_ref()
                    .is_some_and(|w| lane.contains(&w.worker_id))
            })
            .filter_map(Target::of)
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        self.take(&targets, tick_at, Scope::Fast, HostFigures::default)
            .await
            .samples
    }

    /// Reads `targets`' trees (and, beside them on the same thread, `host`) while their
    /// probes are heard, and makes their samples; records each slot's figures.
    async fn take<H>(
        &mut self,
        targets: &[Target],
        tick_at: Instant,
        scope: Scope,
        host: H,
    ) -> Taken
    where
        H: FnOnce() -> HostFigures + Send + 'static,
    {
        let (interval, with_smaps, full) = match scope {
            Scope::Full { with_smaps } => (self.cfg.interval, with_smaps, true),
            Scope::Fast => (self.cfg.fast_interval(), false, false),
        };
        // A push taken this round arrived within the last half interval.
        let pushed_since = tick_at.checked_sub(interval / 2).unwrap_or(tick_at);
        let roots = self.roots.clone();
        let trees = self.trees.clone();
        let pids: Vec<u32> = targets.iter().map(|t| t.worker.pid).collect();
        let collect = move || {
            let cache = &mut trees.lock().unwrap_or_else(|p| p.into_inner());
            // A full round's workers are all of them: the others' trees leave the cache.
            let trees = if full {
                collect_trees(&roots, &pids, with_smaps, cache)
            } else {
                read_trees(&roots, &pids, with_smaps, cache)
            };
            (trees, full.then(host))
        };
        // A round that only re-reads the trees' open `stat`s (about a microsecond each)
        // runs here: the blocking pool's hand-off (a futex wake and two wake-ups of this
        // thread) costs more than the reads. Walks and smaps rounds take milliseconds.
        let inline = !with_smaps && {
            let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
            targets.iter().all(|t| !trees.due(t.worker.pid))
        };
        let procfs = if inline {
            Either::Left(std::future::ready(Ok(collect())))
        } else {
            Either::Right(tokio::task::spawn_blocking(collect))
        };
        let timeout = interval / 2;
        let probes = join_all(
            targets
                .iter()
                .map(|t| ask_probe(t.link.clone(), timeout, pushed_since)),
        );
        let children = join_all(targets.iter().map(|t| {
            join_all(t.children.iter().map(|c| async {
                let reply = ask_probe(Some(c.link.clone()), timeout, pushed_since).await;
                (c.pid, reply.and_then(Result::ok).and_then(|r| r.heap))
            }))
        }));
        let (procfs, replies, children) = tokio::join!(procfs, probes, children);
        if full {
            // New claimants (and all, after an interval change) are told when to push.
            let next_push = (tick_at + interval)
                .checked_sub(push_lead(interval))
                .unwrap_or(tick_at);
            let links = targets
                .iter()
                .flat_map(|t| t.link.iter().chain(t.children.iter().map(|c| &c.link)));
            for link in links {
                link.keep_reporting(interval, next_push);
            }
        }
        let (trees, host) = procfs.unwrap_or_else(|_| (Vec::new(), None));

        let mut taken = Taken {
            samples: Vec::with_capacity(targets.len()),
            reporting: HashSet::new(),
            host,
        };
        let at = Instant::now();
        for (i, ((target, reply), children)) in
            targets.iter().zip(replies).zip(children).enumerate()
        {
            let (probe, reply) = self.judge_reply(target, reply);
            let Some(tree) = self.tree_or_log(target, trees.get(i)) else {
                continue;
            };
            let reply = reply.unwrap_or_default();
            taken.reporting.insert(target.worker.pid);
            taken.reporting.extend(children.iter().map(|(pid, _)| *pid));
            let tree_heap = self
                .child_heaps
                .combine(target.worker.pid, reply.heap, &children);
            let sample = WorkerSample {
                slot: target.slot,
                slot_state: target.state,
                worker: target.worker.clone(),
                at,
                fast: !full,
                rss: tree.rss,
                pss: tree.smaps.map(|s| s.pss),
                uss: tree.smaps.map(|s| s.uss),
                swap: tree.smaps.map(|s| s.swap),
                cpu_seconds: tree.cpu_seconds,
                processes: tree.processes,
                heap: tree_heap.heap,
                heap_processes: tree_heap.processes,
                heap_children: tree_heap.children,
                runtime_lag_seconds: reply.runtime_lag_seconds,
                external_bytes: reply.external_bytes,
                array_buffers_bytes: reply.array_buffers_bytes,
                dumping: target.link.as_ref().is_some_and(ControlLink::is_dumping),
                probe,
            };
            let since = reply
                .counts
                .map_or_else(record::ProbeCounts::default, |now| {
                    let last = self
                        .probe_counts
                        .insert(target.worker.worker_id, now)
                        .unwrap_or_default();
                    now.since(last)
                });
            record::record_worker(&sample, since, self.slot_metrics.slot(target.slot));
            taken.samples.push(sample);
        }
        taken
    }

    /// Whether a probe-linked worker answered; the watchdog decides what a silence means.
    fn judge_reply(
        &self,
        target: &Target,
        reply: Option<Result<ProbeReply, LinkError>>,
    ) -> (ProbeAnswer, Option<ProbeReply>) {
        match reply {
            None => (ProbeAnswer::NotLinked, None),
            Some(Ok(reply)) => (ProbeAnswer::Answered, Some(reply)),
            Some(Err(e)) => {
                debug!(self.log, "A worker did not answer a sample request.";
                    "worker" => target.slot, "worker_id" => target.worker.worker_id, "error" => %Causes(&e));
                (ProbeAnswer::Missed, None)
            }
        }
    }

    fn tree_or_log<'a>(
        &mut self,
        target: &Target,
        tree: Option<&'a Result<TreeFigures, ProcError>>,
    ) -> Option<&'a TreeFigures> {
        match tree? {
            Ok(tree) => Some(tree),
            // Exited between the view and the read; the supervisor reaps it.
            Err(e) if e.is_gone() => None,
            Err(e) => {
                if self.warned.insert(target.worker.worker_id) {
                    warn!(self.log, "A worker's memory figures could not be read.";
                        "worker" => target.slot, "pid" => target.worker.pid, "error" => %Causes(&e));
                }
                None
            }
        }
    }
}

/// `None` for a worker without a probe; otherwise the probe's answer or why there was none.
/// How long before a round a pushing probe's stats are timed to arrive: room for the
/// probe's timer and the hop to the agent, small next to the interval.
pub fn push_lead(interval: Duration) -> Duration {
    (interval / 20).clamp(Duration::from_millis(2), Duration::from_millis(50))
}

/// A push that arrived after `pushed_since` answers without a request.
async fn ask_probe(
    link: Option<ControlLink>,
    timeout: Duration,
    pushed_since: Instant,
) -> Option<Result<ProbeReply, LinkError>> {
    let link = link?;
    if link.is_dumping() {
        // Blocked in a heap snapshot: no answer is coming, and none is missed.
        return None;
    }
    let reply = match link.take_pushed(pushed_since) {
        Some(pushed) => Ok(pushed),
        None => {
            link.request(
                |seq| AgentMsg::Sample {
                    seq,
                    metrics: false,
                },
                timeout,
            )
            .await
        }
    };
    Some(reply.map(|msg| match msg {
        WorkerMsg::Stats {
            heap,
            runtime_lag_seconds,
            dropped,
            external_bytes,
            array_buffers_bytes,
            sampling_restarts,
            ..
        } => ProbeReply {
            heap,
            runtime_lag_seconds,
            external_bytes,
            array_buffers_bytes,
            counts: Some(record::ProbeCounts {
                dropped,
                sampling_restarts: sampling_restarts.unwrap_or(0),
            }),
        },
        // Any reply proves the worker is alive, even one we did not ask for.
        _ => ProbeReply::default(),
    }))
}
